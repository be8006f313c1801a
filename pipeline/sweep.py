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
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import mlflow

from pipeline import space as space_module
from pipeline.errors import (
    DiskFull,
    Interrupted,
    OracleLost,
    PipelineError,
    SweepBusy,
    SweepStopped,
    disk_full,
)
from pipeline.progress import Progress
from pipeline.search import distributed, interrupts, packing, state_files
from pipeline.search.tuner import SweepTuner
from pipeline.tracking import (
    datasets,
    names,
    registry,
    runs,
    server,
    system_metrics,
    views,
)
from pipeline.tracking.trial_run import one_line
from pipeline.training.model import CompileOptions

DEFAULT_DIRECTORY = "kt_sweeps"
# How long a worker that finds its sweep finished waits for a chief to reopen it.
FINISHED_WAIT_SECONDS = 30


@dataclass(frozen=True)
class Result:
    name: str
    parent_run_id: str
    best_trial: str | None
    best_val_accuracy: float | None
    resumed: bool


@dataclass(frozen=True)
class Settings:
    """How to run a sweep, as opposed to what it searches (the spec).

    Attributes:
        experiment: the MLflow experiment's name.
        directory: where Keras Tuner keeps its state, one folder per sweep.
        overwrite: start afresh (a new parent run) instead of resuming.
        verbose: Keras' per-epoch output (0: off).
        options: `CompileOptions` for every model.
        devices: what the trials run on, for the first progress line.
        worker_timeout: on a chief, seconds of silence before a worker is lost.
        pack: trials trained together in one step; 0: the spec's, else chosen.
        register: register the best trial's model as the sweep's `champion`.
    """

    experiment: str = names.DEFAULT_EXPERIMENT
    directory: str = DEFAULT_DIRECTORY
    overwrite: bool = False
    verbose: int = 0
    options: CompileOptions = CompileOptions()
    devices: str = "CPU"
    worker_timeout: float = distributed.WORKER_TIMEOUT
    pack: int = 0
    register: bool = True


def project_name(spec, dataset, experiment):
    """The Keras Tuner project of a sweep: what it computes, and where it is logged."""
    key = spec.fingerprint(dataset.fingerprint, experiment, mlflow.get_tracking_uri())
    return f"{spec.name}-{key}"


def run(spec, dataset, settings=Settings(), launcher_run_id=None, nest_under=None):
    """Runs (or resumes) one sweep to its `max_trials`, or one process's part of it.

    In Keras Tuner's distributed mode (see `pipeline.search.distributed`), the chief
    owns the oracle and the parent run and trains nothing; each worker trains the
    trials the chief hands out, logging each under the chief's parent run.

    Args:
        spec: the sweep `Spec`, overrides applied.
        dataset: the `Dataset` to train, validate and test on.
        settings: the sweep's `Settings`.
        launcher_run_id: the run `mlflow run` made for this command, if any.
        nest_under: a run id to nest the parent run under.

    Returns:
        A `Result` (on a worker, with the parent found and no best trial).
    """
    space = space_module.build(spec)
    project = project_name(spec, dataset, settings.experiment)
    server.wait_interruptibly(interrupts.interruptible)
    try:
        if distributed.role() == "worker":
            return _run_worker(spec, space, dataset, project, settings)
        return _run_chief_or_alone(spec, space, dataset, project, settings,
                                   launcher_run_id, nest_under)
    except Exception as e:
        if isinstance(e, PipelineError) or not disk_full(e):
            raise
        raise DiskFull(f"no space left on the disk ({one_line(e)}); free some and run the "
                       "same command again: the sweep resumes, and the trial that was "
                       "being written runs again") from None


def _run_worker(spec, space, dataset, project, settings):
    """A worker trains what the chief hands out, until the chief says stop."""
    progress = Progress(f"{spec.name}/{distributed.tuner_id()}", spec.tuner.max_trials)
    # Workers keep their own Keras Tuner files; the oracle lives on the chief.
    directory = Path(settings.directory) / "workers" / distributed.tuner_id()
    pack = packing.choose_pack(spec, space, settings.pack)
    tuner = SweepTuner(spec, space, experiment=settings.experiment, options=settings.options,
                       progress=progress, verbose=settings.verbose, directory=str(directory),
                       project_name=project, pack=pack)
    progress.say(f"worker for {project} on {settings.devices}"
                 + (f", up to {pack} trials at once" if pack > 1 else "") + ", oracle at "
                 f"{os.environ[distributed.ENV_IP]}:{os.environ[distributed.ENV_PORT]}")
    if _stays_finished(settings.experiment, project):
        progress.say("the sweep already finished and no chief reopened it: nothing to do")
        return Result(spec.name, None, None, None, True)
    try:
        with interrupts.catch(on_signal=server.stop_retrying):
            tuner.search(dataset)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:  # The chief stopped the sweep.
            raise SweepStopped(f"the chief {e.details()}") from None
        if not runs.sweep_finished(settings.experiment, project):
            raise OracleLost(f"lost the chief's oracle: {e.code().name}") from None
        # The chief ended the sweep and exited while this worker was away.
        progress.say("the chief finished the sweep while this worker waited for it")
    # Not `tuner.parent`: a worker that trained nothing would wait for a RUNNING
    # parent that the chief has already closed.
    parent = runs.newest_parent(settings.experiment, project)
    return Result(spec.name, parent and parent.info.run_id, None, None, False)


def _stays_finished(experiment, project, wait_seconds=FINISHED_WAIT_SECONDS):
    """Whether the sweep stays finished: a chief extending it reopens it within
    `wait_seconds` (a nightly job's worker may start before its chief)."""
    deadline = time.monotonic() + wait_seconds
    while runs.sweep_finished(experiment, project):
        if time.monotonic() > deadline:
            return True
        time.sleep(2)
    return False


def _run_chief_or_alone(spec, space, dataset, project, settings, launcher_run_id,
                        nest_under):
    """One process owns the sweep: its oracle, its parent run, its state directory."""
    progress = Progress(spec.name, spec.tuner.max_trials)
    project_dir = Path(settings.directory) / project
    with _exclusive(Path(settings.directory) / f".{project}.lock", spec.name):
        if settings.overwrite and project_dir.exists():
            shutil.rmtree(project_dir)
        state_files.check(project_dir)
        pack = packing.choose_pack(spec, space, settings.pack)
        tuner = SweepTuner(spec, space, experiment=settings.experiment,
                           options=settings.options, progress=progress,
                           verbose=settings.verbose, worker_timeout=settings.worker_timeout,
                           pack=pack, directory=settings.directory, project_name=project)
        parent = runs.existing_parent(project_dir, settings.experiment)
        if parent is not None:
            tuner.resume(parent)
        if tuner.finished():  # A re-run of a finished sweep trains nothing.
            progress.say(f"already finished: {len(tuner.oracle.trials)} trials in MLflow run "
                         f"{parent.run_id if parent else '?'}; --max-trials N extends it")
            best = parent and tuner.best_trial()
            if parent and parent.status != "FINISHED":  # Stopped after the last trial.
                runs.end_parent(parent, "FINISHED", best)
                progress.say(f"closed MLflow run {parent.run_id} FINISHED: it was left "
                             f"{parent.status} by a process stopped after the last trial")
            if best and best.run_id and settings.register:  # A champion not yet registered.
                _crown(settings.experiment, spec.name, best, progress)
            if parent:
                _say_link(parent, space, progress)
            return Result(spec.name, parent and parent.run_id, None, None, True)
        parent = runs.open_parent(spec, settings.experiment, project_dir, launcher_run_id,
                                  nest_under, keep=tuner.leased_runs)
        datasets.log(parent.run_id, dataset)
        tuner.open(parent)
        progress.say(
            f"{'resuming' if parent.resumed else 'starting'} {spec.tuner.algorithm} search, "
            f"{spec.tuner.max_trials} trials of {spec.training.epochs} epochs"
            + (f", up to {pack} at once" if pack > 1 else "") + " on "
            f"{dataset.describe()} on {settings.devices}; MLflow run {parent.run_id} in "
            f"experiment {settings.experiment!r}"
            + ("; serving the oracle to workers" if distributed.role() == "chief" else ""))
        best = _search(tuner, dataset, parent, progress, system_metrics.start(parent.run_id))
        if best and best.run_id and settings.register:
            _crown(settings.experiment, spec.name, best, progress)
        _say_link(parent, space, progress)
    return Result(spec.name, parent.run_id, best and best.trial_id, best and best.val_accuracy,
                  parent.resumed)


def _search(tuner, dataset, parent, progress, monitor):
    """Runs the search and ends the parent FINISHED, FAILED or KILLED; returns the best.
    `monitor` (its system metrics) stops first."""
    status = "FAILED"
    try:
        with interrupts.catch(on_signal=server.stop_retrying):
            tuner.search_and_retry(dataset)
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        server.stop_retrying()
        status = "KILLED"
        raise
    finally:
        system_metrics.finish(monitor)
        best = _close(tuner, parent, status, progress)
    return best


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


def _crown(experiment, sweep_name, best, progress):
    """Registers the best trial's model as the sweep's champion (Model Registry)."""
    try:
        champion = registry.register_champion(experiment, sweep_name, best.run_id)
    except Exception as e:  # noqa: BLE001 - the sweep itself finished; say so, go on.
        progress.say(f"could not register the champion: {one_line(e)}; the same command "
                     "registers it")
        return
    if champion:
        progress.say(f"champion: models:/{champion[0]}@{registry.ALIAS} (version "
                     f"{champion[1]}, trial {best.trial_id})")


def _say_link(parent, space, progress):
    """Saves the sweep's comparison view in MLflow and prints the link that opens it."""
    try:
        views.save_view(parent.experiment_id, parent.run_id, space.searched_params())
    except Exception as e:  # noqa: BLE001 - the sweep itself finished; say so, go on.
        progress.say(f"could not save the comparison view: {one_line(e)}")
        return
    address = views.ui_address(mlflow.get_tracking_uri())
    link = views.sweep_link(address, parent.experiment_id, parent.run_id)
    progress.say(f"compare the trials: {link}"
                 + (" (serve it: python -m pipeline ui)" if address == views.LOCAL_UI else ""))


def _close(tuner, parent, status, progress):
    """Records the best trial and ends the parent run; never hides the first error."""
    try:
        tuner.wait_for_logging()
        best = tuner.best_trial()
        runs.end_parent(parent, status, best)
    except Exception as e:  # noqa: BLE001 - the sweep's own outcome matters more.
        progress.say(f"could not close MLflow run {parent.run_id}: {e}")
        return None
    progress.say(f"{status.lower()}; best trial {best.trial_id} val_accuracy "
                 f"{best.val_accuracy:.4f}"
                 if best else f"{status.lower()}; no trial completed")
    return best


def run_exercise(specs, load_dataset, settings=Settings(), launcher_run_id=None):
    """Runs every exercise sweep in turn.

    Under `mlflow run`, each sweep's parent run is nested under the run that
    `mlflow run` made when both are in the same experiment; otherwise that run
    gets a tag `sweep_run_id.<sweep>` pointing at each sweep's parent run.

    Args:
        specs: the `Spec`s, in order.
        load_dataset: a function from a `Spec` to its `Dataset`.
        settings: the sweeps' `Settings`.
        launcher_run_id: the run `mlflow run` made for this command, if any.

    Returns:
        The `Result` of each sweep.
    """
    nest_under = runs.umbrella_run(settings.experiment, launcher_run_id)
    results = []
    for spec in specs:
        result = run(spec, load_dataset(spec), settings, nest_under=nest_under)
        if launcher_run_id and not nest_under:
            runs.point_to(launcher_run_id, f"{names.SWEEP_RUN_ID}.{spec.name}",
                          result.parent_run_id)
        results.append(result)
    return results
