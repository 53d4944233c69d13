"""``jaxcnn bench``: jaxcnn against the PyTorch reference, speed and memory, in one process."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._args import positive_int

TORCH_MISSING = "jaxcnn bench needs the torch extra: pip install 'jaxcnn[torch]'"
MODELS = ("lenet", "lenet_bn", "lenet_bn_scratch", "alexnet", "vgg11", "nin")
DEFAULT_MODELS = ("lenet", "lenet_bn", "alexnet", "vgg11", "nin")

EPILOG = """\
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark jaxcnn against the PyTorch reference (speed, memory)",
        description="Training and inference throughput, compile time and peak memory of "
                    "jaxcnn (jit; one or many steps per call) and its torch twin (eager and "
                    "torch.compile), measured in one process on one device, plus two epochs "
                    "of the book's loop.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS),
                   metavar="NAME", help=f"models to run (default: {' '.join(DEFAULT_MODELS)}; "
                                        f"also {MODELS[2]})")
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
    p.add_argument("--limit-train", type=positive_int, metavar="N",
                   help="epoch: train on the first N training images only")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="epoch: test on the first N test images only")
    p.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST IDX files")
    p.add_argument("--profile", action="store_true",
                   help="then print where a training step's time goes: jaxcnn per layer (XLA "
                        "profiler), torch eager per operator")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    threads = args.threads or default_threads()
    warning = set_xla_threads(threads)
    try:
        import torch

        from torch_ref import bench
    except ImportError as e:
        print(f"jaxcnn bench: {TORCH_MISSING} ({e})", file=sys.stderr)
        return 2
    from ..data import DataError

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
