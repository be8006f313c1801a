"""One whole sweep: spec and data in, a finished parent run with its trials out.

Running the same sweep again (same spec, data, experiment and tracking store)
resumes it: Keras Tuner reloads its oracle from the project directory and the
same MLflow parent run is continued. A finished sweep then does nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import mlflow

from pipeline import space as space_module
from pipeline import tracking
from pipeline.model import CompileOptions
from pipeline.progress import Progress
from pipeline.tuner import SweepTuner

DEFAULT_DIRECTORY = "kt_sweeps"


class Interrupted(BaseException):
    """SIGTERM arrived (a scheduler pre-empting the job): stop after cleaning up."""


@dataclass(frozen=True)
class Result:
    name: str
    parent_run_id: str
    best_trial: str | None
    best_val_accuracy: float | None
    resumed: bool


def project_name(spec, dataset, experiment):
    """The Keras Tuner project of a sweep: what it computes, and where it is logged."""
    key = spec.fingerprint(dataset.fingerprint, experiment, mlflow.get_tracking_uri())
    return f"{spec.name}-{key}"


def run(spec, dataset, *, experiment=tracking.DEFAULT_EXPERIMENT,
        directory=DEFAULT_DIRECTORY, overwrite=False, verbose=0, launcher_run_id=None,
        nest_under=None, options=CompileOptions(), stream=None, devices="CPU"):
    """Runs (or resumes) one sweep to its `max_trials`.

    Args:
        spec: the sweep `Spec`, overrides applied.
        dataset: the `Dataset` to train, validate and test on.
        experiment: the MLflow experiment's name.
        directory: where Keras Tuner keeps its state, one folder per sweep.
        overwrite: start afresh (a new parent run) instead of resuming.
        verbose: Keras' per-epoch output (0: off).
        launcher_run_id: the run `mlflow run` made for this command, if any.
        nest_under: a run id to nest the parent run under.
        options: `CompileOptions` for every model.
        stream: where progress lines go (default stdout).
        devices: what the trials run on, for the first progress line.

    Returns:
        A `Result`.
    """
    space = space_module.build(spec)
    project = project_name(spec, dataset, experiment)
    project_dir = Path(directory) / project
    if overwrite and project_dir.exists():
        shutil.rmtree(project_dir)
    parent = tracking.open_parent(spec, experiment, project_dir, launcher_run_id, nest_under)
    progress = Progress(spec.name, spec.tuner.max_trials, stream)
    progress.say(
        f"{'resuming' if parent.resumed else 'starting'} {spec.tuner.algorithm} search, "
        f"{spec.tuner.max_trials} trials of {spec.training.epochs} epochs on "
        f"{dataset.describe()} on {devices}; MLflow run {parent.run_id} in experiment "
        f"{experiment!r}")
    tuner = SweepTuner(spec, space, parent, options=options, progress=progress,
                       verbose=verbose, directory=str(directory), project_name=project)
    status = "FAILED"
    try:
        with _sigterm_raises():
            tuner.search(dataset)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    finally:
        best = tuner.best_trial()
        tracking.end_parent(parent, status, best)
        progress.say(f"{status.lower()}; best trial {best[0]} val_accuracy {best[1]:.4f}"
                     if best else f"{status.lower()}; no trial completed")
    return Result(spec.name, parent.run_id, best and best[0], best and best[1],
                  parent.resumed)


def run_exercise(specs, load_dataset, *, experiment=tracking.DEFAULT_EXPERIMENT,
                 launcher_run_id=None, **kwargs):
    """Runs every exercise sweep in turn.

    Under `mlflow run`, each sweep's parent run is nested under the run that
    `mlflow run` made when both are in the same experiment; otherwise that run
    gets a tag `sweep_run_id.<sweep>` pointing at each sweep's parent run.

    Args:
        specs: the `Spec`s, in order.
        load_dataset: a function from a `Spec` to its `Dataset`.
        experiment: the MLflow experiment's name.
        launcher_run_id: the run `mlflow run` made for this command, if any.
        **kwargs: passed on to `run()`.

    Returns:
        The `Result` of each sweep.
    """
    nest_under = tracking.umbrella_run(experiment, launcher_run_id)
    results = []
    for spec in specs:
        result = run(spec, load_dataset(spec), experiment=experiment, nest_under=nest_under,
                     **kwargs)
        if launcher_run_id and not nest_under:
            tracking.point_to(launcher_run_id, f"sweep_run_id.{spec.name}",
                              result.parent_run_id)
        results.append(result)
    return results


@contextlib.contextmanager
def _sigterm_raises():
    def handler(signum, frame):
        raise Interrupted("SIGTERM: stopped by the scheduler")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
