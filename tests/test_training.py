"""Training: optimizer formulas, the step, the loop's bookkeeping, determinism, checkpoints."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import create_model
from jaxcnn.data import DeviceDataset, load_fashion_mnist, preprocess
from jaxcnn.layers import ShapeError
from jaxcnn.training import (
    PRESETS,
    CheckpointError,
    Checkpoints,
    EpochStats,
    NonFiniteError,
    OptimizerConfig,
    TrainConfig,
    _programs,
    chunk_indices,
    create_train_state,
    epoch_blocks,
    epoch_learning_rates,
    evaluate_accuracy,
    fit,
    latest_epoch,
    load_checkpoint,
    lr_schedule,
    make_optimizer,
    plot_history,
    resolve_config,
    resume_conflicts,
    train,
    train_epoch,
    train_scan,
    train_step,
)
from jaxcnn.training._run import init_state
from jaxcnn.training.steps import count_correct

TIMING = ("time", "images_per_sec")


# ----------------------------------------------------------------------------- optimizers


def closed_form_lr(cfg: OptimizerConfig, epoch: int, epochs: int) -> float:
    """The schedules' textbook formulas (torch docs), independent of the implementation."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)
    return cfg.eta_min + (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.mark.parametrize("cfg, epochs, expected", [
    (OptimizerConfig(lr=0.5), 3, [0.5, 0.5, 0.5]),
    (OptimizerConfig(lr=1.0, schedule="step", step_size=2, gamma=0.5), 5,
     [1, 1, 0.5, 0.5, 0.25]),
    (OptimizerConfig(lr=0.1, schedule="step", step_size=1, gamma=0.1), 3, [0.1, 0.01, 0.001]),
    (OptimizerConfig(lr=1.0, schedule="cosine"), 4,
     [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]),
    (OptimizerConfig(lr=0.2, schedule="cosine", eta_min=0.02), 5, None),
])
def test_epoch_learning_rates(cfg, epochs, expected):
    lrs = epoch_learning_rates(cfg, epochs)
    closed = [closed_form_lr(cfg, e, epochs) for e in range(epochs)]
    np.testing.assert_allclose(lrs, closed, rtol=1e-12)
    if expected is not None:
        np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    spe = 3  # the optax schedule: epoch = step // steps_per_epoch, clamped to the last epoch
    sched = lr_schedule(cfg, spe, epochs)
    got = [float(sched(jnp.asarray(s))) for s in range(spe * epochs + 4)]
    want = [np.float32(lrs[min(s // spe, epochs - 1)]) for s in range(spe * epochs + 4)]
    assert got == want


def _quadratic_grad(p: np.ndarray) -> np.ndarray:
    # d/dp of 0.5 * sum(a p^2) + sum(c p): depends on p, so weight decay's coupling matters.
    a = np.linspace(0.5, 2.0, p.size).reshape(p.shape)
    c = np.linspace(-1.0, 1.0, p.size).reshape(p.shape)
    return a * p + c


def torch_sgd_reference(p, lrs, momentum, nesterov, wd):
    """torch.optim.SGD.step, transcribed (dampening 0), in float64."""
    buf = None
    for lr in lrs:
        g = _quadratic_grad(p)
        if wd:
            g = g + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def torch_adam_reference(p, lrs, betas, eps, wd, decoupled):
    """torch.optim.Adam (decoupled=False) / AdamW (True).step, transcribed, in float64."""
    b1, b2 = betas
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, lr in enumerate(lrs, start=1):
        g = _quadratic_grad(p)
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        p = p - (lr / (1 - b1**t)) * m / denom
    return p


OPTIMIZER_CASES = [
    OptimizerConfig("sgd", 0.1),
    OptimizerConfig("sgd", 0.05, weight_decay=0.3),
    OptimizerConfig("sgd", 0.1, momentum=0.9, schedule="step", step_size=1, gamma=0.5),
    OptimizerConfig("sgd", 0.1, momentum=0.8, nesterov=True, weight_decay=0.1,
                    schedule="cosine"),
    OptimizerConfig("adam", 0.01),
    OptimizerConfig("adam", 0.02, weight_decay=0.5, schedule="step", step_size=2, gamma=0.3),
    OptimizerConfig("adamw", 0.02, schedule="cosine"),  # torch's default weight decay 0.01
    OptimizerConfig("adamw", 0.05, weight_decay=0.5, betas=(0.8, 0.99), eps=1e-3),
]


@pytest.mark.parametrize("cfg", OPTIMIZER_CASES, ids=lambda c: f"{c.name}-{c.schedule}")
def test_optimizer_matches_torch_formulas(cfg):
    spe, epochs = 2, 4
    steps = spe * epochs
    lrs = [epoch_learning_rates(cfg, epochs)[s // spe] for s in range(steps)]
    p0 = np.linspace(-1.5, 1.2, 12).reshape(3, 4)
    if cfg.name == "sgd":
        want = torch_sgd_reference(p0, lrs, cfg.momentum, cfg.nesterov,
                                   cfg.effective_weight_decay)
    else:
        want = torch_adam_reference(p0, lrs, cfg.betas, cfg.eps, cfg.effective_weight_decay,
                                    decoupled=cfg.name == "adamw")
    tx = make_optimizer(cfg, spe, epochs)
    params = {"w": jnp.asarray(p0, jnp.float32)}
    state = tx.init(params)
    for _ in range(steps):
        grads = {"w": jnp.asarray(_quadratic_grad(np.asarray(params["w"], np.float64)),
                                  jnp.float32)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert not np.allclose(want, p0)
    np.testing.assert_allclose(np.asarray(params["w"]), want, rtol=2e-5, atol=2e-6)


def test_adamw_default_weight_decay_is_torchs():
    assert OptimizerConfig("adamw").effective_weight_decay == 0.01
    assert OptimizerConfig("adam").effective_weight_decay == 0.0
    assert OptimizerConfig("sgd").effective_weight_decay == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "rmsprop"}, "optimizer must be one of"),
    ({"name": "sgd", "nesterov": True}, "nesterov needs"),
    ({"name": "adam", "momentum": 0.9}, "momentum applies to sgd only"),
    ({"lr": -1.0}, "lr must be a positive"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"schedule": "step", "step_size": 0}, "step_size must be"),
])
def test_optimizer_config_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


# ----------------------------------------------------------------------------- fixtures

N_TRAIN, N_TEST, BATCH = 600, 300, 128  # 5 batches per epoch, the last one of 88


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist(download=False)


@pytest.fixture(scope="module")
def datasets(fashion):
    train_ds = DeviceDataset.from_arrays(fashion.train_images[:N_TRAIN],
                                         fashion.train_labels[:N_TRAIN])
    test_ds = DeviceDataset.from_arrays(fashion.test_images[:N_TEST],
                                        fashion.test_labels[:N_TEST])
    return train_ds, test_ds


@pytest.fixture(scope="module")
def lenet_setup():
    """One model and optimizer object for the module, so the jitted steps compile once."""
    model = create_model("lenet")
    tx = make_optimizer(OptimizerConfig("adam", 0.01), 5, 3)
    return model, tx


def _fresh(lenet_setup, seed=0):
    model, tx = lenet_setup
    return create_train_state(model, jax.random.PRNGKey(seed), (1, 28, 28, 1), tx)


def _strip(history):
    return [{k: v for k, v in h.to_dict().items() if k not in TIMING} for h in history]


# ----------------------------------------------------------------------------- state and step


def test_create_train_state(lenet_setup):
    tx = optax.sgd(0.1)
    plain = create_train_state(lenet_setup[0], jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
    assert int(plain.step) == 0 and plain.batch_stats == {}
    assert set(plain.params) == {"conv", "fc"}
    bn = create_train_state(create_model("lenet_bn"), jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
    assert set(bn.batch_stats) == {"1", "5", "10", "13"}
    assert bn.dropout_key.shape == (2,) and bn.dropout_key.dtype == jnp.uint32


def test_train_step_bn_updates_stats_and_dropout_key(fashion):
    model = create_model("lenet_bn")
    tx = optax.sgd(0.1)
    state = create_train_state(model, jax.random.PRNGKey(1), (1, 28, 28, 1), tx)
    key0 = np.asarray(state.dropout_key)
    x = jnp.asarray(fashion.train_images[:32])
    y = jnp.asarray(fashion.train_labels[:32], jnp.int32)
    new, metrics = train_step(state, x, y)
    assert int(new.step) == 1 and int(metrics["count"]) == 32 and bool(metrics["finite"])
    assert int(new.batch_stats["1"]["num_batches_tracked"]) == 1
    assert not np.array_equal(np.asarray(new.dropout_key), key0)
    # eval mode afterwards uses the running statistics, not the batch's own: each sample's
    # logits do not depend on the rest of the batch, they do depend on the running statistics,
    # and they differ from the train-mode (batch statistics) logits
    variables = {"params": new.params, "batch_stats": new.batch_stats}
    xp = preprocess(x, None)
    logits_eval = np.asarray(model.apply(variables, xp, train=False))
    assert logits_eval.shape == (32, 10) and np.all(np.isfinite(logits_eval))
    alone = np.asarray(model.apply(variables, xp[:3], train=False))
    np.testing.assert_allclose(alone, logits_eval[:3], rtol=1e-5, atol=1e-5)
    logits_train, _ = model.apply(variables, xp, train=True, mutable=["batch_stats"])
    assert np.max(np.abs(np.asarray(logits_train) - logits_eval)) > 1e-2
    shifted = jax.tree_util.tree_map(lambda v: v + 0.5 if v.dtype != jnp.int32 else v,
                                     new.batch_stats)
    moved = np.asarray(model.apply({"params": new.params, "batch_stats": shifted}, xp,
                                   train=False))
    assert np.max(np.abs(moved - logits_eval)) > 1e-2


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


def test_epoch_bookkeeping_against_hand_computation(lenet_setup, datasets):
    train_ds, _ = datasets
    model, _ = lenet_setup
    # By hand: each batch's loss and correct count from the logits of the params it sees.
    state = _fresh(lenet_setup)
    losses, corrects, sizes = [], [], []
    for x, y in train_ds.batches(BATCH, shuffle=True, seed=3, epoch=0):
        logits = np.asarray(model.apply({"params": state.params}, preprocess(x, None)))
        losses.append(_cross_entropy(logits, np.asarray(y)).mean())
        corrects.append(int(np.sum(logits.argmax(axis=1) == np.asarray(y))))
        sizes.append(len(y))
        state, m = train_step(state, x, y)
        np.testing.assert_allclose(float(m["loss"]), losses[-1], rtol=1e-5)
        assert int(m["correct"]) == corrects[-1]
    hand_params = state.params
    assert sizes == [128, 128, 128, 128, 88]  # ceil(600/128) steps, the last batch partial

    state, stats = train_epoch(_fresh(lenet_setup), train_ds, batch_size=BATCH, epoch=1,
                               seed=3, progress=False)
    assert int(state.step) == 5 and stats["images"] == N_TRAIN
    np.testing.assert_allclose(stats["loss"], np.mean(losses), rtol=1e-5)
    assert stats["train_acc"] == sum(corrects) / N_TRAIN
    # the same updates; the partial batch is padded to 128 rows at weight 0 in the default
    # path (its sums run over more, zero, terms: float rounding)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(hand_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_chunk_indices_cover_the_full_batches_in_order():
    order = np.arange(23)[::-1]
    blocks = chunk_indices(order, 4, 2)
    assert [b.shape for b in blocks] == [(2, 4), (2, 4), (1, 4)]
    assert all(b.dtype == np.int32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks).ravel(), order[:20])
    with pytest.raises(ValueError, match="steps_per_call"):
        chunk_indices(order, 4, 0)


@pytest.mark.parametrize("n, batch, k, shapes, real", [
    (23, 4, 2, [(2, 4), (2, 4), (2, 4)], [4, 4, 4, 4, 4, 3]),  # the partial batch padded
    (24, 4, 4, [(4, 4), (2, 4)], [4] * 6),  # no partial batch
    (3, 8, 5, [(1, 8)], [3]),  # smaller than one batch
    (10, 4, 3, [(3, 4)], [4, 4, 2]),  # one call for the whole epoch
    # a single example left over stays its own batch (a BatchNorm refuses it, naming itself)
    (9, 4, 3, [(2, 4), (1, 1)], [4, 4, 1]),
])
def test_epoch_blocks_pad_the_partial_batch(n, batch, k, shapes, real):
    order = np.arange(n)[::-1].astype(np.int32)
    blocks = epoch_blocks(order, batch, k)
    assert [idx.shape for idx, _ in blocks] == shapes
    assert all(w.shape == idx.shape and w.dtype == np.float32 and idx.dtype == np.int32
               for idx, w in blocks)
    assert [int(row.sum()) for _, w in blocks for row in w] == real
    taken = np.concatenate([i[w > 0] for i, w in blocks])
    np.testing.assert_array_equal(taken, order)  # every example once, in order
    assert not any(i[w == 0].any() for i, w in blocks)  # padding: index 0 at weight 0
    with pytest.raises(ValueError, match="steps_per_call"):
        epoch_blocks(order, batch, 0)


def test_a_single_leftover_example_is_refused_by_batchnorm_by_name():
    """One example left over at the end of an epoch stays its own batch (not padded): a
    BatchNorm1d cannot train on it, and says so (as torch does) instead of the NaN that a
    padded batch of one real example would give its running variance."""
    _, state = init_state(resolve_config("lenet_bn"), 3)
    rng = np.random.default_rng(0)
    data = DeviceDataset.from_arrays(rng.integers(0, 256, (2 * 16 + 1, 28, 28), dtype=np.uint8),
                                     rng.integers(0, 10, (2 * 16 + 1,), dtype=np.int32))
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        train_epoch(state, data, batch_size=16, epoch=1, progress=False)


@pytest.mark.parametrize("preset", ["lenet", "lenet_bn", "lenet_bn_scratch"])
def test_a_padded_batch_trains_as_the_unpadded_one(preset):
    """The partial last batch padded to the full batch at weight 0 (one program per epoch)
    gives the unpadded batch's update: gradients (SGD with lr 1: the update is the gradient),
    BatchNorm statistics, loss and counts, to float32 rounding (the sums run over more, zero,
    terms); with every weight 1 a full batch gives the plain update."""
    _, state = init_state(resolve_config(preset), 1)
    sgd = optax.sgd(1.0)
    state = state.replace(tx=sgd, opt_state=sgd.init(state.params))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (200, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (200,), dtype=np.int32))
    order = rng.permutation(200).astype(np.int32)[:64 + 21]
    (idx, weights), = epoch_blocks(order, 64, 2)

    def run(indices, w=None):
        fresh = jax.tree.map(jnp.copy, state)
        new, metrics = train_scan(fresh, images, labels, jnp.asarray(indices),
                                  None if w is None else jnp.asarray(w))
        grads = jax.tree.map(lambda a, b: a - b, state.params, new.params)
        return grads, new.batch_stats, jax.tree.map(lambda m: np.asarray(m[-1]), metrics)

    def close(a, b, what):
        # relative to the largest value of the tree: a bias in front of a BatchNorm has a zero
        # true gradient, so its own scale is rounding noise
        if not jax.tree.leaves(b):
            return
        scale = max(float(np.abs(np.asarray(v)).max()) for v in jax.tree.leaves(b))
        for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                                strict=True):
            u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
            assert np.abs(u - v).max() <= 1e-5 * scale, (
                f"{preset}: {what} {jax.tree_util.keystr(path)}: max |diff| "
                f"{np.abs(u - v).max():.3g} > 1e-5 x {scale:.3g}")

    padded = run(idx[1:], weights[1:])
    plain = run(order[None, 64:])
    close(padded[0], plain[0], "gradient, padded vs unpadded:")
    close(padded[1], plain[1], "BatchNorm statistics, padded vs unpadded:")
    assert padded[2]["count"] == plain[2]["count"] == 21
    assert padded[2]["correct"] == plain[2]["correct"]
    np.testing.assert_allclose(padded[2]["loss"], plain[2]["loss"], rtol=1e-6)

    ones, plain_full = run(idx[:1], weights[:1]), run(idx[:1])
    close(ones[0], plain_full[0], "gradient, weights 1 vs plain:")
    close(ones[1], plain_full[1], "BatchNorm statistics, weights 1 vs plain:")
    assert ones[2]["loss"] == plain_full[2]["loss"] and ones[2]["count"] == 64


@pytest.mark.parametrize("model_name, steps_per_call, opt", [
    ("lenet", 2, OptimizerConfig("adam", 0.01)),
    ("lenet", 7, OptimizerConfig("adam", 0.01)),
    # SGD: the conv/linear biases in front of a BatchNorm get float32 noise as gradient
    # (~1e-9: BN removes any shift), which Adam scales up to +-lr whichever way it points.
    ("lenet_bn", 3, OptimizerConfig("sgd", 0.1, momentum=0.9)),
])
def test_steps_per_call_trains_exactly_as_one_step_per_call(datasets, model_name,
                                                             steps_per_call, opt):
    """Several updates per compiled call (lax.scan, batches gathered on the device): the same
    batches in the same order, the same updates (BN statistics and dropout keys included), the
    same epoch metrics and per-step callbacks."""
    train_ds, _ = datasets
    model = create_model(model_name)
    tx = make_optimizer(opt, 5, 3)
    runs = []
    for k in (1, steps_per_call):
        state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
        seen: list[tuple[int, float]] = []
        state, stats = train_epoch(state, train_ds, batch_size=BATCH, epoch=2, seed=3,
                                   progress=False, steps_per_call=k,
                                   on_step=lambda s, m, seen=seen: seen.append((s, m["loss"])))
        runs.append((state, stats, seen))
    (a, stats_a, seen_a), (b, stats_b, seen_b) = runs
    assert int(b.step) == int(a.step) == 5 and stats_b["images"] == stats_a["images"]
    assert [s for s, _ in seen_b] == [s for s, _ in seen_a] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in seen_b], [v for _, v in seen_a], rtol=1e-5)
    assert stats_b["train_acc"] == stats_a["train_acc"]
    np.testing.assert_array_equal(np.asarray(b.dropout_key), np.asarray(a.dropout_key))
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)),
                    jax.tree.leaves((b.params, b.batch_stats)), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_train_scan_returns_per_step_metrics_and_refuses_flat_indices(lenet_setup, datasets):
    train_ds, _ = datasets
    state = _fresh(lenet_setup)
    idx = jnp.arange(3 * 16, dtype=jnp.int32).reshape(3, 16)
    state, m = train_scan(state, train_ds.images, train_ds.labels, idx)
    assert int(state.step) == 3 and m["loss"].shape == (3,)
    np.testing.assert_array_equal(np.asarray(m["count"]), [16, 16, 16])
    with pytest.raises(ValueError, match=r"\(steps, batch\)"):
        train_scan(state, train_ds.images, train_ds.labels, idx.ravel())


def test_steps_per_call_needs_device_data(lenet_setup):
    class HostData:
        def __len__(self):
            return 8

    with pytest.raises(TypeError, match="DeviceDataset"):
        train_epoch(_fresh(lenet_setup), HostData(), batch_size=4, epoch=1, progress=False,
                    steps_per_call=2)


def test_no_recompilation_after_first_epoch(lenet_setup, datasets):
    train_ds, test_ds = datasets
    batch = 96  # a batch size no other test uses: 7 batches, the last of 24
    state = _fresh(lenet_setup)
    # compilations = entries added to the jitted functions' caches and to the programs
    # compiled ahead (jaxcnn.training._programs)
    def programs():
        return (train_step._cache_size(), count_correct._cache_size(),
                len(_programs._cache))

    before = programs()
    seen = []

    def on_epoch_end(state, history):
        seen.append((*(a - b for a, b in zip(programs(), before, strict=True)),
                     int(state.step)))

    fit(state, train_ds, test_ds, epochs=3, batch_size=batch, on_epoch_end=on_epoch_end,
        log=None, progress=False)
    # the default: one program for the epoch's 7 batches (the partial one padded into the
    # call), one for the whole test pass; then never again
    assert seen == [(0, 0, 2, 7), (0, 0, 2, 14), (0, 0, 2, 21)]


def test_evaluate_accuracy_against_hand_computation(lenet_setup, datasets):
    _, test_ds = datasets
    model, _ = lenet_setup
    state = _fresh(lenet_setup, seed=5)
    acc = evaluate_accuracy(model, state.variables, test_ds, BATCH)
    logits = model.apply(state.variables, preprocess(test_ds.images, None))
    hand = np.mean(np.asarray(logits).argmax(axis=1) == np.asarray(test_ds.labels))
    assert acc == hand and 0 < acc < 1


def test_fit_prints_the_books_lines(lenet_setup, datasets):
    train_ds, test_ds = datasets
    lines = []
    _, history = fit(_fresh(lenet_setup), train_ds, test_ds, epochs=2, batch_size=BATCH,
                     log=lines.append, progress=False)
    assert len(lines) == 2 and [h.epoch for h in history] == [1, 2]
    for line, h in zip(lines, history, strict=True):
        assert line == (f"epoch {h.epoch}, loss {h.loss:.4f}, train acc {h.train_acc:.3f}, "
                        f"test acc {h.test_acc:.3f}, time {h.time:.1f} sec")
    assert history[1].step == 10 and history[1].images_per_sec > 0


# ----------------------------------------------------------------------------- whole runs


def _config(**kw):
    base = dict(model="lenet_bn", batch_size=BATCH, epochs=2,
                optimizer=OptimizerConfig("adam", 0.01), seed=4)
    return TrainConfig(**{**base, **kw})


def test_same_seed_same_metrics_and_weights(datasets, tmp_path):
    a = train(_config(), tmp_path / "a", datasets=datasets, log=None, progress=False)
    b = train(_config(), tmp_path / "b", datasets=datasets, log=None, progress=False)
    assert _strip(a.history) == _strip(b.history)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = train(_config(seed=5), None, datasets=datasets, log=None, progress=False)
    assert _strip(c.history) != _strip(a.history)
    # metrics.jsonl holds one record per epoch, the history's numbers
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    assert records == [h.to_dict() for h in a.history]
    assert set(records[0]) >= {"epoch", "loss", "train_acc", "test_acc", "time",
                               "images_per_sec"}


def test_checkpoint_contents_keep_and_resume(datasets, tmp_path):
    work = tmp_path / "run"
    full = train(_config(epochs=3), work, keep=2, datasets=datasets, log=None, progress=False)
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [2, 3]
    _, state, meta = load_checkpoint(work)
    assert meta["epoch"] == 3 and meta["config"] == _config(epochs=3).to_dict()
    assert [EpochStats(**h) for h in meta["history"]] == full.history
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # a 2-epoch run resumed to 3 epochs equals the 3-epoch run (the CLI test kills one)
    part = tmp_path / "part"
    train(_config(epochs=2), part, datasets=datasets, log=None, progress=False)
    resumed = train(_config(epochs=3), part, resume=True, datasets=datasets, log=None,
                    progress=False)
    assert _strip(resumed.history) == _strip(full.history)
    for x, y in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(_config(epochs=3), part, datasets=datasets, log=None)
    with pytest.raises(CheckpointError, match="model: checkpoint 'lenet_bn', requested 'lenet'"):
        train(_config(model="lenet", epochs=4), part, resume=True, datasets=datasets, log=None)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_config(), tmp_path / "empty", resume=True, datasets=datasets, log=None)


def test_resume_conflicts():
    saved = _config(epochs=3)
    assert resume_conflicts(saved, _config(epochs=5), 3) == []
    assert resume_conflicts(saved, _config(epochs=2), 3) == [
        "epochs: the checkpoint already has 3 epochs, requested 2"]
    assert resume_conflicts(saved, _config(epochs=3, model_config={"bn": "scratch"}), 1) == [
        "model_config.bn: checkpoint 'torch', requested 'scratch'"]
    cos = _config(optimizer=OptimizerConfig("adam", 0.01, schedule="cosine"))
    assert "cosine" in resume_conflicts(cos, _config(epochs=4, optimizer=cos.optimizer), 1)[0]


class _NaNAt:
    """An optax transformation that turns the updates of step ``k`` (1-based) into NaN."""

    def __new__(cls, k):
        def init(params):
            return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

        def update(updates, state, params=None):
            bad = state.count + 1 == k
            updates = jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates)
            return updates, optax.ScaleByScheduleState(count=state.count + 1)

        return optax.GradientTransformation(init, update)


def test_nan_stops_naming_the_step_and_keeps_last_checkpoint(lenet_setup, datasets, tmp_path):
    train_ds, test_ds = datasets
    model, base = lenet_setup
    tx = optax.chain(base, _NaNAt(7))  # epoch 2, batch 2 (5 batches per epoch)
    state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
    config = TrainConfig(model="lenet", batch_size=BATCH, epochs=3)
    ckpt = Checkpoints(tmp_path)

    def save(state, history):
        ckpt.save(history[-1].epoch, state, history, config)

    with pytest.raises(NonFiniteError, match=r"global step 7 \(epoch 2, batch 2 of 5\)"):
        fit(create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), tx), train_ds,
            test_ds, epochs=3, batch_size=BATCH, log=None, progress=False,
            steps_per_call=3)  # the bad step is found inside a call of several
    with pytest.raises(NonFiniteError, match=r"global step 7 \(epoch 2, batch 2 of 5\)") as e:
        fit(state, train_ds, test_ds, epochs=3, batch_size=BATCH, on_epoch_end=save,
            log=None, progress=False)
    assert (e.value.step, e.value.epoch) == (7, 2)
    ckpt.close()
    assert latest_epoch(tmp_path) == 1
    template = create_train_state(model, jax.random.PRNGKey(9), (1, 28, 28, 1), tx)
    with Checkpoints(tmp_path) as ckpt:
        restored, meta = ckpt.restore(template)
        assert int(restored.step) == 5 and meta["epoch"] == 1
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))
        with pytest.raises(FloatingPointError, match="non-finite"):
            bad = restored.replace(params=jax.tree.map(lambda p: p * jnp.nan, restored.params))
            ckpt.save(2, bad, [], config)
    assert latest_epoch(tmp_path) == 1


# ----------------------------------------------------------------------------- presets, plot


@pytest.mark.parametrize("name, model, resize, batch, lr, extra", [
    ("lenet", "lenet", None, 256, 0.001, {}),
    ("lenet_bn", "lenet_bn", None, 256, 0.001, {"bn": "torch"}),
    ("lenet_bn_scratch", "lenet_bn", None, 256, 0.001, {"bn": "scratch"}),
    ("alexnet", "alexnet", 224, 128, 0.001, {}),
    ("vgg11_small", "vgg11", 224, 64, 0.001, {"ratio": 8}),
    ("nin", "nin", 224, 128, 0.002, {}),
    ("googlenet", "googlenet", 96, 128, 0.001, {}),
    ("resnet18", "resnet18", 96, 256, 0.001, {}),
    ("densenet", "densenet", 96, 256, 0.001, {}),
])
def test_presets_are_the_books(name, model, resize, batch, lr, extra):
    cfg = PRESETS[name][0]
    assert (cfg.model, cfg.resize, cfg.batch_size, cfg.epochs) == (model, resize, batch, 5)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.schedule) == ("adam", lr,
                                                                              "constant")
    assert extra.items() <= cfg.model_config.items()
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_plot_history_writes_png(tmp_path):
    hist = [EpochStats(e, 1.0 / e, 0.5 + e / 10, 0.4 + e / 10, 1.0, 100.0, 10 * e, 0.001)
            for e in (1, 2, 3)]
    path = plot_history(hist, tmp_path / "c.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("bn", ["torch", "scratch"])
def test_bfloat16_computes_in_bfloat16_and_normalises_in_float32(fashion, bn):
    model = create_model("lenet_bn", bn=bn)
    x = preprocess(jnp.asarray(fashion.train_images[:32]), None)
    variables = model.init(jax.random.PRNGKey(0), x)
    # Running statistics of real data: the book's BatchNorm starts with moving_var = 0, which
    # in eval mode divides by sqrt(eps) and amplifies any rounding 316x.
    for _ in range(10):
        _, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **stats}
    for mode in (False, True):
        out = model.apply(variables, x.astype(jnp.bfloat16), train=mode,
                          mutable=["batch_stats"] if mode else False)
        logits, stats = out if mode else (out, None)
        assert logits.dtype == jnp.bfloat16
        ref = model.apply(variables, x, train=mode, mutable=["batch_stats"] if mode else False)
        ref_logits = ref[0] if mode else ref
        np.testing.assert_allclose(np.asarray(logits, np.float32), np.asarray(ref_logits),
                                   atol=0.1, rtol=0.05)
        if stats is not None:  # running statistics stay float32 and close to float32's
            for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref[1]), strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.02, rtol=0.05)


def test_bfloat16_step_keeps_float32_state_and_follows_the_float32_step(fashion):
    model = create_model("lenet_bn")
    tx = optax.sgd(0.1)
    x = jnp.asarray(fashion.train_images[:128])
    y = jnp.asarray(fashion.train_labels[:128], jnp.int32)
    steps = {}
    for precision in ("float32", "bfloat16"):
        state = create_train_state(model, jax.random.PRNGKey(1), (1, 28, 28, 1), tx)
        old = jax.tree.map(np.asarray, state.params)
        new, m = train_step(state, x, y, precision=precision)
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((new.params,
                                                                    new.opt_state)))
        assert m["loss"].dtype == jnp.float32 and bool(m["finite"])
        delta = np.concatenate([(np.asarray(a) - b).ravel() for a, b in
                                zip(jax.tree.leaves(new.params), jax.tree.leaves(old),
                                    strict=True)])
        steps[precision] = (float(m["loss"]), delta)
    (loss32, d32), (loss16, d16) = steps["float32"], steps["bfloat16"]
    assert abs(loss16 - loss32) <= 0.02 * loss32
    cosine = d16 @ d32 / (np.linalg.norm(d16) * np.linalg.norm(d32))
    assert cosine > 0.99  # the same update direction, up to bfloat16 rounding


def test_bfloat16_training_reaches_float32_accuracy(fashion):
    """The documented accuracy check at test size: LeNet-BN (book settings: Adam, lr 1e-3,
    batch 256) for 2 epochs on 8192 images; test accuracy on 1024."""
    train_ds = DeviceDataset.from_arrays(fashion.train_images[:8192],
                                         fashion.train_labels[:8192])
    test_ds = DeviceDataset.from_arrays(fashion.test_images[:1024], fashion.test_labels[:1024])
    model = create_model("lenet_bn")
    acc = {}
    for precision in ("float32", "bfloat16"):
        tx = make_optimizer(OptimizerConfig("adam", 1e-3), 32, 2)
        state = create_train_state(model, jax.random.PRNGKey(0), (1, 28, 28, 1), tx)
        _, history = fit(state, train_ds, test_ds, epochs=2, batch_size=256, log=None,
                         progress=False, precision=precision)
        acc[precision] = history[-1].test_acc
    print(f"test accuracy after 2 epochs: {acc}")
    assert acc["float32"] > 0.65, acc
    assert abs(acc["bfloat16"] - acc["float32"]) <= 0.02, acc


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        TrainConfig(model="lenet", precision="float16")
    assert TrainConfig.from_dict(TrainConfig(model="lenet", precision="bfloat16").to_dict()
                                 ).precision == "bfloat16"


def test_resolve_config_is_one_path_for_presets_models_and_overrides():
    from jaxcnn.training import default_preset, resolve_config

    cfg = resolve_config("vgg11_small", epochs=2, limit_test=None, optimizer={"lr": 0.01})
    assert (cfg.model, cfg.model_config["ratio"], cfg.epochs, cfg.optimizer.lr) == (
        "vgg11", 8, 2, 0.01)
    assert resolve_config("vgg11_small", model="nin").resize == 224  # the new model's size
    assert resolve_config(model="lenet", resize=28).resize is None
    sgd = resolve_config("lenet", optimizer={"name": "sgd", "momentum": 0.9})
    assert resolve_config(sgd, optimizer={"name": "adam"}).optimizer.momentum == 0.0
    assert (default_preset("vgg11"), default_preset("lenet"), default_preset("vgg")) == (
        "vgg11_small", "lenet", None)
    with pytest.raises(ValueError, match="--bn does not apply"):
        resolve_config(model="lenet", model_config={"bn": "torch"})
    with pytest.raises(KeyError):
        resolve_config(model="lenett")
