"""The one switch between the plain XLA definitions of the ops and their fast CPU formulations.

Modes:

- ``"auto"`` (default): the fast formulations when JAX's default backend (where jitted code
  runs unless told otherwise) is the CPU, the plain XLA ones (cuDNN's on GPUs) elsewhere;
- ``"xla"``: the plain definitions everywhere.

The default comes from the environment variable ``JAXCNN_KERNELS`` (read whenever no mode was
set with :func:`set_kernels`). Every op asks :func:`fast_cpu_kernels` once, at trace time, and
picks its whole formulation (forward and backward) from the answer.

Because the choice is made while tracing, a function jitted under one mode keeps that mode's
code in JAX's compilation cache: :func:`set_kernels` and :func:`use_kernels` therefore clear
JAX's caches when they change the mode.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import jax

Mode = Literal["auto", "xla"]

#: The environment variable that sets the default mode.
ENV_VAR = "JAXCNN_KERNELS"
MODES: tuple[str, ...] = ("auto", "xla")

_mode: str | None = None  # set_kernels' mode; None: read ENV_VAR


def _check(mode: str, source: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"{source}: unknown kernel mode {mode!r}; valid values are "
            f"{', '.join(repr(m) for m in MODES)}"
        )
    return mode


def kernels() -> str:
    """The current mode: the one given to :func:`set_kernels`, else ``$JAXCNN_KERNELS``,
    else ``"auto"``. An invalid ``$JAXCNN_KERNELS`` raises ``ValueError`` naming it."""
    if _mode is not None:
        return _mode
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    return _check(value, f"environment variable {ENV_VAR}={os.environ.get(ENV_VAR)!r}")


def set_kernels(mode: str | None) -> None:
    """Select the ops' formulations: ``"auto"`` or ``"xla"``; ``None`` goes back to
    ``$JAXCNN_KERNELS``. Clears JAX's caches when the effective mode changes, so functions
    jitted before are traced again."""
    global _mode
    if mode is not None:
        _check(mode, "jaxcnn.ops.set_kernels")
    before = _effective()
    _mode = mode
    if before != _effective():
        jax.clear_caches()


def _effective() -> str | None:
    """The mode, or None while ``$JAXCNN_KERNELS`` is invalid (it raises when read)."""
    try:
        return kernels()
    except ValueError:
        return None


@contextlib.contextmanager
def use_kernels(mode: str) -> Iterator[None]:
    """``with use_kernels("xla"): ...``: :func:`set_kernels` for the block, then the previous
    setting again (also on errors)."""
    previous = _mode
    set_kernels(mode)
    try:
        yield
    finally:
        set_kernels(previous)


def fast_cpu_kernels() -> bool:
    """Whether the ops trace their fast CPU formulations: mode ``"auto"`` and JAX's default
    backend is the CPU. The only place that decides it."""
    return kernels() == "auto" and jax.default_backend() == "cpu"
