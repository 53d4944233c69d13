"""``jaxcnn summary MODEL``: each layer's output shape and parameter count, torch's names."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
from typing import Any

from ._args import non_negative_int

EPILOG = """\
examples:
  jaxcnn summary nin --input-shape 1,1,224,224     # the seed notes' NiN listing (depth 1)
  jaxcnn summary lenet --depth 0                   # every module
  jaxcnn summary vgg11 --ratio 8 --input-shape 1,224,224,1 --layout NHWC
  jaxcnn summary nin --format seed                 # "0 output shape:  (1, 96, 54, 54)" lines

Shapes are given and shown in --layout (NCHW like torch by default); the model computes in NHWC.
"""


def _parse_value(default: Any) -> Any:
    def parse(text: str) -> Any:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        if isinstance(default, int):
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if isinstance(default, tuple):
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise argparse.ArgumentTypeError(
                    f"expected a Python literal such as ((1, 1, 8), (2, 8, 16)), got {text!r}"
                ) from None
        return text

    return parse


def _config_fields() -> dict[str, tuple[list[Any], list[str]]]:
    """Every config option of the registry: ``{field: ([defaults], [models])}``."""
    from ..registry import get_spec, list_models

    fields: dict[str, tuple[list[Any], list[str]]] = {}
    for name in list_models():
        for f in dataclasses.fields(get_spec(name).config):
            default = f.default if f.default is not dataclasses.MISSING else ""
            defaults, models = fields.setdefault(f.name, ([], []))
            if default not in defaults:
                defaults.append(default)
            models.append(name)
    return fields


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``MODEL`` and one ``--option`` per registry config field (``--ratio``, ``--bn``, ...)."""
    from ..registry import list_models

    p.add_argument("model", metavar="MODEL", help=f"registered model: {', '.join(list_models())}")
    group = p.add_argument_group("model options (registry config fields)")
    for field, (defaults, models) in _config_fields().items():
        shown = repr(defaults[0]) if len(defaults) == 1 else "per model"
        try:
            group.add_argument(f"--{field.replace('_', '-')}", dest=field, metavar="V",
                               type=_parse_value(defaults[0]), default=argparse.SUPPRESS,
                               help=f"default {shown}; models: {', '.join(models)}")
        except argparse.ArgumentError:  # an option name the command already uses
            continue


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides given on the command line."""
    return {f: getattr(args, f) for f in _config_fields() if hasattr(args, f)}


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
    add_model_arguments(p)
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
        cfg = make_config(args.model, **model_config(args))
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
