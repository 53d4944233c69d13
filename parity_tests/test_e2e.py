"""``python -m torch_ref.train`` (the book's torch loop as a process) and ``jaxcnn bench
--e2e`` (whole processes back to back): one small run each; the report's structure and
arithmetic only (no speed is asserted: timing belongs to the benchmark, not to tests)."""

from __future__ import annotations

import json

import pytest

from jaxcnn.cli import main
from jaxcnn.training import resolve_config
from torch_ref import train as torch_train
from torch_ref.crosscheck.e2e import parse_epochs


@pytest.mark.parametrize("loader", torch_train.LOADERS)
def test_torch_train_runs_the_books_loop(loader, capsys):
    config = resolve_config("lenet_bn", epochs=2, limit_train=600, limit_test=300)
    record = torch_train.run(config, loader=loader)
    lines = parse_epochs(capsys.readouterr().out)
    assert [e["epoch"] for e in lines] == [1, 2] == [e["epoch"] for e in record["epochs"]]
    for line, e in zip(lines, record["epochs"], strict=True):
        assert line["loss"] == pytest.approx(e["loss"], abs=5e-5)
        assert 0 <= e["test_acc"] <= 1 and e["images_per_sec"] > 0
    assert record["epochs"][1]["loss"] < record["epochs"][0]["loss"]  # it learns


def test_torch_train_main_refuses_unknown_preset(capsys):
    with pytest.raises(SystemExit) as e:
        torch_train.main(["--preset", "resnet5"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bench_e2e_report(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert main(["bench", "--e2e", "--presets", "lenet", "--epochs", "2", "--limit-train",
                 "512", "--limit-test", "256", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    res = report["presets"]["lenet"]
    assert set(res["runs"]) == {"jaxcnn cold", "jaxcnn warm", "torch"}
    for runs in res["runs"].values():
        (run,) = runs
        assert run["wall_s"] > 0 and [e["epoch"] for e in run["epochs"]] == [1, 2]
        assert run["first_epoch_s"] == run["epochs"][0]["time"]
        assert run["warm_epoch_s"] == run["epochs"][1]["time"]
    med = res["median"]
    for cache in ("cold", "warm"):
        assert res[f"ratio_{cache}"] == pytest.approx(
            med["torch"]["wall_s"] / med[f"jaxcnn {cache}"]["wall_s"])

    # the same training in both jaxcnn runs: the cache changes the time, not the numbers
    def strip(run):
        return [{k: v for k, v in e.items() if k != "time"} for e in run[0]["epochs"]]

    assert strip(res["runs"]["jaxcnn cold"]) == strip(res["runs"]["jaxcnn warm"])
    table = capsys.readouterr().out
    assert "| lenet | jaxcnn warm |" in table and f"{res['ratio_warm']:.2f}x" in table
