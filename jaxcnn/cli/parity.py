"""``jaxcnn parity MODEL``: torch_ref vs jaxcnn, configuration then layer by layer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._args import positive_int
from .summary import add_model_arguments, model_config

EPILOG = """\
examples:
  jaxcnn parity lenet_bn --train --grad            # activations, BN statistics, gradients
  jaxcnn parity vgg11 --ratio 8 --batch 1
  jaxcnn parity alexnet --weights runs/alexnet.safetensors --json

First the hyper-parameters of every layer are compared (kernel, stride, padding, channels,
BatchNorm eps/momentum in one convention, dropout p, ...); then both models run on the same
weights and input and each layer's output is compared with jaxcnn.testing's tolerance
(max|diff| <= rtol * max(1, max|torch|)). The first row over tolerance is marked '>>'.
Exit status: 0 when everything agrees, 1 otherwise, 2 for a usage error. Needs torch.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "parity", help="compare jaxcnn with the PyTorch reference layer by layer",
        description="Compare a model's configuration, activations, BatchNorm statistics and "
                    "gradients between torch_ref and jaxcnn, layer by layer.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--weights", metavar="FILE",
                   help=".safetensors state dict (torch names) to load; default: torch's "
                        "initialisation from --seed")
    p.add_argument("--train", action="store_true",
                   help="train mode: batch statistics (updated ones compared) and dropout "
                        "with masks shared by both sides")
    p.add_argument("--grad", action="store_true",
                   help="also compare the cotangents of each layer's output and input and "
                        "the parameter gradients")
    p.add_argument("--batch", type=positive_int,
                   help="batch size (default: 32 for a model with BatchNorm, else 2)")
    p.add_argument("--seed", type=int, default=0, help="torch init, input and labels (default 0)")
    p.add_argument("--input-size", type=positive_int, metavar="PIXELS",
                   help="input height = width (default: the registry's)")
    p.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance of jaxcnn.testing (default its DEFAULT_RTOL)")
    p.add_argument("--torch-device", default="cpu", help="device of the torch model (cpu)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..parity import parity_report
    from ..testing import DEFAULT_RTOL

    try:
        report = parity_report(
            args.model, model_config(args), weights=args.weights, train=args.train,
            grad=args.grad, batch=args.batch, seed=args.seed, input_size=args.input_size,
            rtol=DEFAULT_RTOL if args.rtol is None else args.rtol,
            torch_device=args.torch_device)
    except ImportError as e:
        print(f"jaxcnn parity: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"jaxcnn parity: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1
