"""Loss and accuracy curves as a PNG (matplotlib's Agg canvas; no pyplot, no global backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._loop import EpochStats


def plot_history(history: Sequence[EpochStats], path: str | os.PathLike[str],
                 title: str = "") -> Path:
    """Write ``path`` (PNG): training loss per epoch (left), train and test accuracy (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("no epochs to plot")
    epochs = [h.epoch for h in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h.loss for h in history], "o-", label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h.train_acc for h in history], "o-", label="train acc")
    ax_acc.plot(epochs, [h.test_acc for h in history], "s--", label="test acc")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
