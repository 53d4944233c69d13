"""Data parallel training equals one device (issue 14), on CPU virtual devices.

Each configuration runs in a subprocess (``tests/_dist_worker.py``; the device count is fixed
when JAX starts): small synthetic data (326 training images: 5 batches of 64 and a partial one
of 6, which is sharded on 2 devices and runs replicated on 4 and 8), 2 epochs, 12 Adam steps.

Tolerance (float32 reduction order: the sums over the batch are split over devices):
  * per-epoch loss within 1e-5, train/test accuracy within 2 examples;
  * every parameter and BatchNorm buffer within ``5e-5 + 1e-4 |w|`` after the 12 steps,
    except the biases directly in front of a BatchNorm and the running means that follow them:
    their gradient is exactly zero in exact arithmetic (BatchNorm removes the mean), so in
    float32 it is rounding noise that Adam turns into steps of up to ``lr`` each: those are
    bounded by ``2 * lr * steps`` (0.024). They do not change the function the network computes
    in train mode (the losses above agree to 1e-7).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_dist_worker.py")
ROOT = WORKER.parent.parent
JAXCNN = [sys.executable, "-m", "jaxcnn"]
LR, STEPS = 0.001, 12
#: name -> (devices per process, processes, presets)
RUNS = {
    "1": (1, 1, "lenet,lenet_bn,lenet_bn_scratch"),
    "2": (2, 1, "lenet_bn_scratch"),
    "4": (4, 1, "lenet,lenet_bn"),
    "8": (8, 1, "lenet_bn"),
    "2x2": (2, 2, "lenet_bn"),
}
CASES = [(run, preset) for run, (_, _, presets) in RUNS.items() if run != "1"
         for preset in presets.split(",")]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Every run of :data:`RUNS`, started together; their ``.npz`` under ``out/<run>/``."""
    out = tmp_path_factory.mktemp("dist")
    procs = []
    for run, (devices, processes, presets) in RUNS.items():
        extra: list[str] = []
        port = _free_port()
        for pid in range(processes):
            if processes > 1:
                extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                         str(processes), "--process-id", str(pid)]
            else:
                extra = ["--devices", str(devices)]
            procs.append((run, subprocess.Popen(
                [sys.executable, str(WORKER), str(out / run), "--presets", presets, *extra],
                env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)))
    failed = []
    for run, p in procs:
        log, _ = p.communicate(timeout=900)
        if p.returncode:
            failed.append(f"run {run} exited {p.returncode}:\n{log[-3000:]}")
    assert not failed, "\n".join(failed)
    return out


def _pre_bn(names: list[str]) -> set[str]:
    """Leaves whose float32 value is rounding noise amplified by Adam: biases of a layer whose
    successor (``params/<i+1>``) is a BatchNorm, and BatchNorm running means."""
    bn = {n.split("/")[1] for n in names if n.startswith("batch_stats/")}
    return ({n for n in names if n.startswith("params/") and n.endswith("/bias")
             and n.split("/")[1].isdigit() and str(int(n.split("/")[1]) + 1) in bn}
            | {n for n in names if n.startswith("batch_stats/") and n.endswith("mean")})


@pytest.mark.parametrize(("run", "preset"), CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_devices_train_like_one_device(results, run, preset):
    one, many = (np.load(results / r / f"{preset}.npz") for r in ("1", run))
    devices, processes, _ = RUNS[run]
    assert int(many["devices"]) == devices * processes and int(one["devices"]) == 1
    np.testing.assert_allclose(many["loss"], one["loss"], rtol=0, atol=1e-5)
    for acc, n in (("train_acc", 326), ("test_acc", 100)):
        np.testing.assert_allclose(many[acc], one[acc], rtol=0, atol=2 / n + 1e-9)
    leaves = [k for k in one.files if k.startswith(("params/", "batch_stats/"))]
    assert set(leaves) == {k for k in many.files if k.startswith(("params/", "batch_stats/"))}
    noisy = _pre_bn(leaves)
    assert preset == "lenet" or noisy  # the rule finds lenet_bn's pre-BN biases
    for k in leaves:
        if k in noisy:
            np.testing.assert_allclose(many[k], one[k], rtol=0, atol=2 * LR * STEPS, err_msg=k)
        else:
            np.testing.assert_allclose(many[k], one[k], rtol=1e-4, atol=5e-5, err_msg=k)


def _train(args: list[str], devices: int = 1, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAXCNN, "train", "--preset", "lenet", "--limit-train", "256",
                           "--limit-test", "64", "--epochs", "1", *args], env=_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def test_bad_setups_fail_early_with_a_clear_message():
    r = _train(["--batch-size", "250"], devices=4)
    assert r.returncode == 2 and "batch size 250 does not divide over 4 devices" in r.stderr
    r = _train(["--devices", "3"], devices=2)
    assert r.returncode == 2 and "--devices 3: only 2 cpu device(s)" in r.stderr
    r = _train(["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                "--process-id", "1", "--coordinator-timeout", "2"])
    assert r.returncode == 2 and "unreachable" in r.stderr and "2 s timeout" in r.stderr
    r = _train(["--num-processes", "2", "--process-id", "1"])
    assert r.returncode == 2 and "need --coordinator" in r.stderr
    assert "epoch 1" not in r.stdout  # no work was done
