"""``jaxcnn export``: a run's weights as a torch-named ``.safetensors`` state dict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import runtime
from .options import positive_int

EPILOG = """\
examples:
  jaxcnn export --workdir runs/lenet --out lenet.safetensors
  jaxcnn export --workdir runs/bn --epoch 3 --out bn_epoch3.safetensors

The file holds the parameters and BatchNorm statistics under torch's state-dict names and
layouts (OIHW conv weights, (out, in) linear weights, int64 num_batches_tracked). In PyTorch:

  import safetensors.torch, torch_ref
  model = torch_ref.create_model("lenet")          # same model and config as the run
  model.load_state_dict(safetensors.torch.load_file("lenet.safetensors"), strict=True)

Check it with 'jaxcnn eval --weights FILE --model NAME'. Every array is checked against the
checkpoint's sha256 digests first; without --epoch a damaged newest checkpoint is skipped
(named on stderr) for the newest one that verifies.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint's weights as torch-named .safetensors",
        description="Export the weights of a 'jaxcnn train' run for PyTorch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, metavar="DIR",
                   help="the run directory (from 'jaxcnn train --workdir')")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the .safetensors file to write (replaced atomically; its directory "
                        "must exist unless --mkdir)")
    p.add_argument("--mkdir", action="store_true",
                   help="create the missing parent directories of --out")
    p.add_argument("--epoch", type=positive_int, help="this epoch's checkpoint (default: the "
                   "latest)")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from ..training import latest_epoch

    parser = args._parser
    if latest_epoch(args.workdir) is None:
        parser.error(f"no checkpoint in {args.workdir} (train with 'jaxcnn train --workdir "
                     f"{args.workdir}' first)")
    if args.out.suffix != ".safetensors":
        parser.error(f"--out should end in .safetensors, got {args.out}")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give a file name")
    if not args.mkdir and not args.out.absolute().parent.is_dir():
        parser.error(f"--out: the directory {args.out.absolute().parent} does not exist "
                     f"(create it, or add --mkdir)")

    runtime.configure()
    from ..convert import save_safetensors, to_torch_state_dict
    from ..training import CheckpointError, load_checkpoint

    try:
        model, state, meta = load_checkpoint(args.workdir, args.epoch)
    except CheckpointError as e:
        print(f"jaxcnn export: error: {e}", file=sys.stderr)
        return 2
    state_dict = to_torch_state_dict(model, state.variables)
    save_safetensors(args.out, state_dict, make_dirs=args.mkdir)
    config = meta["config"]
    opts = {k: v for k, v in config["model_config"].items()}
    print(f"wrote {args.out}: {len(state_dict)} tensors of {config['model']} {opts}, epoch "
          f"{meta['epoch']} (global step {int(state.step)})")
    return 0
