"""The run configuration, the book's chapter presets, and :func:`resolve_config` (a preset or
model plus overrides -> :class:`TrainConfig`), the one path every command takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..registry import get_spec, make_config
from ._optim import OptimizerConfig

#: ``TrainConfig.precision`` values.
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's numbers (stored in every checkpoint).

    Attributes:
      model: registry name (``jaxcnn.list_models()``).
      model_config: the model's config fields (e.g. ``{'bn': 'scratch'}``, ``{'ratio': 8}``);
        normalised to the full field dict of the registry config.
      resize: input size fed to the model (``None``: the native 28x28).
      batch_size, epochs: as the book (the last batch of an epoch is partial).
      optimizer: :class:`OptimizerConfig` (lr, schedule, ...).
      seed: init, dropout and shuffling are all derived from it.
      limit_train, limit_test: train/test on the first N examples only (quick runs).
      precision: ``'float32'``, or ``'bfloat16'`` mixed precision (convolutions, matrix
        products and activations in bfloat16; parameters, optimizer state, BatchNorm and the
        loss in float32). Meant for GPUs; see README, "Performance".
    """

    model: str
    model_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    resize: int | None = None
    batch_size: int = 256
    epochs: int = 5
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        cfg = make_config(self.model, **dict(self.model_config))  # raises on unknown names
        object.__setattr__(self, "model_config", _plain(dataclasses.asdict(cfg)))
        errors = []
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            errors.append(f"epochs must be >= 1, got {self.epochs}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {', '.join(PRECISIONS)}, got "
                          f"{self.precision!r}")
        if self.resize is not None and self.resize < 1:
            errors.append(f"resize must be >= 1, got {self.resize}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                errors.append(f"{name} must be >= 1, got {value}")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def input_size(self) -> int:
        """H = W of the model input (``resize`` or 28)."""
        return self.resize or 28

    def model_cfg(self) -> Any:
        """The registry config dataclass instance."""
        return make_config(self.model, **dict(self.model_config))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model_config"] = dict(self.model_config)
        d["optimizer"] = self.optimizer.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = dict(d)
        d["optimizer"] = OptimizerConfig.from_dict(d.get("optimizer", {}))
        return cls(**d)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the form a config has after a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def default_resize(model: str) -> int | None:
    """The resize the model is built for (``None`` for 28x28 models)."""
    size = get_spec(model).input_size
    return None if size == 28 else size


def _book(model: str, resize: int | None, batch_size: int, lr: float,
          **model_config: Any) -> TrainConfig:
    return TrainConfig(model=model, model_config=model_config, resize=resize,
                       batch_size=batch_size, epochs=5,
                       optimizer=OptimizerConfig(name="adam", lr=lr))


#: The book's chapter-5 runs (Adam, 5 epochs): name -> (config, chapter).
PRESETS: dict[str, tuple[TrainConfig, str]] = {
    "lenet": (_book("lenet", None, 256, 0.001), "5.5 LeNet"),
    "lenet_bn": (_book("lenet_bn", None, 256, 0.001, bn="torch"),
                 "5.10 LeNet + nn.BatchNorm"),
    "lenet_bn_scratch": (_book("lenet_bn", None, 256, 0.001, bn="scratch"),
                         "5.10 LeNet + the book's BatchNorm"),
    "alexnet": (_book("alexnet", 224, 128, 0.001), "5.6 AlexNet"),
    "vgg11_small": (_book("vgg11", 224, 64, 0.001, ratio=8), "5.7 VGG-11, ratio 8"),
    "nin": (_book("nin", 224, 128, 0.002), "5.8 NiN"),
    "googlenet": (_book("googlenet", 96, 128, 0.001), "5.9 GoogLeNet"),
    "resnet18": (_book("resnet18", 96, 256, 0.001), "5.11 ResNet-18"),
    "densenet": (_book("densenet", 96, 256, 0.001), "5.12 DenseNet"),
}


def resume_conflicts(saved: TrainConfig, requested: TrainConfig, done_epochs: int, *,
                     allow_optimizer_change: bool = False) -> list[str]:
    """Why ``requested`` cannot continue a run trained with ``saved`` for ``done_epochs``
    (empty if it can). Only ``epochs`` may change: grow, and not under a cosine schedule; with
    ``allow_optimizer_change`` the optimizer and its schedule may change too (e.g. a lower
    learning rate after a divergence). Model and data settings never may."""
    problems = []
    a, b = saved.to_dict(), requested.to_dict()
    for key in a:
        if allow_optimizer_change and key == "optimizer":
            continue
        if key != "epochs" and a[key] != b[key]:
            if isinstance(a[key], dict):
                for sub in sorted(set(a[key]) | set(b[key])):
                    if a[key].get(sub) != b[key].get(sub):
                        problems.append(f"{key}.{sub}: checkpoint {a[key].get(sub)!r}, "
                                        f"requested {b[key].get(sub)!r}")
            else:
                problems.append(f"{key}: checkpoint {a[key]!r}, requested {b[key]!r}")
    if requested.epochs < done_epochs:
        problems.append(f"epochs: the checkpoint already has {done_epochs} epochs, requested "
                        f"{requested.epochs}")
    elif (requested.epochs != saved.epochs and saved.optimizer.schedule == "cosine"
          and not allow_optimizer_change):
        problems.append(f"epochs: the cosine schedule was built for {saved.epochs} epochs "
                        f"(T_max), requested {requested.epochs}")
    return problems


def default_preset(model: str) -> str | None:
    """The preset a model name stands for: the preset of that name, else the first preset
    training that model, else ``None``."""
    if model in PRESETS:
        return model
    return next((n for n, (c, _) in PRESETS.items() if c.model == model), None)


def _optimizer(base: OptimizerConfig, changes: Mapping[str, Any]) -> OptimizerConfig:
    changes = {k: v for k, v in changes.items() if v is not None}
    d = {**base.to_dict(), **changes}
    if d["name"] != "sgd" and "name" in changes and "momentum" not in changes:
        d["momentum"], d["nesterov"] = 0.0, False  # switching away from a preset's sgd
    if d["schedule"] != "step" and ("step_size" in changes or "gamma" in changes):
        raise ValueError("--step-size and --gamma apply to --schedule step only")
    return OptimizerConfig.from_dict(d)


def resolve_config(base: TrainConfig | str | None = None, *, model: str | None = None,
                   model_config: Mapping[str, Any] | None = None, resize: int | None = None,
                   optimizer: Mapping[str, Any] | None = None, **fields: Any) -> TrainConfig:
    """``base`` (a :class:`TrainConfig`, a preset name, or ``None``: the defaults of
    ``model``) with overrides; ``None`` everywhere means "keep".

    Args:
      model: the model to train; another model than ``base``'s starts from its own defaults
        (registry config, input size).
      model_config: registry config fields to set (e.g. ``{'bn': 'scratch'}``); a field the
        model does not have is refused.
      resize: input size (28: none).
      optimizer: :class:`OptimizerConfig` fields to set; choosing another optimizer than sgd
        drops a preset's momentum.
      **fields: other :class:`TrainConfig` fields (``epochs``, ``batch_size``, ``seed``, ...).

    Raises:
      KeyError: unknown model or preset. ValueError: an invalid combination (the message
      names the command-line option of the field).
    """
    if isinstance(base, str):
        if base not in PRESETS:
            raise KeyError(f"unknown preset {base!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[base][0]
    if base is None and model is None:
        raise ValueError("say what to train: --preset NAME or --model NAME "
                         f"(presets: {', '.join(PRESETS)})")
    model = model or base.model
    if base is None or model != base.model:
        model_base: dict[str, Any] = {}
        default = default_resize(model)  # KeyError for an unknown model
        base = base or TrainConfig(model=model, resize=default)
    else:
        model_base, default = dict(base.model_config), base.resize
    names = {f.name for f in dataclasses.fields(get_spec(model).config)}
    for key, value in (model_config or {}).items():
        if value is None:
            continue
        if key not in names:
            hint = {"bn": "use --model lenet_bn for BatchNorm",
                    "ratio": "only vgg11 takes a width ratio"}.get(key, "")
            raise ValueError(f"--{key.replace('_', '-')} does not apply to model {model!r}"
                             + (f" ({hint})" if hint else ""))
        model_base[key] = value
    if resize is not None:
        default = None if resize == 28 else resize
    unknown = set(fields) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"not TrainConfig fields: {', '.join(sorted(unknown))}")
    kept = {k: getattr(base, k) for k in fields}
    return dataclasses.replace(
        base, model=model, model_config=model_base, resize=default,
        optimizer=_optimizer(base.optimizer, optimizer or {}),
        **{k: kept[k] if v is None else v for k, v in fields.items()})
