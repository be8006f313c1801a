"""Matplotlib figures: the exercise's chart of training vs validation per epoch.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so nothing
is held in a global figure registry across hundreds of trials.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def training_curves(epochs, history, title):
    """Training vs validation accuracy and loss per epoch, side by side.

    Args:
        epochs: the epoch numbers (1-based), one per entry of each history list.
        history: a dict with lists `accuracy`, `val_accuracy`, `loss`, `val_loss`.
        title: a line naming the model.

    Returns:
        A `Figure`.
    """
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    plot_curves(acc_ax, loss_ax, epochs, history)
    fig.suptitle(title)
    return fig


def plot_curves(acc_ax, loss_ax, epochs, history, label=""):
    """Draws one model's training and validation curves on two axes."""
    prefix = f"{label} " if label else ""
    for ax, metric, unit in ((acc_ax, "accuracy", "accuracy (fraction correct)"),
                             (loss_ax, "loss", "loss (categorical cross-entropy)")):
        (line,) = ax.plot(epochs, history[metric], marker="o", markersize=3,
                          label=f"{prefix}training")
        ax.plot(epochs, history[f"val_{metric}"], marker="s", markersize=3,
                linestyle="--", color=line.get_color(), label=f"{prefix}validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
