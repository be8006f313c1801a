"""What goes to MLflow, and under which names. The names are a contract.

One parent run per sweep (run name = spec name; tags `sweep`, `part`, `best_trial`;
metric `best_val_accuracy`; the spec file as an artifact) and one nested child
run per trial (tags `sweep`, `trial_id`, `worker`: the Keras Tuner id of the
process that ran it) holding:

- params: the trial's active hyperparameters (`TrialConfig.mlflow_params()`);
- metrics: `trainable_params`, `weights`, `biases`; per epoch, with step = epoch
  number (1 = after the first epoch): `loss`, `accuracy`, `val_loss`,
  `val_accuracy`, `epoch_seconds` and `grad_mean_abs_layer_<i>`; at the end
  `test_loss`, `test_accuracy`, `fit_seconds` and `trial_seconds` (the trial's
  wall time up to its last log call);
- the trained model through MLflow's Keras flavor, with an input signature, and
  `curves.png`, training vs validation accuracy and loss per epoch.

A run never stays RUNNING: a trial that fails ends FAILED with the reason in the
tag `failure_reason`; one that is interrupted ends KILLED.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry
from mlflow.types import Schema, TensorSpec

from pipeline import plots
from pipeline.space import INPUTS, OUTPUTS

DEFAULT_EXPERIMENT = "mnist-sweeps"
PARENT_FILE = "mlflow_parent.json"
MODEL_NAME = "model"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, INPUTS), "pixels")]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1, OUTPUTS), "digits")]),
)


def _requirements():
    # Given explicitly: MLflow would otherwise infer them by loading the model
    # in a subprocess, which costs seconds per trial.
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


def secure_tracking_uri(environ=os.environ):
    """Moves credentials out of `MLFLOW_TRACKING_URI` into MLflow's own variables.

    `http://user:password@host` works, but MLflow would print and log that URI
    (run links, request errors). MLflow sends `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD` as basic auth just the same, so the URI is kept
    without them and no message can show them. Processes started later inherit
    the cleaned environment. MLflow's run links are not printed either: the
    progress lines say which run is which.
    """
    environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not (parts.username or parts.password):
        return
    environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username or ""))
    environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password or ""))
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    environ["MLFLOW_TRACKING_URI"] = urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def redact(uri):
    """A URI fit to print: any user and password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    netloc = "***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message says where and what to do."""


def check_reachable(seconds=15):
    """Fails fast if the tracking store is a server that does not answer.

    MLflow's own client retries a dead server for minutes; a sweep should instead
    stop at once, before anything is trained.

    Raises:
        TrackingUnavailable: if `/health` does not answer within `seconds`.
    """
    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError as e:
            error = getattr(e, "reason", e)
            if time.monotonic() > deadline:
                raise TrackingUnavailable(
                    f"cannot reach the MLflow tracking server at {redact(uri)} ({error}) "
                    f"after {seconds} s; start it, or point MLFLOW_TRACKING_URI at one "
                    "that runs (unset, ./mlflow.db is used)") from None
        time.sleep(2)


def experiment_id(name):
    """Returns the id of experiment `name`, creating it if needed."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


@dataclass
class Parent:
    """The sweep's parent run."""

    run_id: str
    experiment_id: str
    resumed: bool = False


def open_parent(spec, experiment, project_dir, launcher_run_id=None, nest_under=None):
    """Starts the sweep's parent run, or continues it when the sweep is resumed.

    The parent's id is kept in `project_dir` (beside Keras Tuner's own state), so
    running the same sweep again continues the same parent run.

    Args:
        spec: the sweep `Spec`.
        experiment: the experiment's name.
        project_dir: the Keras Tuner project directory of this sweep.
        launcher_run_id: the run `mlflow run` made for this command, if any. A fresh
            launcher run in the same experiment becomes the parent; otherwise it is
            tagged with a pointer to the parent.
        nest_under: a run to nest the parent under (the `exercise` command's run).

    Returns:
        A `Parent`.
    """
    client = MlflowClient()
    exp_id = experiment_id(experiment)
    state = Path(project_dir) / PARENT_FILE
    parent = _reopen(client, state)
    if parent is None:
        parent = Parent(_new_parent_run(client, spec, exp_id, Path(project_dir).name,
                                        launcher_run_id, nest_under), exp_id)
        client.log_artifact(parent.run_id, spec.path)
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"parent_run_id": parent.run_id}))
        tmp.replace(state)
    if launcher_run_id and launcher_run_id != parent.run_id:
        point_to(launcher_run_id, "sweep_run_id", parent.run_id)
    client.log_batch(parent.run_id, tags=_tags({
        "sweep": spec.name,
        "sweep_key": Path(project_dir).name,
        "part": spec.part if spec.part is not None else "",
        "algorithm": spec.tuner.algorithm,
        "objective": spec.tuner.objective,
        "max_trials": spec.tuner.max_trials,
        "epochs": spec.training.epochs,
        "seed": spec.tuner.seed,
    }))
    return parent


def find_parent(experiment, sweep_key, wait_seconds=300):
    """A worker's view of its sweep's parent run, which the chief opened.

    Waits up to `wait_seconds` for the chief to open (or reopen) it.

    Raises:
        RuntimeError: if no running parent run with this `sweep_key` appears.
    """
    client = MlflowClient()
    deadline = time.monotonic() + wait_seconds
    while True:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs(
                [exp.experiment_id],
                f"tags.sweep_key = '{sweep_key}' and attributes.status = 'RUNNING'",
                order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                return Parent(runs[0].info.run_id, exp.experiment_id)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no running parent run for sweep {sweep_key} in experiment "
                               f"{experiment!r}: is the chief running with the same spec, "
                               "data and tracking URI?")
        time.sleep(2)


def fail_trial_runs(parent_run_id, trial_id, reason):
    """Ends a trial's runs that are still RUNNING as FAILED (their worker was lost)."""
    client = MlflowClient()
    for run in trial_runs(client, parent_run_id, status="RUNNING", trial_id=trial_id):
        _end_left_over(client, run.info.run_id, "FAILED", reason)


def _end_left_over(client, run_id, status, reason):
    """Ends a run its own process can no longer end, saying why (tag `failure_reason`)."""
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, status)


def point_to(launcher_run_id, key, parent_run_id):
    """Tags the `mlflow run` launcher run with where the sweep was logged."""
    MlflowClient().set_tag(launcher_run_id, key, parent_run_id)


def umbrella_run(experiment, launcher_run_id):
    """The `mlflow run` launcher run, if it can hold sweeps nested under it."""
    if not launcher_run_id:
        return None
    client = MlflowClient()
    if client.get_run(launcher_run_id).info.experiment_id != experiment_id(experiment):
        return None
    client.update_run(launcher_run_id, name="exercise")
    return launcher_run_id


def existing_parent(project_dir):
    """The parent run recorded in `project_dir`, if it is still in the store."""
    state = Path(project_dir) / PARENT_FILE
    if not state.exists():
        return None
    run_id = json.loads(state.read_text())["parent_run_id"]
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None  # Deleted from this store: a new parent will be started.
    if run.info.lifecycle_stage != "active":
        return None
    return Parent(run_id, run.info.experiment_id, resumed=True)


def _reopen(client, state):
    parent = existing_parent(state.parent)
    if parent is not None:
        client.update_run(parent.run_id, status="RUNNING")
        mark_interrupted(client, parent.run_id)
    return parent


def _new_parent_run(client, spec, exp_id, key, launcher_run_id, nest_under):
    # An earlier parent of the same sweep left RUNNING (its state was overwritten or
    # lost) must not be found by this sweep's workers.
    stale = client.search_runs([exp_id], f"tags.sweep_key = '{key}' and "
                                         "attributes.status = 'RUNNING'")
    for run in stale:
        _end_left_over(client, run.info.run_id, "KILLED", "superseded by a new sweep")
    if launcher_run_id:
        launcher = client.get_run(launcher_run_id)
        if launcher.info.experiment_id == exp_id and "sweep" not in launcher.data.tags:
            client.update_run(launcher_run_id, name=spec.name)
            return launcher_run_id
    tags = {"mlflow.parentRunId": nest_under} if nest_under else {}
    return client.create_run(exp_id, run_name=spec.name, tags=tags).info.run_id


def mark_interrupted(client, parent_run_id, reason=None):
    """Ends trial runs left RUNNING under `parent_run_id` (their process died) as KILLED."""
    for run in trial_runs(client, parent_run_id, status="RUNNING"):
        _end_left_over(client, run.info.run_id, "KILLED",
                       reason or "interrupted: the process running this trial ended")


def trial_runs(client, parent_run_id, status=None, trial_id=None):
    """The child runs of a sweep, optionally filtered by status and trial id."""
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.trial_id != ''"
    if status:
        query += f" and attributes.status = '{status}'"
    if trial_id is not None:
        query += f" and tags.trial_id = '{trial_id}'"
    run = client.get_run(parent_run_id)
    return client.search_runs([run.info.experiment_id], query, max_results=5000)


def end_parent(parent, status, best=None):
    """Records the best trial on the parent and ends it with `status`."""
    client = MlflowClient()
    if best is not None:
        record_best(parent, *best)
    client.set_terminated(parent.run_id, status)


def record_best(parent, trial_id, score, run_id=None):
    """Tags the parent with its best trial so far and logs `best_val_accuracy`."""
    client = MlflowClient()
    tags = {"best_trial": trial_id}
    if run_id:
        tags["best_run_id"] = run_id
    client.log_batch(parent.run_id, tags=_tags(tags),
                     metrics=[Metric("best_val_accuracy", float(score),
                                                     int(time.time() * 1000), 0)])


def _tags(mapping):
    return [RunTag(k, str(v)) for k, v in mapping.items()]


def retry(call, attempts=4, delay=1.0):
    """Calls `call`, retrying with a doubling delay if the store is busy or away."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2 ** attempt)


class TrialRun:
    """One trial's child run, written by a background thread while training goes on.

    The training thread only hands work over: each epoch's metrics with a copy of
    the weights (the gradient probe runs on the copy), then, after `fit`, the
    trained model (test evaluation, the model, `curves.png`, ending the run).
    The thread does it all in order, so the next trial trains while this one's
    model and chart are written. MLflow's own asynchronous logging is not used: it
    drops a batch whose write fails (logging an error only) and polls at 1 s on
    every flush; here a failed write is retried, a failure that remains ends the
    run FAILED with its reason, and `wait()` reports it.

    A trial counts as done only once its run is FINISHED: runs left RUNNING by a
    process that died end KILLED, and the trial is run again (see `sweep.py`).
    """

    def __init__(self, run_id, probe=None):
        self.run_id = run_id
        self.probe = probe
        self.epochs = []
        self.history = {k: [] for k in EPOCH_METRICS}
        self.status = "KILLED"  # Until finish() says otherwise.
        self.error = None  # A write that failed for good.
        self.failure = None  # The trial's own failure.
        self.test_accuracy = None
        self._client = MlflowClient()
        self._tasks = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"trial-run-{run_id[:8]}")
        self._thread.start()

    # -- on the training thread ------------------------------------------

    def log_params(self, config):
        """Logs the trial's hyperparameters and parameter counts, before training."""
        count = config.params
        counts = {"trainable_params": count.total, "weights": count.weights,
                  "biases": count.biases}
        self._client.log_batch(
            self.run_id,
            params=[Param(k, str(v)) for k, v in config.mlflow_params().items()],
            metrics=_metrics(counts, step=0))

    def log_epoch(self, epoch, metrics, weights=None):
        """Queues one epoch's metrics (step = `epoch`, 1-based) and its weights' probe."""
        self.epochs.append(epoch)
        for key in EPOCH_METRICS:
            self.history[key].append(float(metrics.get(key, np.nan)))
        self._tasks.put(lambda: self._write_epoch(epoch, dict(metrics), weights))

    def finish(self, model, test_data, title, timing, batch_size):
        """Queues the rest: test evaluation (at `batch_size`), the model, the chart;
        then ends the run."""
        self.status = "FINISHED"
        self._tasks.put(lambda: self._write_results(model, test_data, title, timing,
                                                    batch_size))
        self._tasks.put(None)

    def fail(self, error):
        """Ends the run FAILED (tag `failure_reason`) once queued metrics are written."""
        self.failure = error
        self._tasks.put(None)
        self._thread.join()

    def kill(self):
        """Ends the run KILLED (an interrupted trial) once queued metrics are written."""
        self._tasks.put(None)
        self._thread.join()

    def wait(self):
        """Waits until the run has ended; raises if it could not be written whole."""
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"trial run {self.run_id} could not be logged: "
                               f"{_one_line(self.error)}") from self.error

    # -- on the run's own thread -----------------------------------------

    def _loop(self):
        while (task := self._tasks.get()) is not None:
            if self.error is None:  # After a write failed for good, only end the run.
                try:
                    task()
                except Exception as e:  # noqa: BLE001 - the run ends FAILED; wait() says why.
                    self.error = e
        self._end()

    def _write_epoch(self, epoch, metrics, weights):
        if self.probe is not None and weights is not None:
            metrics.update(self.probe.measure(weights))
        retry(lambda: self._client.log_batch(self.run_id, metrics=_metrics(metrics, epoch)))

    def _write_results(self, model, test_data, title, timing, batch_size):
        test_loss, self.test_accuracy = model.evaluate(*test_data, batch_size=batch_size,
                                                       verbose=0)
        step = self.epochs[-1] if self.epochs else 0
        retry(lambda: self._client.log_batch(self.run_id, metrics=_metrics(
            {"test_loss": test_loss, "test_accuracy": self.test_accuracy, **timing}, step)))
        retry(lambda: self._log_model(model))
        if self.epochs:
            figure = plots.training_curves(self.epochs, self.history, title)
            retry(lambda: self._client.log_figure(self.run_id, figure, "curves.png"))

    def _log_model(self, model):
        # The Keras flavor through `Model.log`, which takes the run and the logged
        # model explicitly: this thread has no active run to take them from.
        run = self._client.get_run(self.run_id)
        logged = mlflow.initialize_logged_model(
            name=MODEL_NAME, source_run_id=self.run_id,
            experiment_id=run.info.experiment_id, params=run.data.params)
        mlflow.models.Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=mlflow.keras, model=model,
            signature=SIGNATURE, pip_requirements=_requirements(), run_id=self.run_id,
            model_id=logged.model_id)

    def _end(self):
        reason = self.error or self.failure
        status = "FAILED" if reason is not None else self.status
        try:
            if reason is not None:
                self._client.set_tag(self.run_id, "failure_reason", _one_line(reason))
            retry(lambda: self._client.set_terminated(self.run_id, status))
            self.status = status
        except Exception as e:  # noqa: BLE001 - the store is gone; a resume closes the run.
            self.error = self.error or e


def _metrics(values, step):
    timestamp = int(time.time() * 1000)
    return [Metric(k, float(v), timestamp, step) for k, v in values.items()]


class EpochLogger(keras.callbacks.Callback):
    """Hands each epoch's metrics, duration and weights to a `TrialRun`.

    MLflow's own `MlflowCallback` logs optimizer settings as params and
    `validation_*` metrics; this one keeps the names of the contract above.
    """

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: logs[k] for k in EPOCH_METRICS if k in logs}
        metrics["epoch_seconds"] = time.perf_counter() - self._start
        weights = self.run.probe.snapshot(self.model) if self.run.probe else None
        self.run.log_epoch(epoch + 1, metrics, weights)


def start_trial_run(parent, spec_name, trial_id, worker, probe=None):
    """Creates the child run of one trial (tags `sweep`, `trial_id`, `worker`).

    Returns:
        A `TrialRun`; end it with `finish()` and `wait()`, or `fail()`, or `kill()`.
    """
    tags = {"sweep": spec_name, "trial_id": trial_id, "worker": worker,
            "mlflow.parentRunId": parent.run_id}
    run = MlflowClient().create_run(parent.experiment_id, run_name=f"{spec_name}-trial-{trial_id}",
                                    tags=context_registry.resolve_tags(tags))
    return TrialRun(run.info.run_id, probe)


def _one_line(error):
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return f"{error.__class__.__name__}: {message}"[:500]


def earlier_attempts(parent, trial_id, objective):
    """Settles the earlier runs of a trial that is about to start (again).

    A run left RUNNING by a process that died ends KILLED. A FINISHED run means
    the trial is done (its process died between closing the run and Keras Tuner
    recording the trial): it must not be trained or logged twice.

    Returns:
        (run_id, metrics) of the FINISHED run, or None.
    """
    client = MlflowClient()
    done = None
    for run in trial_runs(client, parent.run_id, trial_id=trial_id):
        if run.info.status == "RUNNING":
            _end_left_over(client, run.info.run_id, "KILLED",
                           "interrupted: its process ended; the trial was started again")
        elif run.info.status == "FINISHED" and objective in run.data.metrics:
            done = run.info.run_id, dict(run.data.metrics)
    return done
