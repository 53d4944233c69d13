"""``jaxcnn bench``: one small run end to end (the report's structure and arithmetic; no speed
is asserted: timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json

import pytest

from jaxcnn.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code = main(["bench", "--models", "lenet_bn", "--steps", "2", "--repeats", "2",
                 "--no-compile", "--limit-train", "600", "--limit-test", "300",
                 "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_rows_and_ratios(report):
    rows = {r["framework"]: r for r in report["rows"]}
    assert set(rows) == {"jaxcnn", "jaxcnn scan", "torch eager"}
    for r in rows.values():
        assert r["error"] is None and (r["model"], r["batch"], r["input_size"]) == (
            "lenet_bn", 256, 28)
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        assert r["train_images_per_s"] == pytest.approx(r["train_steps_per_s"] * 256)
        assert len(r["train_samples"]) == 2 and r["first_step_s"] > 0
    eager = rows["torch eager"]
    for fw in ("jaxcnn", "jaxcnn scan"):
        r = rows[fw]
        assert r["vs_eager"] == pytest.approx(r["train_images_per_s"]
                                              / eager["train_images_per_s"])
        assert r["infer_vs_eager"] == pytest.approx(r["infer_images_per_s"]
                                                    / eager["infer_images_per_s"])
        assert r["vs_compile"] is None  # --no-compile
    assert eager["vs_eager"] is None


def test_machine_and_settings(report):
    m = report["machine"]
    for key in ("cpu", "jax_device", "torch_device", "jax", "torch", "torch_threads",
                "xla_cpu_threads"):
        assert m[key] not in (None, ""), key
    assert report["settings"]["repeats"] == 2 and report["settings"]["torch.compile"] is False


def test_epoch_rows_train_the_same_model(report):
    epochs = {e["framework"]: e for e in report["epochs"]}
    assert set(epochs) == {"jaxcnn", "jaxcnn scan", "torch eager"}
    for e in epochs.values():
        assert e["images"] == 600 and 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1
        assert e["total_s"] >= e["train_s"] > 0 and e["warm_epoch_s"] > 0
    # One step per call or all full batches in one call: the same training, up to float32
    # summation order (Adam turns the noise-level gradients of the biases in front of a
    # BatchNorm into lr-sized steps, which BN then cancels): at most two images apart.
    a, b = epochs["jaxcnn"], epochs["jaxcnn scan"]
    assert abs(a["train_acc"] - b["train_acc"]) <= 2 / 600
    assert abs(a["test_acc"] - b["test_acc"]) <= 2 / 300


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--models", "resnet"])
    assert e.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
