"""The sweep's runs: the parent's life (open, resume, supersede, close), queries of
its trial runs, and ending runs that a dead process left RUNNING.

The parent's id is kept in the sweep's Keras Tuner project directory
(`names.PARENT_FILE`), so running the same sweep again continues the same parent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ParentNotFound, TrackingUnavailable
from pipeline.tracking import names
from pipeline.tracking.server import retry


@dataclass
class Parent:
    """The sweep's parent run."""

    run_id: str
    experiment_id: str
    resumed: bool = False
    status: str = "RUNNING"  # As found when this process took the sweep up.


@dataclass(frozen=True)
class Best:
    """A sweep's best completed trial: its id, `val_accuracy` and run (None if unknown)."""

    trial_id: str
    val_accuracy: float
    run_id: str | None = None


def experiment_id(name):
    """Returns the id of experiment `name`, creating it if needed.

    The experiment is marked as one of model training (MLflow 3's experiment kind,
    `custom_model_development`), for MLflow's UI and clients that read the kind.
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return retry(lambda: client.create_experiment(
            name, tags={names.EXPERIMENT_KIND: names.TRAINING_KIND}))
    if names.EXPERIMENT_KIND not in experiment.tags:  # One made elsewhere: say what it is.
        retry(lambda: client.set_experiment_tag(experiment.experiment_id,
                                                names.EXPERIMENT_KIND, names.TRAINING_KIND))
    return experiment.experiment_id


def open_parent(spec, experiment, project_dir, launcher_run_id=None, nest_under=None,
                keep=()):
    """Starts the sweep's parent run, or continues it when the sweep is resumed.

    Args:
        spec: the sweep `Spec`.
        experiment: the experiment's name.
        project_dir: the Keras Tuner project directory of this sweep.
        launcher_run_id: the run `mlflow run` made for this command, if any. A fresh
            launcher run in the same experiment becomes the parent; otherwise it is
            tagged with a pointer to the parent.
        nest_under: a run to nest the parent under (the `exercise` command's run).
        keep: trial run ids left RUNNING that live workers may still be writing (a
            restarted chief's leases); the others left RUNNING end KILLED.

    Returns:
        A `Parent`.
    """
    client = MlflowClient()
    exp_id = experiment_id(experiment)
    state = Path(project_dir) / names.PARENT_FILE
    parent = _reopen(client, project_dir, experiment, keep)
    if parent is None:
        parent = Parent(_new_parent_run(client, spec, exp_id, Path(project_dir).name,
                                        launcher_run_id, nest_under), exp_id)
        client.log_artifact(parent.run_id, spec.path)
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"parent_run_id": parent.run_id}))
        tmp.replace(state)
    if launcher_run_id and launcher_run_id != parent.run_id:
        point_to(launcher_run_id, names.SWEEP_RUN_ID, parent.run_id)
    retry(lambda: client.log_batch(parent.run_id, tags=_tags({
        names.SWEEP: spec.name,
        names.SWEEP_KEY: Path(project_dir).name,
        names.PART: spec.part if spec.part is not None else "",
        names.ALGORITHM: spec.tuner.algorithm,
        names.OBJECTIVE: spec.tuner.objective,
        names.MAX_TRIALS: spec.tuner.max_trials,
        names.EPOCHS: spec.training.epochs,
        names.SEED: spec.tuner.seed,
    })))
    return parent


def existing_parent(project_dir, experiment=None):
    """The parent run recorded in `project_dir`, if it is still in the store.

    A damaged record (a crash mid-write on an old version, a stray edit) is rebuilt
    from MLflow: the newest parent run of this sweep in `experiment`.
    """
    state = Path(project_dir) / names.PARENT_FILE
    if not state.exists():
        return None
    try:
        run_id = str(json.loads(state.read_text(encoding="utf-8"))["parent_run_id"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        newest = newest_parent(experiment, Path(project_dir).name)
        if newest is None:
            return None
        run_id = newest.info.run_id
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None  # Deleted from this store: a new parent will be started.
        # Anything else (refused credentials, a server error) says nothing about the
        # parent: starting a new one would split the sweep in two.
        raise TrackingUnavailable(
            f"could not read the sweep's parent run {run_id} from the tracking server "
            f"({e.error_code}: {str(e.message).splitlines()[0][:200]}); nothing was "
            "changed: fix the server or credentials and run the same command again") from None
    if run.info.lifecycle_stage != "active":
        return None
    return Parent(run_id, run.info.experiment_id, resumed=True, status=run.info.status)


def newest_parent(experiment, sweep_key):
    """The newest parent run (any status) of the sweep `sweep_key`, or None."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment) if experiment else None
    if exp is None:
        return None
    newest = client.search_runs([exp.experiment_id], f"tags.{names.SWEEP_KEY} = '{sweep_key}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return newest[0] if newest else None


def find_parent(experiment, sweep_key, wait_seconds=300):
    """A worker's view of its sweep's parent run, which the chief opened.

    Waits up to `wait_seconds` for the chief to open (or reopen) it.

    Raises:
        ParentNotFound: if no running parent run with this `sweep_key` appears.
    """
    client = MlflowClient()
    deadline = time.monotonic() + wait_seconds
    while True:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs(
                [exp.experiment_id],
                f"tags.{names.SWEEP_KEY} = '{sweep_key}' and attributes.status = 'RUNNING'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                return Parent(runs[0].info.run_id, exp.experiment_id)
        if time.monotonic() > deadline:
            raise ParentNotFound(f"no running parent run for sweep {sweep_key} in experiment "
                                 f"{experiment!r}: is the chief running with the same spec, "
                                 "data and tracking URI?")
        time.sleep(2)


def sweep_finished(experiment, sweep_key):
    """Whether this sweep's newest parent run ended FINISHED (no chief runs it now)."""
    newest = newest_parent(experiment, sweep_key)
    return newest is not None and newest.info.status == "FINISHED"


def end_parent(parent, status, best=None):
    """Records the best trial (`Best`) on the parent and ends it with `status`."""
    if best is not None:
        record_best(parent, best)
    retry(lambda: MlflowClient().set_terminated(parent.run_id, status))


def record_best(parent, best):
    """Tags the parent with its best trial so far (`Best`) and logs `best_val_accuracy`."""
    tags = {names.BEST_TRIAL: best.trial_id}
    if best.run_id:
        tags[names.BEST_RUN_ID] = best.run_id
    retry(lambda: MlflowClient().log_batch(parent.run_id, tags=_tags(tags), metrics=[
        Metric(names.BEST_VAL_ACCURACY, float(best.val_accuracy), int(time.time() * 1000),
               0)]))


def model_uri(run_id):
    """The MLflow 3 URI (`models:/<model_id>`) of a trial run's logged model, or None."""
    run = MlflowClient().get_run(run_id)
    found = [m for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'",
        output_format="list") if str(m.status) == "READY"]
    return f"models:/{found[0].model_id}" if found else None


def point_to(launcher_run_id, key, parent_run_id):
    """Tags the `mlflow run` launcher run with where the sweep was logged."""
    retry(lambda: MlflowClient().set_tag(launcher_run_id, key, parent_run_id))


def umbrella_run(experiment, launcher_run_id):
    """The `mlflow run` launcher run, if it can hold sweeps nested under it."""
    if not launcher_run_id:
        return None
    client = MlflowClient()
    if client.get_run(launcher_run_id).info.experiment_id != experiment_id(experiment):
        return None
    client.update_run(launcher_run_id, name="exercise")
    return launcher_run_id


PAGE_SIZE = 1000  # Runs per search request (MLflow's server allows up to 50,000).


def trial_runs(parent_run_id, status=None, trial_id=None):
    """The child runs of a sweep, optionally filtered by status and trial id."""
    client = MlflowClient()
    query = f"tags.{names.PARENT_RUN} = '{parent_run_id}' and tags.{names.TRIAL_ID} != ''"
    if status:
        query += f" and attributes.status = '{status}'"
    if trial_id is not None:
        query += f" and tags.{names.TRIAL_ID} = '{trial_id}'"
    run = client.get_run(parent_run_id)
    found, token = [], None
    while True:  # A sweep may have up to 100,000 trials: every page of them.
        page = client.search_runs([run.info.experiment_id], query, max_results=PAGE_SIZE,
                                  page_token=token)
        found += page
        token = page.token
        if not token:
            return found


def finished_run_of(parent_run_id, trial_id):
    """The id of a trial's FINISHED run, or None."""
    runs = trial_runs(parent_run_id, status="FINISHED", trial_id=trial_id)
    return runs[0].info.run_id if runs else None


@dataclass(frozen=True)
class Earlier:
    """A trial's FINISHED run and the metrics of the epoch it kept."""

    run_id: str
    metrics: dict


def earlier_attempts(parent, trial_id, objective):
    """Settles the earlier runs of a trial that is about to start (again).

    A run left RUNNING by a process that died ends KILLED. A FINISHED run means
    the trial is done (its process died between closing the run and Keras Tuner
    recording the trial): it must not be trained or logged twice, and it is scored
    by the epoch it kept (`best_epoch`: early stopping restored that epoch's model),
    not by its last logged step.

    Returns:
        An `Earlier`, or None.
    """
    client = MlflowClient()
    done = None
    for run in trial_runs(parent.run_id, trial_id=trial_id):
        if run.info.status == "RUNNING":
            end_left_over(client, run.info.run_id, "KILLED",
                          "interrupted: its process ended; the trial was started again")
        elif run.info.status == "FINISHED" and objective in run.data.metrics:
            done = Earlier(run.info.run_id, kept_epoch_metrics(client, run))
    return done


def kept_epoch_metrics(client, run):
    """A FINISHED trial run's metrics at the epoch it kept (`best_epoch`): the
    validation metrics of that epoch, the rest as logged last."""
    metrics = dict(run.data.metrics)
    kept = metrics.get(names.BEST_EPOCH)
    if kept is None:
        return metrics
    for key in (names.VAL_ACCURACY, names.VAL_LOSS):
        at_kept = [m.value for m in retry(lambda k=key: client.get_metric_history(
            run.info.run_id, k)) if m.step == int(kept)]
        if at_kept:
            metrics[key] = at_kept[-1]
    return metrics


def fail_trial_runs(parent_run_id, trial_id, reason):
    """Ends a trial's runs that are still RUNNING as FAILED (their worker was lost)."""
    client = MlflowClient()
    for run in trial_runs(parent_run_id, status="RUNNING", trial_id=trial_id):
        end_left_over(client, run.info.run_id, "FAILED", reason)


def mark_interrupted(client, parent_run_id, keep=()):
    """Ends trial runs left RUNNING under `parent_run_id` (their process died) as KILLED,
    but those in `keep` (run ids whose worker may still be writing them)."""
    for run in trial_runs(parent_run_id, status="RUNNING"):
        if run.info.run_id in keep:
            continue
        end_left_over(client, run.info.run_id, "KILLED",
                      "interrupted: the process running this trial ended")


def end_left_over(client, run_id, status, reason):
    """Ends a run its own process can no longer end, saying why (`failure_reason`)."""
    retry(lambda: client.set_tag(run_id, names.FAILURE_REASON, reason))
    retry(lambda: client.set_terminated(run_id, status))


def _reopen(client, project_dir, experiment, keep):
    parent = existing_parent(project_dir, experiment)
    if parent is not None:
        retry(lambda: client.update_run(parent.run_id, status="RUNNING"))
        mark_interrupted(client, parent.run_id, keep)
    return parent


def _new_parent_run(client, spec, exp_id, key, launcher_run_id, nest_under):
    # An earlier parent of the same sweep left RUNNING (its state was overwritten or
    # lost) must not be found by this sweep's workers.
    stale = client.search_runs([exp_id], f"tags.{names.SWEEP_KEY} = '{key}' and "
                                         "attributes.status = 'RUNNING'")
    for run in stale:
        end_left_over(client, run.info.run_id, "KILLED", "superseded by a new sweep")
    if launcher_run_id:
        launcher = client.get_run(launcher_run_id)
        if launcher.info.experiment_id == exp_id and names.SWEEP not in launcher.data.tags:
            client.update_run(launcher_run_id, name=spec.name)
            return launcher_run_id
    tags = {names.PARENT_RUN: nest_under} if nest_under else {}
    return retry(lambda: client.create_run(exp_id, run_name=spec.name, tags=tags)).info.run_id


def _tags(mapping):
    return [RunTag(k, str(v)) for k, v in mapping.items()]
