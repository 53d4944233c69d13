"""Machinery shared by the layers: the torch mapping of each variable and torch-style init."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class ShapeError(ValueError):
    """An input whose shape does not fit the layer; the message names the layer."""


def _identity(a: np.ndarray) -> np.ndarray:
    return a


@dataclasses.dataclass(frozen=True)
class TorchVar:
    """One Flax variable of a layer and the torch state-dict entry it corresponds to.

    Attributes:
      collection: Flax collection, ``'params'`` or ``'batch_stats'``.
      name: leaf name in the Flax variables (``'kernel'``, ``'mean'``, ...).
      torch_name: leaf name in the torch state dict (``'weight'``, ``'running_mean'``, ...).
      shape: the Flax shape.
      torch_shape: the torch shape.
      to_torch: maps a Flax-layout array to the torch layout.
      from_torch: maps a torch-layout array to the Flax layout.
      torch_dtype: dtype torch stores (``int64`` for ``num_batches_tracked``); None keeps it.
    """

    collection: str
    name: str
    torch_name: str
    shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    to_torch: Callable[[np.ndarray], np.ndarray] = _identity
    from_torch: Callable[[np.ndarray], np.ndarray] = _identity
    torch_dtype: np.dtype | None = None


def bias_var(n: int) -> TorchVar:
    """The ``(n,)`` bias of a Conv2d or Linear, ``bias`` in both frameworks."""
    return TorchVar("params", "bias", "bias", (n,), (n,))


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``, as torch's ``_pair``."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def torch_uniform(fan_in: int) -> Callable:
    """Initializer of torch's Conv/Linear defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    That is ``kaiming_uniform_(a=sqrt(5))`` for weights and the fan-in bound for biases.
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Layer(nn.Module):
    """Base of the torch-mirroring layers.

    Subclasses describe their variables with :meth:`torch_variables` (used by
    :mod:`jaxcnn.convert`) and their hyper-parameters with :meth:`extra_repr`, the string torch
    prints inside ``Conv2d(...)``.
    """

    def torch_variables(self) -> tuple[TorchVar, ...]:
        return ()

    def extra_repr(self) -> str:
        return ""

    def torch_repr(self) -> str:
        """The one-line torch repr, e.g. ``Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1))``."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def where(self) -> str:
        """Torch-style dotted name and type of this layer for error messages."""
        try:
            path = ".".join(self.scope.path) if self.scope is not None else ""
        except AttributeError:  # unbound
            path = ""
        return f"layer '{path or '<root>'}' ({type(self).__name__})"

    def check_float(self, x: jax.Array) -> None:
        """Refuse a non-float input (uint8 images, ints) with a hint to scale it: a model's
        first layer calls this, so every model checks its input dtype at the entry."""
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{self.where()}: expected a floating-point input, got dtype {dtype}; convert "
                f"and scale images first, e.g. x.astype(jnp.float32) / 255 (or "
                f"jaxcnn.data.preprocess for uint8 Fashion-MNIST batches)")

    def check_ndim(self, x: jax.Array, ndims: Sequence[int], layout: str) -> None:
        if x.ndim not in ndims:
            raise ShapeError(
                f"{self.where()}: expected a {' or '.join(f'{n}-D' for n in ndims)} input "
                f"({layout}), got shape {tuple(x.shape)}"
            )
