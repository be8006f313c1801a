"""One trial's child run, written by a background thread while training goes on.

`start_trial_run` creates the run; `EpochLogger` (a Keras callback) hands it each
epoch's metrics; after `fit`, `TrialRun.finish` hands it the trained model. The
run's own thread writes everything in order, so the next trial trains while this
one's model and chart are written.
"""

from __future__ import annotations

import queue
import threading
import time

import keras
import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry
from mlflow.types import Schema, TensorSpec

from pipeline.data import NUM_CLASSES, NUM_PIXELS
from pipeline.errors import LoggingFailed, Superseded
from pipeline.space import LOSS, OPTIMIZER
from pipeline.tracking import curves, names
from pipeline.tracking.server import retry

# The input tensor is unnamed: MLflow then hands the pyfunc flavor the array itself,
# as the Sequential model expects ({"inputs": [[...]]} or {"instances": ...} served);
# a named one reaches Keras as a dict, and Keras warns that its structure differs.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, NUM_PIXELS))]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1, NUM_CLASSES), "digits")]),
)


# A pack's runs all end at once. Their results (Python-bound work under one GIL, and
# writes to one store) are written one run at a time: overlapped, they only slow each
# other, and each would pay MLflow's first-model costs (its package map) again.
_RESULTS = threading.Lock()
# How long a stopping process waits for a run being written before it ends it KILLED:
# well inside a scheduler's grace period (Kubernetes' 30 s, Slurm's KillWait).
ABANDON_SECONDS = 5.0


def trial_params(config):
    """The hyperparameters that are active for a `TrialConfig`, as MLflow params."""
    return {
        names.HIDDEN_LAYERS: config.hidden_layers,
        names.UNITS: ",".join(str(u) for u in config.units),
        names.ACTIVATION: config.activation,
        names.OPTIMIZER: OPTIMIZER,
        names.LEARNING_RATE: config.learning_rate,
        names.MOMENTUM: config.momentum,
        names.BATCH_SIZE: config.batch_size,
        names.EPOCHS: config.epochs,
        names.LOSS_FUNCTION: LOSS,
        # SGD's further settings, all of them once any is in use: a searched
        # `nesterov: false` or `schedule: constant` is a value to compare, not a gap.
        **({} if config.plain_sgd else {
            names.SCHEDULE: config.schedule, names.WARMUP_EPOCHS: config.warmup_epochs,
            names.WEIGHT_DECAY: config.weight_decay, names.NESTEROV: config.nesterov}),
    }


def start_trial_run(parent, spec_name, trial_id, worker, probe=None, tags=None):
    """Creates the child run of one trial (tags `sweep`, `trial_id`, `worker`, and
    `tags`).

    Returns:
        A `TrialRun`; end it with `finish()` and `wait()`, or `fail()`, or `kill()`.
    """
    tags = {names.SWEEP: spec_name, names.TRIAL_ID: trial_id, names.WORKER: worker,
            names.PARENT_RUN: parent.run_id, **{k: str(v) for k, v in (tags or {}).items()}}
    tags = context_registry.resolve_tags(tags)
    run = retry(lambda: MlflowClient().create_run(
        parent.experiment_id, run_name=f"{spec_name}-trial-{trial_id}", tags=tags))
    return TrialRun(run.info.run_id, probe)


class TrialRun:
    """One trial's child run, written by a background thread while training goes on.

    The training thread only hands work over: each epoch's metrics with a copy of
    the weights (the gradient probe runs on the copy), then, after `fit`, the
    trained model (test evaluation, the model, `curves.png`, ending the run).
    MLflow's own asynchronous logging is not used: it drops a batch whose write
    fails (logging an error only) and polls at 1 s on every flush; here a failed
    write is retried, a failure that remains ends the run FAILED with its reason,
    and `wait()` reports it.

    A trial counts as done only once its run is FINISHED: runs left RUNNING by a
    process that died end KILLED, and the trial is run again (see `sweep.py`).
    """

    def __init__(self, run_id, probe=None):
        self.run_id = run_id
        self.probe = probe
        self.epochs = []
        self.history = {k: [] for k in names.EPOCH_METRICS}
        self.status = "KILLED"  # Until finish() says otherwise.
        self.error = None  # A write that failed for good.
        self.failure = None  # The trial's own failure.
        self.superseded = False  # Its trial went to another worker meanwhile.
        self.model_id = None  # Its logged model, once the first epoch is written.
        self.ended = False  # Its end (status) is in the store.
        self._confirm = None
        self._client = MlflowClient()
        self._tasks = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"trial-run-{run_id[:8]}")
        self._thread.start()

    # -- on the training thread ------------------------------------------

    def log_params(self, config):
        """Logs the trial's hyperparameters and parameter counts, before training."""
        count = config.params
        counts = {names.TRAINABLE_PARAMS: count.total, names.WEIGHTS: count.weights,
                  names.BIASES: count.biases}
        retry(lambda: self._client.log_batch(
            self.run_id,
            params=[Param(k, str(v)) for k, v in trial_params(config).items()],
            metrics=_metrics(counts, step=0)))

    def log_epoch(self, epoch, metrics, weights=None):
        """Queues one epoch's metrics (step = `epoch`, 1-based) and its weights' probe
        (or, without a probe, the gradient sizes in `metrics` as they are)."""
        self.epochs.append(epoch)
        for key in names.EPOCH_METRICS:
            self.history[key].append(float(metrics.get(key, np.nan)))
        self._tasks.put(lambda: self._write_epoch(epoch, dict(metrics), weights))

    def finish(self, model, test_data, title, timing, batch_size, test_metrics=None,
               confirm=None, tags=None):
        """Queues the rest: test evaluation (at `batch_size`; or `test_metrics`, its
        (loss, accuracy) already computed), the model, the chart; then ends the run.

        `confirm`, if given, is asked last whether the trial is still this process's
        (a worker's lease): if not, the run ends KILLED, not FINISHED (`superseded`).
        """
        self.status = "FINISHED"
        self._confirm = confirm
        self._tasks.put(lambda: self._write_results(model, test_data, title, timing,
                                                    batch_size, test_metrics, tags))
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

    def abandon(self, seconds=ABANDON_SECONDS):
        """The process is stopping (SIGTERM, Ctrl-C) while this run is still written:
        waits up to `seconds` for it to end, else ends it KILLED itself, so it is never
        left RUNNING when the writing thread dies with the process. A resumed sweep runs
        the trial again (or finds it FINISHED, if the writing won the race)."""
        self._thread.join(seconds)
        if self.ended:
            return
        try:
            self._client.set_tag(self.run_id, names.FAILURE_REASON,
                                 "interrupted: the process stopped while its results "
                                 "were written; the trial runs again")
            self._client.set_terminated(self.run_id, "KILLED")
        except Exception:  # noqa: BLE001 - the store is gone too: a resume closes it.
            pass

    def wait(self):
        """Waits until the run has ended.

        Raises:
            LoggingFailed: if the run could not be written whole.
        """
        self._thread.join()
        if self.error is not None:
            raise LoggingFailed(f"trial run {self.run_id} could not be logged: "
                                f"{one_line(self.error)}") from self.error

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
            gradients = self.probe.measure(weights)
            metrics.update({names.gradient(i): g for i, g in enumerate(gradients)})
        model_id = self._model_id()
        retry(lambda: self._client.log_batch(self.run_id,
                                             metrics=_metrics(metrics, epoch, model_id)))

    def _write_results(self, model, test_data, title, timing, batch_size, test_metrics,
                       tags):
        with _RESULTS:
            self._write_results_now(model, test_data, title, timing, batch_size,
                                    test_metrics, tags)

    def _write_results_now(self, model, test_data, title, timing, batch_size, test_metrics,
                           tags):
        test_loss, test_accuracy = test_metrics or model.evaluate(
            *test_data, batch_size=batch_size, verbose=0)
        step = self.epochs[-1] if self.epochs else 0
        model_id = self._model_id()
        retry(lambda: self._client.log_batch(self.run_id, metrics=_metrics(
            {names.TEST_LOSS: test_loss, names.TEST_ACCURACY: test_accuracy, **timing},
            step, model_id), tags=[RunTag(k, v) for k, v in (tags or {}).items()]))
        retry(lambda: self._log_model(model))
        if self.epochs:
            figure = curves.training_curves(self.epochs, self.history, title)
            retry(lambda: self._client.log_figure(self.run_id, figure, names.CURVES))

    def _model_id(self):
        """The trial's logged model (MLflow 3), made with its first epoch: every metric
        is logged to it too, so `mlflow.search_logged_models` ranks a sweep's models."""
        if self.model_id is None:
            run = retry(lambda: self._client.get_run(self.run_id))
            self.model_id = retry(lambda: mlflow.initialize_logged_model(
                name=names.MODEL, source_run_id=self.run_id,
                experiment_id=run.info.experiment_id, params=run.data.params)).model_id
        return self.model_id

    def _log_model(self, model):
        # The Keras flavor through `Model.log`, which takes the run and the logged
        # model explicitly: this thread has no active run to take them from.
        mlflow.models.Model.log(
            artifact_path=None, name=names.MODEL, flavor=mlflow.keras, model=model,
            signature=SIGNATURE, pip_requirements=_requirements(), run_id=self.run_id,
            model_id=self._model_id())

    def _end(self):
        reason = self.error or self.failure
        status = "FAILED" if reason is not None else self.status
        if status == "FINISHED" and self._confirm is not None:
            try:
                self.superseded = not self._confirm()
            except Exception as e:  # noqa: BLE001 - no answer: the run is not known whole.
                self.error = reason = e
                status = "FAILED"
            if self.superseded:
                status, reason = "KILLED", Superseded(
                    "its trial was re-issued to another worker (this one was taken for lost)")
        try:
            if status != "FINISHED" and self.model_id is not None:  # Not a usable model.
                retry(lambda: self._client.finalize_logged_model(self.model_id, "FAILED"))
            if reason is not None:
                retry(lambda: self._client.set_tag(self.run_id, names.FAILURE_REASON,
                                                   one_line(reason)))
            retry(lambda: self._client.set_terminated(self.run_id, status))
            self.status = status
            self.ended = True
        except Exception as e:  # noqa: BLE001 - the store is gone; a resume closes the run.
            self.error = self.error or e


class EpochLogger(keras.callbacks.Callback):
    """Hands each epoch's metrics, duration and weights to a `TrialRun`.

    MLflow's own `MlflowCallback` logs optimizer settings as params and
    `validation_*` metrics; this one keeps the names of the contract.
    """

    def __init__(self, run):
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: logs[k] for k in names.EPOCH_METRICS if k in logs}
        metrics[names.EPOCH_SECONDS] = time.perf_counter() - self._start
        weights = self.run.probe.snapshot(self.model) if self.run.probe else None
        self.run.log_epoch(epoch + 1, metrics, weights)


def one_line(error):
    """An error as one line fit for a tag: its class and its message's first line."""
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return f"{error.__class__.__name__}: {message}"[:500]


def _metrics(values, step, model_id=None):
    timestamp = int(time.time() * 1000)
    return [Metric(k, float(v), timestamp, step, model_id=model_id) for k, v in values.items()]


def _requirements():
    # Given explicitly: MLflow would otherwise infer them by loading the model
    # in a subprocess, which costs seconds per trial.
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
