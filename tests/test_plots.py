"""The exercise's charts: training vs validation per epoch, and the report's plots."""

from matplotlib.backends.backend_agg import FigureCanvasAgg

from pipeline.report import plots
from pipeline.tracking import curves, names

HISTORY = {names.ACCURACY: [0.5, 0.7, 0.8], names.VAL_ACCURACY: [0.55, 0.68, 0.75],
           names.LOSS: [1.2, 0.8, 0.6], names.VAL_LOSS: [1.1, 0.9, 0.8]}


def test_training_curves_draw_training_and_validation_of_both_metrics():
    figure = curves.training_curves([1, 2, 3], HISTORY, "a model")
    accuracy, loss = figure.axes
    assert [line.get_label() for line in accuracy.lines] == ["training", "validation"]
    assert list(accuracy.lines[1].get_ydata()) == HISTORY[names.VAL_ACCURACY]
    assert list(loss.lines[0].get_ydata()) == HISTORY[names.LOSS]
    assert figure._suptitle.get_text() == "a model"


def test_best_model_curves_one_column_per_model():
    figure = plots.best_model_curves([("one", [1, 2, 3], HISTORY), ("two", [1, 2, 3], HISTORY)])
    assert len(figure.axes) == 4
    assert {ax.get_title() for ax in figure.axes} >= {"one", "two"}


def test_accuracy_vs_params_one_series_per_group():
    figure = plots.accuracy_vs_params({"Part One": [(1000, 0.9), (50000, 0.95)],
                                       "Part Two": []})
    (ax,) = figure.axes
    labels = [c.get_label() for c in ax.collections]
    assert labels == ["Part One (2 trials)"]
    assert ax.get_xscale() == "log"


def test_gradients_by_depth_one_panel_each():
    figure = plots.gradients_by_depth([("deep", {"a": [1e-8, 1e-4, 1e-2], "b": [1, 2, 3]})],
                                      ("a", "b"))
    assert len(figure.axes) == 2
    assert list(figure.axes[0].lines[0].get_ydata()) == [1e-8, 1e-4, 1e-2]


def inside(figure, text):
    """Whether `text` is drawn wholly inside `figure` (not clipped at its edges)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    box = text.get_window_extent(canvas.get_renderer())
    return (box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure.bbox.width
            and box.y1 <= figure.bbox.height)


def test_best_model_curves_title_is_not_clipped_with_one_model():
    for models in ([("Part One, narrow: 1x64 sigmoid", [1, 2, 3], HISTORY)],
                   [(f"part {i}", [1, 2, 3], HISTORY) for i in range(4)]):
        figure = plots.best_model_curves(models)
        assert inside(figure, figure._suptitle), figure._suptitle.get_text()
        for ax in figure.axes:
            assert inside(figure, ax.title), ax.title.get_text()


def test_accuracy_vs_params_draws_and_names_the_pareto_front():
    front = [(1000, 0.9, "1x1 sigmoid"), (40000, 0.95, "1x50 sigmoid")]
    figure = plots.accuracy_vs_params(
        {"Part One": [(1000, 0.9), (50000, 0.93), (40000, 0.95)]}, front)
    (ax,) = figure.axes
    (line,) = [line for line in ax.lines if line.get_label().startswith("Pareto front")]
    assert line.get_label() == "Pareto front (2 models)"
    assert list(line.get_xdata()) == [1000, 40000] and list(line.get_ydata()) == [0.9, 0.95]
    assert [t.get_text() for t in ax.texts] == ["1x1 sigmoid", "1x50 sigmoid"]
