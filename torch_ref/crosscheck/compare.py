"""jaxcnn against its torch twin on Fashion-MNIST: the same run in both frameworks, side by side.

:func:`compare` (paired): the torch model is initialised by torch (``manual_seed(seed)``) and
converted to jaxcnn, both train on the same batches in the same order
(``jaxcnn.data.epoch_order(seed, epoch)``) with the same dropout masks (drawn by jaxcnn's
``train_step`` and replayed into torch), jaxcnn with ``jaxcnn.training.fit`` and torch with the
book's loop (:mod:`torch_ref.optim`) on torchvision's ``FashionMNIST`` items (``Resize`` +
``ToTensor``). After every epoch the max parameter difference is measured.

:func:`compare_seeds`: K independent runs per framework (each its own init, order and dropout,
as two labs would), the final test accuracies summarised with Welch's t-test.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

import jaxcnn
from jaxcnn.data import DeviceDataset, FashionMNIST, epoch_order, load_splits, preprocess
from jaxcnn.testing import max_abs_diff, tolerance
from jaxcnn.training import TrainConfig, epoch_learning_rates, fit, init_state, train

from .. import create_model
from ..optim import evaluate_accuracy, make_optimizer, make_scheduler, state_dict_numpy, train_epoch

Log = Callable[[str], None] | None


class ArrayFashionMNIST(torchvision.datasets.FashionMNIST):
    """``torchvision.datasets.FashionMNIST`` over arrays already in memory: torchvision's own
    ``__getitem__`` (PIL image of mode ``'L'``, then ``[Resize(resize)] + ToTensor()``), so an
    item is ``(float32 (1, S, S) in [0, 1], int label)`` exactly as the book's loader gives."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resize: int | None) -> None:
        steps = ([torchvision.transforms.Resize(resize)] if resize else [])
        transform = torchvision.transforms.Compose([*steps, torchvision.transforms.ToTensor()])
        torchvision.datasets.VisionDataset.__init__(self, root="", transform=transform)
        self.train = True
        self.data = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy
        self.targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))


def torch_batches(dataset: ArrayFashionMNIST, batch_size: int,
                  order: Sequence[int] | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A ``DataLoader`` (one process) over ``dataset`` in ``order`` (default: sequential),
    batches of ``batch_size`` with the last one partial, as the book's loaders."""
    idx = list(range(len(dataset))) if order is None else [int(i) for i in order]
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return _one_thread(DataLoader(dataset, batch_sampler=batches, num_workers=0))


def _one_thread(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fetch each batch with one torch thread, as the book's loader workers do (``DataLoader``
    sets 1 thread per worker): the per-image ``ToTensor`` is too small to split, and splitting
    it costs up to 70x on a loaded machine."""
    it = iter(loader)
    while True:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, devices, library versions."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jax_device": str(jax.devices()[0].device_kind), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "torchvision": torchvision.__version__}


@functools.lru_cache(maxsize=8)
def _mask_drawer(model: Any, resize: int | None) -> Callable[..., Any]:
    """``(variables, key, uint8 images) -> dropout_masks``, jitted (only the masks are computed:
    they do not depend on the activations' values)."""

    def draw(variables: Any, key: jax.Array, images: jax.Array) -> Any:
        _, state = model.apply(variables, preprocess(images, resize), train=True,
                               mutable=["batch_stats", "dropout_masks"], rngs={"dropout": key})
        return state["dropout_masks"]

    return jax.jit(draw)


class DropoutReplay:
    """The dropout masks that ``jaxcnn.training.train_step`` draws, step by step, in torch's
    layout. ``train_step`` splits the state's ``dropout_key`` into (next key, step key) and
    applies the model with ``rngs={'dropout': step key}``; a mask depends only on that key and
    the batch's shape, so applying once more with ``mutable=['dropout_masks']`` redraws it."""

    def __init__(self, model: Any, variables: Any, key: np.ndarray, batch_sizes: Sequence[int],
                 resize: int | None) -> None:
        self._model, self._variables, self._key = model, variables, jax.numpy.asarray(key)
        self._sizes, self._next = list(batch_sizes), 0
        self._draw = _mask_drawer(model, resize)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        """Masks of step ``i`` (0-based, called in order) as ``{torch name: bool array}``."""
        if i != self._next:
            raise RuntimeError(f"dropout masks are replayed in order: asked for {i}, "
                               f"expected {self._next}")
        self._key, step_key = jax.random.split(self._key)
        self._next += 1
        images = jax.numpy.zeros((self._sizes[i], 28, 28), jax.numpy.uint8)
        masks = self._draw(self._variables, step_key, images)
        return jaxcnn.convert.dropout_masks_to_torch(self._model, masks)


def bn_cancelled_biases(tm: torch.nn.Module) -> set[str]:
    """Biases of the Conv/Linear layers that a BatchNorm directly follows (in a Sequential):
    in training mode BatchNorm subtracts them again, so their exact gradient is zero and what
    an optimizer like Adam does with them is driven by rounding noise alone."""
    return set(bn_cancelled_pairs(tm))


def bn_cancelled_pairs(tm: torch.nn.Module) -> dict[str, str]:
    """:func:`bn_cancelled_biases`, each mapped to the name of the BatchNorm module after it."""
    from .. import BatchNorm

    bn = (torch.nn.modules.batchnorm._BatchNorm, BatchNorm)
    found = {}
    for prefix, module in tm.named_modules():
        if isinstance(module, torch.nn.Sequential):
            children = list(module.named_children())
            for (name, a), (bn_name, b) in itertools.pairwise(children):
                if isinstance(b, bn) and getattr(a, "bias", None) is not None:
                    at = f"{prefix}." if prefix else ""
                    found[f"{at}{name}.bias"] = f"{at}{bn_name}"
    return found


def param_diff(model: Any, variables: Any, torch_model: torch.nn.Module) -> dict[str, Any]:
    """Max |jaxcnn - torch| over all parameters (with its tensor and the largest ratio to
    ``jaxcnn.testing.tolerance``), the same without :func:`bn_cancelled_biases`
    (``..._other``), over the float buffers (BatchNorm statistics), and whether the integer
    buffers (``num_batches_tracked``) are equal."""
    got = jaxcnn.to_torch_state_dict(model, variables)
    names = {k for k, _ in torch_model.named_parameters()}
    cancelled = bn_cancelled_biases(torch_model)
    out: dict[str, Any] = {"param_max_abs_diff": 0.0, "param_diff_over_tolerance": 0.0,
                           "worst_param": None, "param_max_abs_diff_other": 0.0,
                           "worst_param_other": None, "buffer_max_abs_diff": 0.0,
                           "int_buffers_equal": True}
    for key, ref in state_dict_numpy(torch_model).items():
        if not np.issubdtype(ref.dtype, np.floating):
            out["int_buffers_equal"] &= bool(np.array_equal(got[key], ref))
            continue
        d = max_abs_diff(got[key], ref)
        if key not in names:
            out["buffer_max_abs_diff"] = max(out["buffer_max_abs_diff"], d)
            continue
        for suffix in ("", "_other"):
            if suffix and key in cancelled:
                continue
            if d >= out[f"param_max_abs_diff{suffix}"]:
                out[f"param_max_abs_diff{suffix}"], out[f"worst_param{suffix}"] = d, key
        out["param_diff_over_tolerance"] = max(out["param_diff_over_tolerance"],
                                               d / tolerance(ref))
    return out


def _jax_stats(s: Any) -> dict[str, float]:
    return {"loss": s.loss, "train_acc": s.train_acc, "test_acc": s.test_acc, "time": s.time,
            "images_per_sec": s.images_per_sec}


class _TorchRun:
    """A torch model with its optimizer, per-epoch scheduler and the book's data."""

    def __init__(self, config: TrainConfig, tm: torch.nn.Module, data: FashionMNIST) -> None:
        self.config, self.model = config, tm
        self.train = ArrayFashionMNIST(data.train_images, data.train_labels, config.resize)
        self.test = ArrayFashionMNIST(data.test_images, data.test_labels, config.resize)
        self.opt = make_optimizer(config.optimizer, tm.parameters())
        self.sched = make_scheduler(config.optimizer, self.opt, config.epochs)

    def epoch(self, order: Sequence[int], masks: Any = None) -> dict[str, float]:
        """Train one epoch in ``order``, then test; time = training (mask replay excluded)
        plus the test pass, as the book's; ``data_time`` is the share spent loading."""
        bs = self.config.batch_size
        e = train_epoch(self.model, torch_batches(self.train, bs, order), self.opt, masks=masks)
        start = time.perf_counter()
        test_acc = evaluate_accuracy(self.model, torch_batches(self.test, bs))
        total = e.train_time + time.perf_counter() - start
        if self.sched is not None:
            self.sched.step()
        return {"loss": e.loss, "train_acc": e.train_acc, "test_acc": test_acc, "time": total,
                "images_per_sec": e.images / e.train_time, "data_time": e.data_time}


def compare(config: TrainConfig, data: FashionMNIST | None = None, *, data_dir: Any = None,
            log: Log = print) -> dict[str, Any]:
    """The paired run of ``config`` (see the module docstring). Returns the JSON-able record:
    ``config``, ``machine``, ``epochs``: per epoch ``jaxcnn`` and ``torch`` stats (loss,
    train_acc, test_acc, time in s including the test pass, training images_per_sec) and
    :func:`param_diff` at the epoch's end."""
    data = data if data is not None else load_splits(
        data_dir, limit_train=config.limit_train, limit_test=config.limit_test)
    n = len(data.train_labels)
    sizes = [min(config.batch_size, n - i) for i in range(0, n, config.batch_size)]
    torch.manual_seed(config.seed)
    tm = create_model(config.model, **config.model_config)
    model, state = init_state(config, len(sizes))
    variables = jaxcnn.from_torch_state_dict(model, tm.state_dict())
    state = state.replace(params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=state.tx.init(variables["params"]))
    has_dropout = any(isinstance(m, torch.nn.Dropout) for m in tm.modules())
    train_j, test_j = DeviceDataset.splits(data)
    run = _TorchRun(config, tm, data)
    lrs = epoch_learning_rates(config.optimizer, config.epochs)
    record: dict[str, Any] = {"kind": "paired", "config": config.to_dict(), "machine": machine(),
                              "train_images": n, "test_images": len(data.test_labels),
                              "steps_per_epoch": len(sizes), "epochs": []}
    history: list[Any] = []
    if log:
        log(HEADER)
    for epoch in range(1, config.epochs + 1):
        key = np.array(state.dropout_key)  # train_step donates the state: copy first
        state, history = fit(state, train_j, test_j, epochs=epoch,
                             batch_size=config.batch_size, resize=config.resize,
                             seed=config.seed, history=history, lr_of_epoch=lrs.__getitem__,
                             log=None, progress=False)
        replay = (DropoutReplay(model, state.variables, key, sizes, config.resize)
                  if has_dropout else None)
        stats = run.epoch(epoch_order(config.seed, epoch - 1, n), replay)
        row = {"epoch": epoch, "lr": lrs[epoch - 1], "jaxcnn": _jax_stats(history[-1]),
               "torch": stats, **param_diff(model, state.variables, tm)}
        record["epochs"].append(row)
        if log:
            log(format_row(row))
    return record


def compare_seeds(config: TrainConfig, seeds: int, data: FashionMNIST | None = None, *,
                  data_dir: Any = None, log: Log = print) -> dict[str, Any]:
    """``seeds`` independent runs per framework (seeds ``config.seed + k``): jaxcnn with its own
    init, order and dropout (``jaxcnn.training.train``), torch with ``manual_seed``, a
    ``randperm`` order per epoch and its own dropout. Returns the record with every run's
    history (``runs``) and :func:`welch` of the final test accuracies (``summary``)."""
    if seeds < 2:
        raise ValueError(f"the seed study needs at least 2 seeds, got {seeds}")
    data = data if data is not None else load_splits(
        data_dir, limit_train=config.limit_train, limit_test=config.limit_test)
    n = len(data.train_labels)
    datasets = DeviceDataset.splits(data)
    runs: dict[str, list[list[dict[str, float]]]] = {"jaxcnn": [], "torch": []}
    for k in range(seeds):
        cfg = dataclasses.replace(config, seed=config.seed + k)
        result = train(cfg, datasets=datasets, log=None, progress=False)
        runs["jaxcnn"].append([_jax_stats(h) for h in result.history])
        torch.manual_seed(cfg.seed)
        run = _TorchRun(cfg, create_model(cfg.model, **cfg.model_config), data)
        gen = torch.Generator().manual_seed(cfg.seed)
        runs["torch"].append([run.epoch(torch.randperm(n, generator=gen).tolist())
                              for _ in range(cfg.epochs)])
        if log:
            log(f"seed {cfg.seed}: final test acc jaxcnn {runs['jaxcnn'][-1][-1]['test_acc']:.4f}"
                f", torch {runs['torch'][-1][-1]['test_acc']:.4f}")
    final = {fw: [h[-1]["test_acc"] for h in hs] for fw, hs in runs.items()}
    summary = welch(final["jaxcnn"], final["torch"])
    if log:
        log(summary["verdict"])
    return {"kind": "seeds", "config": config.to_dict(), "machine": machine(),
            "train_images": n, "test_images": len(data.test_labels),
            "seeds": [config.seed + k for k in range(seeds)], "runs": runs, "summary": summary}


def welch(jax_acc: Sequence[float], torch_acc: Sequence[float],
          alpha: float = 0.05) -> dict[str, Any]:
    """Mean, sample std (ddof 1) per framework, Welch's t-test (``scipy.stats.ttest_ind``,
    ``equal_var=False``) and a plain-language verdict at level ``alpha``."""
    from scipy import stats

    a, b = np.asarray(jax_acc, np.float64), np.asarray(torch_acc, np.float64)
    with warnings.catch_warnings():  # equal samples: p is NaN, handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(a, b, equal_var=False)
    p, diff = float(test.pvalue), float(a.mean() - b.mean())
    means = (f"jaxcnn {a.mean():.4f} +- {a.std(ddof=1):.4f}, torch {b.mean():.4f} +- "
             f"{b.std(ddof=1):.4f} (mean +- std over {len(a)} and {len(b)} seeds)")
    if not np.isfinite(p):
        verdict = f"Identical final accuracies in every run ({means}): nothing to test."
    elif p < alpha:
        verdict = (f"The final test accuracies differ significantly (Welch's t-test p = {p:.3g} "
                   f"< {alpha}): jaxcnn is {'higher' if diff > 0 else 'lower'} by "
                   f"{abs(diff):.4f} on average; {means}.")
    else:
        verdict = (f"No significant difference (Welch's t-test p = {p:.3g} >= {alpha}): the "
                   f"mean gap of {diff:+.4f} is within the seed-to-seed spread; {means}.")
    return {"jaxcnn_mean": float(a.mean()), "jaxcnn_std": float(a.std(ddof=1)),
            "torch_mean": float(b.mean()), "torch_std": float(b.std(ddof=1)),
            "t": float(test.statistic), "p_value": p, "alpha": alpha, "verdict": verdict,
            "jaxcnn_final_test_acc": a.tolist(), "torch_final_test_acc": b.tolist()}


HEADER = ("epoch | loss jaxcnn / torch | train acc        | test acc         | time s        "
          "| images/s      | max|dparam| (w/o BN-cancelled biases)")


def format_row(row: dict[str, Any]) -> str:
    """One line of the side-by-side table (:data:`HEADER`)."""
    j, t = row["jaxcnn"], row["torch"]
    return (f"{row['epoch']:5d} | {j['loss']:.5f} / {t['loss']:.5f}  | "
            f"{j['train_acc']:.4f} / {t['train_acc']:.4f} | {j['test_acc']:.4f} / "
            f"{t['test_acc']:.4f} | {j['time']:5.1f} / {t['time']:5.1f} | "
            f"{j['images_per_sec']:5.0f} / {t['images_per_sec']:5.0f} | "
            f"{row['param_max_abs_diff']:.2e} ({row['param_max_abs_diff_other']:.2e})")


def write_outputs(record: dict[str, Any], out_dir: str | os.PathLike[str],
                  stem: str) -> tuple[Path, Path]:
    """``out_dir/stem.json`` (the record) and ``out_dir/stem.png`` (both frameworks' curves)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    (plot_paired if record["kind"] == "paired" else plot_seeds)(record, png_path)
    return json_path, png_path


def _figure(ncols: int, nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _title(record: dict[str, Any]) -> str:
    c = record["config"]
    return (f"{c['model']}: jaxcnn vs torch, {c['optimizer']['name']} lr "
            f"{c['optimizer']['lr']:g}, batch {c['batch_size']}, {record['train_images']} train "
            f"/ {record['test_images']} test images")


def plot_paired(record: dict[str, Any], path: Path) -> None:
    """Loss, train and test accuracy of both frameworks, and the max parameter difference."""
    rows = record["epochs"]
    ep = [r["epoch"] for r in rows]
    fig, axes = _figure(4)
    for ax, key in zip(axes, ("loss", "train_acc", "test_acc"), strict=False):
        for fw, style in (("jaxcnn", "o-"), ("torch", "x--")):
            ax.plot(ep, [r[fw][key] for r in rows], style, label=fw)
        ax.set(xlabel="epoch", title=key.replace("_", " "))
        ax.legend()
    axes[3].semilogy(ep, [max(r["param_max_abs_diff"], 1e-12) for r in rows], "o-")
    axes[3].set(xlabel="epoch", title="max |param jaxcnn - torch|")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(_title(record))
    fig.savefig(path, dpi=80)


def plot_seeds(record: dict[str, Any], path: Path) -> None:
    """Mean +- std test accuracy per epoch of each framework, and every run's final value."""
    fig, axes = _figure(2)
    for i, (fw, style) in enumerate((("jaxcnn", "o-"), ("torch", "x--"))):
        acc = np.array([[e["test_acc"] for e in run] for run in record["runs"][fw]])
        ep = np.arange(1, acc.shape[1] + 1)
        mean, std = acc.mean(0), acc.std(0, ddof=1)
        axes[0].plot(ep, mean, style, label=f"{fw} (mean +- std)")
        axes[0].fill_between(ep, mean - std, mean + std, alpha=0.2)
        axes[1].plot(np.full(len(acc), i), acc[:, -1], "o", alpha=0.7)
    axes[0].set(xlabel="epoch", title="test acc")
    axes[0].legend()
    axes[1].set(xticks=[0, 1], xticklabels=["jaxcnn", "torch"], xlim=(-0.6, 1.6),
                title=f"final test acc, Welch p = {record['summary']['p_value']:.3g}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{_title(record)}, {len(record['seeds'])} seeds")
    fig.savefig(path, dpi=80)
