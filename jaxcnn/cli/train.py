"""``jaxcnn train``: the book's training loop on Fashion-MNIST, with checkpoints and resume."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from ._args import non_negative_int, positive_float, positive_int

EPILOG = """\
presets (the book's chapter-5 runs; Adam, 5 epochs; any flag overrides them):
{presets}

examples:
  jaxcnn train --preset lenet                       # ch. 5.5, prints one line per epoch
  jaxcnn train --preset lenet_bn --workdir runs/bn --plot
  jaxcnn train --preset lenet_bn --workdir runs/bn --resume --epochs 10   # continue
  jaxcnn train --model lenet --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov \\
               --schedule step --step-size 2 --gamma 0.5
  jaxcnn train --preset lenet --limit-train 2048 --limit-test 512 --epochs 2   # quick look
  jaxcnn train --preset alexnet --precision bfloat16 --steps-per-call 50      # on a GPU

With --workdir, every epoch is checkpointed (orbax; the newest --keep are kept) and the
metrics go to WORKDIR/metrics.jsonl; --resume continues from the latest checkpoint with
identical results to an uninterrupted run. A NaN/inf loss stops the run, naming the step,
and leaves the last good checkpoint as it was.
"""


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def enable_compilation_cache() -> None:
    """Keep XLA's compiled programs in ``~/.cache/jaxcnn/xla`` (``$XDG_CACHE_HOME``) so that
    later runs skip most compilation; an explicit ``JAX_COMPILATION_CACHE_DIR`` (empty: off)
    wins."""
    import os

    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        return
    from ..data import default_cache_dir

    jax.config.update("jax_compilation_cache_dir", str(default_cache_dir().parent / "xla"))


def add_model_args(p: argparse.ArgumentParser | Any) -> None:
    """``--model``, ``--bn``, ``--ratio``, ``--resize`` (shared with ``jaxcnn eval``)."""
    from ..registry import list_models

    p.add_argument("--model", metavar="NAME",
                   help=f"registered model: {', '.join(list_models())}")
    p.add_argument("--bn", choices=("torch", "scratch"),
                   help="lenet_bn only: nn.BatchNorm ('torch') or the book's BatchNorm "
                        "('scratch')")
    p.add_argument("--ratio", type=positive_int,
                   help="vgg11 only: divide every width by RATIO (the book trains 8)")
    p.add_argument("--resize", type=positive_int, metavar="S",
                   help="resize the 28x28 images to SxS (PIL bilinear, as torchvision); "
                        "default: the model's input size (224 for alexnet, vgg11, nin)")


def model_config(parser: argparse.ArgumentParser, model: str, base: dict[str, Any],
                 args: argparse.Namespace) -> dict[str, Any]:
    """``base`` with ``--bn``/``--ratio`` applied; refuses options the model does not have."""
    from ..registry import get_spec

    try:
        spec = get_spec(model)
    except KeyError as e:
        parser.error(str(e.args[0]))
    fields = {f.name for f in dataclasses.fields(spec.config)}
    out = dict(base)
    for flag, key, hint in (("--bn", "bn", "use --model lenet_bn for BatchNorm"),
                            ("--ratio", "ratio", "only vgg11 takes a width ratio")):
        value = getattr(args, key)
        if value is None:
            continue
        if key not in fields:
            parser.error(f"{flag} does not apply to model {model!r} ({hint})")
        out[key] = value
    return out


def check_input_size(parser: argparse.ArgumentParser, config: Any) -> None:
    """Refuse a resize the model cannot take (shape inference only, no compute)."""
    import jax
    import jax.numpy as jnp

    from ..models import build_model

    cfg = config.model_cfg()
    shape = (1, config.input_size, config.input_size, cfg.in_channels)
    try:
        jax.eval_shape(lambda: build_model(cfg).init(jax.random.PRNGKey(0),
                                                     jnp.zeros(shape), train=False))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        parser.error(f"model {config.model!r} cannot take {config.input_size}x"
                     f"{config.input_size} input (--resize): {first}")


def _optimizer(parser: argparse.ArgumentParser, base: Any, args: argparse.Namespace) -> Any:
    from ..training import OptimizerConfig

    changes = {k: getattr(args, a) for k, a in (
        ("name", "optimizer"), ("lr", "lr"), ("momentum", "momentum"),
        ("weight_decay", "weight_decay"), ("schedule", "schedule"),
        ("step_size", "step_size"), ("gamma", "gamma")) if getattr(args, a) is not None}
    if args.nesterov:
        changes["nesterov"] = True
    d = {**base.to_dict(), **changes}
    if d["name"] != "sgd" and "name" in changes and "momentum" not in changes:
        d["momentum"], d["nesterov"] = 0.0, False  # switching away from a preset's sgd
    if d["schedule"] != "step" and (args.step_size is not None or args.gamma is not None):
        parser.error("--step-size and --gamma apply to --schedule step only")
    try:
        return OptimizerConfig.from_dict(d)
    except ValueError as e:
        parser.error(str(e))


def resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The :class:`~jaxcnn.training.TrainConfig` of the flags (preset, checkpoint when
    resuming, then every explicit flag on top); refuses bad combinations via ``parser.error``."""
    from ..training import (
        PRESETS,
        CheckpointError,
        TrainConfig,
        default_resize,
        latest_epoch,
        read_meta,
        resume_conflicts,
    )

    saved = done = None
    if args.resume:
        if args.workdir is None:
            parser.error("--resume needs --workdir (the directory of the run to continue)")
        done = latest_epoch(args.workdir)
        if done is None:
            parser.error(f"--resume: no checkpoint in {args.workdir} (nothing to continue; "
                         f"drop --resume to start a new run there)")
        try:
            saved = TrainConfig.from_dict(read_meta(args.workdir)["config"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            parser.error(f"--resume: cannot read the checkpoint in {args.workdir}: {e}")
    elif args.workdir is not None and latest_epoch(args.workdir) is not None:
        parser.error(f"{args.workdir} already holds checkpoints (latest epoch "
                     f"{latest_epoch(args.workdir)}); add --resume to continue that run, or "
                     f"choose a new --workdir")
    if args.plot and args.workdir is None:
        parser.error("--plot writes WORKDIR/curves.png: give --workdir")

    if args.preset is not None:
        base = PRESETS[args.preset][0]
    elif saved is not None:
        base = saved
    elif args.model is not None:
        base = None
    else:
        parser.error("say what to train: --preset NAME or --model NAME "
                     f"(presets: {', '.join(PRESETS)})")

    model = args.model or base.model
    if base is None or model != base.model:
        model_base: dict[str, Any] = {}
        try:
            resize = default_resize(model)
        except KeyError as e:
            parser.error(str(e.args[0]))
        base = base or TrainConfig(model="lenet")
    else:
        model_base, resize = dict(base.model_config), base.resize
    if args.resize is not None:
        resize = None if args.resize == 28 else args.resize
    try:
        config = TrainConfig(
            model=model,
            model_config=model_config(parser, model, model_base, args),
            resize=resize,
            batch_size=args.batch_size or base.batch_size,
            epochs=args.epochs or base.epochs,
            optimizer=_optimizer(parser, base.optimizer, args),
            seed=base.seed if args.seed is None else args.seed,
            limit_train=args.limit_train or base.limit_train,
            limit_test=args.limit_test or base.limit_test,
            precision=args.precision or base.precision,
        )
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if saved is not None:
        problems = resume_conflicts(saved, config, done)
        if problems:
            parser.error(f"cannot --resume {args.workdir} with different settings (give just "
                         f"--workdir and --resume, plus --epochs to train longer; or start a "
                         f"new --workdir):\n  " + "\n  ".join(problems))
    check_input_size(parser, config)
    return config


def register(subparsers: Any) -> None:
    from ..training import OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES

    presets = "\n".join(
        f"  {name:<17} {cfg.model}{''.join(f' {k}={v}' for k, v in _overrides(cfg).items())}, "
        f"{'resize ' + str(cfg.resize) if cfg.resize else '28x28'}, batch {cfg.batch_size}, "
        f"lr {cfg.optimizer.lr:g}  (ch. {chapter})"
        for name, (cfg, chapter) in PRESETS.items())
    p = subparsers.add_parser(
        "train", help="train a model on Fashion-MNIST (the book's loop)",
        description="Train a chapter-5 CNN on Fashion-MNIST as the book does: per batch "
                    "forward, mean cross-entropy, optimizer step; per epoch one line 'epoch 1, "
                    "loss ..., train acc ..., test acc ..., time ... sec'.",
        epilog=EPILOG.format(presets=presets), formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to train")
    what.add_argument("--preset", choices=list(PRESETS), help="a chapter's model and settings")
    add_model_args(what)
    how = p.add_argument_group("how (defaults: the preset's, else adam, lr 0.001, batch 256, "
                               "5 epochs)")
    how.add_argument("--epochs", type=positive_int, help="total epochs (with --resume: "
                     "train up to this many)")
    how.add_argument("--batch-size", type=positive_int, metavar="B")
    how.add_argument("--lr", type=positive_float, help="base learning rate")
    how.add_argument("--optimizer", choices=OPTIMIZERS,
                     help="torch.optim semantics: sgd (coupled weight decay), adam (coupled, "
                          "L2), adamw (decoupled, default weight decay 0.01)")
    how.add_argument("--momentum", type=non_negative_float, help="sgd momentum (default 0)")
    how.add_argument("--nesterov", action="store_true", help="sgd Nesterov momentum")
    how.add_argument("--weight-decay", type=non_negative_float, metavar="WD",
                     help="torch's weight_decay (default 0; adamw 0.01)")
    how.add_argument("--schedule", choices=SCHEDULES,
                     help="per-epoch learning rate: constant (default), step (StepLR), cosine "
                          "(CosineAnnealingLR, T_max = epochs)")
    how.add_argument("--step-size", type=positive_int, metavar="EPOCHS",
                     help="--schedule step: decay every EPOCHS epochs (default 1)")
    how.add_argument("--gamma", type=positive_float,
                     help="--schedule step: decay factor (default 0.1)")
    how.add_argument("--precision", choices=PRECISIONS,
                     help="bfloat16: mixed precision (compute in bfloat16; parameters, "
                          "optimizer, BatchNorm and loss in float32), for GPUs "
                          "(default float32)")
    how.add_argument("--steps-per-call", type=positive_int, default=1, metavar="K",
                     help="run K updates per compiled call (lax.scan over batches gathered on "
                          "the device): the same training, less dispatch; try 50+ on a GPU "
                          "(default 1)")
    how.add_argument("--seed", type=non_negative_int,
                     help="init, dropout and shuffling seed (default 0)")
    how.add_argument("--limit-train", type=positive_int, metavar="N",
                     help="train on the first N training images only")
    how.add_argument("--limit-test", type=positive_int, metavar="N",
                     help="test on the first N test images only")
    out = p.add_argument_group("where")
    out.add_argument("--workdir", type=Path, metavar="DIR",
                     help="checkpoints, metrics.jsonl, config.json (and curves.png) go here")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in --workdir from its latest checkpoint")
    out.add_argument("--keep", type=positive_int, default=3, metavar="N",
                     help="checkpoints to keep (default 3)")
    out.add_argument("--plot", action="store_true", help="write WORKDIR/curves.png at the end")
    out.add_argument("--log-every", type=non_negative_int, default=0, metavar="N",
                     help="print the loss of every N-th step (default: never)")
    out.add_argument("--data-dir", metavar="DIR",
                     help="Fashion-MNIST IDX files (default: $JAXCNN_DATA, the cache, "
                          "/usr/share/datasets/fashion-mnist, else download)")
    out.add_argument("--no-download", action="store_true", help="never download the data")
    p.set_defaults(func=run, _parser=p)


def _overrides(cfg: Any) -> dict[str, Any]:
    from ..registry import make_config

    default = dataclasses.asdict(make_config(cfg.model))
    return {k: v for k, v in cfg.model_config.items() if default.get(k) != v}


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args._parser, args)
    enable_compilation_cache()

    from ..data import DataError
    from ..training import CheckpointError, NonFiniteError, load_datasets, train

    opt = config.optimizer
    extra = "".join(f" {k}={v}" for k, v in _overrides(config).items())
    limits = "".join(f", {k} {v}" for k, v in (("limit-train", config.limit_train),
                                               ("limit-test", config.limit_test)) if v)
    print(f"training {config.model}{extra} ({config.input_size}x{config.input_size}), batch "
          f"{config.batch_size}, {opt.name} lr {opt.lr:g} ({opt.schedule}), {config.epochs} "
          f"epochs, seed {config.seed}{limits}"
          + ("" if config.precision == "float32" else f", {config.precision} mixed precision"),
          flush=True)
    start = time.perf_counter()
    try:
        datasets = load_datasets(config, args.data_dir, download=not args.no_download)
        result = train(config, args.workdir, resume=args.resume, keep=args.keep,
                       plot=args.plot, log=lambda s: print(s, flush=True),
                       log_every=args.log_every, datasets=datasets,
                       steps_per_call=args.steps_per_call)
    except DataError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = (f"; continue with: jaxcnn train --workdir {args.workdir} --resume"
                 if args.workdir is not None else "")
        print(f"jaxcnn train: interrupted{where}", file=sys.stderr)
        return 130
    except NonFiniteError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        if args.workdir is not None:
            from ..training import latest_epoch

            last = latest_epoch(args.workdir)
            where = (f"the last good checkpoint is epoch {last} in {args.workdir}" if last
                     else "no checkpoint was written")
            print(f"jaxcnn train: {where}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    if result.history:
        last = result.history[-1]
        print(f"done: {len(result.history)} epochs, test acc {last.test_acc:.3f}, "
              f"{total:.1f} sec in all", flush=True)
    if args.workdir is not None:
        print(f"run directory: {args.workdir} (metrics.jsonl, checkpoints/)", flush=True)
    return 0
