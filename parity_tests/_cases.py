"""Every registered model and test case, built on both sides from the same torch weights."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxcnn
import torch_ref
from jaxcnn.registry import get_spec

from ._branches import REFEREE_COMPILER_OPTIONS, branches, on_branches

#: A small custom VGG (with dropout layers) for 28-pixel inputs.
SMALL_VGG = {"conv_arch": ((1, 1, 8), (2, 8, 16)), "fc_features": 16 * 7 * 7,
             "fc_hidden_units": 32}

#: Per registered model, the ``(config overrides, input size)`` pairs the suites run; the first
#: is the default config. ``test_registry_and_init`` checks that every registered model has one.
TEST_CONFIGS: dict[str, tuple[tuple[dict[str, Any], int], ...]] = {
    "lenet": (({}, 28),),
    "lenet_bn": (({"bn": "torch"}, 28), ({"bn": "scratch"}, 28)),
    "alexnet": (({}, 224),),
    "vgg11": (({"ratio": 8}, 224),),
    "vgg": ((SMALL_VGG, 28),),
    "nin": (({}, 224),),
    "seed_example": (({}, 32),),
    # The chapter's last three, small (trained at 96): googlenet's stages end at 8, 4, 2, 1, 1
    # px. Train-mode BatchNorm over few values is ill-conditioned: at 32 px resnet18's last
    # stage normalises 4 values per channel (batch 4, 1x1) and its stem gradient missed the
    # tolerance 4x; at 64 px (2x2) it is at 33%. DenseNet runs a reduced config (two dense
    # blocks, still with a transition; the default's structure is checked by the inspect tests):
    # the default at 32 px (1x1 at the end) missed on the stem gradient by 1.4x, at 64 px on the
    # stem bias, whose gradient is rounding noise (the BatchNorm after it cancels it).
    "googlenet": (({}, 32),),
    "resnet18": (({}, 64),),
    "densenet": (({"num_convs": (2, 2), "growth_rate": 16, "num_channels": 32}, 32),),
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: tuple[tuple[str, Any], ...]
    size: int

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.config if k != "conv_arch")
        return f"{self.name}[{opts}]" if opts else self.name

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def batch(self) -> int:
        """2 at 224 px, 4 below; 16 for lenet_bn, whose train-mode BatchNorm after a Linear
        layer normalises ``batch`` values per feature: at 4 the gradients' float32 rounding
        is amplified to 1e-5 of their scale (torch's own error against float64)."""
        if self.name == "lenet_bn":
            return 16
        return 4 if self.size <= 64 else 2

    @property
    def classifier(self) -> bool:
        return get_spec(self.name).classifier


CASES = [
    Case(name, tuple(cfg.items()), size)
    for name in jaxcnn.list_models()
    for cfg, size in TEST_CONFIGS[name]
]
BN_CASES = [c for c in CASES if c.name == "lenet_bn"]


@dataclasses.dataclass
class Pair:
    """The torch twin (seeded torch init) and the jaxcnn model with the converted weights."""

    case: Case
    torch_model: torch.nn.Module
    model: nn.Module
    variables: dict[str, Any]

    def fresh_torch(self) -> torch.nn.Module:
        """A torch model with this pair's initial weights (the cached one may be trained):
        built without storage or initialisation (on the meta device; AlexNet's init alone
        takes over a second), then given copies of the weights."""
        with torch.device("meta"):
            m = torch_ref.create_model(self.case.name, **self.case.kwargs)
        m.load_state_dict({k: v.clone() for k, v in self.state_dict.items()}, assign=True)
        return m

    @functools.cached_property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.torch_model.state_dict().items()}

    @functools.cached_property
    def state_dict_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.state_dict.items()}


def randomize_batchnorm(tm: torch.nn.Module) -> None:
    """Give every BatchNorm a trained-looking state: random affine parameters and running
    statistics, and ``num_batches_tracked = 3``. The defaults (weight 1, bias 0, mean 0, var 1
    or the book's zeros) would let a swapped or ignored tensor pass unnoticed, and the book's
    zero moving variance makes eval mode ill-conditioned (it divides by sqrt(eps))."""
    with torch.no_grad():
        for name, buf in tm.named_buffers():
            if name.endswith("num_batches_tracked"):
                buf.fill_(3)
            elif name.endswith(("running_var", "moving_var")):
                buf.uniform_(0.5, 1.5)
            else:
                buf.normal_(0.0, 0.2)
        for name, p in tm.named_parameters():
            if name.endswith("gamma") or (name.endswith("weight") and p.ndim == 1):
                p.uniform_(0.5, 1.5)
            elif name.endswith("beta") or (name.endswith("bias") and _is_bn_bias(tm, name)):
                p.normal_(0.0, 0.2)


def _is_bn_bias(tm: torch.nn.Module, name: str) -> bool:
    module = tm.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


@functools.lru_cache(maxsize=2)
def make_pair(case: Case, seed: int = 0) -> Pair:
    torch.manual_seed(seed)
    tm = torch_ref.create_model(case.name, **case.kwargs)
    randomize_batchnorm(tm)
    model = jaxcnn.create_model(case.name, **case.kwargs)
    variables = jaxcnn.from_torch_state_dict(model, tm.state_dict())
    pair = Pair(case, tm, model, variables)
    _ = pair.state_dict
    return pair


def inputs(case: Case, seed: int = 0, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random NCHW float32 batch in [0, 1) and integer labels."""
    rng = np.random.default_rng(seed)
    in_ch = jaxcnn.make_config(case.name, **case.kwargs).in_channels
    n = batch or case.batch
    x = rng.random((n, in_ch, case.size, case.size), dtype=np.float32)
    y = rng.integers(0, 10, size=(n,))
    return x, y


@functools.cache
def jax_fns(case: Case) -> tuple[Any, Any, Any, Any]:
    """Jitted ``draw_masks(variables, x, key)`` (``None`` for a model without dropout) and the
    train-mode step on jaxcnn's three sides (``_branches``), each ``(params, other
    collections, x, y) -> ((loss, (batch_stats, output), grads), ReLU masks, max-pool picks)``
    (the forced one takes the masks and picks first and returns only the triple): float32,
    float64, float64 on given branches. Compiled once per case and input shape, shared by the
    core and the optimizer tests."""
    model = make_pair(case).model

    def draw_masks(variables: Any, x: jax.Array, key: jax.Array) -> Any:
        _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "dropout_masks"],
                               rngs={"dropout": key})
        return state["dropout_masks"]

    def loss_fn(p: Any, other: Any, x: jax.Array, y: jax.Array) -> Any:
        out, state = model.apply({**other, "params": p}, x, train=True, mutable=["batch_stats"])
        return jax_loss(case, out, y), (state.get("batch_stats"), out)

    has_dropout = any(isinstance(m, jaxcnn.layers.Dropout) for m in jaxcnn.modules(model))
    return ((jax.jit(draw_masks) if has_dropout else None), branches(loss_fn),
            branches(loss_fn, REFEREE_COMPILER_OPTIONS),
            on_branches(loss_fn, REFEREE_COMPILER_OPTIONS))


@functools.cache
def jitted_apply(model: nn.Module) -> Any:
    """``model.apply`` compiled as one program per input shape (``train`` and ``mutable``, a
    tuple, static), as jaxcnn's own programs run it. Run op by op instead, each layer's
    operations are compiled one at a time: GoogLeNet's eval output took 8.5 s that way, 1.5 s
    as one program (the same values)."""
    return jax.jit(model.apply, static_argnames=("train", "mutable"))


def jax_input(x: np.ndarray) -> jax.Array:
    return jnp.asarray(jaxcnn.nchw_to_nhwc(x))


def torch_output_to_numpy(y: torch.Tensor) -> np.ndarray:
    y = y.detach().numpy()
    return np.transpose(y, (0, 2, 3, 1)) if y.ndim == 4 else y


def loss_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Fixed weights for the scalar loss of a model without classifier head (NHWC shape)."""
    return np.random.default_rng(123).standard_normal(shape).astype(np.float32)


def torch_loss(case: Case, out: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    if case.classifier:
        return torch.nn.functional.cross_entropy(out, torch.as_tensor(y))
    w = loss_weights(tuple(out.permute(0, 2, 3, 1).shape))
    return (out.permute(0, 2, 3, 1) * torch.as_tensor(w)).mean()


def jax_loss(case: Case, out: jax.Array, y: np.ndarray) -> jax.Array:
    if case.classifier:
        logp = jax.nn.log_softmax(out, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))
    return jnp.mean(out * jnp.asarray(loss_weights(tuple(out.shape))))




# Largest |diff| seen per (model case, check), with its tolerance; printed at the end of the run
# by conftest.pytest_terminal_summary.
DIFFS: dict[tuple[str, str], tuple[float, float]] = {}


#: Branch flips of jaxcnn's float32 forward against its float64 one, per (case, check):
#: ``(ReLU elements, max-pool windows)``; printed with ``DIFFS``.
FLIPS: dict[tuple[str, str], tuple[int, int]] = {}
#: Planted error -> the first line of the failure it caused; printed with ``DIFFS``.
PLANTED_FAILURES: dict[str, str] = {}


def record(case_id: str, check: str, diff: float, tol: float) -> None:
    """Keep the largest ``diff / tol`` per (case, check) for the summary table."""
    old = DIFFS.get((case_id, check))
    if old is None or diff / max(tol, 1e-300) > old[0] / max(old[1], 1e-300):
        DIFFS[(case_id, check)] = (diff, tol)


def check_close(case_id: str, check: str, actual: Any, expected: Any, what: str) -> float:
    """``jaxcnn.testing.assert_close`` that also records the diff for the summary table."""
    diff = jaxcnn.testing.assert_close(actual, expected, what)
    record(case_id, check, diff, jaxcnn.testing.tolerance(expected))
    return diff


def torch_train_grads(pair: Pair, x: np.ndarray, y: np.ndarray, masks: dict[str, Any],
                      dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """A fresh torch twin (in ``dtype``: float64 for the referee) in train mode with fixed
    dropout masks (torch layout): output, loss and every parameter's gradient."""
    tm = pair.fresh_torch().to(dtype).train()
    with torch_ref.fixed_dropout_masks(tm, masks):
        out = tm(torch.from_numpy(x).to(dtype))
    loss = torch_loss(pair.case, out, y)
    loss.backward()
    return out, loss, {k: p.grad.numpy() for k, p in tm.named_parameters()}
