"""Outputs, gradients and BatchNorm state of every registered model against its torch twin.

Each case starts from torch-initialised random weights converted to jaxcnn. Tolerance (one
rule, :mod:`jaxcnn.testing`): max |diff| <= 1e-5 x max(1, max |torch value|); for gradients the
scale is each parameter's torch gradient.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
import pytest
import torch

import jaxcnn
import torch_ref
from jaxcnn.models.d2l_ch5 import VGG11_ARCH
from jaxcnn.testing import (
    DEFAULT_RTOL,
    assert_close,
    assert_referee,
    grad_scales,
    tolerance,
)

from ._branches import EXACT_RTOL, float64_referee
from ._cases import (
    BN_CASES,
    CASES,
    FLIPS,
    Case,
    check_close,
    inputs,
    jax_fns,
    jax_input,
    jitted_apply,
    make_pair,
    record,
    torch_output_to_numpy,
    torch_train_grads,
)

IDS = [c.id for c in CASES]


def _train_apply(pair, variables, x, masks=None):
    """jaxcnn train-mode forward; returns (out, new batch_stats, dropout masks used)."""
    v = dict(variables)
    if masks is not None:
        v["dropout_masks"] = masks
    out, state = jitted_apply(pair.model)(
        v, jax_input(x), train=True, mutable=("batch_stats", "dropout_masks"),
        rngs={"dropout": jax.random.key(7)},
    )
    return out, state.get("batch_stats", {}), state.get("dropout_masks", {})


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eval_outputs_match(case: Case) -> None:
    pair = make_pair(case)
    x, _ = inputs(case)
    tm = pair.fresh_torch().eval()
    with torch.no_grad():
        expected = torch_output_to_numpy(tm(torch.from_numpy(x)))
    got = np.asarray(jitted_apply(pair.model)(pair.variables, jax_input(x), train=False))
    assert got.shape == expected.shape, f"{case.id}: output shape {got.shape} != {expected.shape}"
    check_close(case.id, "eval output", got, expected, f"{case.id}: eval output")


def check_gradients(case_id: str, grads_j: dict[str, Any], grads_32: dict[str, np.ndarray],
                    grads_64: dict[str, np.ndarray], grads_j64: dict[str, np.ndarray],
                    same_branch: dict[str, np.ndarray], rtol: float = DEFAULT_RTOL) -> None:
    """Every gradient, each tensor on its own scale (``grad_scales`` of torch's float64
    gradients; see ``_branches``): jaxcnn float64 against torch float64 within ``EXACT_RTOL``;
    jaxcnn float32 against jaxcnn float64 on float32's branches (``same_branch``) at most
    ``REFEREE_C`` times further than torch float32 is from torch float64, or ``rtol``."""
    assert list(grads_j) == list(grads_32) == list(grads_64) == list(grads_j64), \
        f"{case_id}: parameter names/order differ"
    scales = grad_scales(grads_64)
    for key, g64 in grads_64.items():
        what = f"{case_id}: gradient of {key}"
        diff = assert_close(grads_j64[key], g64, f"{what} (float64)", EXACT_RTOL, scales[key])
        record(case_id, "parameter gradients, float64 (jaxcnn vs torch)", diff,
               tolerance(g64, EXACT_RTOL, scales[key]))
        diff, bound = assert_referee(grads_j[key], grads_32[key], g64, what,
                                     tolerance(g64, rtol, scales[key]),
                                     reference=same_branch[key])
        record(case_id, "parameter gradients, float32 (vs float64, own scale)", diff, bound)


def gradient_check(case_id: str, pair: Any, x: np.ndarray, y: np.ndarray,
                   masks: dict[str, Any]) -> tuple[Any, Any, tuple[int, int]]:
    """Train mode with the dropout ``masks`` on all four sides (torch float32 and float64,
    jaxcnn float32 and float64); checks every gradient (``check_gradients``). Returns
    jaxcnn's float32 ``(loss, output)`` and the branch flips of its float32 forward."""
    torch_masks = jaxcnn.convert.dropout_masks_to_torch(pair.model, masks)
    out_t, loss_t, grads_32 = torch_train_grads(pair, x, y, torch_masks)
    _, _, grads_64 = torch_train_grads(pair, x, y, torch_masks, torch.float64)
    out_t, loss_t = torch_output_to_numpy(out_t), float(loss_t.detach())
    case = pair.case

    other = {k: v for k, v in pair.variables.items() if k != "params"}
    if masks:
        other["dropout_masks"] = masks
    args = (pair.variables["params"], other, jax_input(x), y)
    (loss_j, (_, out_j), g32), (_, _, g64), (_, _, same), flips = float64_referee(
        jax_fns(case)[1:], args)
    check_close(case_id, "train output (same dropout masks)", np.asarray(out_j), out_t,
                f"{case_id}: train output")
    check_close(case_id, "loss", float(loss_j), loss_t, f"{case_id}: loss")
    to_torch = functools.partial(jaxcnn.to_torch_state_dict, pair.model, collections=("params",))
    check_gradients(case_id, to_torch({"params": g32}), grads_32, grads_64,
                    to_torch({"params": g64}), to_torch({"params": same}))
    FLIPS[(case_id, "train gradients")] = flips
    return loss_j, out_j, flips


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_train_outputs_and_gradients_match(case: Case) -> None:
    """Train mode with the same dropout masks on both sides: output, loss, every gradient, on
    any input (``check_gradients``: no screening for max-pool near-ties or ReLU near-zeros)."""
    pair = make_pair(case)
    x, y = inputs(case, 1)
    _, _, masks = _train_apply(pair, pair.variables, x)  # draw and record the masks once
    n_dropout = sum(isinstance(m, jaxcnn.layers.Dropout) for m in jaxcnn.modules(pair.model))
    assert len(jaxcnn.convert.dropout_masks_to_torch(pair.model, masks)) == n_dropout
    gradient_check(case.id, pair, x, y, masks)


def _torch_buffers(tm: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tm.named_buffers()}


@pytest.mark.parametrize("case", BN_CASES, ids=[c.id for c in BN_CASES])
def test_batchnorm_state_after_1_and_10_batches_then_eval(case: Case) -> None:
    pair = make_pair(case)
    tm = pair.fresh_torch().train()
    variables = dict(pair.variables)
    for step in range(1, 11):
        x, _ = inputs(case, seed=100 + step, batch=8)
        with torch.no_grad():
            out_t = tm(torch.from_numpy(x))
        out_j, stats, _ = _train_apply(pair, variables, x)
        variables = {**variables, "batch_stats": stats}
        check_close(case.id, "BN train output", np.asarray(out_j), out_t.numpy(),
                    f"{case.id}: train output, batch {step}")
        if step in (1, 10):
            got = jaxcnn.to_torch_state_dict(pair.model, variables, collections=("batch_stats",))
            expected = _torch_buffers(tm)
            assert list(got) == list(expected)
            for key, value in expected.items():
                if key.endswith("num_batches_tracked"):
                    start = int(pair.state_dict[key])
                    assert int(got[key]) == int(value) == start + step, f"{case.id}: {key}"
                else:
                    check_close(case.id, f"BN running stats after {step}", got[key], value,
                                f"{case.id}: {key} after {step} batches")
    x, _ = inputs(case, seed=999)
    with torch.no_grad():
        expected_eval = tm.eval()(torch.from_numpy(x)).numpy()
    got_eval = np.asarray(jitted_apply(pair.model)(variables, jax_input(x), train=False))
    check_close(case.id, "BN eval output after 10 batches", got_eval, expected_eval,
                f"{case.id}: eval output after 10 training batches")


def test_every_bn_kind_is_covered() -> None:
    kinds = {dict(c.config).get("bn") for c in BN_CASES}
    assert kinds == {"torch", "scratch"}


def test_nin_layer_output_shapes_match_the_seed_notes() -> None:
    """NiN on 1x1x224x224: the ten per-layer shapes printed in the seed notes (NCHW)."""
    seed_shapes = [(1, 96, 54, 54), (1, 96, 26, 26), (1, 256, 26, 26), (1, 256, 12, 12),
                   (1, 384, 12, 12), (1, 384, 5, 5), (1, 384, 5, 5), (1, 10, 5, 5),
                   (1, 10, 1, 1), (1, 10)]
    model = jaxcnn.create_model("nin")
    x = jax.numpy.zeros((1, 224, 224, 1))
    variables = model.init(jax.random.key(0), x)
    shapes = []
    for _, layer in jaxcnn.named_children(model):
        x = layer.apply({"params": variables["params"].get(layer.name, {})}, x)
        shapes.append(tuple(x.shape))
    nchw = [(s[0], s[3], s[1], s[2]) if len(s) == 4 else s for s in shapes]
    assert nchw == seed_shapes
    tm = torch_ref.create_model("nin")
    t = torch.zeros(1, 1, 224, 224)
    torch_shapes = []
    for blk in tm.children():
        t = blk(t)
        torch_shapes.append(tuple(t.shape))
    assert torch_shapes == seed_shapes


#: VGG-11's full widths (every convolution and the 4096-unit classifier) on 64-pixel inputs:
#: the blocks end at 2x2, so the first Linear layer takes 512 * 2 * 2 features.
VGG11_FULL_WIDTH_64 = Case("vgg", (("conv_arch", VGG11_ARCH), ("fc_features", 512 * 2 * 2)), 64)


def test_full_size_vgg11_roundtrip_eval_output_and_gradients() -> None:
    """VGG-11 at ratio 1 (129M parameters, 224 px): the bit-exact weight round trip and the
    eval output. Then the full widths at 64 px (``VGG11_FULL_WIDTH_64``, 28M parameters; the
    same convolutions, 12x fewer pixels: the float64 referee at 224 px took 2 minutes), batch 1
    in train mode with its two dropout masks: the output, loss and every gradient with
    ``check_gradients``' two-link float64 referee, which judges any float32 near-tie (a ReLU
    input within rounding of zero, a max-pool window's two largest inputs within rounding)
    instead of a search for an input without one (the run prints the count of flips)."""
    case = Case("vgg11", (("ratio", 1),), 224)
    pair = make_pair(case)
    back = jaxcnn.to_torch_state_dict(pair.model, pair.variables)
    for key, value in pair.state_dict.items():
        assert np.array_equal(back[key], value.numpy()), key
    x, _ = inputs(case, 1, batch=1)
    with torch.no_grad():
        expected = pair.fresh_torch().eval()(torch.from_numpy(x)).numpy()
    got = np.asarray(jitted_apply(pair.model)(pair.variables, jax_input(x)))
    check_close(case.id, "eval output", got, expected, "vgg11 (ratio 1): eval output")
    case = VGG11_FULL_WIDTH_64
    pair = make_pair(case)
    assert [m.out_channels for m in jaxcnn.modules(pair.model)
            if isinstance(m, jaxcnn.layers.Conv2d)
            ] == [out for n, _, out in VGG11_ARCH for _ in range(n)]
    x, y = inputs(case, 1, batch=1)
    _, _, masks = _train_apply(pair, pair.variables, x)
    gradient_check("vgg11 (full width, 64 px)", pair, x, y, masks)
