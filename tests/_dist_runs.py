"""The data-parallel runs that the distributed tests share (``tests/test_distributed.py`` and
``parity_tests/test_distributed_torch.py``): started once per session, all at once, by the
``dist_runs`` fixture of the root ``conftest.py``; four processes of ``tests/_dist_worker.py``
on CPU virtual devices (the device count is fixed when JAX starts), each running several
stages (device counts) so that they share start-up and compiled programs.

Every run trains on the same synthetic data (326 training images: 5 batches of 64 and a
partial one of 6, sharded on 2 devices, replicated on 4 and 8), 2 epochs, 12 Adam steps;
resnet18 (18 layers, 96x96 inputs, narrow stages) 3 steps on 96 images.
lenet_bn_scratch is checkpointed on 4 devices and resumed from epoch 1 on 1 and on 2 devices.

Cost (2 shared cores, load ~9): test_distributed.py with test_distributed_torch.py 242 CPU
seconds, 303 s wall; the previous test_distributed.py alone took 220 CPU seconds, 270 s wall
under the same load (117 s on a quiet machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("_dist_worker.py")
ROOT = WORKER.parent.parent
#: output directory -> (devices, processes, presets): what the tests compare.
RUNS: dict[str, tuple[int, int, str]] = {
    "1": (1, 1, "lenet,lenet_bn,lenet_bn_scratch,resnet18"),
    "2": (2, 1, "lenet,lenet_bn_scratch"),
    "4": (4, 1, "lenet_bn_scratch,resnet18"),
    "8": (8, 1, "lenet_bn"),
    "2x2": (2, 2, "lenet_bn"),
}
#: the worker processes: (JAX_NUM_CPU_DEVICES, processes, worker arguments); ``{out}`` is the
#: output directory. The 4-device checkpoint comes first: the first process resumes it on 1
#: and 2 devices, where it has compiled that preset already.
PROCESSES: list[tuple[int, int, list[str]]] = [
    (2, 1, ["--stage", "1:lenet,lenet_bn,lenet_bn_scratch", "--stage", "2:lenet,lenet_bn_scratch",
            "--resume-from", "{out}/4/ckpt-lenet_bn_scratch", "--resume-on", "1,2"]),
    (8, 1, ["--stage", "4:lenet_bn_scratch", "--checkpoint", "4:lenet_bn_scratch", "--stage",
            "1:resnet18", "--stage", "4:resnet18", "--stage", "8:lenet_bn"]),
    (2, 2, ["--stage", "2x2:lenet_bn"]),
]


#: XLA flags of the children (``$JAXCNN_DIST_XLA_FLAGS`` replaces them; empty: XLA's
#: defaults). LLVM without optimisation compiles these small programs 2-3x faster, and the
#: runs are mostly compilation; what the tests check, the partitioning of the programs over
#: devices (GSPMD) and their collectives, happens before LLVM, on XLA's HLO. The suite passes
#: with the defaults too (the measured maxima in README "Several devices and hosts" are those).
XLA_FLAGS = os.environ.get("JAXCNN_DIST_XLA_FLAGS", "--xla_backend_optimization_level=0")


def env(devices: int) -> dict[str, str]:
    """The environment of a child on ``devices`` CPU virtual devices."""
    e = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu",
             XLA_FLAGS=XLA_FLAGS)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint() -> None:
    """``preexec_fn`` of the children: SIGINT at its default (a background job ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_all(out: Path, timeout: float = 900) -> Path:
    """Start every process of :data:`PROCESSES` together and wait (a failing one stops the
    others); their files under ``out/<run>/``. Raises ``AssertionError`` with the output of
    the processes that failed."""
    procs = []
    for i, (devices, processes, args) in enumerate(PROCESSES):
        port = free_port()
        args = [a.format(out=out) for a in args]
        for pid in range(processes):
            where = (["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                      "--process-id", str(pid)] if processes > 1 else [])
            log = out / f"worker{i}-{pid}.log"
            with open(log, "w") as f:
                procs.append((log, subprocess.Popen(
                    [sys.executable, str(WORKER), str(out), *args, *where], env=env(devices),
                    stdout=f, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for _, p in procs):
            if any(p.returncode for _, p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [f"{log.name} exited {p.returncode}:\n{log.read_text()[-3000:]}"
              for log, p in procs if p.returncode]
    assert not failed, "\n".join(failed)
    return out
