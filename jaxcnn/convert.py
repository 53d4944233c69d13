"""Weights between torch state dicts and jaxcnn variables, and ``.safetensors`` files.

Names come from the module tree (:mod:`jaxcnn.traversal`) and each layer's
:class:`~jaxcnn.layers.TorchVar` list, never from a per-model table. Conversion is strict like
torch's ``load_state_dict``: one error lists every missing and unexpected key and every shape
mismatch. Values may be numpy arrays or torch tensors (duck-typed; torch is never imported).

Dtype policy of :func:`from_torch_state_dict`: every floating value (float16, bfloat16,
float32, float64) becomes float32, the dtype jaxcnn's parameters and statistics have; integer
buffers (``num_batches_tracked``) become int32 whatever dtype they came in (an integral float
is accepted); anything else (bool, complex, a fractional count) is refused.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .traversal import get_path, named_modules, torch_variables


class StateDictError(KeyError):
    """A state dict that does not fit the model; the message lists every offending key."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WeightsFileError(ValueError):
    """A weights file that is not a readable ``.safetensors`` file (empty, truncated, another
    format); the message names it."""


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of ``value``: numpy/JAX arrays as they are, torch tensors detached to CPU
    (bfloat16 ones as float32: numpy has no bfloat16)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _policy_dtype(key: str, value: np.ndarray, integer: bool) -> np.ndarray:
    """The module docstring's dtype policy for one state-dict value."""
    kind = value.dtype.kind
    if integer:
        if kind in "iu":
            return value.astype(np.int32)
        if kind == "f" or value.dtype.name == "bfloat16":
            as_float = value.astype(np.float64)
            if np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)):
                return as_float.astype(np.int32)
        raise TypeError(f"{key}: expected an integer count, got dtype {value.dtype} with "
                        f"non-integral values")
    if kind in "fiu" or value.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 is kind 'V'
        return value.astype(np.float32)
    raise TypeError(f"{key}: expected a floating-point tensor, got dtype {value.dtype}")


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _error(what: str, missing: list[str], unexpected: list[str],
           mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> StateDictError:
    lines = [f"{what}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    for key, expected, got in mismatched:
        lines.append(f"  size mismatch for {key}: expected shape {expected}, got {got}")
    return StateDictError("\n".join(lines), missing, unexpected, mismatched)


def from_torch_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Variables ``{'params': ..., 'batch_stats': ...}`` for ``model`` from a torch state dict.

    Conv weights OIHW become HWIO kernels, Linear weights ``(out, in)`` become ``(in, out)``
    kernels, BatchNorm ``weight``/``running_mean``/... become ``scale``/``mean``/...
    Dtypes follow the module's policy (floats to float32, counts to int32).
    Raises :class:`StateDictError` naming every missing, unexpected or mis-shaped key, and
    TypeError for a value of a dtype the policy refuses.
    """
    table = list(torch_variables(model))
    expected = {key for key, _, _ in table}
    missing = [key for key, _, _ in table if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = []
    for key, _, var in table:
        if key in state_dict:
            got = tuple(int(d) for d in state_dict[key].shape)
            if got != var.torch_shape:
                mismatched.append((key, var.torch_shape, got))
    if missing or unexpected or mismatched:
        raise _error(f"state dict does not fit {type(model).__name__}", missing, unexpected,
                     mismatched)

    variables: dict[str, Any] = {}
    for key, path, var in table:
        integer = var.torch_dtype is not None and np.dtype(var.torch_dtype).kind in "iu"
        value = _policy_dtype(key, var.from_torch(to_numpy(state_dict[key])), integer)
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    return variables


def to_torch_state_dict(model: nn.Module, variables: Mapping[str, Any],
                        collections: Sequence[str] = ("params", "batch_stats"),
                        ) -> dict[str, np.ndarray]:
    """The torch state dict (names, layouts and dtypes of torch) of ``variables``.

    Keys come in torch's ``state_dict()`` order; values are C-contiguous numpy arrays, ready for
    ``torch.from_numpy`` or :func:`save_safetensors`. ``num_batches_tracked`` is int64.
    ``collections`` selects what to convert: ``('params',)`` maps a gradient tree
    ``{'params': grads}`` to torch's parameter names and layouts.
    """
    out: dict[str, np.ndarray] = {}
    missing, mismatched = [], []
    for key, path, var in torch_variables(model):
        if var.collection not in collections:
            continue
        try:
            value = np.asarray(get_path(variables, path))
        except KeyError:
            missing.append("/".join(path))
            continue
        if value.shape != var.shape:
            mismatched.append(("/".join(path), var.shape, value.shape))
            continue
        value = var.to_torch(value)
        if var.torch_dtype is not None:
            value = value.astype(var.torch_dtype)
        out[key] = _contiguous(value)
    if missing or mismatched:
        raise _error(f"variables do not fit {type(model).__name__}", missing, [], mismatched)
    return out


def dropout_masks_to_torch(model: nn.Module, masks: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The ``dropout_masks`` collection as ``{torch module name: mask}`` in torch's layout
    (NHWC masks become NCHW), for feeding the same masks to a torch model."""
    out = {}
    for path, _ in named_modules(model):
        try:
            mask = np.asarray(get_path(masks, (*path.split("."), "mask")))
        except KeyError:
            continue
        out[path] = np.transpose(mask, (0, 3, 1, 2)) if mask.ndim == 4 else mask
    return out


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def save_safetensors(path: str | os.PathLike[str], state_dict: Mapping[str, Any], *,
                     make_dirs: bool = False) -> None:
    """Write a state dict (torch names) to ``.safetensors``, atomically: an existing file is
    replaced only once the new one is complete. The file gets the user's umask (like
    ``open()``); a missing parent directory is an error unless ``make_dirs``."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    arrays = {k: _contiguous(to_numpy(v)) for k, v in state_dict.items()}
    directory = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such directory (create it first, or ask "
                                "for it: --mkdir / make_dirs=True)", directory)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={"format": "pt", "producer": "jaxcnn"})
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` state dict as numpy arrays (no torch needed). A missing file
    raises FileNotFoundError; an empty, truncated or foreign file :class:`WeightsFileError`."""
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    size = os.path.getsize(path)
    try:
        return load_file(path)
    except Exception as e:
        what = "is empty" if size == 0 else f"is not a readable .safetensors file ({e})"
        raise WeightsFileError(f"{path} {what}; it may be truncated or of another format "
                               f"(write one with 'jaxcnn export' or "
                               f"safetensors.torch.save_file)") from e
