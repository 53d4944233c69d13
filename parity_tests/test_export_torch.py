"""A trained jaxcnn run, exported with ``jaxcnn export``, loads into the torch twin strictly and
gives the same test accuracy and logits there."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

import torch_ref
from jaxcnn import nhwc_to_nchw
from jaxcnn.cli import main
from jaxcnn.data import DeviceDataset, load_fashion_mnist, preprocess
from jaxcnn.testing import assert_close
from jaxcnn.training import OptimizerConfig, TrainConfig, evaluate_accuracy, train

from ._cases import SMALL_VGG

N_TRAIN, N_TEST, BATCH = 384, 200, 128  # 3 training steps


@pytest.fixture(scope="module")
def data():
    fm = load_fashion_mnist(download=False)
    return (DeviceDataset.from_arrays(fm.train_images[:N_TRAIN], fm.train_labels[:N_TRAIN]),
            DeviceDataset.from_arrays(fm.test_images[:N_TEST], fm.test_labels[:N_TEST]))


@pytest.mark.parametrize("model, model_config", [
    ("lenet", {}),
    ("lenet_bn", {"bn": "torch"}),
    ("lenet_bn", {"bn": "scratch"}),
    ("vgg", SMALL_VGG),  # with dropout layers
], ids=["lenet", "lenet_bn-torch", "lenet_bn-scratch", "vgg-small"])
def test_export_loads_into_torch_ref(model, model_config, data, tmp_path, capsys):
    config = TrainConfig(model=model, model_config=model_config, batch_size=BATCH, epochs=1,
                         optimizer=OptimizerConfig("adam", 0.01), seed=2)
    work = tmp_path / "run"
    run = train(config, work, datasets=data, log=None, progress=False)
    assert int(run.state.step) == 3
    out = tmp_path / "model.safetensors"
    assert main(["export", "--workdir", str(work), "--out", str(out)]) == 0
    capsys.readouterr()

    tm = torch_ref.create_model(model, **model_config)
    tm.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    tm.eval()
    _, test = data
    x = np.asarray(preprocess(test.images, None))  # NHWC float32 in [0, 1]
    y = np.asarray(test.labels)
    with torch.no_grad():
        torch_logits = tm(torch.from_numpy(nhwc_to_nchw(x).copy())).numpy()
    torch_acc = float(np.mean(torch_logits.argmax(axis=1) == y))

    jax_acc = evaluate_accuracy(run.model, run.state.variables, test, BATCH)
    assert torch_acc == jax_acc == run.history[-1].test_acc
    jax_logits = np.asarray(run.model.apply(run.state.variables, x, train=False))
    assert_close(jax_logits, torch_logits, f"{model} {model_config} eval logits")
    if "bn" in model_config:  # the trained BN statistics travelled, not the initial ones
        stats = {k: v for k, v in tm.state_dict().items() if "mean" in k}
        assert stats and all(float(v.abs().sum()) > 0 for v in stats.values())
