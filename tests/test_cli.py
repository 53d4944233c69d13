"""``jaxcnn train/eval/export``: refusals, a real SIGKILL + resume, NaN stop, export/eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn.cli import build_parser, main
from jaxcnn.training import latest_epoch, load_checkpoint

# 2000 training images in batches of 128: 16 steps per epoch, the last one of 80 images.
RUN = ["--model", "lenet", "--limit-train", "2000", "--limit-test", "256", "--batch-size", "128",
       "--epochs", "3", "--seed", "1", "--lr", "0.01"]
STEPS_PER_EPOCH = 16
TIMING = ("time", "images_per_sec")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: a shared persistent XLA cache makes their compiles
    one-time, and no TTY progress bar."""
    cache = tmp_path_factory.mktemp("xla-cache")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(autouse=True)
def _no_user_compilation_cache(monkeypatch):
    # In-process CLI calls must not switch on the persistent cache under ~/.cache.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")


def _jaxcnn(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jaxcnn", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def _metrics(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """An uninterrupted run, and the same run SIGKILLed mid-epoch 2 and resumed."""
    root = tmp_path_factory.mktemp("runs")
    full, killed = root / "full", root / "killed"
    done = _jaxcnn(env, "train", *RUN, "--workdir", str(full))
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3, done.stdout

    kill_at = STEPS_PER_EPOCH + 4  # epoch 2, batch 4 of 16
    proc = subprocess.Popen([sys.executable, "-m", "jaxcnn", "train", *RUN, "--workdir",
                             str(killed), "--log-every", "1"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"step {kill_at} "):
                assert latest_epoch(killed) == 1  # the first checkpoint exists
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + proc.stderr.read()
    assert latest_epoch(killed) == 1, "the kill did not land in epoch 2"
    assert len(_metrics(killed)) == 1

    resumed = _jaxcnn(env, "train", *RUN, "--workdir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {killed} at epoch 1 (global step {STEPS_PER_EPOCH})" in resumed.stdout
    first = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("epoch "))
    assert first.startswith("epoch 2, ")
    return full, killed


def test_killed_and_resumed_equals_uninterrupted(runs):
    full, killed = runs
    assert _metrics(full) == _metrics(killed)
    assert [m["epoch"] for m in _metrics(full)] == [1, 2, 3]
    assert _metrics(full)[-1]["step"] == 3 * STEPS_PER_EPOCH
    _, a, meta_a = load_checkpoint(full)
    _, b, meta_b = load_checkpoint(killed)
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise


def test_steps_per_call_trains_as_the_step_by_step_run(runs, env, tmp_path):
    full, _ = runs
    out = tmp_path / "scan"
    done = _jaxcnn(env, "train", *RUN, "--workdir", str(out), "--steps-per-call", "6")
    assert done.returncode == 0, done.stderr
    got, want = _metrics(out), _metrics(full)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [16, 32, 48]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        assert abs(a["train_acc"] - b["train_acc"]) <= 1 / 2000  # one image, at most
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 256


def test_resume_finished_run_and_more_epochs(runs, capsys):
    full, _ = runs
    assert main(["train", "--workdir", str(full), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "epoch 4" not in out


def test_export_then_eval_agree(runs, tmp_path, capsys):
    full, _ = runs
    out = tmp_path / "lenet.safetensors"
    assert main(["export", "--workdir", str(full), "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["eval", "--workdir", str(full)]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["eval", "--weights", str(out), "--model", "lenet", "--limit-test", "256"]) == 0
    from_file = capsys.readouterr().out
    acc = _metrics(full)[-1]["test_acc"]
    correct = round(acc * 256)
    assert f"test acc {acc:.3f} ({correct}/256 correct" in from_ckpt
    assert f"test acc {acc:.3f} ({correct}/256 correct" in from_file
    code = main(["eval", "--weights", str(out), "--model", "lenet_bn", "--limit-test", "8"])
    assert code == 2 and "missing keys" in capsys.readouterr().err


def test_nan_stops_with_step_and_keeps_checkpoint(tmp_path, capsys):
    work = tmp_path / "nan"
    # epoch 2's learning rate 0.1 * 1e300 overflows float32 to inf: the first update of
    # epoch 2 (global step 5) makes the parameters non-finite.
    code = main(["train", "--model", "lenet", "--limit-train", "512", "--limit-test", "128",
                 "--batch-size", "128", "--epochs", "3", "--optimizer", "sgd", "--lr", "0.1",
                 "--schedule", "step", "--step-size", "1", "--gamma", "1e300",
                 "--workdir", str(work)])
    err = capsys.readouterr().err
    assert code == 1
    assert "global step 5 (epoch 2, batch 1 of 4)" in err
    assert f"the last good checkpoint is epoch 1 in {work}" in err
    assert latest_epoch(work) == 1 and len(_metrics(work)) == 1
    _, state, meta = load_checkpoint(work)
    assert int(state.step) == 4 and meta["epoch"] == 1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train"], "--preset NAME or --model NAME"),
    (["train", "--model", "lenet_nb"], "Did you mean 'lenet_bn'"),
    (["train", "--model", "lenet", "--bn", "torch"], "--bn does not apply to model 'lenet'"),
    (["train", "--preset", "lenet", "--ratio", "8"], "--ratio does not apply"),
    (["train", "--preset", "lenet", "--epochs", "-3"], "must be a positive integer, got -3"),
    (["train", "--preset", "lenet", "--epochs", "0"], "must be a positive integer"),
    (["train", "--preset", "lenet", "--lr", "-1"], "must be a positive number"),
    (["train", "--preset", "lenet", "--batch-size", "x"], "expected a whole number"),
    (["train", "--preset", "lenet", "--resume"], "--resume needs --workdir"),
    (["train", "--preset", "lenet", "--plot"], "give --workdir"),
    (["train", "--preset", "lenet", "--nesterov"], "nesterov needs the sgd optimizer"),
    (["train", "--preset", "lenet", "--optimizer", "sgd", "--nesterov"], "momentum > 0"),
    (["train", "--preset", "lenet", "--momentum", "0.9"], "momentum applies to sgd only"),
    (["train", "--preset", "lenet", "--gamma", "0.5"], "--schedule step only"),
    (["train", "--preset", "lenet", "--resize", "224"], "cannot take 224x224 input"),
    (["train", "--preset", "lenet", "--optimizer", "lion"], "invalid choice: 'lion'"),
    (["eval"], "exactly one of --workdir DIR and --weights FILE"),
    (["eval", "--weights", "x.safetensors"], "--weights needs --model"),
])
def test_refusals(argv, message, capsys):
    assert message in _refused(argv, capsys)


def test_refusals_about_workdirs(runs, tmp_path, capsys):
    full, _ = runs
    empty = tmp_path / "empty"
    assert "no checkpoint in" in _refused(
        ["train", "--preset", "lenet", "--workdir", str(empty), "--resume"], capsys)
    assert "already holds checkpoints" in _refused(
        ["train", *RUN, "--workdir", str(full)], capsys)
    msg = _refused(["train", "--workdir", str(full), "--resume", "--model", "lenet_bn"], capsys)
    assert "cannot --resume" in msg and "model: checkpoint 'lenet', requested 'lenet_bn'" in msg
    assert "batch_size: checkpoint 128, requested 64" in _refused(
        ["train", "--workdir", str(full), "--resume", "--batch-size", "64"], capsys)
    assert "no checkpoint in" in _refused(["export", "--workdir", str(empty), "--out",
                                           str(tmp_path / "m.safetensors")], capsys)
    assert "no checkpoint in" in _refused(["eval", "--workdir", str(empty)], capsys)
    assert "carries its own model config" in _refused(
        ["eval", "--workdir", str(full), "--model", "lenet"], capsys)


@pytest.mark.parametrize("command", ["train", "eval", "export"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"jaxcnn {command} --" in out


def test_preset_flags_override(capsys):
    from jaxcnn.cli.train import run_config

    parser = build_parser()
    args = parser.parse_args(["train", "--preset", "lenet_bn_scratch", "--lr", "0.01",
                              "--optimizer", "sgd", "--momentum", "0.9", "--epochs", "2"])
    cfg = run_config(args._parser, args)
    assert (cfg.model, cfg.model_config["bn"], cfg.batch_size, cfg.epochs) == (
        "lenet_bn", "scratch", 256, 2)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.01, 0.9)
    args = parser.parse_args(["train", "--preset", "vgg11_small", "--model", "nin"])
    cfg = run_config(args._parser, args)
    assert (cfg.model, cfg.resize, cfg.batch_size) == ("nin", 224, 64)


def test_train_help_lists_every_preset_with_its_chapter(capsys):
    from jaxcnn.training import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name, (cfg, chapter) in PRESETS.items():
        line = next(x for x in out.splitlines() if x.startswith(f"  {name} "))
        assert f"(ch. {chapter})" in line and f"batch {cfg.batch_size}," in line
    assert "resnet18, resize 96, batch 256, lr 0.001  (ch. 5.11 ResNet-18)" in out


_END_PROCESS_SCRIPT = r"""
import sys, time
import jax, jax.numpy as jnp
from jaxcnn.cli import end_process
from jaxcnn.training import _programs

real_lower = _programs._lower

def slow_lower(*args):  # a background compilation still running when the command returns
    time.sleep(1.0)
    result = real_lower(*args)
    open(sys.argv[1], "w").write("lowered")
    return result

_programs._lower = slow_lower
_programs.precompile(jax.jit(jnp.sin), jax.ShapeDtypeStruct((3,), jnp.float32))
sys.stdout.write("x" * 200_000)  # unflushed output
end_process(3)
"""


@pytest.mark.parametrize("fast", ["1", "0"])
def test_end_process_finishes_the_background_work_and_keeps_the_exit_code(tmp_path, fast):
    """The process entry's exit: with the fast exit (the default) and without it
    (``JAXCNN_FAST_EXIT=0``), the background compilation started before it finishes, all
    output arrives and the exit status is the command's."""
    marker = tmp_path / "marker"
    env = {**os.environ, "JAXCNN_FAST_EXIT": fast, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _END_PROCESS_SCRIPT, str(marker)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "x" * 200_000
    assert marker.read_text() == "lowered"


def test_the_module_entry_exits_with_the_commands_status(tmp_path):
    """``python -m jaxcnn``: a failure that :func:`main` reports exits 2 through the fast exit,
    its message complete."""
    proc = subprocess.run([sys.executable, "-m", "jaxcnn", "train", "--preset", "lenet",
                           "--data-dir", str(tmp_path / "none"), "--no-download"],
                          env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("jaxcnn train: error: ")
    assert "dataset-fashion-mnist" in proc.stderr
