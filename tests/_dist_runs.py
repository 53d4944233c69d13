"""The data-parallel runs that the distributed tests share (``tests/test_distributed.py`` and
``parity_tests/test_distributed_torch.py``): started once per session, all at once, by the
``dist_runs`` fixture of the root ``conftest.py``; each run is a process (or two) of
``tests/_dist_worker.py`` on CPU virtual devices (the device count is fixed when JAX starts).

Every run trains its presets on the same synthetic data (326 training images: 5 batches of 64
and a partial one of 6, sharded on 2 devices, replicated on 4 and 8), 2 epochs, 12 Adam steps;
resnet18 (18 layers, 96x96 inputs, narrow stages) 3 steps on 70 images. The 4-device run
checkpoints lenet_bn; the 1- and 2-device runs then resume it from epoch 1.
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
#: name -> (devices per process, processes, presets, extra worker arguments)
RUNS: dict[str, tuple[int, int, str, tuple[str, ...]]] = {
    "1": (1, 1, "lenet,lenet_bn,lenet_bn_scratch,resnet18", ("--resume-from", "4/ckpt-lenet_bn")),
    "2": (2, 1, "lenet,lenet_bn_scratch", ("--resume-from", "4/ckpt-lenet_bn")),
    "4": (4, 1, "lenet_bn,resnet18", ("--checkpoint", "lenet_bn")),
    "8": (8, 1, "lenet_bn", ()),
    "2x2": (2, 2, "lenet_bn", ()),
}


def env(devices: int) -> dict[str, str]:
    """The environment of a child on ``devices`` CPU virtual devices."""
    e = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
    e.pop("XLA_FLAGS", None)
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
    """Start every run of :data:`RUNS` together and wait (a failing run stops the others);
    their files under ``out/<run>/``. Raises ``AssertionError`` with the output of the runs
    that failed."""
    procs = []
    for run, (devices, processes, presets, extra) in RUNS.items():
        port = free_port()
        args = [str(out / a) if a[:2] in ("1/", "2/", "4/", "8/") else a for a in extra]
        for pid in range(processes):
            where = (["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                      "--process-id", str(pid)] if processes > 1 else ["--devices", str(devices)])
            log = out / f"{run}-{pid}.log"
            with open(log, "w") as f:
                procs.append((run, log, subprocess.Popen(
                    [sys.executable, str(WORKER), str(out / run), "--presets", presets, *where,
                     *args], env=env(devices), stdout=f, stderr=subprocess.STDOUT, text=True,
                    preexec_fn=default_sigint)))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for *_, p in procs):
            if any(p.returncode for *_, p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for *_, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [f"run {run} exited {p.returncode}:\n{log.read_text()[-3000:]}"
              for run, log, p in procs if p.returncode]
    assert not failed, "\n".join(failed)
    return out
