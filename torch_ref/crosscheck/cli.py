"""The cross-framework commands of ``jaxcnn``, registered through the ``jaxcnn.commands``
entry-point group (see :mod:`jaxcnn.cli`):

- ``jaxcnn parity MODEL``: torch_ref vs jaxcnn, configuration then layer by layer;
- ``jaxcnn compare MODEL``: train jaxcnn and its torch twin side by side on Fashion-MNIST;
- ``jaxcnn bench``: speed and memory of both, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from jaxcnn.cli.options import (
    add_config_options,
    add_model_options,
    config_overrides,
    model_overrides,
    positive_int,
    resolve,
)
from jaxcnn.data import DataError
from jaxcnn.testing import DEFAULT_RTOL
from jaxcnn.training import PRESETS, default_preset

from . import bench
from . import compare as tc
from .parity import parity_report

PARITY_EPILOG = """\
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


def register_parity(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "parity", help="compare jaxcnn with the PyTorch reference layer by layer",
        description="Compare a model's configuration, activations, BatchNorm statistics and "
                    "gradients between torch_ref and jaxcnn, layer by layer.",
        epilog=PARITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
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
    p.set_defaults(func=run_parity)


def run_parity(args: argparse.Namespace) -> int:
    try:
        report = parity_report(
            args.model, model_overrides(args), weights=args.weights, train=args.train,
            grad=args.grad, batch=args.batch, seed=args.seed, input_size=args.input_size,
            rtol=DEFAULT_RTOL if args.rtol is None else args.rtol,
            torch_device=args.torch_device)
    except (KeyError, TypeError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"jaxcnn parity: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------- compare

COMPARE_EPILOG = """\
examples:
  jaxcnn compare lenet --epochs 5                    # the book's ch. 5.5 run, in both
  jaxcnn compare lenet_bn --preset lenet_bn_scratch  # the book's own BatchNorm
  jaxcnn compare alexnet --epochs 1 --limit-train 2048 --limit-test 1000
  jaxcnn compare lenet --epochs 5 --seeds 5          # 5 independent runs per framework

Paired run (default): torch initialises the model, jaxcnn starts from the converted weights;
both see the same batches in the same order (jaxcnn.data.epoch_order) and the same dropout
masks; torch reads torchvision's FashionMNIST items (Resize + ToTensor). Printed per epoch:
both frameworks' loss, train and test accuracy, time (training + test pass) and training
images/s, and the max |parameter difference| at the epoch's end. Written: OUT/NAME.json and
OUT/NAME.png (both sets of curves).

--seeds K: K independent runs per framework (own init, order and dropout, as two labs would),
then mean +- std of the final test accuracy and Welch's t-test; OUT/NAME_seedsK.json/.png.
Settings: those of --preset (default: the preset named MODEL, else the first preset of that
model); any flag overrides them. Needs torch and torchvision.
"""


def register_compare(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare", help="train jaxcnn and the PyTorch reference side by side",
        description="Train the torch_ref twin and jaxcnn on Fashion-MNIST from the same "
                    "weights, batches and dropout masks and compare them epoch by epoch; or "
                    "compare independent runs per framework (--seeds).",
        epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help=f"a registered model or a preset ({', '.join(PRESETS)})")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="the book's settings to use (must be a preset of MODEL)")
    add_config_options(p, ["epochs", "batch_size", "optimizer.lr", "seed"],
                       help={"seed": "torch init and batch order (0)"})
    p.add_argument("--seeds", type=positive_int, metavar="K",
                   help="K >= 2 independent runs per framework, with Welch's t-test")
    add_config_options(p, ["limit_train", "limit_test"])
    p.add_argument("--torch-threads", type=positive_int, metavar="T",
                   help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), metavar="DIR",
                   help="where the JSON and PNG go (default runs/compare)")
    p.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST IDX files")
    p.set_defaults(func=run_compare, _parser=p)


def compare_config(parser: argparse.ArgumentParser, args: argparse.Namespace
                   ) -> tuple[Any, str]:
    """The :class:`~jaxcnn.training.TrainConfig` of the arguments and the run's name: MODEL's
    preset (``--preset``, else :func:`~jaxcnn.training.default_preset`) with the flags on top."""
    model, name = args.model, args.preset or default_preset(args.model)
    if args.preset is not None and model not in (args.preset, PRESETS[args.preset][0].model):
        parser.error(f"--preset {args.preset} trains {PRESETS[args.preset][0].model!r}, "
                     f"not {model!r}")
    overrides = config_overrides(args)
    del overrides["model"]
    config = resolve(parser, name, model=None if name else model, **overrides)
    if args.seeds is not None and args.seeds < 2:
        parser.error("--seeds needs at least 2 runs per framework for a t-test")
    return config, name or model


def run_compare(args: argparse.Namespace) -> int:
    import jax

    config, name = compare_config(args._parser, args)
    jax.config.update("jax_default_matmul_precision", "highest")  # float32 on both sides
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    opt = config.optimizer
    print(f"compare {name}: {config.model} ({config.input_size}x{config.input_size}), batch "
          f"{config.batch_size}, {opt.name} lr {opt.lr:g}, {config.epochs} epochs, seed "
          f"{config.seed}" + (f", {args.seeds} seeds" if args.seeds else ", paired")
          + "".join(f", {k} {v}" for k, v in (("limit-train", config.limit_train),
                                              ("limit-test", config.limit_test)) if v),
          flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if args.seeds:
            record = tc.compare_seeds(config, args.seeds, data_dir=args.data_dir, log=log)
            stem = f"{name}_seeds{args.seeds}"
        else:
            record = tc.compare(config, data_dir=args.data_dir, log=log)
            stem = name
    except DataError as e:
        print(f"jaxcnn compare: error: {e}", file=sys.stderr)
        return 2
    record["name"] = name
    json_path, png_path = tc.write_outputs(record, args.out, stem)
    print(f"wrote {json_path} and {png_path}", flush=True)
    return 0


# ------------------------------------------------------------------------------ bench

BENCH_EPILOG = """\
examples:
  jaxcnn bench                                     # every model, the book's batch sizes
  jaxcnn bench --models lenet lenet_bn --repeats 5 --json bench.json
  jaxcnn bench --models alexnet --steps 2 --no-compile --no-epoch
  jaxcnn bench --threads 1                         # one thread in both frameworks

Per model (the book's batch size and input size: lenet/lenet_bn 256 at 28x28; alexnet 128,
vgg11 (ratio 8) 64, nin 128 at 224x224), for jaxcnn (jit, one step per call), jaxcnn scan
(the timed steps in one compiled call), torch eager and torch.compile: training steps/s and
images/s, inference images/s, the first call's time (compilation), peak memory (CPU: the
process's peak RSS during one step). Each framework's first call is excluded; then the
frameworks take turns, --repeats times, each timing --steps steps; the median is reported,
and each jaxcnn row is divided by torch eager's and torch.compile's. For the 28x28 models,
two epochs of the book's loop on Fashion-MNIST end to end (data, training, test pass) in
jaxcnn, jaxcnn scan and torch eager (the first with compilation, the second warm).
Both frameworks use --threads threads (torch.set_num_threads, and XLA's CPU pool through
PJRT_NPROC, which must be set before JAX starts: bench sets it itself).
Defaults: --steps 20 at 28x28, 1 at 224x224; a full run takes about 15 minutes on a 2-core
CPU (the 224x224 models most of it; --models lenet lenet_bn about 4).
"""


def register_bench(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark jaxcnn against the PyTorch reference (speed, memory)",
        description="Training and inference throughput, compile time and peak memory of "
                    "jaxcnn (jit; one or many steps per call) and its torch twin (eager and "
                    "torch.compile), measured in one process on one device, plus two epochs "
                    "of the book's loop.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    extra = [m for m in bench.SPECS if m not in bench.DEFAULT_MODELS]
    p.add_argument("--models", nargs="+", choices=list(bench.SPECS),
                   default=list(bench.DEFAULT_MODELS), metavar="NAME",
                   help=f"models to run (default: {' '.join(bench.DEFAULT_MODELS)}; "
                        f"also {' '.join(extra)})")
    p.add_argument("--batch", type=positive_int, metavar="N",
                   help="batch size for every model (default: the book's)")
    p.add_argument("--steps", type=positive_int, metavar="S",
                   help="training/inference steps per timed repeat (default 20 at 28x28, "
                        "1 at 224x224)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="R",
                   help="timed repeats per framework, interleaved; the median is reported "
                        "(default 3)")
    p.add_argument("--threads", type=positive_int, metavar="T",
                   help="threads for both frameworks (default: the CPUs this process may use)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-epoch", action="store_true",
                   help="skip the end-to-end epoch on Fashion-MNIST")
    add_config_options(p, ["limit_train", "limit_test"], help={
        "limit_train": "epoch: train on the first N training images only",
        "limit_test": "epoch: test on the first N test images only"})
    p.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST IDX files")
    p.add_argument("--profile", action="store_true",
                   help="then print where a training step's time goes: jaxcnn per layer (XLA "
                        "profiler), torch eager per operator")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    e2e_group = p.add_argument_group(
        "whole processes (--e2e)",
        "instead of the above: `jaxcnn train --preset P` (empty XLA program cache, then "
        "warm) against `python -m torch_ref.train --preset P --loader L`, each a fresh "
        "process timed from start to exit, back to back; the ratio is torch's wall time over "
        "jaxcnn's")
    e2e_group.add_argument("--e2e", action="store_true", help="run the whole-process comparison")
    e2e_group.add_argument("--presets", nargs="+", default=["lenet", "lenet_bn"],
                           choices=list(PRESETS), metavar="P",
                           help="presets to run (default: lenet lenet_bn)")
    e2e_group.add_argument("--loader", choices=("memory", "book"), default="memory",
                           help="the torch loop's input pipeline (default: memory)")
    e2e_group.add_argument("--epochs", type=positive_int, metavar="E",
                           help="epochs of both runs (default: the preset's)")
    p.set_defaults(func=run_bench)


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_xla_threads(threads: int) -> str | None:
    """Size XLA's CPU thread pool (``PJRT_NPROC``); a warning if JAX has already started."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return (f"JAX was already initialised: XLA's CPU pool keeps its size "
                f"(PJRT_NPROC={os.environ.get('PJRT_NPROC')})")
    os.environ["PJRT_NPROC"] = str(threads)
    return None


def _run_e2e(args: argparse.Namespace) -> int:
    from .e2e import format_e2e, run_e2e

    extra = [*(["--epochs", str(args.epochs)] if args.epochs else []),
             *(["--limit-train", str(args.limit_train)] if args.limit_train else []),
             *(["--limit-test", str(args.limit_test)] if args.limit_test else []),
             *(["--data-dir", args.data_dir] if args.data_dir else [])]
    report = run_e2e(args.presets, repeats=args.repeats, loader=args.loader, extra=extra,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    report["machine"] = bench.machine()
    report["command"] = "jaxcnn bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                   else sys.argv[1:])
    print(format_e2e(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    if args.e2e:
        return _run_e2e(args)
    threads = args.threads or default_threads()
    warning = set_xla_threads(threads)
    torch.set_num_threads(threads)
    if warning:
        print(f"jaxcnn bench: warning: {warning}", file=sys.stderr)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = bench.run(args.models, batch=args.batch, steps=args.steps,
                           repeats=args.repeats, compile=not args.no_compile,
                           epoch=not args.no_epoch, data_dir=args.data_dir,
                           limit_train=args.limit_train, limit_test=args.limit_test, log=log)
    except (DataError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"jaxcnn bench: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    report["command"] = "jaxcnn bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                   else sys.argv[1:])
    report["settings"]["threads"] = threads
    print(bench.format_report(report))
    if args.profile:
        for name in args.models:
            log(f"{name}: profiling one training step")
            print("\n" + bench.profile_model(name, batch=args.batch))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
