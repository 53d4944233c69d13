"""``jaxcnn compare MODEL``: train jaxcnn and its PyTorch twin side by side on Fashion-MNIST."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ._args import non_negative_int, positive_int

TORCH_MISSING = "jaxcnn compare needs the torch extra: pip install 'jaxcnn[torch]'"

EPILOG = """\
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


def register(subparsers: Any) -> None:
    from ..training import PRESETS

    p = subparsers.add_parser(
        "compare", help="train jaxcnn and the PyTorch reference side by side",
        description="Train the torch_ref twin and jaxcnn on Fashion-MNIST from the same "
                    "weights, batches and dropout masks and compare them epoch by epoch; or "
                    "compare independent runs per framework (--seeds).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help=f"a registered model or a preset ({', '.join(PRESETS)})")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="the book's settings to use (must be a preset of MODEL)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the preset's, 5)")
    p.add_argument("--batch-size", type=positive_int, metavar="B")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--seed", type=non_negative_int, help="torch init and batch order (0)")
    p.add_argument("--seeds", type=positive_int, metavar="K",
                   help="K >= 2 independent runs per framework, with Welch's t-test")
    p.add_argument("--limit-train", type=positive_int, metavar="N",
                   help="train on the first N training images only")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="test on the first N test images only")
    p.add_argument("--torch-threads", type=positive_int, metavar="T",
                   help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), metavar="DIR",
                   help="where the JSON and PNG go (default runs/compare)")
    p.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST IDX files")
    p.set_defaults(func=run, _parser=p)


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, str]:
    """The :class:`~jaxcnn.training.TrainConfig` of the arguments and the run's name."""
    from ..registry import get_spec
    from ..training import PRESETS, OptimizerConfig, TrainConfig, default_resize

    model = args.model
    if args.preset is not None:
        name, base = args.preset, PRESETS[args.preset][0]
        if model not in (args.preset, base.model):
            parser.error(f"--preset {args.preset} trains {base.model!r}, not {model!r}")
    elif model in PRESETS:
        name, base = model, PRESETS[model][0]
    else:
        try:
            get_spec(model)
        except KeyError as e:
            parser.error(str(e.args[0]))
        found = [(n, c) for n, (c, _) in PRESETS.items() if c.model == model]
        name, base = found[0] if found else (model, TrainConfig(model=model,
                                                                resize=default_resize(model)))
    opt = base.optimizer
    if args.lr is not None:
        try:
            opt = OptimizerConfig.from_dict({**opt.to_dict(), "lr": args.lr})
        except ValueError as e:
            parser.error(str(e))
    try:
        config = dataclasses.replace(
            base, optimizer=opt, epochs=args.epochs or base.epochs,
            batch_size=args.batch_size or base.batch_size,
            seed=base.seed if args.seed is None else args.seed,
            limit_train=args.limit_train or base.limit_train,
            limit_test=args.limit_test or base.limit_test)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    if args.seeds is not None and args.seeds < 2:
        parser.error("--seeds needs at least 2 runs per framework for a t-test")
    return config, name


def run(args: argparse.Namespace) -> int:
    import jax

    parser = args._parser
    config, name = resolve(parser, args)
    try:
        import torch

        from torch_ref import compare as tc
    except ImportError as e:
        print(f"jaxcnn compare: {TORCH_MISSING} ({e})", file=sys.stderr)
        return 2
    from ..data import DataError

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
