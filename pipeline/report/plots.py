"""Matplotlib figures of the report: best models' curves, accuracy against parameters,
gradients by depth.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so nothing
is held in a global figure registry across hundreds of trials.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.tracking.curves import plot_curves

MIN_WIDTH = 6  # Inches: room for a title over one model's column.


def best_model_curves(models):
    """One column per model: training vs validation accuracy (top) and loss (bottom).

    Args:
        models: a list of (title, epochs, history) as for `curves.training_curves`.
    """
    fig = Figure(figsize=(max(4 * len(models), MIN_WIDTH), 7), dpi=100,
                 layout="constrained")
    axes = fig.subplots(2, len(models), squeeze=False)
    for column, (title, epochs, history) in enumerate(models):
        plot_curves(axes[0][column], axes[1][column], epochs, history)
        axes[0][column].set_title(title, fontsize="medium")
    fig.suptitle("Training vs validation per epoch, best model"
                 + (" of each part" if len(models) > 1 else ""))
    return fig


def accuracy_vs_params(groups, front=()):
    """Test accuracy against trainable parameters (log scale), one colour per group,
    and the Pareto front as a step line through its named models.

    Args:
        groups: a dict from a group label to a list of (params, test_accuracy).
        front: the Pareto front, [(params, test_accuracy, model name)], smallest first.
    """
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    markers = "osD^v<>"
    for i, (label, points) in enumerate(groups.items()):
        if points:
            params, accuracy = zip(*points, strict=True)
            ax.scatter(params, accuracy, label=f"{label} ({len(points)} trials)",
                       marker=markers[i % len(markers)], alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (fraction correct)")
    if front:
        params, accuracy, labels = zip(*front, strict=True)
        ax.step(params, accuracy, where="post", color="black", linewidth=1,
                label=f"Pareto front ({len(front)} models)")
        for x, y, label in front:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize="x-small")
    ax.axhline(0.2, color="grey", linestyle=":", linewidth=1, label="20% accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    ax.set_title("Test accuracy against model size, every trial")
    return fig


def gradients_by_depth(series, panels):
    """Mean |gradient| of each Dense kernel against its depth, log scale.

    Args:
        series: a list of (label, {panel: [value per layer, input side first]}).
        panels: the panel keys, in order, e.g. ("after epoch 1", "after the last epoch").
    """
    fig = Figure(figsize=(6 * len(panels), 5), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        for label, values in series:
            if values.get(panel):
                depths = range(1, len(values[panel]) + 1)
                ax.plot(depths, values[panel], marker="o", markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("Dense layer (1 = first hidden layer; last = softmax output)")
        ax.set_ylabel("mean |dLoss/dkernel| on a fixed batch (log scale)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Gradient size by depth, {panel}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    return fig


def best_so_far(curves):
    """Each sweep's best validation accuracy so far against its elapsed time.

    Args:
        curves: a dict from a sweep's name to [(seconds, best val_accuracy, ...)].
    """
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        seconds, best = [p[0] for p in curve], [p[1] for p in curve]
        ax.step(seconds, best, where="post", marker="o", markersize=3,
                label=f"{name} ({len(curve)} trials)")
    ax.set_xlabel("seconds since the sweep's first trial started")
    ax.set_ylabel("best validation accuracy so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Time to accuracy, each sweep")
    return fig
