"""A trial's chart: training vs validation accuracy and loss per epoch (the exercise's
chart), logged with every trial run and drawn again by the report.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so nothing
is held in a global figure registry across hundreds of trials.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.tracking import names


def training_curves(epochs, history, title):
    """Training vs validation accuracy and loss per epoch, side by side.

    Args:
        epochs: the epoch numbers (1-based), one per entry of each history list.
        history: a dict with lists `accuracy`, `val_accuracy`, `loss`, `val_loss`.
        title: a line naming the model.

    Returns:
        A `Figure`.
    """
    # A fixed layout: the automatic one costs more than the rest of the drawing,
    # and this chart is drawn once per trial.
    fig = Figure(figsize=(10, 4), dpi=100)
    acc_ax, loss_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    plot_curves(acc_ax, loss_ax, epochs, history)
    fig.suptitle(title)
    return fig


def plot_curves(acc_ax, loss_ax, epochs, history):
    """Draws one model's training and validation curves on two axes."""
    for ax, (metric, val_metric), unit in (
            (acc_ax, (names.ACCURACY, names.VAL_ACCURACY), "accuracy (fraction correct)"),
            (loss_ax, (names.LOSS, names.VAL_LOSS), "loss (categorical cross-entropy)")):
        (line,) = ax.plot(epochs, history[metric], marker="o", markersize=3,
                          label="training")
        ax.plot(epochs, history[val_metric], marker="s", markersize=3,
                linestyle="--", color=line.get_color(), label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right" if metric == names.ACCURACY
                  else "upper right")
