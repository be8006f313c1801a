"""The report states only what its runs show: with Part One's narrow sweep alone,
nothing about Part Two or Part Three beyond "not run yet" and the command."""

import json
import re

import pytest

from pipeline.cli.commands import cli
from pipeline.tracking import names

pytestmark = pytest.mark.slow

EXPERIMENT = "class of 2026"
SPEC = "part1-narrow"
TRIALS = 4
# Words that would be a claim about a part that did not run.
OTHER_PARTS = re.compile(r"Part Two|Part Three|part2|part3|vanish|gradient|chance|deep|"
                         r"tanh|relu|10 or more|activation sweep", re.IGNORECASE)


def sections(markdown):
    """{heading: text} of the report's `##` sections."""
    found = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return dict(zip(found[1::2], found[2::2], strict=True))


def not_run_only(text, specs):
    """The section says only "Not run yet", with each spec's commands."""
    text = text.strip()
    assert text.startswith("Not run yet: ") and "\n" not in text, text
    for spec in specs:
        assert (f"`python -m pipeline sweep {spec} --experiment '{EXPERIMENT}'` (or `mlflow "
                f"run . -e sweep --env-manager local --experiment-name '{EXPERIMENT}' "
                f"-P spec={spec}`)") in text
    rest = text
    for spec in specs:
        rest = rest.replace(spec, "")
    assert not re.search(r"\d\.\d|%", rest), text  # No number, no accuracy.


def test_a_report_of_part1_narrow_alone_claims_nothing_of_the_other_parts(
        runner, client, mnist_path, workdir):
    result = runner.invoke(cli, ["sweep", SPEC, "--data", mnist_path, "--train-limit", "600",
                                 "--epochs", "2", "--max-trials", str(TRIALS),
                                 "--experiment", EXPERIMENT])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["report", "--experiment", EXPERIMENT, "--out", "out"])
    assert result.exit_code == 0, result.output
    assert (f"missing sweep part3: run `python -m pipeline sweep part3 --experiment "
            f"'{EXPERIMENT}'`") in result.output
    markdown = (workdir / "out" / "report.md").read_text()
    answers = json.loads((workdir / "out" / "report.json").read_text())
    parts = sections(markdown)

    part_two = next(text for heading, text in parts.items() if heading.startswith("Part Two"))
    not_run_only(part_two, ["part2-narrow", "part2-medium", "part2-wide"])
    part_three = next(text for heading, text in parts.items()
                      if heading.startswith("Part Three"))
    not_run_only(part_three, ["part3"])
    # Everything else (headings of the parts aside) is about what ran.
    told = [text for heading, text in parts.items()
            if not heading.startswith(("Part Two", "Part Three", "Missing sweeps"))]
    for text in told:
        assert not OTHER_PARTS.search(text), OTHER_PARTS.search(text).group(0)

    # The correlation names what it was computed over.
    size = parts["Accuracy against parameter count"]
    assert f"Over the {TRIALS} trials of `{SPEC}`, Spearman's rho" in size
    assert answers["correlation"]["sweeps"] == {SPEC: TRIALS}

    # The Pareto front: each model the most accurate of those at most its size.
    experiment = client.get_experiment_by_name(EXPERIMENT)
    trials = client.search_runs([experiment.experiment_id],
                                f"tags.{names.SWEEP} = '{SPEC}' and tags.{names.TRIAL_ID} != ''")
    assert len(trials) == TRIALS
    front = answers["pareto"]
    assert front, "no Pareto front"
    for model in front:
        assert model["test_accuracy"] == max(
            t.data.metrics[names.TEST_ACCURACY] for t in trials
            if t.data.metrics[names.TRAINABLE_PARAMS] <= model["trainable_params"])
        assert f"| {model['architecture']} | {SPEC} | {model['trainable_params']:,} |" in size

    # Captions say what each plot draws; no gradients plot without Part Two.
    assert "best model (by validation accuracy) of: Part One, narrow: " in markdown
    assert f"every trial of Part One ({TRIALS}); the line is the Pareto front" in markdown
    assert not (workdir / "out" / "gradients.png").exists()

    # Each answer's run links to its page in MLflow's UI, in the model training view.
    best = answers["part1"][SPEC]["run_id"]
    link = (f"[`{best}`](http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
            f"/runs/{best}?workflowType=machine_learning)")
    assert link in markdown
    html = (workdir / "out" / "report.html").read_text()
    assert (f'<a href="http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/'
            f'{best}?workflowType=machine_learning"><code>{best}</code></a>') in html


def test_the_report_draws_each_sweeps_best_accuracy_so_far_against_time(
        runner, client, mnist_path, workdir):
    for spec in (SPEC, "part1-wide"):
        result = runner.invoke(cli, ["sweep", spec, "--data", mnist_path, "--train-limit",
                                     "500", "--epochs", "1", "--max-trials", "3"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["report", "--out", "out"])
    assert result.exit_code == 0, result.output
    answers = json.loads((workdir / "out" / "report.json").read_text())
    assert set(answers["best_so_far"]) == {SPEC, "part1-wide"}
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    for spec, curve in answers["best_so_far"].items():
        runs = {r.info.run_id: r for r in client.search_runs(
            [experiment.experiment_id],
            f"tags.{names.SWEEP} = '{spec}' and tags.{names.TRIAL_ID} != ''")}
        start = min(r.info.start_time for r in runs.values())
        assert [run_id for *_, run_id in curve] == sorted(
            runs, key=lambda run_id: runs[run_id].info.end_time)  # Every trial, by its end.
        best = 0.0
        for seconds, so_far, run_id in curve:
            best = max(best, runs[run_id].data.metrics[names.VAL_ACCURACY])
            assert so_far == best
            assert seconds == (runs[run_id].info.end_time - start) / 1000
    assert "Best validation accuracy so far against elapsed time" in (
        workdir / "out" / "report.md").read_text()
    assert (workdir / "out" / "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
