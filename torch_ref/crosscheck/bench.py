"""jaxcnn against its torch twin, in one process on one device: training and inference speed,
first-step (compile) time, peak memory, and one epoch of the book's loop end to end
(:mod:`torch_ref.crosscheck._bench_epoch`).

Protocol (:func:`bench_model`): the torch model is initialised by torch (``manual_seed(0)``)
and converted to jaxcnn, so both train the same weights, at the book's batch size and input
size (:data:`SPECS`), with the book's optimizer. Each framework first runs one step (its
compile / warm-up time, reported and excluded); then the frameworks take turns, ``repeats``
times, each timing ``steps`` training steps (synchronised at the end); the median over the
repeats is reported. The jaxcnn step is :func:`jaxcnn.training.train_step` on uint8
``(B, 28, 28)`` batches (preprocessing, i.e. ``ToTensor`` and the PIL-exact resize, inside the
compiled step); the torch step (forward, ``cross_entropy``, ``zero_grad``, ``backward``,
``step``) gets the preprocessed float batch (its preprocessing is not timed). Inference is
the same in eval mode without gradients. Peak memory: on CPU the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` before a measured step; it includes
everything resident in the process), on GPU the framework's peak device allocation.

:func:`bench_epoch`: one epoch of the book's loop on Fashion-MNIST (training with shuffling,
then the test set in eval mode), data preparation included: jaxcnn's
:func:`~jaxcnn.training.fit` on :class:`~jaxcnn.data.DeviceDataset` (compilation included),
torch's book loop on ``ToTensor``-equivalent float tensors batched by index from memory.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import torch

import jaxcnn
from jaxcnn.data import preprocess
from jaxcnn.training import (
    PRESETS,
    TrainConfig,
    create_train_state,
    eval_step,
    make_optimizer,
    train_scan,
    train_step,
)

from .. import create_model
from ..optim import make_optimizer as make_torch_optimizer
from ._bench_epoch import EpochRow, bench_epoch
from .compare import machine as compare_machine

#: bench name -> the book's preset (model, config, batch size, resize, optimizer).
SPECS: dict[str, str] = {"lenet": "lenet", "lenet_bn": "lenet_bn",
                         "lenet_bn_scratch": "lenet_bn_scratch", "alexnet": "alexnet",
                         "vgg11": "vgg11_small", "nin": "nin", "googlenet": "googlenet",
                         "resnet18": "resnet18", "densenet": "densenet"}
DEFAULT_MODELS = ("lenet", "lenet_bn", "alexnet", "vgg11", "nin")
#: Default (steps per repeat) for 28x28 and for 224x224 models.
DEFAULT_STEPS = {28: 20, 224: 1}
FRAMEWORKS = ("jaxcnn", "jaxcnn scan", "torch eager", "torch.compile")
JAX_FRAMEWORKS = ("jaxcnn", "jaxcnn scan")


@dataclasses.dataclass
class Row:
    """One framework on one model. Speeds are medians over the repeats. On jaxcnn rows,
    ``vs_eager`` and ``vs_compile`` are this row's training images/s divided by torch eager's
    and torch.compile's (``infer_vs_*`` likewise for inference). ``first_step_s``: wall time of
    the first call (tracing and compiling included: one step, or for ``jaxcnn scan`` one call
    of ``steps`` steps); ``first_infer_s`` likewise. ``error``: why the row has no numbers
    (e.g. torch.compile failed)."""

    model: str
    framework: str
    batch: int
    input_size: int
    train_steps_per_s: float | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    vs_eager: float | None = None
    vs_compile: float | None = None
    infer_vs_eager: float | None = None
    infer_vs_compile: float | None = None
    first_step_s: float | None = None
    first_infer_s: float | None = None
    peak_memory_mb: float | None = None
    memory: str = ""
    train_samples: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


# ----------------------------------------------------------------------------- machine


def _thread_names() -> dict[str, int]:
    counts: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ():
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts


def machine() -> dict[str, Any]:
    """The device, CPU, library versions and thread counts of this process
    (:func:`torch_ref.crosscheck.compare.machine` plus both frameworks' devices and threads)."""
    import flax
    import optax

    dev = jax.devices()[0]
    return {
        **compare_machine(),
        "jax_device": f"{dev.platform}:{dev.device_kind}", "torch_device": torch_device(),
        "flax": flax.__version__, "optax": optax.__version__,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "xla_cpu_threads": _thread_names().get("tf_XLAEigen"),
        "PJRT_NPROC": os.environ.get("PJRT_NPROC"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def torch_device() -> str:
    """``cuda`` when jax runs on a GPU and torch has one too, else ``cpu``: one device for
    both frameworks."""
    gpu = jax.default_backend() == "gpu"
    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _Memory:
    """Peak memory of one measured step (see the module docstring)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = ("peak device allocation" if device == "cuda" else
                     "process peak RSS (VmHWM) during one training step")

    def reset(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_mb(self, framework: str) -> float | None:
        if self.device == "cuda":
            if framework == "jaxcnn":
                stats = jax.devices()[0].memory_stats() or {}
                peak = stats.get("peak_bytes_in_use")
                return None if peak is None else peak / 2**20
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            with open("/proc/self/status") as f:
                line = next(ln for ln in f if ln.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024
        except (OSError, StopIteration):
            return None


# ----------------------------------------------------------------------------- steppers


class _Stepper:
    """``train(n)`` / ``infer(n)``: wall seconds of ``n`` synchronised steps.
    ``first_call``: the steps of the first (compiling) call."""

    first_call = 1

    def train(self, n: int) -> float:
        raise NotImplementedError

    def infer(self, n: int) -> float:
        raise NotImplementedError


class _JaxStepper(_Stepper):
    def __init__(self, config: TrainConfig, torch_model: torch.nn.Module,
                 images: np.ndarray, labels: np.ndarray) -> None:
        model = jaxcnn.create_model(config.model, **config.model_config)
        variables = jaxcnn.from_torch_state_dict(model, torch_model.state_dict())
        shape = (1, config.input_size, config.input_size, config.model_cfg().in_channels)
        state = create_train_state(model, jax.random.PRNGKey(0), shape,
                                   make_optimizer(config.optimizer, 1, 1))
        self.state = state.replace(params=variables["params"],
                                   batch_stats=variables.get("batch_stats", {}))
        self.state = self.state.replace(opt_state=self.state.tx.init(self.state.params))
        self.images, self.labels = jax.device_put(images), jax.device_put(labels)
        self.resize = config.resize

    def train(self, n: int) -> float:
        start = time.perf_counter()
        metrics = None
        for _ in range(n):
            self.state, metrics = train_step(self.state, self.images, self.labels,
                                             resize=self.resize)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    def infer(self, n: int) -> float:
        start = time.perf_counter()
        out = None
        for _ in range(n):
            out = eval_step(self.state, self.images, self.labels, resize=self.resize)
        jax.block_until_ready(out)
        return time.perf_counter() - start


class _JaxScanStepper(_JaxStepper):
    """``n`` steps in one compiled call (:func:`jaxcnn.training.train_scan`; inference as one
    ``lax.map``), every step on the same batch, gathered on the device by index."""


    def __init__(self, config: TrainConfig, torch_model: torch.nn.Module,
                 images: np.ndarray, labels: np.ndarray, steps: int) -> None:
        super().__init__(config, torch_model, images, labels)
        self.first_call = steps
        self.indices: dict[int, jax.Array] = {}
        self._infer = jax.jit(_scan_correct, static_argnames=("apply_fn", "resize"))

    def _indices(self, n: int) -> jax.Array:
        """``(n, B)`` indices of the batch, made once per ``n``."""
        if n not in self.indices:
            self.indices[n] = jax.device_put(
                np.tile(np.arange(len(self.labels), dtype=np.int32), (n, 1)))
        return self.indices[n]

    def train(self, n: int) -> float:
        idx = self._indices(n)
        start = time.perf_counter()
        self.state, metrics = train_scan(self.state, self.images, self.labels, idx,
                                          resize=self.resize)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    def infer(self, n: int) -> float:
        idx = self._indices(n)
        start = time.perf_counter()
        out = self._infer(self.state.apply_fn, self.state.variables, self.images, self.labels,
                          idx, resize=self.resize)
        jax.block_until_ready(out)
        return time.perf_counter() - start


def _scan_correct(apply_fn: Callable[..., Any], variables: Any, images: jax.Array,
                  labels: jax.Array, indices: jax.Array, *, resize: int | None) -> jax.Array:
    """Correct predictions (eval mode) of each batch ``images[indices[k]]``: ``(K,)``."""
    def one(idx: jax.Array) -> jax.Array:
        logits = apply_fn(variables, preprocess(images[idx], resize), train=False)
        return jax.numpy.sum(jax.numpy.argmax(logits, axis=1) == labels[idx])

    return jax.lax.map(one, indices)


class _TorchStepper(_Stepper):
    def __init__(self, config: TrainConfig, model: torch.nn.Module, x: torch.Tensor,
                 y: torch.Tensor, device: str, compiled: bool) -> None:
        self.model = model.to(device).train()
        self.net = torch.compile(self.model) if compiled else self.model
        self.opt = make_torch_optimizer(config.optimizer, self.model.parameters())
        self.x, self.y, self.device = x.to(device), y.to(device), device

    def _step(self) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def train(self, n: int) -> float:
        _sync(self.device)
        start = time.perf_counter()
        loss = None
        for _ in range(n):
            loss = self._step()
        float(loss)  # type: ignore[arg-type]
        _sync(self.device)
        return time.perf_counter() - start

    def infer(self, n: int) -> float:
        self.model.eval()
        try:
            _sync(self.device)
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(n):
                    correct = (self.net(self.x).argmax(dim=1) == self.y).sum()
                int(correct)
            _sync(self.device)
            return time.perf_counter() - start
        finally:
            self.model.train()


def _batch(config: TrainConfig, batch: int, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Random uint8 images and labels, and torch's NCHW float tensors of them (``ToTensor``
    after the PIL-exact resize: :func:`jaxcnn.data.preprocess`)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (batch,), dtype=np.int32)
    x = np.asarray(preprocess(jax.numpy.asarray(images), config.resize))
    x_t = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())  # fresh C-order strides
    return images, labels, x_t, torch.from_numpy(labels.astype(np.int64))


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def bench_model(name: str, *, batch: int | None = None, steps: int | None = None,
                repeats: int = 3, frameworks: Sequence[str] = FRAMEWORKS,
                log: Callable[[str], None] | None = None) -> list[Row]:
    """Rows (one per framework) for the model of preset ``SPECS[name]``."""
    config = PRESETS[SPECS[name]][0]
    batch = batch or config.batch_size
    size = config.input_size
    steps = steps or DEFAULT_STEPS[224 if size > 28 else 28]
    device = torch_device()
    memory = _Memory(device)
    images, labels, x_t, y_t = _batch(config, batch)
    rows = {fw: Row(name, fw, batch, size, memory=memory.kind) for fw in frameworks}
    steppers: dict[str, _Stepper] = {}
    for fw in frameworks:
        torch.manual_seed(0)
        tm = create_model(config.model, **config.model_config)
        try:
            if fw == "jaxcnn":
                stepper: _Stepper = _JaxStepper(config, tm, images, labels)
            elif fw == "jaxcnn scan":
                stepper = _JaxScanStepper(config, tm, images, labels, steps)
            else:
                stepper = _TorchStepper(config, tm, x_t, y_t, device, fw == "torch.compile")
            rows[fw].first_step_s = stepper.train(stepper.first_call)
            rows[fw].first_infer_s = stepper.infer(stepper.first_call)
            memory.reset()
            stepper.train(stepper.first_call)
            rows[fw].peak_memory_mb = memory.peak_mb(fw)
            steppers[fw] = stepper
        except Exception as e:  # e.g. torch.compile without a working compiler
            rows[fw].error = _error(e)
        if log is not None:
            r = rows[fw]
            log(f"  {name} {fw}: " + (f"first step {r.first_step_s:.2f} s" if r.error is None
                                     else f"failed: {r.error}"))
    train: dict[str, list[float]] = {fw: [] for fw in steppers}
    infer: dict[str, list[float]] = {fw: [] for fw in steppers}
    for _ in range(repeats):  # interleaved: every framework once per repeat
        for fw, stepper in steppers.items():
            train[fw].append(steps / stepper.train(steps))
        for fw, stepper in steppers.items():
            infer[fw].append(steps * batch / stepper.infer(steps))
    for fw in steppers:
        r = rows[fw]
        r.train_samples = [s * batch for s in train[fw]]
        r.train_steps_per_s = statistics.median(train[fw])
        r.train_images_per_s = r.train_steps_per_s * batch
        r.infer_images_per_s = statistics.median(infer[fw])
    for fw in JAX_FRAMEWORKS:
        r = rows.get(fw)
        if r is None or r.train_images_per_s is None:
            continue
        for torch_fw, train_attr, infer_attr in (("torch eager", "vs_eager", "infer_vs_eager"),
                                                 ("torch.compile", "vs_compile",
                                                  "infer_vs_compile")):
            t = rows.get(torch_fw)
            if t is not None and t.train_images_per_s and t.infer_images_per_s:
                setattr(r, train_attr, r.train_images_per_s / t.train_images_per_s)
                setattr(r, infer_attr, r.infer_images_per_s / t.infer_images_per_s)
    return list(rows.values())


def profile_model(name: str, *, batch: int | None = None, steps: int = 3) -> str:
    """Markdown: jaxcnn's training step per layer and torch eager's per operator."""
    from ._bench_profile import format_profiles, jax_layer_profile, torch_op_profile

    config = PRESETS[SPECS[name]][0]
    batch = batch or config.batch_size
    images, labels, x_t, y_t = _batch(config, batch)
    torch.manual_seed(0)
    tm = create_model(config.model, **config.model_config)
    jx = _JaxStepper(config, tm, images, labels)
    hlo = train_step.lower(jx.state, jx.images, jx.labels, resize=jx.resize).compile().as_text()

    def jax_step() -> Any:
        jx.state, metrics = train_step(jx.state, jx.images, jx.labels, resize=jx.resize)
        return metrics

    layers = jax_layer_profile(jax_step, hlo, steps)
    ts = _TorchStepper(config, tm, x_t, y_t, torch_device(), compiled=False)
    ops = torch_op_profile(ts._step, steps)
    modules = {n: type(m).__name__ for n, m in jaxcnn.named_modules(jx.state.apply_fn.__self__)}
    return format_profiles(f"{name} (batch {batch})", layers, modules, ops)


# ----------------------------------------------------------------------------- report


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_report(report: dict[str, Any]) -> str:
    """Markdown: the machine, the speed table, the epoch table."""
    m = report["machine"]
    lines = [
        f"device: jax {m['jax_device']}, torch {m['torch_device']}; CPU {m['cpu']}, "
        f"{m['cores']} cores",
        f"threads: torch {m['torch_threads']} intra-op / {m['torch_interop_threads']} inter-op, "
        f"XLA CPU {m['xla_cpu_threads']} (PJRT_NPROC={m['PJRT_NPROC']})",
        f"versions: python {m['python']}, jax {m['jax']}, flax {m['flax']}, optax {m['optax']}, "
        f"torch {m['torch']}, torchvision {m['torchvision']}",
        f"settings: {report['settings']}", "",
        "| model | batch | size | framework | train img/s | steps/s | / torch eager | "
        "/ torch.compile | infer img/s | / eager | / compile | first call s | first infer s | "
        "peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        head = f"| {r['model']} | {r['batch']} | {r['input_size']} | {r['framework']} |"
        if r["error"]:
            lines.append(f"{head} failed: {r['error']} |||||||||| ")
            continue
        lines.append(
            f"{head} {_f(r['train_images_per_s'], '.0f')} | {_f(r['train_steps_per_s'], '.2f')} "
            f"| {_f(r['vs_eager'], '.2f')} | {_f(r['vs_compile'], '.2f')} | "
            f"{_f(r['infer_images_per_s'], '.0f')} | {_f(r['infer_vs_eager'], '.2f')} | "
            f"{_f(r['infer_vs_compile'], '.2f')} | {_f(r['first_step_s'], '.2f')} | "
            f"{_f(r['first_infer_s'], '.2f')} | {_f(r['peak_memory_mb'], '.0f')} |")
    if report["rows"]:
        lines.append(f"\npeak MB: {report['rows'][0]['memory']}")
    if report["epochs"]:
        lines += ["", "| model | framework | images | data s | train s | test s | "
                  "first epoch s | train acc | test acc | second epoch s | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in report["epochs"]:
            lines.append(f"| {e['model']} | {e['framework']} | {e['images']} | "
                         f"{e['data_s']:.2f} | {e['train_s']:.2f} | {e['test_s']:.2f} | "
                         f"{e['total_s']:.2f} | {e['train_acc']:.3f} | {e['test_acc']:.3f} | "
                         f"{e['warm_epoch_s']:.2f} | {e['note']} |")
    return "\n".join(lines)


def run(models: Sequence[str] = DEFAULT_MODELS, *, batch: int | None = None,
        steps: int | None = None, repeats: int = 3, compile: bool = True, epoch: bool = True,
        data_dir: str | os.PathLike[str] | None = None, limit_train: int | None = None,
        limit_test: int | None = None, log: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    """The whole benchmark: ``{'machine', 'settings', 'rows', 'epochs'}`` (JSON-ready)."""
    unknown = [m for m in models if m not in SPECS]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    frameworks = FRAMEWORKS if compile else FRAMEWORKS[:3]
    rows: list[Row] = []
    epochs: list[EpochRow] = []
    for name in models:
        if log is not None:
            log(f"{name}: training and inference steps")
        rows += bench_model(name, batch=batch, steps=steps, repeats=repeats,
                            frameworks=frameworks, log=log)
    for name in models:
        if epoch and PRESETS[SPECS[name]][0].resize is None:
            if log is not None:
                log(f"{name}: one epoch of the book's loop")
            epochs += bench_epoch(name, SPECS[name], data_dir=data_dir, limit_train=limit_train,
                                  limit_test=limit_test)
    settings = {"models": list(models), "batch": batch or "book", "steps": steps or
                {f"{s}px": n for s, n in DEFAULT_STEPS.items()}, "repeats": repeats,
                "torch.compile": compile, "epoch": epoch, "limit_train": limit_train,
                "limit_test": limit_test}
    return {"machine": machine(), "settings": settings,
            "rows": [dataclasses.asdict(r) for r in rows],
            "epochs": [dataclasses.asdict(e) for e in epochs]}
