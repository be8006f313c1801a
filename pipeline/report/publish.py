"""The report written out (`report.md`, `report.html`, `report.json`, the plots) all
at once, and logged as the artifacts of a `report` run in the sweeps' experiment."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.report.answers import answer
from pipeline.report.load import load_sweeps
from pipeline.report.render import plain_ref, render, ui_refs
from pipeline.tracking import names, views

MARKDOWN, HTML, JSON = names.REPORT_FILES
REPORT_TAG_VALUE = "exercise"  # tags.report = 'exercise' marks the report's run.


def write(experiment, out_dir, launcher_run_id=None):
    """Writes `report.md`, `report.html` and `report.json` and logs them to MLflow.

    The files go to `out_dir` and are logged as artifacts of a run named `report`
    in the same experiment (the `mlflow run` launcher run, if it is there).

    Returns:
        (the output directory, the report run's id, the answers).
    """
    sweeps = load_sweeps(experiment)
    answers = answer(sweeps)
    doc = render(answers, sweeps, experiment, _refs(experiment))
    out = Path(out_dir)
    files = _write_files(doc, answers, out)
    run_id = _report_run(experiment, launcher_run_id)
    client = MlflowClient()
    status = "FAILED"
    try:
        for name in files:
            client.log_artifact(run_id, str(out / name))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return out, run_id, answers


def _refs(experiment):
    """Runs linked to MLflow's UI for this store (plain ids if the experiment is gone)."""
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        return plain_ref
    return ui_refs(views.ui_address(mlflow.get_tracking_uri()), found.experiment_id)


def _write_files(doc, answers, out):
    """Writes the report's files into `out` all at once; returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    files = [MARKDOWN, HTML, JSON, *(i.filename for i in doc.images)]
    # Write everything beside the target first, then move it in: no half reports.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staging = Path(tmp)
        for image in doc.images:
            (staging / image.filename).write_bytes(image.png)
        (staging / MARKDOWN).write_text(doc.to_markdown())
        (staging / HTML).write_text(doc.to_html())
        (staging / JSON).write_text(json.dumps(answers, indent=2))
        for name in files:
            (staging / name).replace(out / name)
    return files


def _report_run(experiment, launcher_run_id):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    if launcher_run_id and client.get_run(launcher_run_id).info.experiment_id == exp_id:
        client.update_run(launcher_run_id, name=names.REPORT)
        client.set_tag(launcher_run_id, names.REPORT, REPORT_TAG_VALUE)
        return launcher_run_id
    run_id = client.create_run(exp_id, run_name=names.REPORT,
                               tags={names.REPORT: REPORT_TAG_VALUE}).info.run_id
    if launcher_run_id:
        client.set_tag(launcher_run_id, names.REPORT_RUN_ID, run_id)
    return run_id
