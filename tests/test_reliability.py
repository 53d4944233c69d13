"""Issue 15: the workdir lock, checkpoint digests and fallback, full disks, the whole-state
NaN guard, ``--change-optimizer``, the CLI's error handler, file modes and API edges.

Each reproduction of the issue is run for real where it can be: a second process for the lock,
bytes flipped in a checkpoint's data file, a 300 KB tmpfs (else an injected ENOSPC), SIGINT.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import (
    WeightsFileError,
    create_model,
    from_torch_state_dict,
    load_safetensors,
    save_safetensors,
    to_torch_state_dict,
)
from jaxcnn.cli import main
from jaxcnn.training import (
    CheckpointWriteError,
    DamagedCheckpoint,
    WorkdirLock,
    latest_epoch,
    load_checkpoint,
)

TINY = ["--preset", "lenet", "--limit-train", "512", "--limit-test", "256", "--epochs", "2"]


@pytest.fixture(autouse=True)
def _no_user_compilation_cache(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xla-cache")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A finished 2-epoch lenet run (checkpoints 1 and 2)."""
    work = tmp_path_factory.mktemp("run") / "w"
    assert main(["train", *TINY, "--workdir", str(work)]) == 0
    assert latest_epoch(work) == 2
    return work


@pytest.fixture
def copy(run2, tmp_path):
    dst = tmp_path / "w"
    shutil.copytree(run2, dst)
    return dst


def _data_files(work: Path, epoch: int) -> list[Path]:
    d = work / "checkpoints" / str(epoch) / "state" / "ocdbt.process_0" / "d"
    return sorted(d.iterdir(), key=lambda p: p.stat().st_size, reverse=True)


def _flip(path: Path, offset: int | None = None, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    for i in range(n):
        data[at + i] ^= 0xFF
    path.write_bytes(bytes(data))


def _no_traceback(err: str, max_lines: int = 4) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= max_lines, err


# ------------------------------------------------------------------ 1. the lock

_HOLDER = ("import sys, time\nfrom jaxcnn.training import WorkdirLock\n"
           "WorkdirLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n")


def test_second_run_is_locked_out_then_stale_lock_is_taken_over(env, tmp_path, capsys):
    work = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work)], env=env, text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["train", *TINY, "--workdir", str(work), "--data-dir", str(tmp_path / "no"),
                     "--no-download"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"in use by another jaxcnn run (pid {holder.pid} on host " in err
        _no_traceback(err, 1)
        assert latest_epoch(work) is None
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # SIGKILLed holder: its record stays in the file, the kernel dropped the flock
    assert json.loads((work / ".jaxcnn.lock").read_text())["pid"] == holder.pid
    notices = []
    with WorkdirLock(work, notice=notices.append):
        with WorkdirLock(work):  # re-entrant in one process
            pass
        assert json.loads((work / ".jaxcnn.lock").read_text())["pid"] == os.getpid()
    assert len(notices) == 1 and f"stale lock of {work}" in notices[0]
    assert f"pid {holder.pid}" in notices[0]
    assert (work / ".jaxcnn.lock").read_text() == ""  # released cleanly: no notice next time


# ------------------------------------------------------------------ 2./3. damaged checkpoints

def test_flipped_bytes_are_found_and_eval_export_resume_fall_back(copy, tmp_path, capsys):
    _flip(_data_files(copy, 2)[0])
    assert main(["eval", "--workdir", str(copy)]) == 0
    out, err = capsys.readouterr()
    assert f"checkpoint {copy.absolute()}/checkpoints/2 is damaged" in err
    assert "the newest checkpoint that verifies" in err and "epoch 1)" in out
    _no_traceback(err, 2)

    assert main(["eval", "--workdir", str(copy), "--epoch", "2"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/2 is damaged" in err
    _no_traceback(err, 1)
    with pytest.raises(DamagedCheckpoint):
        load_checkpoint(copy, 2)

    out_file = tmp_path / "x.safetensors"
    assert main(["export", "--workdir", str(copy), "--out", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert "epoch 1 (global step 2)" in out and "is damaged" in err

    assert main(["train", "--workdir", str(copy), "--resume", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "moved the damaged checkpoint(s) of epoch 2" in out
    assert f"resumed {copy} at epoch 1 (global step 2)" in out
    assert "epoch 2, " in out and "epoch 3, " in out
    assert latest_epoch(copy) == 3 and len(list((copy / "damaged").iterdir())) == 1
    assert [json.loads(line)["epoch"] for line in
            (copy / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    _, _, meta = load_checkpoint(copy)  # the new checkpoint 2 verifies
    assert meta["epoch"] == 3


@pytest.mark.parametrize("damage", ["delete", "truncate", "no-meta", "meta-edited"])
def test_incomplete_or_damaged_checkpoint_is_named_and_skipped(copy, capsys, damage):
    newest = copy / "checkpoints" / "2"
    if damage == "delete":
        _data_files(copy, 2)[0].unlink()
    elif damage == "truncate":
        f = _data_files(copy, 2)[0]
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "no-meta":
        shutil.rmtree(newest / "meta")
    else:
        meta = next((newest / "meta").iterdir())
        meta.write_text(meta.read_text().replace('"epoch": 2', '"epoch": 7', 1))
    assert main(["eval", "--workdir", str(copy)]) == 0
    out, err = capsys.readouterr()
    assert "epoch 1)" in out
    assert f"{newest.absolute()}" in err and ("damaged" in err or "incomplete" in err)
    _no_traceback(err, 2)
    assert main(["export", "--workdir", str(copy), "--epoch", "2",
                 "--out", str(copy / "x.safetensors")]) == 2
    _no_traceback(capsys.readouterr().err, 3)


def test_full_disk_on_a_small_tmpfs(tmp_path, capsys):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (test_full_disk_injected covers ENOSPC)")
    try:
        code = main(["train", *TINY, "--workdir", str(mnt / "w")])
        err = capsys.readouterr().err
        assert code == 2
        assert "could not write the checkpoint of epoch 1" in err
        assert "No space left on device" in err and "free some space" in err
        _no_traceback(err, 1)
        assert latest_epoch(mnt / "w") is None
        assert list((mnt / "w" / "checkpoints").iterdir()) == []  # no partial left
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_injected_keeps_earlier_checkpoints(copy, monkeypatch):
    import orbax.checkpoint as ocp

    from jaxcnn.training import Checkpoints, TrainConfig

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere")

    _, state, meta = load_checkpoint(copy)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with Checkpoints(copy) as ckpt, pytest.raises(CheckpointWriteError) as e:
        ckpt.save(3, state, [], TrainConfig.from_dict(meta["config"]))
    assert e.value.errno == errno.ENOSPC
    assert "No space left on device" in str(e.value)
    assert "the earlier checkpoints are intact (latest: epoch 2)" in str(e.value)
    assert latest_epoch(copy) == 2


# ------------------------------------------------------------------ 4./5. NaN guard, resume

def test_batchnorm_overflow_is_caught_at_the_step_and_resume_with_lower_lr(tmp_path, capsys):
    work = tmp_path / "bn"
    diverge = ["--preset", "lenet_bn", "--optimizer", "sgd", "--lr", "0.1", "--schedule", "step",
               "--step-size", "1", "--gamma", "1e25", "--limit-train", "512", "--limit-test",
               "256", "--epochs", "3", "--workdir", str(work)]
    assert main(["train", *diverge]) == 1
    err = capsys.readouterr().err
    assert "global step 4 (epoch 2, batch 2 of 2)" in err
    assert "BatchNorm statistics" in err and "FloatingPointError" not in err
    assert f"the last good checkpoint is epoch 1 in {work}" in err
    assert "--resume --change-optimizer --lr" in err
    _no_traceback(err, 2)
    assert latest_epoch(work) == 1

    with pytest.raises(SystemExit) as e:
        main(["train", "--workdir", str(work), "--resume", "--lr", "0.01"])
    assert e.value.code == 2 and "--change-optimizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # model changes stay refused
        main(["train", "--workdir", str(work), "--resume", "--change-optimizer",
              "--model", "lenet"])
    assert "model: checkpoint 'lenet_bn'" in capsys.readouterr().err

    assert main(["train", "--workdir", str(work), "--resume", "--change-optimizer", "--lr",
                 "0.01", "--schedule", "constant"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "epoch 3, " in out
    _, state, meta = load_checkpoint(work)
    assert meta["epoch"] == 3 and meta["config"]["optimizer"]["lr"] == 0.01
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))


def test_train_step_finiteness_covers_batch_stats_and_opt_state():
    from jaxcnn.training import create_train_state, make_optimizer, train_step
    from jaxcnn.training._optim import OptimizerConfig

    model = create_model("lenet_bn")
    tx = make_optimizer(OptimizerConfig(name="sgd", lr=1e-6), 1, 1)
    state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
    big = jnp.full((), 255, jnp.uint8)
    images = jnp.broadcast_to(big, (4, 28, 28)).at[0].set(0)
    state = state.replace(batch_stats=jax.tree.map(lambda a: a * jnp.inf, state.batch_stats))
    _, metrics = train_step(state, images, jnp.zeros(4, jnp.int32))
    assert not bool(metrics["finite"])


def _finite_tree(bad: float | None, where: str) -> dict:
    """A state-like tree: small float32 and bfloat16 leaves, one leaf above
    FINITE_GROUP_LIMIT, an int32 counter; ``bad`` planted into the leaf ``where``."""
    from jaxcnn.training.steps import FINITE_GROUP_LIMIT

    tree = {"w": np.ones((3, 4), np.float32), "b": np.zeros(5, np.float32),
            "half": np.ones(7, jnp.bfloat16), "big": np.ones(FINITE_GROUP_LIMIT + 1, np.float32),
            "count": np.full((), 2**31 - 1, np.int32), "empty": np.zeros((0,), np.float32)}
    if bad is not None:
        leaf = tree[where].copy()
        leaf.reshape(-1)[-1] = bad
        tree[where] = leaf
    return jax.tree.map(jnp.asarray, tree)


@pytest.mark.parametrize(("bad", "where", "finite"), [
    (None, "w", True),
    (np.nan, "w", False),
    (np.inf, "b", False),
    (-np.inf, "half", False),
    (np.nan, "big", False),
    (np.inf, "big", False),
    (3.0e38, "w", True),  # the largest float32s stay finite in the common type
])
def test_all_finite_finds_every_non_finite_leaf(bad, where, finite):
    """The grouped check (small leaves concatenated, large ones alone) answers as a check of
    every leaf would, jitted or not."""
    from jaxcnn.training.steps import all_finite

    tree = _finite_tree(bad, where)
    expected = all(bool(np.all(np.isfinite(np.asarray(x, np.float64))))
                   for x in jax.tree.leaves(tree))
    assert expected == finite
    assert bool(all_finite(tree)) == finite
    assert bool(jax.jit(all_finite)(tree)) == finite


def test_all_finite_of_no_float_leaves_is_true():
    from jaxcnn.training.steps import all_finite

    assert bool(all_finite({}))
    assert bool(all_finite({"count": jnp.asarray(3, jnp.int32)}))


# ------------------------------------------------------------------ 6./7. CLI messages, files

def test_workdir_that_is_a_file_fails_before_the_data_loads(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    code = main(["train", *TINY, "--workdir", str(afile), "--data-dir", str(tmp_path / "none"),
                 "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and f"--workdir {afile} is a file" in err
    _no_traceback(err, 1)


def test_read_only_workdir(tmp_path, capsys):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        code = main(["train", *TINY, "--workdir", str(mnt / "w"), "--data-dir",
                     str(tmp_path / "none"), "--no-download"])
        err = capsys.readouterr().err
        assert code == 2 and f"{mnt / 'w'}" in err and "writable" in err
        _no_traceback(err, 1)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", "truncated"])
def test_eval_weights_that_are_not_safetensors(run2, tmp_path, capsys, content):
    path = tmp_path / "w.safetensors"
    if content == "truncated":
        assert main(["export", "--workdir", str(run2), "--out", str(path)]) == 0
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(content)
    capsys.readouterr()
    assert main(["eval", "--weights", str(path), "--model", "lenet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and ("is empty" if content == b"" else "not a readable") in err
    _no_traceback(err, 1)
    with pytest.raises(WeightsFileError):
        load_safetensors(path)


def test_export_file_mode_and_missing_directory(run2, tmp_path, capsys):
    out = tmp_path / "new" / "sub" / "x.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["export", "--workdir", str(run2), "--out", str(out)])
    assert e.value.code == 2 and "does not exist (create it, or add --mkdir)" in \
        capsys.readouterr().err
    assert not out.parent.exists()
    old = os.umask(0o022)
    try:
        assert main(["export", "--workdir", str(run2), "--out", str(out), "--mkdir"]) == 0
        assert out.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        save_safetensors(tmp_path / "p.safetensors", {"a": np.ones(2, np.float32)})
        assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    with pytest.raises(FileNotFoundError, match="--mkdir"):
        save_safetensors(tmp_path / "nope" / "q.safetensors", {"a": np.ones(2, np.float32)})


def _sigint_after(env, args, wait_for, timeout=240):
    # As from a terminal: SIGINT at its default disposition, even when this test runs in a
    # background job (which a non-interactive shell starts with SIGINT ignored, inherited).
    proc = subprocess.Popen([sys.executable, "-m", "jaxcnn", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if wait_for is None:
            time.sleep(0.5)  # still importing
        else:
            for line in proc.stdout:
                if line.startswith(wait_for):
                    break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_sigint_during_start_up_is_one_line(env, tmp_path):
    code, _, err = _sigint_after(env, ["train", *TINY, "--workdir", str(tmp_path / "w")], None)
    assert code == 130, err
    assert "interrupted" in err
    _no_traceback(err, 1)


def test_sigint_before_the_first_checkpoint_does_not_suggest_resume(env, tmp_path):
    work = tmp_path / "w"
    args = ["train", "--preset", "lenet", "--limit-train", "8192", "--limit-test", "256",
            "--batch-size", "32", "--epochs", "1", "--log-every", "1", "--workdir", str(work)]
    code, _, err = _sigint_after(env, args, "step 1 ")
    assert code == 130, err
    assert "interrupted; no checkpoint was written" in err and "--resume" not in err
    _no_traceback(err, 1)
    assert latest_epoch(work) is None
    # the lock was released: a new run may start there
    with WorkdirLock(work, notice=pytest.fail):
        pass


# ------------------------------------------------------------------ 8. API edges

def test_model_entry_refuses_integers_and_takes_empty_batches():
    model = create_model("lenet_bn")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(TypeError, match=r"uint8.*astype\(jnp.float32\) / 255"):
        model.apply(variables, jnp.zeros((2, 28, 28, 1), jnp.uint8))
    with pytest.raises(TypeError, match="int32"):
        model.apply(variables, jnp.zeros((2, 28, 28, 1), jnp.int32))
    assert model.apply(variables, jnp.zeros((0, 28, 28, 1))).shape == (0, 10)
    assert model.apply(variables, jnp.zeros((2, 28, 28, 1), jnp.bfloat16)).shape == (2, 10)


def test_state_dict_dtype_policy():
    import ml_dtypes

    model = create_model("lenet_bn")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    sd = to_torch_state_dict(model, variables)
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float64):
        cast = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in sd.items()}
        got = from_torch_state_dict(model, cast)
        assert {str(x.dtype) for x in jax.tree.leaves(got["params"])} == {"float32"}
    counts = {k: v.astype(np.float32) if k.endswith("num_batches_tracked") else v
              for k, v in sd.items()}
    got = from_torch_state_dict(model, counts)
    assert {str(x.dtype) for k, x in jax.tree_util.tree_leaves_with_path(got)
            if "num_batches_tracked" in jax.tree_util.keystr(k)} == {"int32"}
    bad = dict(counts)
    key = next(k for k in bad if k.endswith("num_batches_tracked"))
    bad[key] = np.asarray(1.5, np.float32)
    with pytest.raises(TypeError, match="non-integral"):
        from_torch_state_dict(model, bad)


@pytest.mark.parametrize("name, cfg, field", [
    ("lenet", {"in_channels": -1}, "in_channels"), ("lenet", {"num_classes": 0}, "num_classes"),
    ("resnet18", {"channels": (64, 0, 256, 512)}, "channels"),
    ("lenet", {"num_classes": 2.5}, "num_classes"),
])
def test_create_model_validates_configs(name, cfg, field):
    with pytest.raises(ValueError, match=f"{field}.* must be"):
        create_model(name, **cfg)
