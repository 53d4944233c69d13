"""Data parallelism on JAX's own runtime: a 1-D device mesh (axis ``data``) over the devices of
this process, or of all processes after :func:`initialize` (``jax.distributed``).

What is sharded: every training batch and every test block, split along the batch ``B``. In
one process the (uint8, small) dataset is replicated on its devices and each device gathers
its ``B / N`` examples of an index block ``(K, B)``; with several processes every process
reads only its devices' rows of each global batch from the host arrays and the global
``(K, B, H, W)`` batch is assembled with ``jax.make_array_from_process_local_data``
(:func:`put_local_blocks`): the same global batches, in the same order. What is replicated:
parameters, optimizer state, BatchNorm statistics and the dropout key. The compiled step is
the same function as on one device: ``jax.jit`` propagates the shardings (GSPMD), so the mean
of the loss, the gradients and BatchNorm's batch mean/variance become all-reduces over the
mesh, i.e. BatchNorm uses the statistics of the **global** batch (torch's ``SyncBatchNorm``),
and N devices train like one up to float32 reduction order. Dropout masks do not depend on the
device count (``jax_threefry_partitionable``).

The mesh in use is process state: :func:`use_devices` sets it (``None``: one device, the
plain single-device path), the training code asks :func:`mesh`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: The mesh axis name.
AXIS = "data"

_mesh: Mesh | None = None


class DistributedError(ValueError):
    """A set-up that cannot run (device count, batch size, processes); raised before work."""


def make_mesh(devices: Sequence[Any]) -> Mesh:
    """A 1-D :class:`~jax.sharding.Mesh` over ``devices``, axis ``'data'``."""
    return Mesh(np.asarray(list(devices), dtype=object), (AXIS,))


def use_devices(n: int | None = None) -> Mesh | None:
    """Train on ``n`` devices from now on (default ``None``: all; in a multi-process run all
    devices of all processes, ``n`` then counts the global devices). One device leaves the
    single-device path as it was (no mesh). Returns the mesh in use (or ``None``).
    Raises :class:`DistributedError` when ``n`` exceeds the devices there are."""
    global _mesh
    jax.config.update("jax_threefry_partitionable", True)
    devices = jax.devices()
    if n is None:
        n = len(devices)
    if n < 1 or n > len(devices):
        kind = devices[0].platform
        hint = (" (on CPU, set JAX_NUM_CPU_DEVICES=N before the start for N virtual devices)"
                if kind == "cpu" else "")
        raise DistributedError(f"--devices {n}: only {len(devices)} {kind} device(s) are "
                               f"available{hint}")
    if jax.process_count() > 1 and n != len(devices):
        raise DistributedError(f"--devices {n}: a multi-process run uses all {len(devices)} "
                               f"devices of its {jax.process_count()} processes")
    _mesh = make_mesh(devices[:n]) if n > 1 else None
    return _mesh


def mesh() -> Mesh | None:
    """The mesh set by :func:`use_devices` (``None``: one device)."""
    return _mesh


def device_count() -> int:
    """Devices the training uses (1 without a mesh)."""
    return 1 if _mesh is None else int(_mesh.size)


def describe() -> str:
    """E.g. ``'4 cpu devices'`` or ``'8 gpu devices (2 processes)'`` for the run header."""
    devices = [jax.devices()[0]] if _mesh is None else list(_mesh.devices.flat)
    kind = devices[0].platform
    procs = jax.process_count()
    return (f"{len(devices)} {kind} device{'s' if len(devices) > 1 else ''}"
            + (f" ({procs} processes)" if procs > 1 else ""))


def check_batch_size(batch_size: int, n: int | None = None) -> None:
    """Refuse a batch size that the devices cannot share evenly (before any work)."""
    n = device_count() if n is None else n
    if batch_size % n:
        raise DistributedError(
            f"batch size {batch_size} does not divide over {n} devices; choose a multiple of "
            f"{n} (e.g. --batch-size {max(n, batch_size // n * n)}) or --devices that divides "
            f"it")


def replicated() -> NamedSharding | None:
    """All devices hold the whole array (``None`` without a mesh)."""
    return None if _mesh is None else NamedSharding(_mesh, P())


def batch_sharding(shape: tuple[int, ...], axis: int = -1) -> NamedSharding | None:
    """The sharding of an index block ``(K, B)`` (or ``(B,)``; ``axis=1`` for an image block
    ``(K, B, H, W)``): split along ``B`` over the mesh; replicated when ``B`` does not divide
    (with several processes, the epoch's partial last batch: every device then computes that
    whole batch, the same result; one process pads it to ``B``); ``None`` without a mesh."""
    if _mesh is None:
        return None
    axis %= len(shape)
    if shape[axis] % _mesh.size:
        return NamedSharding(_mesh, P())
    return NamedSharding(_mesh, P(*([None] * axis), AXIS))


def is_multi_process() -> bool:
    """A mesh over several processes: batches are read per process (:func:`put_local_blocks`)."""
    return _mesh is not None and jax.process_count() > 1


def local_rows(sharding: NamedSharding, shape: tuple[int, ...], axis: int = 1) -> slice:
    """The contiguous range along ``axis`` that this process's devices hold of an array of
    ``shape`` placed with ``sharding`` (everything when it is replicated)."""
    spans = {(i[axis].start or 0, shape[axis] if i[axis].stop is None else i[axis].stop)
             for i in sharding.addressable_devices_indices_map(shape).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise DistributedError(f"this process's devices hold non-contiguous rows {sorted(spans)}")
    return slice(lo, hi)


def put_local_blocks(images: np.ndarray, labels: np.ndarray, block: np.ndarray,
                     valid: np.ndarray | None = None) -> tuple[jax.Array, ...]:
    """The global batches of an index block ``(K, B)`` into host arrays (uint8 images
    ``(N, H, W)``, labels ``(N,)``), each process reading only its devices' rows: global
    ``(images (K, B, H, W), labels (K, B)[, valid (K, B)])`` split along ``B`` (replicated,
    every process reading the whole block, when ``B`` does not divide). Every process passes
    the same ``block`` (a pure function of the seed and epoch)."""
    block = np.asarray(block)
    k, b = block.shape
    xs = batch_sharding((k, b, *images.shape[1:]), axis=1)
    ys = batch_sharding((k, b), axis=1)
    rows = local_rows(ys, (k, b))
    mine = block[:, rows]
    out = [jax.make_array_from_process_local_data(xs, images[mine], (k, b, *images.shape[1:])),
           jax.make_array_from_process_local_data(ys, labels[mine], (k, b))]
    if valid is not None:
        out.append(jax.make_array_from_process_local_data(ys, np.asarray(valid)[:, rows], (k, b)))
    return tuple(out)


def put_replicated(tree: Any) -> Any:
    """``tree``'s arrays replicated over the mesh (unchanged without one). In a multi-process
    run every process must pass the same values."""
    if _mesh is None:
        return tree
    sharding = replicated()
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree.map(put, tree)


def put_batch(block: np.ndarray) -> jax.Array:
    """An index, mask or weight block ``(K, B)`` (int32, bool, float32) on the devices,
    sharded by :func:`batch_sharding`. Every process passes the whole global block (a pure
    function of the seed and epoch) and places only its devices' part."""
    block = np.asarray(block)
    sharding = batch_sharding(block.shape)
    if sharding is None:
        return jax.device_put(block)
    if jax.process_count() == 1:
        return jax.device_put(block, sharding)
    return jax.make_array_from_callback(block.shape, sharding, lambda i: block[i])


def abstract(tree: Any, sharding: Any) -> Any:
    """``tree`` as ``jax.ShapeDtypeStruct`` leaves carrying ``sharding`` (for compiling ahead);
    unchanged when ``sharding`` is ``None``."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding,
                                                       weak_type=getattr(x, "weak_type", False)),
                        tree)


def is_main_process() -> bool:
    """Process 0 prints, writes metrics and plots."""
    return jax.process_index() == 0


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: int = 60) -> bool:
    """``jax.distributed.initialize`` for a multi-process run: from the arguments, else the
    variables JAX reads (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``), else SLURM's (auto-detected by JAX). On CPU the processes talk through
    gloo. Returns whether a multi-process runtime was started; must run before any other JAX
    work. Raises :class:`DistributedError` with the coordinator and timeout named when it
    cannot connect."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if coordinator is None and not slurm:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise DistributedError("--num-processes/--process-id need --coordinator HOST:PORT")
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise DistributedError("--coordinator needs --num-processes and --process-id")
    if num_processes is not None and process_id is not None and not (
            0 <= process_id < num_processes):
        raise DistributedError(f"--process-id {process_id} is not in 0 .. {num_processes - 1}")
    if coordinator is not None and process_id:  # XLA aborts the process on a timeout: look first
        _wait_reachable(coordinator, timeout, process_id, num_processes)
    print(f"jaxcnn: joining {coordinator or 'the SLURM job'} as process {process_id} of "
          f"{num_processes} (waiting up to {timeout} s for all processes; "
          f"--coordinator-timeout)", file=sys.stderr, flush=True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=timeout)
    except Exception as e:  # XlaRuntimeError / DEADLINE_EXCEEDED and the like
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(
            f"could not join the coordinator {coordinator or '(SLURM)'} as process "
            f"{process_id} of {num_processes} within the {timeout} s timeout (are all "
            f"processes started with the same --num-processes, and is the address "
            f"reachable?): {first[:300]}") from e
    _check_agreement(num_processes, process_id, timeout)
    return True


def _check_agreement(num_processes: int | None, process_id: int | None, timeout: int) -> None:
    """Every process publishes its ``--num-processes`` in the coordinator's key-value store and
    compares it with process 0's (process 0 with everybody's): a mismatch raises
    :class:`DistributedError` naming the flag, before any other work."""
    from jax._src import distributed as jd

    client = jd.global_state.client
    if client is None or num_processes is None or process_id is None:
        return  # SLURM: JAX read one job description, nothing to disagree on
    client.key_value_set(f"jaxcnn/num_processes/{process_id}", str(num_processes))
    peers = range(1, num_processes) if process_id == 0 else [0]
    for peer in peers:
        try:
            theirs = int(client.blocking_key_value_get(f"jaxcnn/num_processes/{peer}",
                                                       timeout * 1000))
        except Exception as e:
            raise DistributedError(
                f"process {peer} did not report its --num-processes within the {timeout} s "
                f"timeout (--coordinator-timeout): {str(e).strip()[:200]}") from e
        if theirs != num_processes:
            raise DistributedError(
                f"--num-processes differs between processes: process {process_id} was started "
                f"with --num-processes {num_processes}, process {peer} with --num-processes "
                f"{theirs}; start every process with the same --num-processes")


def _wait_reachable(coordinator: str, timeout: float, process_id: int, num_processes: int | None
                    ) -> None:
    """Wait until the coordinator accepts TCP connections, else raise a clear error."""
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {coordinator} is unreachable (process {process_id} of "
                    f"{num_processes} waited the {timeout:g} s timeout, --coordinator-timeout): "
                    f"{e}; start process 0 there with the same --coordinator") from None
            time.sleep(0.2)
