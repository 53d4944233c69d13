"""Compiled programs kept across processes, found without tracing.

JAX's persistent cache (:func:`jaxcnn.runtime.enable_compilation_cache`) skips XLA's compilation
on a later run, but its key is the lowered program: every run still traces and lowers each
program first (for LeNet about 1.5 s of Python before the first step). This store keys a
serialized executable by what selects the program *before* tracing:

* the caller's ``identity``: a description of everything static that the traced function
  closes over or takes as a static argument (for a training run: its configuration, which
  builds the model and the optimizer);
* the function (module and name), the XLA compiler options, the static arguments of plain
  types, and each array argument's shape, dtype and weak type;
* the environment: this package's source (a digest of every ``.py`` file), the versions of
  Python, jax, jaxlib, flax, optax, numpy and ml_dtypes, the devices (platform, version,
  kind, count), the CPU (model and flags), JAX's configuration flags, the kernel selection
  (:func:`jaxcnn.ops.kernels`) and the ``XLA_*``/``JAX_*``/``JAXCNN_*``/``PJRT_*`` variables.

A different value of any of these gives another key, hence a fresh trace and compilation. The
files live in ``<JAX compilation cache dir>/jaxcnn-programs`` (none when JAX's cache is off),
one per program, with a SHA-256 of their content: a damaged or unreadable file is ignored
(the program is compiled again and the file replaced). Only a program compiled in this process
is kept: one that JAX loaded from its own cache does not serialise intact again (measured: the
reloaded copy lacks some of its XLA CPU kernels), so it is kept after its next compilation.
One device and one process only (an executable for several devices is tied to their
assignment). Like JAX's own cache, the files hold executables that are loaded as they are:
keep the directory private to the user. The key sees the package's files, not changes made
to it at run time (monkeypatching its functions or constants): turn the store off with JAX's
cache (``JAX_COMPILATION_CACHE_DIR=""``) when doing that.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import os
import pickle
import platform
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

#: Bumped when the file format changes.
FORMAT = 3
#: The store's folder under JAX's compilation cache directory.
FOLDER = "jaxcnn-programs"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes")
_ENV_PREFIXES = ("XLA_", "JAX_", "JAXCNN_", "PJRT_", "TF_")
#: Settings that select where things are cached or logged, not what a program computes.
_NOT_PROGRAM = ("cache", "log")


_local = threading.local()


def _count_hit(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _local.hits = getattr(_local, "hits", 0) + 1


jax.monitoring.register_event_listener(_count_hit)


def jax_cache_hits() -> int:
    """How many programs this thread has loaded from JAX's persistent cache so far (JAX
    reports each hit in the compiling thread): a compilation that adds one was not fresh."""
    return getattr(_local, "hits", 0)


#: Off: no program is kept or loaded (JAX's own cache is unaffected). The test suite turns it off
#: in its processes, whose tests patch jaxcnn's functions at run time (a change the key cannot
#: see), and on again in the store's own tests.
ENABLED = True


def directory() -> Path | None:
    """The store's folder, or None when it or JAX's persistent compilation cache is off."""
    base = jax.config.jax_compilation_cache_dir
    if not ENABLED or not base or not jax.config.jax_enable_compilation_cache:
        return None
    return Path(base) / FOLDER


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def fingerprint() -> str:
    """The environment part of every key (see the module docstring), as text."""
    from ..ops import kernels

    devices = jax.devices()
    parts = [
        f"format {FORMAT}", f"source {_source_digest()}", f"python {sys.version}",
        *(f"{p} {_version(p)}" for p in _PACKAGES),
        f"devices {len(devices)} x {devices[0].platform} {devices[0].device_kind} "
        f"{devices[0].client.platform_version}; processes {jax.process_count()}",
        f"cpu {platform.machine()} {_cpu()}",
        f"kernels {kernels()}",
        *(f"config {k}={v!r}" for k, v in sorted(jax.config.values.items())
          if not any(w in k for w in _NOT_PROGRAM)),
        *(f"env {k}={v}" for k, v in sorted(os.environ.items())
          if k.startswith(_ENV_PREFIXES) and k != "JAX_COMPILATION_CACHE_DIR"),
    ]
    return "\n".join(parts)


def key(identity: str, fn: Callable[..., Any], options: tuple[tuple[str, Any], ...],
        leaves: list[Any], static: dict[str, Any]) -> str | None:
    """The file name of a program, or None when it cannot be kept (an argument placed on
    several devices, or several processes). ``leaves``: the flattened positional arguments
    (arrays or ``jax.ShapeDtypeStruct``); a static argument of a plain type is part of the
    key, any other one (a model's ``apply``) must be described by ``identity``."""
    if jax.process_count() != 1:
        return None
    specs = []
    for x in leaves:
        sharding = getattr(x, "sharding", None)
        if sharding is not None and len(sharding.device_set) != 1:
            return None
        specs.append((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False))))
    plain = {k: v for k, v in static.items()
             if v is None or isinstance(v, (bool, int, float, str))}
    text = "\n".join([fingerprint(), f"identity {identity}",
                      f"function {fn.__module__}.{getattr(fn, '__qualname__', fn)}",
                      f"options {options!r}", f"static {sorted(plain.items())!r}",
                      f"static others {sorted(set(static) - set(plain))!r}",
                      f"arguments {specs!r}"])
    return hashlib.sha256(text.encode()).hexdigest()


def shared_objects(fn: Any, args_tree: Any, static: dict[str, Any]) -> list[Any]:
    """The objects that a program's output tree may share with what the caller gives again in
    a later process, in a fixed order: the static data of every node of ``args_tree`` (e.g. a
    ``TrainState``'s ``apply_fn`` and ``tx``), the arguments bound to ``fn`` by
    ``functools.partial`` (a model, an optimizer) and the static arguments (and the object of
    a bound method among them). The output tree is kept with references to them."""
    found: list[Any] = []

    def walk(td: Any) -> None:
        data = td.node_data()
        if data is not None and data[1] is not None:
            aux = data[1]
            found.extend(aux if isinstance(aux, (tuple, list)) else (aux,))
        for child in td.children():
            walk(child)

    walk(args_tree)
    bound = getattr(fn, "__wrapped__", None)
    if isinstance(bound, functools.partial):
        found.extend([*bound.args, *bound.keywords.values()])
    for _, v in sorted(static.items()):
        found.extend([v, getattr(v, "__self__", None)])
    return [x for x in found if not isinstance(x, (type(None), bool, int, float, str))]


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, shared: list[Any]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = {id(x): i for i, x in enumerate(shared)}

    def persistent_id(self, obj: Any) -> Any:
        i = self._ids.get(id(obj))
        return None if i is None else ("input", i)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, shared: list[Any]) -> None:
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] != "input" or not 0 <= pid[1] < len(self._shared):
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        return self._shared[pid[1]]


def _device_ids(compiled: Any) -> list[int]:
    """The ids of the devices a compiled program runs on, in its device assignment's order."""
    return [d.id for d in compiled.runtime_executable().local_devices()]


def save(name: str, compiled: Any, shared: list[Any]) -> bool:
    """Keep ``compiled`` (a ``jax.stages.Compiled``) under ``name``, its output tree referring
    to the ``shared`` objects (:func:`shared_objects`) by position; False when it cannot be
    serialised or written (nothing is kept)."""
    from jax.experimental import serialize_executable

    folder = directory()
    if folder is None:
        return False
    try:
        payload, _, out_tree = serialize_executable.serialize(compiled)
        buf = io.BytesIO()
        _Pickler(buf, shared).dump((payload, out_tree, _device_ids(compiled)))
        body = buf.getvalue()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", delete=False) as f:
            f.write(hashlib.sha256(body).digest() + body)
        os.replace(f.name, folder / name)
    except Exception:  # not serialisable (e.g. constants), or the disk refused: just compile
        return False
    return True


def load(name: str, args_tree: Any, shared: list[Any]) -> Any | None:
    """The ``jax.stages.Compiled`` kept under ``name``, for arguments whose
    ``(positional arguments, {})`` have the tree structure ``args_tree``, its output tree
    referring to ``shared`` (as given to :func:`save`); None when absent, damaged, or not
    loadable here."""
    from jax.experimental import serialize_executable

    folder = directory()
    if folder is None:
        return None
    try:
        data = (folder / name).read_bytes()
    except OSError:
        return None
    digest, body = data[:32], data[32:]
    if hashlib.sha256(body).digest() != digest:
        return None
    try:
        payload, out_tree, ids = _Unpickler(io.BytesIO(body), shared).load()
        by_id = {d.id: d for d in jax.devices()}
        if not set(ids) <= by_id.keys():
            return None
        # The devices it was compiled for: left out, JAX loads a program for every device of
        # the process (with virtual CPU devices, a one-device program then asks for N shards).
        return serialize_executable.deserialize_and_load(
            payload, args_tree, out_tree, execution_devices=[by_id[i] for i in ids])
    except Exception:
        return None
