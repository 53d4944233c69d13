"""Each torch-semantics layer against the torch module of the same name, table-driven:
forward and input gradient, on NHWC (jaxcnn) vs NCHW (torch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

import jaxcnn
from jaxcnn import layers as L
from jaxcnn.testing import assert_close


def _nchw(a: np.ndarray) -> np.ndarray:
    """Channels-last to torch's channels-second (NHWC -> NCHW, NLC -> NCL)."""
    return np.moveaxis(a, -1, 1) if a.ndim >= 3 else a


def _check(layer, tlayer: tnn.Module, shape_nhwc: tuple[int, ...], what: str,
           seed: int = 0) -> None:
    """Forward and d(sum(out * w))/dx agree; the torch layer's state converts in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_nhwc).astype(np.float32)
    xt = torch.from_numpy(_nchw(x).copy()).requires_grad_()
    out_t = tlayer(xt)
    w = rng.standard_normal(tuple(out_t.shape)).astype(np.float32)
    (out_t * torch.from_numpy(w)).sum().backward()

    variables = jaxcnn.from_torch_state_dict(layer, tlayer.state_dict())

    def f(x):
        out = layer.apply(variables, x)
        return jnp.sum(out * jnp.asarray(_nchw_to_nhwc(w))), out

    (_, out_j), gx = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(x))
    assert out_j.shape == _nchw_to_nhwc(out_t.detach().numpy()).shape, what
    assert_close(np.asarray(out_j), _nchw_to_nhwc(out_t.detach().numpy()), f"{what}: output")
    assert_close(np.asarray(gx), _nchw_to_nhwc(xt.grad.numpy()), f"{what}: input gradient")


def _nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if a.ndim >= 3 else a


POOL_CASES = [
    # (kernel, stride, padding, ceil_mode, H, W)
    (2, 2, 0, False, 8, 8), (3, 2, 0, False, 13, 13), (3, 2, 1, False, 13, 12),
    (3, 2, 0, True, 12, 13), (3, 2, 1, True, 10, 11), (2, 2, 1, True, 5, 7),
    ((3, 2), (2, 1), (1, 0), True, 9, 6), (3, 3, 1, True, 7, 8), (5, 1, 2, False, 6, 6),
]


@pytest.mark.parametrize("k,s,p,ceil,h,w", POOL_CASES)
def test_max_pool(k, s, p, ceil, h, w) -> None:
    _check(L.MaxPool2d(k, s, p, ceil), tnn.MaxPool2d(k, s, p, ceil_mode=ceil), (2, h, w, 3),
           f"MaxPool2d(k={k}, s={s}, p={p}, ceil={ceil}) on {h}x{w}")


@pytest.mark.parametrize("k,s,p,ceil,h,w", POOL_CASES)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avg_pool(k, s, p, ceil, h, w, include_pad) -> None:
    _check(L.AvgPool2d(k, s, p, ceil, count_include_pad=include_pad),
           tnn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include_pad), (2, h, w, 3),
           f"AvgPool2d(k={k}, s={s}, p={p}, ceil={ceil}, include_pad={include_pad}) on {h}x{w}")


def test_avg_pool_divisor_override() -> None:
    _check(L.AvgPool2d(3, 2, 1, True, divisor_override=5),
           tnn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=5), (1, 9, 10, 2),
           "AvgPool2d(divisor_override=5)")


@pytest.mark.parametrize("h,w,out", [(8, 8, 1), (8, 8, (2, 4)), (7, 5, 3), (10, 9, (4, 7)),
                                     (5, 5, 7), (13, 11, (5, 3)), (6, 6, (6, 6))])
def test_adaptive_avg_pool_bins(h, w, out) -> None:
    _check(L.AdaptiveAvgPool2d(out), tnn.AdaptiveAvgPool2d(out), (2, h, w, 3),
           f"AdaptiveAvgPool2d({out}) on {h}x{w}")


def test_pool_geometry_errors_name_the_layer() -> None:
    with pytest.raises(ValueError, match="at most half the kernel"):
        L.MaxPool2d(2, 2, 2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(jaxcnn.layers.ShapeError, match="too small"):
        L.MaxPool2d(5, 1).init(jax.random.key(0), jnp.zeros((1, 3, 3, 1)))


@pytest.mark.parametrize("cin,cout,k,s,p,bias,h", [
    (1, 6, 5, 1, 0, True, 28), (3, 4, 3, 1, 1, True, 9), (2, 5, (3, 5), (2, 1), (1, 2), False, 11),
    (4, 4, 1, 1, 0, True, 5), (1, 8, 11, 4, 0, True, 40), (3, 2, 4, 3, 2, True, 10),
])
def test_conv2d(cin, cout, k, s, p, bias, h) -> None:
    torch.manual_seed(0)
    _check(L.Conv2d(cin, cout, k, s, p, use_bias=bias),
           tnn.Conv2d(cin, cout, k, s, p, bias=bias), (2, h, h + 1, cin),
           f"Conv2d({cin}, {cout}, k={k}, s={s}, p={p}, bias={bias})")


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias) -> None:
    torch.manual_seed(0)
    _check(L.Linear(7, 5, use_bias=bias), tnn.Linear(7, 5, bias=bias), (3, 7), "Linear")


def test_flatten_uses_torch_order_so_imported_linear_applies() -> None:
    """A torch Linear after view(N, -1) on NCHW gives the same result as jaxcnn's flatten of
    the NHWC array followed by the converted Linear."""
    torch.manual_seed(0)
    tl = tnn.Linear(3 * 4 * 5, 6)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = tl(torch.from_numpy(x).view(2, -1)).detach().numpy()
    lin = L.Linear(60, 6)
    v = jaxcnn.from_torch_state_dict(lin, tl.state_dict())
    got = lin.apply(v, L.flatten_torch_order(jnp.asarray(np.transpose(x, (0, 2, 3, 1)))))
    assert_close(np.asarray(got), expected, "Linear after torch-order flatten")


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("kind,shape", [("2d", (4, 5, 6, 3)), ("1d", (6, 7)),
                                        ("1d", (4, 5, 3))])
def test_batchnorm_train_updates_and_eval(kind, shape, momentum) -> None:
    """Train steps update running stats with torch's convention (unbiased var, momentum or a
    cumulative average, num_batches_tracked); eval uses them; outputs and grads agree."""
    c = shape[-1]
    tbn = (tnn.BatchNorm2d if kind == "2d" else tnn.BatchNorm1d)(c, momentum=momentum)
    jbn = (L.BatchNorm2d if kind == "2d" else L.BatchNorm1d)(c, momentum=momentum)
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 1.5)
        tbn.bias.normal_()
    variables = jaxcnn.from_torch_state_dict(jbn, tbn.state_dict())
    rng = np.random.default_rng(0)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()) if len(shape) > 2 else \
            torch.from_numpy(x)
        out_t = tbn.train()(xt).detach().numpy()
        out_j, state = jbn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
        variables = {**variables, **state}
        expected = np.moveaxis(out_t, 1, -1) if len(shape) > 2 else out_t
        assert_close(np.asarray(out_j), expected, f"BatchNorm{kind} train output, step {step}")
        got = jaxcnn.to_torch_state_dict(jbn, variables)
        for key, value in tbn.state_dict().items():
            assert_close(got[key], value.numpy(), f"BatchNorm{kind} {key}, step {step}")
    assert int(got["num_batches_tracked"]) == 3
    _check(jbn, tbn.eval(), shape, f"BatchNorm{kind} eval")


def test_batchnorm_refuses_one_value_per_channel() -> None:
    bn = L.BatchNorm1d(3)
    v = bn.init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(jaxcnn.layers.ShapeError, match="more than 1 value per channel"):
        bn.apply(v, jnp.zeros((1, 3)), train=True, mutable=["batch_stats"])


def test_shape_errors_name_the_layer_and_hint_at_nchw() -> None:
    model = jaxcnn.create_model("lenet")
    with pytest.raises(jaxcnn.layers.ShapeError, match=r"conv\.0.*nchw_to_nhwc"):
        model.init(jax.random.key(0), jnp.zeros((1, 1, 28, 28)))
    with pytest.raises(jaxcnn.layers.ShapeError, match=r"fc\.0.*256 features"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
def test_dropout_with_given_mask_matches_torch(p) -> None:
    import torch_ref

    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    mask = np.random.default_rng(1).random((4, 10)) > p
    d = L.Dropout(p)
    got = d.apply({"dropout_masks": {"mask": mask}}, jnp.asarray(x), train=True)
    tm = tnn.Sequential(tnn.Dropout(p)).train()
    with torch_ref.fixed_dropout_masks(tm, {"0": mask}):
        expected = tm(torch.from_numpy(x)).numpy()
    if p == 0.0:  # torch's p=0 dropout is the identity; so is jaxcnn's, whatever the mask
        expected = x
    assert_close(np.asarray(got), expected, f"Dropout(p={p}) with a fixed mask")
    assert np.array_equal(np.asarray(d.apply({}, jnp.asarray(x), train=False)), x)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.7])
@pytest.mark.parametrize("shape", [(64, 3, 5, 5), (64, 40)], ids=["NCHW", "NF"])
def test_dropout_matches_real_nn_dropout(p: float, shape: tuple[int, ...]) -> None:
    """Against torch's own ``nn.Dropout`` (its RNG, its scaling), not the mask-replay hook: on
    a strictly positive input, the zeros of its output are its mask. jaxcnn's Dropout with that
    mask, and ``torch_ref.fixed_dropout_masks`` replaying it, must both give nn.Dropout's output.
    p != 0.5 tells ``1 / (1 - p)`` from ``1 / p``."""
    import torch_ref

    torch.manual_seed(0)
    x = torch.rand(shape) + 0.5
    drop = tnn.Sequential(tnn.Dropout(p)).train()
    expected = drop(x).numpy()
    mask = expected != 0.0
    assert abs(mask.mean() - (1 - p)) < 0.05, "the recovered mask's keep rate"
    got = L.Dropout(p).apply({"dropout_masks": {"mask": _nchw_to_nhwc(mask)}},
                             jnp.asarray(_nchw_to_nhwc(x.numpy())), train=True)
    assert_close(np.asarray(got), _nchw_to_nhwc(expected), f"Dropout(p={p}) vs nn.Dropout")
    with torch_ref.fixed_dropout_masks(drop, {"0": mask}):
        replayed = drop(x).numpy()
    assert_close(replayed, expected, f"fixed_dropout_masks(p={p}) vs nn.Dropout")


def test_dropout_draws_record_and_reuse_masks() -> None:
    d = L.Dropout(0.5)
    x = jnp.ones((1000,))
    y, state = d.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)},
                       mutable=["dropout_masks"])
    mask = np.asarray(state["dropout_masks"]["mask"])
    assert 400 < mask.sum() < 600
    assert np.array_equal(np.asarray(y), np.where(mask, 2.0, 0.0))
    again = d.apply(state, x, train=True)  # no rng needed: the mask is given
    assert np.array_equal(np.asarray(again), np.asarray(y))
    with pytest.raises(ValueError, match="dropout mask has shape"):
        d.apply(state, jnp.ones((10,)), train=True)


def test_book_batchnorm_matches_book_formula() -> None:
    """The book's BatchNorm: momentum 0.9 meaning, biased moving variance, zero-initialised
    moving statistics; against torch_ref's copy of the book's code."""
    import torch_ref

    for num_dims, shape in ((4, (4, 5, 6, 3)), (2, (8, 3))):
        tbn = torch_ref.BatchNorm(3, num_dims)
        jbn = L.BatchNorm(3, num_dims)
        variables = jbn.init(jax.random.key(0), jnp.zeros(shape))
        init = jaxcnn.to_torch_state_dict(jbn, variables)
        assert all(np.array_equal(init[k], v.numpy()) for k, v in tbn.state_dict().items())
        assert not init["moving_var"].any() and not init["moving_mean"].any()
        rng = np.random.default_rng(0)
        for _ in range(3):
            x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
            xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy() if num_dims == 4 else x)
            tbn.train()(xt)
            _, state = jbn.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
            variables = {**variables, **state}
        got = jaxcnn.to_torch_state_dict(jbn, variables)
        for key, value in tbn.state_dict().items():
            assert_close(got[key], value.numpy(), f"book BatchNorm({num_dims}-D) {key}")
        # moving_var followed the biased variance: 1 - 0.9**3 of a ~9 variance
        assert 0.2 * 9 < float(got["moving_var"].mean()) < 0.35 * 9
        _check(jbn, tbn.eval(), shape, f"book BatchNorm({num_dims}-D) eval")


def test_conv2d_large_layer_gradients(monkeypatch) -> None:
    """Layers whose im2col matrix exceeds PATCHES_LIMIT take their kernel gradient as a
    convolution (under JAXCNN_KERNELS=xla: XLA's own gradients)."""
    from jaxcnn.ops import conv as conv_ops

    monkeypatch.setattr(conv_ops, "PATCHES_LIMIT", 0)
    torch.manual_seed(0)
    _check(L.Conv2d(3, 5, 3, 2, 1), tnn.Conv2d(3, 5, 3, 2, 1), (2, 13, 12, 3),
           "Conv2d(3, 5, k=3, s=2, p=1) through XLA's gradients")
