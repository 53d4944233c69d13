"""One registry on both sides, and torch's default initialisation in jaxcnn."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.registry import get_spec
from jaxcnn.training import create_train_state

from ._cases import CASES, TEST_CONFIGS, Case

IDS = [c.id for c in CASES]


def test_both_sides_build_every_registered_model() -> None:
    names = jaxcnn.list_models()
    assert {"lenet", "lenet_bn", "alexnet", "vgg11", "vgg", "nin"} <= set(names)
    assert torch_ref.list_models() == names
    assert sorted(torch_ref.models.TORCH_BUILDERS) == sorted(names)  # each has its torch twin
    assert sorted(TEST_CONFIGS) == sorted(names)  # and test configurations
    for name in names:
        assert isinstance(torch_ref.create_model(name, **TEST_CONFIGS[name][0][0]),
                          torch.nn.Module)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fresh_jaxcnn_model_is_distributed_like_a_fresh_torch_model(case: Case) -> None:
    """Same names and shapes as torch's state dict; weights and biases uniform within
    +-1/sqrt(fan_in) with the matching spread; BatchNorm starts as torch's (or the book's).
    The fresh state of ``jaxcnn.training.create_train_state``, as ``jaxcnn train`` makes it
    (its one init program)."""
    model = jaxcnn.create_model(case.name, **case.kwargs)
    in_ch = jaxcnn.make_config(case.name, **case.kwargs).in_channels
    state = create_train_state(model, jax.random.key(0), (1, case.size, case.size, in_ch),
                               optax.identity())
    variables = state.variables
    ours = jaxcnn.to_torch_state_dict(model, variables)
    torch.manual_seed(0)
    theirs = {k: v.numpy() for k, v in
              torch_ref.create_model(case.name, **case.kwargs).state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    tmodules = dict(torch_ref.create_model(case.name, **case.kwargs).named_modules())
    for key, value in ours.items():
        module = tmodules[key.rsplit(".", 1)[0]]
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            fan_in = module.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(value).max() <= bound, f"{case.id}: {key} exceeds 1/sqrt(fan_in)"
            if value.size >= 2000:
                assert abs(value.std() - bound / math.sqrt(3)) < 0.05 * bound, key
                assert abs(value.std() - theirs[key].std()) < 0.05 * bound, key
                assert abs(value.mean()) < 0.05 * bound, key
        else:  # BatchNorm: exactly torch's (or the book's) initial values
            assert np.array_equal(value, theirs[key]), f"{case.id}: {key} initial value"


def test_unknown_model_and_option_errors_are_actionable() -> None:
    with pytest.raises(KeyError, match="Did you mean 'lenet'"):
        jaxcnn.create_model("lenett")
    with pytest.raises(KeyError, match="unknown model"):
        torch_ref.create_model("resnet")
    with pytest.raises(TypeError, match="has no option 'ratoi'; it takes ratio"):
        jaxcnn.create_model("vgg11", ratoi=8)
    with pytest.raises(ValueError, match="bn must be 'torch' or 'scratch'"):
        jaxcnn.create_model("lenet_bn", bn="flax")
    with pytest.raises(ValueError, match="block 2 takes 16 channels but block 1 gives 8"):
        jaxcnn.create_model("vgg", conv_arch=((1, 1, 8), (1, 16, 16)))
    with pytest.raises(ValueError, match="ratio must divide 64"):
        jaxcnn.create_model("vgg11", ratio=3)


def test_vgg11_ratio_8_is_the_books_small_vgg() -> None:
    cfg = jaxcnn.make_config("vgg11", ratio=8).to_vgg()
    assert cfg.conv_arch == ((1, 1, 8), (1, 8, 16), (2, 16, 32), (2, 32, 64), (2, 64, 64))
    assert (cfg.fc_features, cfg.fc_hidden_units) == (64 * 7 * 7, 512)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "nin", "vgg11"])
def test_num_classes_and_in_channels(name: str) -> None:
    kw = {"ratio": 8} if name == "vgg11" else {}
    model = jaxcnn.create_model(name, num_classes=7, in_channels=3, **kw)
    size = get_spec(name).input_size
    x = jnp.zeros((2, size, size, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert out.shape == (2, 7)
    tm = torch_ref.create_model(name, num_classes=7, in_channels=3, **kw)
    assert tm(torch.zeros(2, 3, size, size)).shape == (2, 7)
