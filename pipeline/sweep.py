"""One whole sweep: spec and data in, a finished parent run with its trials out.

Running the same sweep again (same spec, data, experiment and tracking store)
resumes it: Keras Tuner reloads its oracle from the project directory and the
same MLflow parent run is continued. A finished sweep then does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import mlflow

from pipeline import distributed, tracking
from pipeline import space as space_module
from pipeline.model import CompileOptions
from pipeline.oracles import SweepStopped
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
        nest_under=None, options=CompileOptions(), stream=None, devices="CPU",
        worker_timeout=distributed.WORKER_TIMEOUT):
    """Runs (or resumes) one sweep to its `max_trials`, or one process's part of it.

    In Keras Tuner's distributed mode (see `pipeline.distributed`), the chief owns
    the oracle and the parent run and trains nothing; each worker trains the
    trials the chief hands out, logging each under the chief's parent run.

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
        worker_timeout: on a chief, seconds of silence before a worker is lost.

    Returns:
        A `Result` (on a worker, with the parent found and no best trial).
    """
    space = space_module.build(spec)
    project = project_name(spec, dataset, experiment)
    role = distributed.role()
    progress = Progress(spec.name if role != "worker" else
                        f"{spec.name}/{distributed.tuner_id()}", spec.tuner.max_trials, stream)
    if role == "worker":
        # Workers keep their own Keras Tuner files; the oracle lives on the chief.
        directory = Path(directory) / "workers" / distributed.tuner_id()
        tuner = SweepTuner(spec, space, None, experiment, options=options, progress=progress,
                           verbose=verbose, directory=str(directory), project_name=project)
        progress.say(f"worker for {project} on {devices}, oracle at "
                     f"{os.environ[distributed.ENV_IP]}:{os.environ[distributed.ENV_PORT]}")
        with _sigterm_raises():
            tuner.search(dataset)
        return Result(spec.name, tuner.parent.run_id, None, None, False)

    project_dir = Path(directory) / project
    with _exclusive(Path(directory) / f".{project}.lock", spec.name):
        if overwrite and project_dir.exists():
            shutil.rmtree(project_dir)
        tuner = SweepTuner(spec, space, None, experiment, options=options, progress=progress,
                           verbose=verbose, worker_timeout=worker_timeout,
                           directory=str(directory), project_name=project)
        parent = tracking.existing_parent(project_dir)
        if parent is not None:
            tuner.parent = parent
            tuner.requeue_unlogged()
        if tuner.finished():  # A re-run of a finished sweep: leave its runs as they are.
            progress.say(f"already finished: {len(tuner.oracle.trials)} trials in MLflow run "
                         f"{parent.run_id if parent else '?'}; --max-trials N extends it")
            return Result(spec.name, parent and parent.run_id, None, None, True)
        parent = tracking.open_parent(spec, experiment, project_dir, launcher_run_id,
                                      nest_under)
        tuner.parent = parent
        progress.say(
            f"{'resuming' if parent.resumed else 'starting'} {spec.tuner.algorithm} search, "
            f"{spec.tuner.max_trials} trials of {spec.training.epochs} epochs on "
            f"{dataset.describe()} on {devices}; MLflow run {parent.run_id} in experiment "
            f"{experiment!r}" + ("; serving the oracle to workers" if role == "chief" else ""))
        status = "FAILED"
        try:
            with _sigterm_raises():
                tuner.search(dataset)
                if role is None and tuner.unlogged and tuner.requeue_unlogged():
                    tuner.unlogged = []
                    tuner.search(dataset)  # Once more, for trials whose logging failed.
            if tuner.unlogged:
                raise SweepStopped(f"trials {', '.join(tuner.unlogged)} could not be logged "
                                   "to MLflow; run the same command again to re-run them")
            status = "FINISHED"
        except (KeyboardInterrupt, Interrupted):
            status = "KILLED"
            raise
        finally:
            best = _close(tuner, parent, status, progress)
    return Result(spec.name, parent.run_id, best and best[0], best and best[1],
                  parent.resumed)


class SweepBusy(RuntimeError):
    """Another process is running this sweep from the same state directory."""


@contextlib.contextmanager
def _exclusive(lock_path, name):
    """Holds the sweep's lock file, so two chiefs never share one state directory."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepBusy(f"sweep {name} is already running from {lock_path.parent}; wait "
                            "for it to end, or stop it first") from None
        yield


def _close(tuner, parent, status, progress):
    """Records the best trial and ends the parent run; never hides the first error."""
    try:
        tuner.wait_for_logging()
        best = tuner.best_trial()
        tracking.end_parent(parent, status, best)
    except Exception as e:  # noqa: BLE001 - the sweep's own outcome matters more.
        progress.say(f"could not close MLflow run {parent.run_id}: {e}")
        return None
    progress.say(f"{status.lower()}; best trial {best[0]} val_accuracy {best[1]:.4f}"
                 if best else f"{status.lower()}; no trial completed")
    return best


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
