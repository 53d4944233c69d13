"""Compiled programs, compiled ahead of use in the background.

A run needs a handful of XLA programs (the state's init, the K-step training call with the
partial last batch padded into it, the test pass). ``jax.jit`` compiles each on its first
call, one after the other; here they are compiled from their shapes alone, in the background,
in the order they were asked for, as soon as the run knows them (before the data has loaded),
so that they overlap the data loading and, for those needed later, the first training steps.
Tracing and lowering (Python, under the GIL) run one program at a time in one thread, so the
first program asked for reaches XLA first; XLA's compilations (which leave the GIL) run in
:data:`COMPILE_THREADS` threads. The results are the same programs: :func:`call` runs
the compiled executable of ``jitted.lower(*args, **static)``, which is what
``jitted(*args, **static)`` runs. Arguments spread over several devices
(:mod:`jaxcnn.distributed`) are compiled for their sharding
(``jax.ShapeDtypeStruct(..., sharding=...)``), which is part of the cache key.

Given an ``identity`` (a stable description of what the traced function closes over: the run's
configuration), a program compiled in an earlier process is loaded from :mod:`._store`
without tracing or lowering it, and a new one is kept there for later processes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax

from . import _store

#: Compiled programs kept per process (least recently used first out).
CACHE_SIZE = 64
#: Background compilation threads (XLA's part, after the one lowering thread): one per CPU
#: this process may use, at most 4, taking the programs in the order a run asks for them (the
#: training call, init, the test pass: :func:`jaxcnn.training.precompile`).
#: Concurrent XLA compilations slow each other down on a 2-core CPU: with a fourth program
#: (the partial last batch, before it was padded into the training call) four threads started
#: a cold LeNet epoch 1.4 s later than one (10.3-11.0 s against 8.8-9.4 s for `jaxcnn train
#: --preset lenet --epochs 1`); with the three programs of today two threads compile init and
#: the training call side by side and finish first (LeNet-BN, one cold epoch, 4 alternating
#: pairs: 8.4-10.8 s against 10.0-11.4 s with one thread).
COMPILE_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1))

_lock = threading.Lock()
_cache: OrderedDict[Hashable, Future] = OrderedDict()
_pool: ThreadPoolExecutor | None = None
_lower_pool: ThreadPoolExecutor | None = None


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A jitted function compiled with XLA ``options`` (``compiler_options`` of
    ``jax.stages.Lowered.compile``, e.g. ``{"xla_backend_optimization_level": 1}``); pass it
    to :func:`precompile` and :func:`call` in place of the jitted function. The options are part
    of the program's key here and in JAX's persistent cache."""

    jitted: Any
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, jitted: Any, options: Mapping[str, Any] | None) -> Any:
        """``jitted`` itself when ``options`` is empty, else a :class:`Tuned`."""
        return cls(jitted, tuple(sorted(options.items()))) if options else jitted


def _unpack(jitted: Any) -> tuple[Any, tuple[tuple[str, Any], ...]]:
    """``(jitted function, compiler options)`` of a jitted function or a :class:`Tuned` one."""
    return (jitted.jitted, jitted.options) if isinstance(jitted, Tuned) else (jitted, ())


def _placement(x: Any) -> Any:
    """The part of an argument's sharding that selects a program: ``None`` on one device (or
    unspecified), else the devices and whether/how the array is split."""
    s = getattr(x, "sharding", None)
    if s is None or len(s.device_set) == 1:
        return None
    devices = tuple(sorted(d.id for d in s.device_set))
    return (devices, "replicated" if s.is_fully_replicated else str(getattr(s, "spec", s)))


def _spec(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # arrays and jax.ShapeDtypeStruct
        return (tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)),
                _placement(x))
    try:  # the object itself (kept alive by the key: its id cannot be reused meanwhile)
        hash(x)
    except TypeError:
        return ("py", type(x).__name__, id(x))
    return ("py", type(x).__name__, x)


def _key(jitted: Callable[..., Any], args: tuple[Any, ...], static: dict[str, Any]) -> Hashable:
    leaves, treedef = jax.tree.flatten(args)
    fn, options = _unpack(jitted)
    # The function itself, not its id(): the key keeps it alive, so a function made later (a
    # new model or optimizer's init) cannot reuse a collected one's id and get its program.
    return (fn, options, treedef, tuple(_spec(x) for x in leaves),
            tuple(sorted(static.items())))


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=COMPILE_THREADS,
                                   thread_name_prefix="jaxcnn-compile")
    return _pool


def _lowerer() -> ThreadPoolExecutor:
    global _lower_pool
    if _lower_pool is None:
        _lower_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxcnn-lower")
    return _lower_pool


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, "dtype"):
        return x
    sharding = x.sharding if _placement(x) is not None else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False),
                                sharding=sharding)


def _lower(jitted: Any, abstract: tuple[Any, ...], static: dict[str, Any],
           identity: str | None) -> tuple[Any, Callable[[], Any] | None]:
    """The first, Python-bound half of a compilation: ``(program, None)`` when :mod:`._store`
    has the program (``identity`` given and an earlier process kept it), else ``(None,
    finish)`` with ``jitted`` traced and lowered and ``finish()`` the rest: XLA's compilation
    (which leaves the GIL to other threads), returning the program and keeping it in the
    store."""
    fn, options = _unpack(jitted)
    name = shared = None
    if identity is not None:
        name = _store.key(identity, fn, options, jax.tree.leaves(abstract), static)
    if name is not None:
        args_tree = jax.tree.structure((abstract, {}))
        shared = _store.shared_objects(fn, args_tree, static)
        program = _store.load(name, args_tree, shared)
        if program is not None:
            return program, None
    lowered = fn.lower(*abstract, **static)

    def finish() -> Any:
        hits = _store.jax_cache_hits()
        program = lowered.compile(compiler_options=dict(options) or None)
        if name is not None and _store.jax_cache_hits() == hits:  # compiled here: keep it
            _store.save(name, program, shared)
        return program

    return None, finish


def _compile(jitted: Any, abstract: tuple[Any, ...], static: dict[str, Any],
             identity: str | None) -> Any:
    """``jitted.lower(*abstract, **static).compile()``, or the same program from
    :mod:`._store` when ``identity`` is given and an earlier process kept it."""
    program, finish = _lower(jitted, abstract, static, identity)
    return program if finish is None else finish()


def _in_background(jitted: Any, abstract: tuple[Any, ...], static: dict[str, Any],
                   identity: str | None) -> Future:
    """:func:`_compile` in two stages: tracing and lowering in the one lowering thread, in the
    order asked (they hold the GIL: several at once only slow each other and the first one
    down), then XLA's compilation in the compile threads (:data:`COMPILE_THREADS`)."""
    fut: Future = Future()

    def compile_(finish: Callable[[], Any]) -> None:
        try:
            fut.set_result(finish())
        except BaseException as e:
            fut.set_exception(e)

    def lower_() -> None:
        try:
            program, finish = _lower(jitted, abstract, static, identity)
        except BaseException as e:
            fut.set_exception(e)
            return
        if finish is None:
            fut.set_result(program)
        else:
            _executor().submit(compile_, finish)

    _lowerer().submit(lower_)
    return fut


def _submit(jitted: Any, args: tuple[Any, ...], static: dict[str, Any],
            background: bool, identity: str | None = None) -> Future:
    key = _key(jitted, args, static)
    with _lock:
        fut = _cache.get(key)
        if fut is not None:
            _cache.move_to_end(key)
            return fut
        abstract = jax.tree.map(_abstract, args)

        fut = (_in_background(jitted, abstract, static, identity) if background
               else Future())
        _cache[key] = fut
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    if not background:
        try:
            fut.set_result(_compile(jitted, abstract, static, identity))
        except BaseException as e:
            fut.set_exception(e)
    return fut


def wait_all() -> None:
    """Wait until every background compilation asked for so far has finished (its program,
    or its error, is then kept for :func:`call`)."""
    with _lock:
        futures = list(_cache.values())
    for fut in futures:
        fut.exception()


def precompile(jitted: Any, *args: Any, identity: str | None = None, **static: Any) -> None:
    """Start compiling ``jitted`` (or a :class:`Tuned` one) for arguments shaped like ``args``
    (arrays or ``jax.ShapeDtypeStruct``s; ``static``: its static keyword arguments) in a
    background thread; :func:`call` with such arguments then uses (or waits for) that program.
    ``identity``: describes everything static that the program depends on beyond the
    arguments' shapes, its static arguments of plain types and the environment (a model's
    ``apply``, an optimizer: the configuration they were built from); with it, the program is
    kept across processes (:mod:`._store`). Give it only when it is complete."""
    _submit(jitted, args, static, background=True, identity=identity)


def call(jitted: Any, *args: Any, **static: Any) -> Any:
    """``jitted(*args, **static)``, run as the compiled program of :func:`precompile` (compiled
    now if nobody asked for it yet). A compilation error is raised here, as jit would."""
    program = _submit(jitted, args, static, background=False).result()
    return program(*args)
