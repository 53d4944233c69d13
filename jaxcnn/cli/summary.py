"""``jaxcnn summary MODEL``: each layer's output shape and parameter count, torch's names."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import add_model_options, model_overrides, non_negative_int

EPILOG = """\
examples:
  jaxcnn summary nin --input-shape 1,1,224,224     # the seed notes' NiN listing (depth 1)
  jaxcnn summary lenet --depth 0                   # every module
  jaxcnn summary vgg11 --ratio 8 --input-shape 1,224,224,1 --layout NHWC
  jaxcnn summary nin --format seed                 # "0 output shape:  (1, 96, 54, 54)" lines

Shapes are given and shown in --layout (NCHW like torch by default); the model computes in NHWC.
"""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,1,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected 4 positive sizes, got {text!r}")
    return shape


def _depth(text: str) -> int | None:
    return non_negative_int(text) or None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "summary", help="per-layer output shapes and parameter counts",
        description="List a model's layers (torch names and types) with their output shapes "
                    "and parameter counts for one input shape.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                   help="input shape in --layout (default: batch 1 at the model's size)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW",
                   help="layout of --input-shape and of the shapes shown (default NCHW)")
    p.add_argument("--depth", type=_depth, default=1,
                   help="levels of nesting to list: 1 = the model's children (default), "
                        "0 = every module")
    p.add_argument("--format", choices=("table", "seed", "json"), default="table",
                   help="table (default), seed ('0 output shape:  (...)' lines) or json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inspect import summary
    from ..layers import ShapeError
    from ..models import build_model
    from ..registry import get_spec, make_config

    try:
        cfg = make_config(args.model, **model_overrides(args))
    except (KeyError, TypeError, ValueError) as e:
        print(f"jaxcnn summary: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    shape = args.input_shape
    if shape is None:
        size = get_spec(args.model).input_size
        nchw = (1, cfg.in_channels, size, size)
        shape = nchw if args.layout == "NCHW" else (1, size, size, cfg.in_channels)
    try:
        result = summary(build_model(cfg), shape, layout=args.layout, depth=args.depth,
                         title=args.model)
    except (ShapeError, ValueError) as e:
        print(f"jaxcnn summary: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    elif args.format == "seed":
        print("\n".join(result.shape_lines()))
    else:
        print(result)
    return 0
