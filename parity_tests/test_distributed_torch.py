"""Data-parallel jaxcnn against torch (issue 14): the same weights, the same global batches.

The jaxcnn side is the shared runs of ``tests/_dist_runs.py`` (fixture ``dist_runs``): 12 Adam
steps on 326 synthetic images (batches of 64 and a last one of 6), started from
``init_state(config)`` (``PRNGKey(seed)``), batches in ``epoch_order(seed, epoch)``. The torch
side (:mod:`torch_ref.distributed`) starts from those weights (``to_torch_state_dict``) and
trains on the same global batches:

- lenet: torch ``DistributedDataParallel``, 2 CPU processes (gloo), each reading its half of
  every global batch, against jaxcnn on 2 devices;
- lenet_bn (``nn.BatchNorm``, 2 processes x 2 devices) and lenet_bn_scratch (the book's
  BatchNorm, 2 devices): torch in one process on the global batch (``SyncBatchNorm`` needs
  GPUs; it would compute the same global statistics).

Tolerance (float32; measured maxima in README "Several devices and hosts"): per-step loss
within 1e-5; every parameter and BatchNorm buffer within ``5e-5 + 1e-4 |w|``, except the biases
in front of a BatchNorm and the running means behind them (rounding noise that Adam turns
into lr-sized steps: within ``2 * lr * steps``, see ``tests/test_distributed.py``); integer
buffers (``num_batches_tracked``) equal.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn.data import epoch_order
from jaxcnn.training import init_state
from tests._dist_worker import N_TRAIN, config_of, synthetic
from tests.test_distributed import LR, pre_bn
from torch_ref.distributed import ddp_train, train_global

LOSS_ATOL, ATOL, RTOL = 1e-5, 5e-5, 1e-4


def _unflatten(template: object, arrays: np.lib.npyio.NpzFile, prefix: str) -> object:
    paths = jax.tree_util.tree_leaves_with_path(template)
    leaves = [arrays[prefix + "/".join(str(getattr(k, "key", k)) for k in path)]
              for path, _ in paths]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def _both(dist_runs, run: str, preset: str, ddp: bool
          ) -> tuple[np.lib.npyio.NpzFile, dict, dict[str, np.ndarray], set[str]]:
    """(jaxcnn's npz, torch's result, jaxcnn's final state dict, torch names of the noisy
    leaves) for ``preset`` of ``run``."""
    jx = np.load(dist_runs / run / f"{preset}.npz")
    config = config_of(preset)
    model, state = init_state(config, -(-N_TRAIN // config.batch_size))
    start = jaxcnn.to_torch_state_dict(model, state.variables)
    images, labels = synthetic(0, N_TRAIN)
    orders = [epoch_order(config.seed, e, N_TRAIN) for e in range(config.epochs)]
    train = ddp_train if ddp else train_global
    ref = train(config, start, images, labels, orders)
    variables = {"params": _unflatten(state.params, jx, "params/")}
    if state.batch_stats:
        variables["batch_stats"] = _unflatten(state.batch_stats, jx, "batch_stats/")
    final = {k: np.asarray(v) for k, v in jaxcnn.to_torch_state_dict(model, variables).items()}
    # the noisy leaves by jaxcnn's names, mapped to torch's through a tagged state dict
    noisy_jax = pre_bn(list(jx.files))
    tagged = {k: jax.tree.map(np.zeros_like, v) for k, v in variables.items()}
    for name in noisy_jax:
        kind, *path = name.split("/")
        node = tagged[kind]
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = np.ones_like(node[path[-1]])
    noisy = {k for k, v in jaxcnn.to_torch_state_dict(model, tagged).items()
             if np.issubdtype(np.asarray(v).dtype, np.floating) and np.all(np.asarray(v) == 1)}
    assert len(noisy) == len(noisy_jax)
    return jx, ref, final, noisy


def _assert_close(jx, ref: dict, final: dict[str, np.ndarray], noisy: set[str]) -> None:
    steps = len(jx["step_loss"])
    assert steps == len(ref["step_loss"]) == 12
    np.testing.assert_allclose(jx["step_loss"], ref["step_loss"], rtol=0, atol=LOSS_ATOL)
    assert set(final) == set(ref["state_dict"])
    for k, want in ref["state_dict"].items():
        got = final[k]
        if not np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_equal(got, want, err_msg=k)
        elif k in noisy:
            np.testing.assert_allclose(got, want, rtol=0, atol=2 * LR * steps, err_msg=k)
        else:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=k)


def test_torch_ddp_two_processes_equals_jaxcnn_on_two_devices(dist_runs):
    jx, ref, final, noisy = _both(dist_runs, "2", "lenet", ddp=True)
    assert int(jx["devices"]) == 2 and not noisy
    _assert_close(jx, ref, final, noisy)


@pytest.mark.parametrize(("run", "preset"), [("2x2", "lenet_bn"), ("2", "lenet_bn_scratch")])
def test_torch_global_batch_equals_jaxcnn_batchnorm_on_devices(dist_runs, run, preset):
    jx, ref, final, noisy = _both(dist_runs, run, preset, ddp=False)
    assert int(jx["devices"]) == {"2x2": 4, "2": 2}[run] and noisy
    assert any("running_mean" in k or "moving_mean" in k for k in noisy)
    _assert_close(jx, ref, final, noisy)
