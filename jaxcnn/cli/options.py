"""What the subcommands share: argument types (each refuses a bad value with a clear message),
the model options generated from the registry, the run options generated from
:class:`~jaxcnn.training.TrainConfig` (:data:`CONFIG_OPTIONS`), :func:`resolve` and the
"needs torch" message. Public, for command plugins too (``torch_ref.crosscheck.cli``)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """``> 0``."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """``>= 0``."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number ``> 0``."""
    value = float(_number(text, float))
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number ``>= 0``."""
    value = float(_number(text, float))
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


#: The one "needs torch" message of the ``parity``, ``compare`` and ``bench`` commands.
TORCH_MISSING = "needs the torch extra: pip install 'jaxcnn[torch]'"


# ------------------------------------------------------------------ model (registry) options

def _parse_value(default: Any) -> Callable[[str], Any]:
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


def _registry_fields() -> dict[str, tuple[list[Any], list[str]]]:
    """Every config field of the registry: ``{field: ([defaults], [models])}``."""
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


def add_model_options(p: Any, *, positional: bool = True) -> None:
    """``MODEL`` (or ``--model NAME``) and one ``--option`` per registry config field
    (``--bn``, ``--ratio``, ...); read them back with :func:`model_overrides`."""
    from ..registry import list_models

    help_ = f"registered model: {', '.join(list_models())}"
    if positional:
        p.add_argument("model", metavar="MODEL", help=help_)
    else:
        p.add_argument("--model", metavar="NAME", help=help_)
    group = (p.add_argument_group("model options (registry config fields)")
             if isinstance(p, argparse.ArgumentParser) else p)  # groups do not nest
    for field, (defaults, models) in _registry_fields().items():
        shown = repr(defaults[0]) if len(defaults) == 1 else "per model"
        try:
            group.add_argument(f"--{field.replace('_', '-')}", dest=field, metavar="V",
                               type=_parse_value(defaults[0]), default=argparse.SUPPRESS,
                               help=f"default {shown}; models: {', '.join(models)}")
        except argparse.ArgumentError:  # an option name the command already uses
            continue


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The registry config fields given on the command line (:func:`add_model_options`)."""
    return {f: getattr(args, f) for f in _registry_fields() if hasattr(args, f)}


# ------------------------------------------------------------ run (TrainConfig) options

#: TrainConfig / OptimizerConfig field -> (option, type, metavar, help). The optimizer's
#: fields are marked ``optimizer.``; ``choices`` come from the training package.
CONFIG_OPTIONS: dict[str, tuple[str, Any, str | None, str]] = {
    "epochs": ("--epochs", positive_int, None, "total epochs (default: the preset's, 5)"),
    "batch_size": ("--batch-size", positive_int, "B", "batch size (default: the preset's)"),
    "optimizer.lr": ("--lr", positive_float, None, "base learning rate (default: the "
                     "preset's)"),
    "optimizer.name": ("--optimizer", "OPTIMIZERS", None,
                       "torch.optim semantics: sgd (coupled weight decay), adam (coupled, "
                       "L2), adamw (decoupled, default weight decay 0.01)"),
    "optimizer.momentum": ("--momentum", non_negative_float, None, "sgd momentum (default 0)"),
    "optimizer.nesterov": ("--nesterov", bool, None, "sgd Nesterov momentum"),
    "optimizer.weight_decay": ("--weight-decay", non_negative_float, "WD",
                               "torch's weight_decay (default 0; adamw 0.01)"),
    "optimizer.schedule": ("--schedule", "SCHEDULES", None,
                           "per-epoch learning rate: constant (default), step (StepLR), "
                           "cosine (CosineAnnealingLR, T_max = epochs)"),
    "optimizer.step_size": ("--step-size", positive_int, "EPOCHS",
                            "--schedule step: decay every EPOCHS epochs (default 1)"),
    "optimizer.gamma": ("--gamma", positive_float, None,
                        "--schedule step: decay factor (default 0.1)"),
    "precision": ("--precision", "PRECISIONS", None,
                  "bfloat16: mixed precision (compute in bfloat16; parameters, optimizer, "
                  "BatchNorm and loss in float32), for GPUs (default float32)"),
    "seed": ("--seed", non_negative_int, None, "init, dropout and shuffling seed (default 0)"),
    "limit_train": ("--limit-train", positive_int, "N",
                    "train on the first N training images only"),
    "limit_test": ("--limit-test", positive_int, "N", "test on the first N test images only"),
    "resize": ("--resize", positive_int, "S",
               "resize the 28x28 images to SxS (PIL bilinear, as torchvision); default: the "
               "model's input size (224 for alexnet, vgg11, nin)"),
}


def add_config_options(p: Any, fields: Sequence[str],
                       help: Mapping[str, str] | None = None) -> None:
    """One option per :data:`CONFIG_OPTIONS` field in ``fields`` (default ``None``: keep the
    preset's); ``help`` replaces a field's help text. Read back with :func:`config_overrides`."""
    from .. import training

    for field in fields:
        option, kind, metavar, text = CONFIG_OPTIONS[field]
        text = (help or {}).get(field, text)
        dest = field.replace(".", "__")
        if kind is bool:
            p.add_argument(option, dest=dest, action="store_const", const=True, help=text)
        elif isinstance(kind, str):
            p.add_argument(option, dest=dest, choices=getattr(training, kind), help=text)
        else:
            p.add_argument(option, dest=dest, type=kind, metavar=metavar, help=text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`~jaxcnn.training.resolve_config`'s keyword arguments from the options of
    :func:`add_config_options` and :func:`add_model_options` present in ``args``."""
    out: dict[str, Any] = {"optimizer": {}, "model_config": model_overrides(args)}
    for field in CONFIG_OPTIONS:
        dest = field.replace(".", "__")
        if hasattr(args, dest):
            group, _, name = field.rpartition(".")
            (out[group] if group else out)[name] = getattr(args, dest)
    if hasattr(args, "model"):
        out["model"] = args.model
    return out


def resolve(parser: argparse.ArgumentParser, base: Any = None, **overrides: Any) -> Any:
    """:func:`~jaxcnn.training.resolve_config`, its refusals as ``parser.error`` (exit 2)."""
    from ..training import resolve_config

    try:
        return resolve_config(base, **overrides)
    except KeyError as e:
        parser.error(str(e.args[0]))
    except (TypeError, ValueError) as e:
        parser.error(str(e))


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
