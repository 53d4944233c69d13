"""Optimizers and learning-rate schedules by name, with ``torch.optim`` semantics.

=========  ====================================================================================
``sgd``    ``torch.optim.SGD(lr, momentum, nesterov=..., weight_decay=wd)`` (dampening 0):
           ``g += wd * p`` (coupled L2, before momentum); ``buf = momentum * buf + g`` (the
           first step sets ``buf = g``); ``g = g + momentum * buf`` if nesterov else ``buf``;
           ``p -= lr * g``. = ``chain(add_decayed_weights(wd), sgd(lr, momentum, nesterov))``.
``adam``   ``torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)``: ``g += wd
           * p`` (coupled L2), then Adam with bias correction, ``eps`` added to
           ``sqrt(v_hat)``. = ``chain(add_decayed_weights(wd), adam(lr, b1, b2, eps))``.
``adamw``  ``torch.optim.AdamW(lr, betas, eps, weight_decay=0.01)``: decoupled decay, ``p -=
           lr * wd * p`` next to the Adam step (``lr`` is the scheduled one in both terms).
           = ``optax.adamw(lr, b1, b2, eps, weight_decay=wd)``.
=========  ====================================================================================

Schedules are defined per EPOCH, as torch's ``scheduler.step()`` called once per epoch:
``constant``; ``step`` (``StepLR(step_size, gamma)``: ``lr * gamma ** (epoch // step_size)``);
``cosine`` (``CosineAnnealingLR(T_max=epochs, eta_min)``). The per-epoch values are computed in
float64 with torch's own recursions (:func:`epoch_learning_rates`) and looked up by
``step // steps_per_epoch`` in the optax step schedule. Updates agree with torch's formulas up
to float32 rounding (the order of operations differs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
_DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer and its learning-rate schedule (torch's defaults where torch has them).

    Attributes:
      name: ``'sgd'``, ``'adam'`` or ``'adamw'``.
      lr: base learning rate.
      momentum, nesterov: SGD only (nesterov needs ``momentum > 0``).
      weight_decay: ``None`` means torch's default (0 for sgd/adam, 0.01 for adamw).
      betas, eps: Adam/AdamW.
      schedule: ``'constant'``, ``'step'`` or ``'cosine'``; ``step_size`` (epochs) and
        ``gamma`` for ``'step'``, ``eta_min`` for ``'cosine'`` (``T_max`` = the run's epochs).
    """

    name: str = "adam"
    lr: float = 0.001
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    step_size: int = 1
    gamma: float = 0.1
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        errors = []
        if self.name not in OPTIMIZERS:
            errors.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                          f"{self.schedule!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            errors.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.momentum and self.name != "sgd":
            errors.append(f"momentum applies to sgd only ({self.name} uses betas)")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            errors.append("nesterov needs the sgd optimizer with momentum > 0 (as torch)")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.step_size < 1:
            errors.append(f"step_size must be >= 1 epoch, got {self.step_size}")
        if not self.gamma > 0:
            errors.append(f"gamma must be > 0, got {self.gamma}")
        if not (len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas)):
            errors.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def effective_weight_decay(self) -> float:
        """``weight_decay``, or torch's default for this optimizer when it is ``None``."""
        if self.weight_decay is None:
            return _DEFAULT_WEIGHT_DECAY[self.name]
        return float(self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizerConfig:
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def epoch_learning_rates(cfg: OptimizerConfig, epochs: int) -> list[float]:
    """The learning rate of each epoch ``0 .. epochs-1`` (float64), as torch's scheduler sets
    ``group['lr']`` when ``scheduler.step()`` runs after every epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    lrs = [float(cfg.lr)]
    for e in range(1, epochs):
        prev = lrs[-1]
        if cfg.schedule == "constant":
            lr = prev
        elif cfg.schedule == "step":  # StepLR.get_lr
            lr = prev * cfg.gamma if e % cfg.step_size == 0 else prev
        else:  # CosineAnnealingLR.get_lr, T_max = epochs (e <= T_max - 1 here)
            t_max, eta = epochs, cfg.eta_min
            lr = ((1 + math.cos(math.pi * e / t_max)) / (1 + math.cos(math.pi * (e - 1) / t_max))
                  * (prev - eta) + eta)
        lrs.append(lr)
    return lrs


def lr_schedule(cfg: OptimizerConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """An optax schedule ``step -> lr`` (float32, or float64 where JAX runs with x64 enabled):
    epoch ``step // steps_per_epoch``'s rate, the last epoch's beyond ``epochs``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    with np.errstate(over="ignore"):  # a diverging schedule becomes inf (and is caught later)
        table = jnp.asarray(np.asarray(epoch_learning_rates(cfg, epochs)).astype(dtype))

    def schedule(count: Any) -> Any:
        epoch = jnp.minimum(jnp.asarray(count) // steps_per_epoch, epochs - 1)
        return table[epoch]

    return schedule


def make_optimizer(cfg: OptimizerConfig, steps_per_epoch: int,
                   epochs: int) -> optax.GradientTransformation:
    """The optax transformation of ``cfg`` (see the module docstring for the formulas)."""
    lr: Any = cfg.lr if cfg.schedule == "constant" else lr_schedule(cfg, steps_per_epoch, epochs)
    wd = cfg.effective_weight_decay
    b1, b2 = cfg.betas
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=b1, b2=b2, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "sgd":
        base = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    else:
        base = optax.adam(lr, b1=b1, b2=b2, eps=cfg.eps)
    return optax.chain(optax.add_decayed_weights(wd), base) if wd else base
