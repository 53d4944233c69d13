"""``jaxcnn eval``: test accuracy of a run's checkpoint or of a ``.safetensors`` file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import runtime
from .options import (
    add_config_options,
    add_model_options,
    check_input_size,
    config_overrides,
    model_overrides,
    positive_int,
    resolve,
)

EPILOG = """\
examples:
  jaxcnn eval --workdir runs/lenet                  # the latest checkpoint of a run
  jaxcnn eval --workdir runs/lenet --epoch 3
  jaxcnn eval --weights lenet_bn.safetensors --model lenet_bn --bn scratch
  jaxcnn eval --weights vgg.safetensors --model vgg11 --ratio 8 --batch-size 64

Every array of a checkpoint is checked against its sha256 digest; without --epoch a damaged
newest checkpoint is skipped (named on stderr) for the newest one that verifies.
Prints 'test acc 0.xxx (correct/total correct)', in eval mode (BatchNorm running statistics,
no dropout), with the book's preprocessing (ToTensor, and Resize for 224x224 models).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval", help="test accuracy of a checkpoint or a .safetensors file",
        description="Evaluate a trained model on the Fashion-MNIST test set.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("weights (one of)")
    src.add_argument("--workdir", type=Path, metavar="DIR",
                     help="a 'jaxcnn train' run directory: its checkpoint and config")
    src.add_argument("--weights", type=Path, metavar="FILE",
                     help="a .safetensors state dict with torch names (e.g. from 'jaxcnn "
                          "export' or torch_ref); needs --model")
    src.add_argument("--epoch", type=positive_int, help="--workdir: this epoch's checkpoint "
                     "(default: the latest)")
    m = p.add_argument_group("model (with --weights)")
    add_model_options(m, positional=False)
    add_config_options(m, ["resize"])
    d = p.add_argument_group("data")
    d.add_argument("--batch-size", type=positive_int, metavar="B",
                   help="default: the run's, else 256")
    add_config_options(d, ["limit_test"], help={
        "limit_test": "the first N test images (default: the run's setting, else all)"})
    d.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST IDX files")
    d.add_argument("--no-download", action="store_true", help="never download the data")
    p.set_defaults(func=run, _parser=p)


def run_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The run's config (``--workdir``) or that of ``--model`` and its options."""
    from ..training import CheckpointError, TrainConfig, latest_epoch, read_meta

    if (args.workdir is None) == (args.weights is None):
        parser.error("give exactly one of --workdir DIR and --weights FILE")
    if args.workdir is not None:
        flags = [f for f, v in (("--model", args.model), ("--resize", args.resize)) if v]
        flags += [f"--{k.replace('_', '-')}" for k in model_overrides(args)]
        if flags:
            parser.error(f"{', '.join(flags)}: a --workdir run carries its own model config")
        if latest_epoch(args.workdir) is None:
            parser.error(f"no checkpoint in {args.workdir} (train with 'jaxcnn train "
                         f"--workdir {args.workdir}' first)")
        try:
            config = TrainConfig.from_dict(read_meta(args.workdir, args.epoch)["config"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            parser.error(f"cannot read the checkpoint in {args.workdir}: {e}")
        return config
    if args.epoch is not None:
        parser.error("--epoch applies to --workdir only")
    if args.model is None:
        parser.error("--weights needs --model NAME (and --bn/--ratio as the model was built)")
    if not args.weights.is_file():
        parser.error(f"--weights: no file at {args.weights}")
    overrides = config_overrides(args)
    overrides.pop("limit_test")  # applied to either source in run()
    config = resolve(parser, None, **overrides)
    check_input_size(parser, config)
    return config


def run(args: argparse.Namespace) -> int:
    parser = args._parser
    config = run_config(parser, args)
    runtime.configure()

    import dataclasses

    from ..convert import (
        StateDictError,
        WeightsFileError,
        from_torch_state_dict,
        load_safetensors,
    )
    from ..data import DataError, DeviceDataset, load_splits
    from ..models import build_model
    from ..training import evaluate_accuracy, load_checkpoint

    config = dataclasses.replace(config, limit_test=args.limit_test or config.limit_test)
    batch_size = args.batch_size or config.batch_size
    if args.workdir is not None:
        model, state, meta = load_checkpoint(args.workdir, args.epoch)
        variables, what = state.variables, f"{args.workdir} epoch {meta['epoch']}"
    else:
        model = build_model(config.model_cfg())
        try:
            variables = from_torch_state_dict(model, load_safetensors(args.weights))
        except (StateDictError, TypeError) as e:
            print(f"jaxcnn eval: error: {args.weights} does not fit {config.model} "
                  f"{dict(config.model_config)}:\n{e}", file=sys.stderr)
            return 2
        except WeightsFileError as e:
            print(f"jaxcnn eval: error: {e}", file=sys.stderr)
            return 2
        what = str(args.weights)
    try:
        fm = load_splits(args.data_dir, limit_train=0, limit_test=config.limit_test,
                         download=not args.no_download)
        test = DeviceDataset.from_arrays(fm.test_images, fm.test_labels)
    except DataError as e:
        print(f"jaxcnn eval: error: {e}", file=sys.stderr)
        return 2
    acc = evaluate_accuracy(model, variables, test, batch_size, config.resize)
    correct = round(acc * len(test))
    print(f"test acc {acc:.3f} ({correct}/{len(test)} correct; {config.model}, {what})")
    return 0
