"""``jaxcnn train``: the book's training loop on Fashion-MNIST, with checkpoints and resume."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import runtime
from .options import (
    add_config_options,
    add_model_options,
    check_input_size,
    config_overrides,
    non_negative_int,
    positive_int,
    resolve,
)

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
  jaxcnn train --preset alexnet --precision bfloat16                         # on a GPU

With --workdir, every epoch is checkpointed (orbax; the newest --keep are kept) and the
metrics go to WORKDIR/metrics.jsonl; --resume continues from the latest checkpoint with
identical results to an uninterrupted run. A NaN/inf loss or state stops the run, naming the
step, and leaves the last good checkpoint as it was; continue from it with a lower learning
rate:
  jaxcnn train --workdir runs/bn --resume --change-optimizer --lr 0.0001
The workdir is locked while a run uses it; every checkpoint carries sha256 digests of its
arrays, and --resume falls back to the newest checkpoint that verifies (README: Failure modes).
"""


def run_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The :class:`~jaxcnn.training.TrainConfig` of the flags (preset, checkpoint when
    resuming, then every explicit flag on top); refuses bad combinations via ``parser.error``."""
    from ..training import CheckpointError, TrainConfig, latest_epoch, read_meta, resume_conflicts

    saved = done = None
    if args.resume:
        if args.workdir is None:
            parser.error("--resume needs --workdir (the directory of the run to continue)")
        done = latest_epoch(args.workdir)
        if done is None:
            parser.error(f"--resume: no checkpoint in {args.workdir} (nothing to continue; "
                         f"drop --resume to start a new run there)")
        try:
            meta = read_meta(args.workdir)
            saved, saved_epoch = TrainConfig.from_dict(meta["config"]), int(meta["epoch"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            parser.error(f"--resume: cannot read the checkpoint in {args.workdir}: {e}")
    elif args.workdir is not None and latest_epoch(args.workdir) is not None:
        parser.error(f"{args.workdir} already holds checkpoints (latest epoch "
                     f"{latest_epoch(args.workdir)}); add --resume to continue that run, or "
                     f"choose a new --workdir")
    if args.plot and args.workdir is None:
        parser.error("--plot writes WORKDIR/curves.png: give --workdir")

    config = resolve(parser, args.preset or saved, **config_overrides(args))
    if saved is not None:
        done = saved_epoch
        problems = resume_conflicts(saved, config, done,
                                    allow_optimizer_change=args.change_optimizer)
        if problems:
            parser.error(f"cannot --resume {args.workdir} with different settings (give just "
                         f"--workdir and --resume, plus --epochs to train longer, and "
                         f"--change-optimizer to change the optimizer, learning rate or "
                         f"schedule; or start a new --workdir):\n  " + "\n  ".join(problems))
    elif args.change_optimizer:
        parser.error("--change-optimizer applies to --resume only")
    check_input_size(parser, config)
    return config


def register(subparsers: Any) -> None:
    from ..training import PRESETS

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
    add_model_options(what, positional=False)
    add_config_options(what, ["resize"])
    how = p.add_argument_group("how (defaults: the preset's, else adam, lr 0.001, batch 256, "
                               "5 epochs)")
    add_config_options(how, [
        "epochs", "batch_size", "optimizer.lr", "optimizer.name", "optimizer.momentum",
        "optimizer.nesterov", "optimizer.weight_decay", "optimizer.schedule",
        "optimizer.step_size", "optimizer.gamma", "precision"],
        help={"epochs": "total epochs (with --resume: train up to this many)"})
    how.add_argument("--steps-per-call", type=positive_int, default=None, metavar="K",
                     help="run K updates per compiled call (lax.scan over batches gathered on "
                          "the device): the same training, less dispatch (default: all full "
                          "batches of an epoch up to 64, else the largest divisor of their "
                          "number up to 64; 1: one call per batch)")
    add_config_options(how, ["seed", "limit_train", "limit_test"])
    where = p.add_argument_group(
        "devices and hosts (data parallel: README 'Several devices and hosts')")
    where.add_argument("--devices", type=positive_int, default=None, metavar="N",
                       help="train on N devices, each batch split over them (default: all "
                            "local devices; CPU: JAX_NUM_CPU_DEVICES=N gives N virtual ones); "
                            "the batch size must divide by N")
    where.add_argument("--coordinator", metavar="HOST:PORT",
                       help="multi-process run: process 0's address (jax.distributed; default "
                            "$JAX_COORDINATOR_ADDRESS, or auto-detected under SLURM)")
    where.add_argument("--num-processes", type=positive_int, default=None, metavar="P",
                       help="multi-process run: the number of processes")
    where.add_argument("--process-id", type=non_negative_int, default=None, metavar="I",
                       help="multi-process run: this process's index, 0 .. P-1")
    where.add_argument("--coordinator-timeout", type=positive_int, default=60, metavar="SEC",
                       help="seconds to wait for all processes to join (default 60)")
    out = p.add_argument_group("where")
    out.add_argument("--workdir", type=Path, metavar="DIR",
                     help="checkpoints, metrics.jsonl, config.json (and curves.png) go here")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in --workdir from its latest checkpoint")
    out.add_argument("--change-optimizer", action="store_true",
                     help="with --resume: allow other optimizer settings than the checkpoint's "
                          "(--lr, --optimizer, --momentum, --weight-decay, --schedule, ...), "
                          "e.g. a lower --lr after a divergence; the optimizer state is kept "
                          "when its structure allows, else starts afresh. Model and data "
                          "settings still may not change")
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

    def plain(v: Any) -> Any:  # the config stores tuples as lists
        return list(v) if isinstance(v, tuple) else v

    default = dataclasses.asdict(make_config(cfg.model))
    return {k: v for k, v in cfg.model_config.items() if plain(default.get(k)) != plain(v)}


def run(args: argparse.Namespace) -> int:
    from .. import distributed

    try:  # before anything starts JAX's backend (jax.distributed requires it)
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               timeout=args.coordinator_timeout)
    except distributed.DistributedError as e:
        args._parser.error(str(e))
    config = run_config(args._parser, args)
    runtime.configure()
    try:
        distributed.use_devices(args.devices)
        distributed.check_batch_size(config.batch_size)
    except distributed.DistributedError as e:
        args._parser.error(str(e))

    from ..data import DataError, DeviceDataset, load_splits, split_sizes
    from ..training import CheckpointError, NonFiniteError, WorkdirLock, precompile, train

    if not distributed.is_main_process():  # only process 0 prints (errors still go to stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)

    opt = config.optimizer
    extra = "".join(f" {k}={v}" for k, v in _overrides(config).items())
    limits = "".join(f", {k} {v}" for k, v in (("limit-train", config.limit_train),
                                               ("limit-test", config.limit_test)) if v)
    print(f"training {config.model}{extra} ({config.input_size}x{config.input_size}), batch "
          f"{config.batch_size}, {opt.name} lr {opt.lr:g} ({opt.schedule}), {config.epochs} "
          f"epochs, seed {config.seed}{limits}"
          + ("" if config.precision == "float32" else f", {config.precision} mixed precision")
          + f", on {distributed.describe()}", flush=True)
    start = time.perf_counter()
    lock = None
    try:
        if args.workdir is not None and distributed.is_main_process():
            # before the data loads: a bad workdir fails at once
            lock = WorkdirLock(args.workdir).acquire()
        # Compile (in the background) while the data loads.
        precompile(config, *split_sizes(config.limit_train, config.limit_test),
                   args.steps_per_call)
        datasets = DeviceDataset.splits(load_splits(
            args.data_dir, limit_train=config.limit_train, limit_test=config.limit_test,
            download=not args.no_download))
        result = train(config, args.workdir, resume=args.resume, keep=args.keep,
                       plot=args.plot and distributed.is_main_process(),
                       log=lambda s: print(s, flush=True),
                       log_every=args.log_every, datasets=datasets,
                       steps_per_call=args.steps_per_call,
                       allow_optimizer_change=args.change_optimizer)
    except DataError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from ..training import latest_epoch

        last = latest_epoch(args.workdir) if args.workdir is not None else None
        where = (f"; epoch {last} is checkpointed, continue with: jaxcnn train --workdir "
                 f"{args.workdir} --resume" if last is not None
                 else "; no checkpoint was written")
        print(f"jaxcnn train: interrupted{where}", file=sys.stderr)
        return 130
    except NonFiniteError as e:
        print(f"jaxcnn train: error: {e}", file=sys.stderr)
        if args.workdir is not None:
            from ..training import latest_epoch

            last = latest_epoch(args.workdir)
            where = (f"the last good checkpoint is epoch {last} in {args.workdir}; continue "
                     f"from it with: jaxcnn train --workdir {args.workdir} --resume "
                     f"--change-optimizer --lr <lower>" if last
                     else "no checkpoint was written")
            print(f"jaxcnn train: {where}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
    total = time.perf_counter() - start
    if result.history:
        last = result.history[-1]
        print(f"done: {len(result.history)} epochs, test acc {last.test_acc:.3f}, "
              f"{total:.1f} sec in all", flush=True)
    if args.workdir is not None:
        print(f"run directory: {args.workdir} (metrics.jsonl, checkpoints/)", flush=True)
    return 0
