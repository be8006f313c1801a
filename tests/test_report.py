"""The report answers from what MLflow holds, names its runs, and names what is missing."""

import json
import statistics

import pytest

from pipeline.cli.commands import cli
from pipeline.report.render import pct
from pipeline.tracking import names

pytestmark = pytest.mark.slow


@pytest.fixture
def logged(runner, mnist_path):
    """Three of the exercise's sweeps on a small slice; the others stay missing."""
    for spec, trials, epochs in (("part1-narrow", 2, 2), ("part2-narrow", 2, 1),
                                 ("activation", 2, 1)):
        result = runner.invoke(cli, ["sweep", spec, "--data", mnist_path, "--train-limit",
                                     "600", "--epochs", str(epochs), "--max-trials",
                                     str(trials)])
        assert result.exit_code == 0, result.output


def trial_runs(client, sweep):
    experiment = client.get_experiment_by_name("mnist-sweeps")
    return client.search_runs([experiment.experiment_id],
                              f"tags.{names.SWEEP} = '{sweep}' and tags.{names.TRIAL_ID} != ''")


def test_report_numbers_equal_what_mlflow_holds_and_are_logged(
        runner, client, logged, workdir):
    result = runner.invoke(cli, ["report", "--out", "out"])
    assert result.exit_code == 0, result.output
    out = workdir / "out"
    answers = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()

    # Part One, narrow: the best trial by validation accuracy, and its numbers.
    runs = trial_runs(client, "part1-narrow")
    best = max(runs, key=lambda r: r.data.metrics[names.VAL_ACCURACY])
    part1 = answers["part1"]["part1-narrow"]
    assert part1["run_id"] == best.info.run_id
    metrics = best.data.metrics
    for key in (names.TRAINABLE_PARAMS, names.WEIGHTS, names.BIASES):
        assert part1[key] == metrics[key]
        assert f"{int(metrics[key]):,}" in markdown
    assert part1["test_accuracy"] == metrics[names.TEST_ACCURACY]
    assert part1["train_val_gap"] == pytest.approx(
        metrics[names.ACCURACY] - metrics[names.VAL_ACCURACY])
    seconds = [m.value for m in client.get_metric_history(best.info.run_id,
                                                          names.EPOCH_SECONDS)]
    assert part1["median_epoch_seconds"] == pytest.approx(statistics.median(seconds))
    assert part1["val_accuracy_epoch_10"] is None  # two epochs were run, not ten
    assert "n/a (2 epochs run)" in markdown
    assert pct(metrics[names.TEST_ACCURACY]) in markdown and best.info.run_id in markdown

    # Part Two: every trial listed with its parameters; the 20% question answered.
    band = answers["part2"]["part2-narrow"]
    band_runs = trial_runs(client, "part2-narrow")
    assert sorted(t["run_id"] for t in band["trials"]) == sorted(
        r.info.run_id for r in band_runs)
    assert band["beat_chance"] == any(
        max(r.data.metrics[names.VAL_ACCURACY], r.data.metrics[names.TEST_ACCURACY]) > 0.2
        for r in band_runs)
    assert "**Did any beat 20% accuracy?**" in markdown
    grads = answers["gradients"]["part2-narrow"]
    history = client.get_metric_history(grads["run_id"], names.gradient(0))
    assert grads["first"] == next(m.value for m in history if m.step == 1)

    # The correlation covers every Part One and Part Two trial.
    assert answers["correlation"]["n"] == len(runs) + len(band_runs)
    assert "Spearman's rho" in markdown
    assert set(answers["activation"]) == {
        r.data.params[names.ACTIVATION] for r in trial_runs(client, "activation")}

    # Sweeps not run are named, with the command that runs them.
    assert answers["missing"] == ["part1-wide", "part2-medium", "part2-wide", "part3"]
    assert "`python -m pipeline sweep part3`" in markdown
    assert answers["part3"] is None
    assert "missing sweep part1-wide" in result.output

    # report.html is self-contained; the files are logged to a `report` run.
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert 'src="http' not in html and "<table>" in html
    for name in ("curves.png", "accuracy_vs_params.png", "gradients.png", "best_so_far.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    experiment = client.get_experiment_by_name("mnist-sweeps")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.{names.REPORT} = 'exercise'")
    assert run.info.run_name == names.REPORT and run.info.status == "FINISHED"
    logged_files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {*names.REPORT_FILES, "gradients.png"} <= logged_files


def test_report_with_nothing_run_names_every_sweep_missing(runner, workdir):
    result = runner.invoke(cli, ["report"])
    assert result.exit_code == 0, result.output
    markdown = (workdir / "reports" / "report.md").read_text()
    for name in ("part1-wide", "part1-narrow", "part2-narrow", "part2-medium",
                 "part2-wide", "activation", "part3"):
        assert f"`python -m pipeline sweep {name}`" in markdown
