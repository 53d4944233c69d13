"""jaxcnn.ops: every fast CPU formulation against the plain XLA definition (values and
gradients, float32 and bfloat16), and the one switch that selects them.

Tolerances, relative to the largest magnitude of the reference (``scale``): float32
``rtol = atol / scale = 1e-5`` (the formulations differ only in summation order); bfloat16
``5e-2`` (8-bit mantissa: one rounding is 4e-3, sums of up to 150 rounded terms in different
orders drift further).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model, ops
from jaxcnn.ops import conv as conv_ops
from jaxcnn.ops import norm as norm_ops
from jaxcnn.ops import select

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 5e-2}
DTYPES = [pytest.param(jnp.float32, id="f32"), pytest.param(jnp.bfloat16, id="bf16")]


@pytest.fixture(autouse=True)
def _reset_switch(monkeypatch):
    monkeypatch.delenv(select.ENV_VAR, raising=False)
    ops.set_kernels(None)
    yield
    ops.set_kernels(None)


def assert_close(got, ref, dtype, what: str) -> None:
    got = np.asarray(jnp.asarray(got, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    assert got.shape == ref.shape, what
    tol = TOL[dtype]
    scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=what)


def normal(shape, seed: int, dtype=jnp.float32, scale: float = 1.0, shift: float = 0.0):
    """Standard-normal values (numpy's generator: ``jax.random.normal`` compiles for a second
    per new shape on the CPU), times ``scale`` plus ``shift``, as ``dtype``."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jnp.asarray(values * np.float32(scale) + np.float32(shift), dtype)


def values_and_grads(f, args, seed: int = 1):
    """``f(*args)`` and the gradients of ``<f(*args), ct>`` for a random cotangent ``ct``
    (jitted: one compilation instead of one per primitive)."""
    leaves, tree = jax.tree.flatten(jax.eval_shape(f, *args))
    ct = tree.unflatten([normal(o.shape, seed + i, o.dtype) for i, o in enumerate(leaves)])

    @jax.jit
    def run(a, cotangent):
        out, vjp = jax.vjp(f, *a)
        return out, vjp(cotangent)

    return run(tuple(args), ct)


def compare(fast, plain, args, dtype, what: str) -> None:
    (y1, g1), (y2, g2) = values_and_grads(fast, args), values_and_grads(plain, args)
    for a, b in zip(jax.tree.leaves((y1, g1)), jax.tree.leaves((y2, g2)), strict=True):
        assert a.dtype == b.dtype == dtype, what
        assert_close(a, b, dtype, what)


# --- convolution ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvCase:
    name: str
    x: tuple[int, int, int, int]  # NHWC
    kernel: tuple[int, int, int, int]  # HWIO
    stride: tuple[int, int]
    padding: tuple[int, int]
    shift: bool  # forward as a sum of shifted views
    patches: bool  # kernel gradient as an im2col product (else as a convolution)
    col2im: bool  # input gradient as a matrix product and col2im (else as a convolution)
    limits: tuple[int, int] | None = None  # (PATCHES_LIMIT, PATCHES_LIMIT_WIDE) to force it


CONV_CASES = [
    ConvCase("shift_lenet", (2, 12, 11, 1), (5, 5, 1, 6), (1, 1), (2, 2), True, True, True),
    ConvCase("shift_strided", (2, 13, 12, 1), (3, 3, 1, 4), (2, 2), (1, 1), True, True, False),
    ConvCase("shift_kernel_conv", (2, 12, 11, 1), (5, 5, 1, 6), (1, 1), (2, 2), True, False,
             False, (0, 0)),
    ConvCase("one_channel_too_wide", (2, 9, 9, 1), (11, 11, 1, 9), (4, 4), (1, 1), False,
             True, False),
    ConvCase("patches", (2, 10, 9, 3), (3, 3, 3, 5), (1, 1), (1, 1), False, True, True),
    ConvCase("col2im_lenet2", (2, 14, 14, 6), (5, 5, 6, 16), (1, 1), (0, 0), False, True,
             True),
    ConvCase("col2im_rect", (2, 11, 9, 3), (3, 2, 3, 5), (1, 1), (1, 0), False, True, True),
    ConvCase("col2im_big_pad", (2, 5, 6, 2), (3, 3, 2, 4), (1, 1), (3, 2), False, True, True),
    ConvCase("one_by_one", (2, 6, 5, 8), (1, 1, 8, 4), (1, 1), (0, 0), False, True, False),
    ConvCase("too_wide_for_col2im", (2, 6, 6, 32), (3, 3, 32, 4), (1, 1), (1, 1), False, True,
             False),
    ConvCase("patches_rect", (2, 11, 9, 3), (3, 2, 3, 5), (2, 1), (1, 0), False, True, False),
    ConvCase("kernel_conv", (2, 10, 9, 3), (3, 3, 3, 5), (1, 1), (1, 1), False, False, False,
             (0, 0)),
    ConvCase("kernel_conv_strided", (2, 13, 12, 3), (3, 3, 3, 5), (2, 2), (1, 1), False,
             False, False, (0, 0)),
    ConvCase("kernel_conv_rect", (2, 11, 9, 3), (3, 2, 3, 5), (2, 1), (1, 0), False, False,
             False, (0, 0)),
    ConvCase("wide_patches", (2, 8, 8, 4), (3, 3, 4, 64), (1, 1), (1, 1), False, True, False,
             (0, 2**30)),
    ConvCase("wide_kernel_conv", (2, 8, 8, 4), (3, 3, 4, 64), (2, 2), (0, 0), False, False,
             False, (0, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv2d_fast_matches_definition(case: ConvCase, dtype, monkeypatch) -> None:
    if case.limits is not None:
        monkeypatch.setattr(conv_ops, "PATCHES_LIMIT", case.limits[0])
        monkeypatch.setattr(conv_ops, "PATCHES_LIMIT_WIDE", case.limits[1])
    kh, kw, cin, cout = case.kernel
    assert conv_ops.use_shift(cin, (kh, kw), cout) == case.shift
    out = (2, *((case.x[1 + a] + 2 * case.padding[a] - case.kernel[a]) // case.stride[a] + 1
                for a in range(2)), cout)
    assert conv_ops.use_patches(case.x, out, case.kernel, dtype) == case.patches
    assert conv_ops.use_col2im(out, case.kernel, case.stride, dtype) == case.col2im
    x = normal(case.x, 0, dtype)
    kernel = normal(case.kernel, 1, dtype, scale=0.3)

    def fast(a, b):
        return ops.conv2d_cpu(a, b, case.stride, case.padding)

    def plain(a, b):
        return ops.conv2d_xla(a, b, case.stride, case.padding)

    assert jax.eval_shape(fast, x, kernel).shape == out
    compare(fast, plain, (x, kernel), dtype, f"conv2d {case.name}")


def test_patches_threshold_counts_the_dtype_bytes() -> None:
    g, k = (8, 10, 10, 16), (3, 3)
    assert conv_ops.patches_bytes(g, k, 4, jnp.float32) == 4 * 8 * 100 * 9 * 4
    assert conv_ops.patches_bytes(g, k, 4, jnp.bfloat16) == 2 * 8 * 100 * 9 * 4


# --- max pooling ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolCase:
    name: str
    x: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]


POOL_CASES = [
    PoolCase("tiled", (2, 8, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    PoolCase("tiled_ragged", (2, 9, 7, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    PoolCase("overlap", (2, 13, 13, 3), (3, 3), (2, 2), ((0, 0), (0, 0))),
    PoolCase("padded", (2, 7, 6, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    PoolCase("ceil_mode", (2, 8, 8, 3), (3, 3), (2, 2), ((0, 1), (0, 1))),
    PoolCase("rect", (2, 7, 9, 2), (2, 3), (1, 2), ((1, 0), (0, 1))),
]


def _pool_input(case: PoolCase, dtype, nans: bool) -> jax.Array:
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, case.x).astype(np.float32)  # few levels: many ties
    if nans:
        x[rng.random(case.x) < 0.08] = np.nan
    return jnp.asarray(x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nans", [False, True], ids=["ties", "nans"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_max_pool2d_fast_matches_definition(case: PoolCase, nans: bool, dtype) -> None:
    x = _pool_input(case, dtype, nans)
    args = (case.kernel, case.stride, case.pads)
    y1, g1 = values_and_grads(lambda a: ops.max_pool2d_cpu(a, *args), (x,))
    y2, g2 = values_and_grads(lambda a: ops.max_pool2d_xla(a, *args), (x,))
    np.testing.assert_array_equal(np.asarray(y1, np.float32), np.asarray(y2, np.float32))
    assert np.isnan(np.asarray(y1, np.float32)).any() == nans
    assert_close(g1[0], g2[0], dtype, f"max_pool2d {case.name} gradient")
    # Each window's gradient lands on exactly one element: none is lost.
    assert_close(jnp.sum(g1[0].astype(jnp.float32)), jnp.sum(g2[0].astype(jnp.float32)),
                 dtype, "gradient total")


@pytest.mark.parametrize("pool", [ops.max_pool2d_cpu, ops.max_pool2d_xla],
                         ids=["cpu", "xla"])
def test_max_pool2d_gradient_follows_torch_ties_and_nans(pool) -> None:
    """ATen scans a window row by row: the first maximum wins a tie, the last NaN wins."""
    x = jnp.asarray([[1.0, 3.0, np.nan, 1.0],
                     [3.0, 2.0, 0.0, np.nan]]).reshape(1, 2, 4, 1)
    y, vjp = jax.vjp(lambda a: pool(a, (2, 2), (2, 2), ((0, 0), (0, 0))), x)
    assert float(y[0, 0, 0, 0]) == 3.0 and np.isnan(float(y[0, 0, 1, 0]))
    (dx,) = vjp(jnp.asarray([[[[10.0], [20.0]]]]))
    expected = [[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 20.0]]
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)


# --- batch normalisation --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(96, 6), (7, 3), (64, 128), (512, 16)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_channel_sum_fast_matches_definition(shape, dtype) -> None:
    x = normal(shape, 0, dtype)
    compare(norm_ops.channel_sum_cpu, norm_ops.channel_sum_xla, (x,), dtype,
            f"channel_sum {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divide", [False, True], ids=["rsqrt", "book"])
@pytest.mark.parametrize("shape", [(96, 6), (7, 3), (64, 128)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_batch_norm_fast_matches_definition(shape, divide: bool, dtype) -> None:
    x = normal(shape, 0, dtype, scale=3.0, shift=1.0)
    scale = normal(shape[1:], 1, dtype, scale=0.1, shift=1.0)
    bias = normal(shape[1:], 2, dtype, scale=0.1)

    def run(mode: str):
        def f(a, s, b):
            return ops.batch_norm_train(a, s, b, 1e-5, divide)

        with ops.use_kernels(mode):
            return values_and_grads(f, (x, scale, bias))

    with ops.use_kernels("auto"):
        assert ops.fast_cpu_kernels() == (jax.default_backend() == "cpu")
    for a, b in zip(jax.tree.leaves(run("auto")), jax.tree.leaves(run("xla")), strict=True):
        assert_close(a, b, dtype, f"batch_norm_train {shape} divide={divide}")
    # The closed-form gradient is the autodiff gradient of the forward formula.
    def formula(a, s, b):
        mean = a.mean(0)
        var = ((a - mean) ** 2).mean(0)
        x_hat = (a - mean) / jnp.sqrt(var + 1e-5)
        return x_hat * s + b, mean, var

    if dtype == jnp.float32:
        for a, b in zip(jax.tree.leaves(run("xla")),
                        jax.tree.leaves(values_and_grads(formula, (x, scale, bias))),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                       atol=1e-4 * float(np.max(np.abs(np.asarray(b)))))


# --- the switch -----------------------------------------------------------------------------


def test_default_mode_is_auto_and_env_var_sets_it(monkeypatch) -> None:
    assert ops.kernels() == "auto"
    for value, mode in (("xla", "xla"), (" XLA ", "xla"), ("auto", "auto"), ("", "auto")):
        monkeypatch.setenv("JAXCNN_KERNELS", value)
        assert ops.kernels() == mode
    monkeypatch.setenv("JAXCNN_KERNELS", "xla")
    assert not ops.fast_cpu_kernels()


def test_invalid_env_var_names_the_variable_and_the_modes(monkeypatch) -> None:
    monkeypatch.setenv("JAXCNN_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"JAXCNN_KERNELS='fast'.*'auto', 'xla'"):
        ops.kernels()
    ops.set_kernels("xla")  # an explicit mode overrides the variable
    assert ops.kernels() == "xla"
    with pytest.raises(ValueError, match="'auto', 'xla'"):
        ops.set_kernels("cudnn")


def test_use_kernels_restores_the_previous_setting(monkeypatch) -> None:
    monkeypatch.setenv("JAXCNN_KERNELS", "xla")
    with ops.use_kernels("auto"):
        assert ops.kernels() == "auto"
        with ops.use_kernels("xla"):
            assert ops.kernels() == "xla"
        assert ops.kernels() == "auto"
    assert ops.kernels() == "xla" and select._mode is None  # back to the variable
    with pytest.raises(RuntimeError), ops.use_kernels("auto"):
        raise RuntimeError
    assert ops.kernels() == "xla"


def test_mode_is_chosen_at_trace_time_and_jitted_functions_retrace() -> None:
    seen: list[str] = []

    @jax.jit
    def f(x, k):
        seen.append(ops.kernels())
        return ops.conv2d(x, k, (1, 1), (0, 0))

    x, k = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2))
    jaxpr = {m: str(jax.make_jaxpr(lambda a, b: ops.conv2d(a, b, (1, 1), (0, 0)))(x, k))
             for m in ("auto", "xla") if not ops.set_kernels(m)}
    ops.set_kernels("auto")
    assert ("custom_vjp_call" in jaxpr["auto"]) == (jax.default_backend() == "cpu")
    assert "custom_vjp_call" not in jaxpr["xla"] and "conv_general_dilated" in jaxpr["xla"]
    f(x, k)
    with ops.use_kernels("xla"):
        f(x, k)
    f(x, k)
    assert seen == ["auto", "xla", "auto"]


def test_lenet_bn_forward_and_gradients_agree_across_modes() -> None:
    """A whole model (conv: shift and im2col paths, max pool, batch norm) under both modes."""
    model = create_model("lenet_bn")
    x = normal((16, 28, 28, 1), 1)
    variables = model.init(jax.random.key(0), x[:1])
    ct = normal((16, 10), 2)

    def loss(params):
        logits, state = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
        return jnp.sum(logits * ct), (logits, state)

    results = {}
    for mode in ("auto", "xla"):
        with ops.use_kernels(mode):
            results[mode] = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    # Scaled by the largest value of each part (loss, logits, statistics, gradients): the
    # gradients of the biases before a batch norm are zero up to rounding.
    for part_a, part_b in zip(jax.tree.leaves(results["auto"], is_leaf=_is_part),
                              jax.tree.leaves(results["xla"], is_leaf=_is_part), strict=True):
        leaves_b = [np.asarray(b) for b in jax.tree.leaves(part_b)]
        scale = max(float(np.max(np.abs(b))) for b in leaves_b)
        for a, b in zip(jax.tree.leaves(part_a), leaves_b, strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * scale)


def _is_part(t) -> bool:
    return isinstance(t, dict)


@pytest.mark.parametrize("mode", ["auto", "xla"])
@pytest.mark.parametrize("divide", [False, True], ids=["rsqrt", "book"])
@pytest.mark.parametrize("rows_per_example", [1, 9], ids=["1d", "2d"])
def test_weighted_batch_norm_is_the_real_rows_batch_norm(mode, divide, rows_per_example):
    """A batch padded with weight-0 examples (the epoch's partial last batch): y on the real
    rows, the statistics and the gradients (x, scale, bias) are batch_norm_train's on the real
    rows alone, padding rows get no gradient; with every weight 1 the plain path's numbers, bit
    for bit."""
    n_real, n_pad, c = 5, 3, 4
    m = (n_real + n_pad) * rows_per_example
    x = normal((m, c), 0, jnp.float32, scale=3.0, shift=1.0)
    scale = normal((c,), 1, jnp.float32, scale=0.1, shift=1.0)
    bias = normal((c,), 2, jnp.float32, scale=0.1)
    g = normal((m, c), 3, jnp.float32)
    real = n_real * rows_per_example
    g = g.at[real:].set(0.0)  # the loss gives padding rows no gradient
    weights = jnp.array([1.0] * n_real + [0.0] * n_pad)

    def loss(a, s, b, w):
        with norm_ops.example_weights(w):
            y, mean, var = ops.batch_norm_train(a, s, b, 1e-5, divide)
        return jnp.sum(y * g[:len(a)]), (y, mean, var)

    with ops.use_kernels(mode):
        grads, (y, mean, var) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(
            x, scale, bias, weights)
        ref_grads, (ref_y, ref_mean, ref_var) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(
            x[:real], scale, bias, None)
        for got, want, what in [(y[:real], ref_y, "y"), (mean, ref_mean, "mean"),
                                (var, ref_var, "var"), (grads[0][:real], ref_grads[0], "dx"),
                                (grads[1], ref_grads[1], "dscale"),
                                (grads[2], ref_grads[2], "dbias")]:
            assert_close(got, want, jnp.float32, f"weighted batch norm {what} ({mode})")
        assert not np.any(np.asarray(grads[0][real:])), "padding rows got a gradient"

        ones = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(x, scale, bias, jnp.ones(8))
        plain = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(x, scale, bias, None)
        for a, b in zip(jax.tree.leaves(ones), jax.tree.leaves(plain), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weighted_batch_norm_refuses_rows_that_do_not_split_over_the_examples():
    with norm_ops.example_weights(jnp.ones(3)), pytest.raises(ValueError, match="3 weighted"):
        ops.batch_norm_train(jnp.ones((10, 2)), jnp.ones(2), jnp.zeros(2), 1e-5)
