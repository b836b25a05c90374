"""Figures, drawn with matplotlib's Agg backend (imported on first use, never at import)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Dict, List

from .files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plain_labels(draw: Callable) -> Callable:
    """Every figure-drawing function of the package is wrapped in this: the text it puts into a
    figure (class names, titles, file names) is drawn as plain text. Matplotlib would otherwise
    read ``$...$`` as mathtext, and a class named ``$\\frac$`` or ``a_$x^$`` fails the drawing with
    a parse error. The setting holds for this call only (``rc_context``); a Text keeps the value it
    was created with."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper


def log_scale(ax, which: str = "x") -> None:
    """A log-scale axis whose tick labels are plain numbers (``10``, ``100``): matplotlib writes log
    ticks as mathtext (``$\\mathdefault{10^{1}}$``), which :func:`plain_labels` shows as raw text."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


@plain_labels
def plot_training_curves(history: List[Dict], path: str | os.PathLike) -> Path:
    """``curves.png``: train loss, mAP of the plain and EMA model, learning rate, per epoch.

    Args:
        history: the ``metrics.jsonl`` records (``epoch``, ``train_loss``, ``mAP``, ``mAP_ema``, ``lr``).
        path: output PNG.
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker="o")
    axes[0].set_title("train loss")
    axes[1].plot(epochs, [r["mAP"] for r in history], marker="o", label="model")
    if any(r.get("mAP_ema") is not None for r in history):
        axes[1].plot(epochs, [r.get("mAP_ema") for r in history], marker="s", label="EMA")
    axes[1].set_title("validation mAP (%)")
    axes[1].legend()
    axes[2].plot(epochs, [r["lr"] for r in history], marker="o")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = atomic_write(path, writer=lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return path
