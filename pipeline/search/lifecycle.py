"""One trial's life, alone or as a member of a pack: begin -> train -> settle -> report.

- begin: the trial's earlier attempts are settled (a run left RUNNING ends KILLED; a
  FINISHED run is the trial's result, scored by its kept epoch, and it is not trained
  again); else its model is built as it would be alone (its own seed) and its run
  opens with its params and dataset.
- train: alone, Keras' `fit` (`Life.fit`); in a pack, `packing` trains the members
  together and hands each member its epochs (`Life.end_epoch`). Either way the trial's
  `Stopping` (early stopping, the divergence guard) decides when it stops and which
  epoch it keeps.
- settle: the run is written whole with the kept epoch's model and metrics
  (`Life.finish`), or ends FAILED with its reason or KILLED; on a worker, the run is
  waited for and the trial confirmed still the worker's own (`Lifecycle.settle`).
- report: the trial's `Result`, the kept epoch's metrics, goes to the oracle.

A trial alone and a member of a pack share every step but training.
"""

from __future__ import annotations

import functools
import gc
import math
import time
from dataclasses import dataclass

import keras
import keras_tuner
import mlflow
import numpy as np

from pipeline.errors import LoggingFailed, disk_full
from pipeline.search import interrupts
from pipeline.space import TrialConfig
from pipeline.tracking import datasets, names, runs, trial_run
from pipeline.training import packed
from pipeline.training.gradients import GradientProbe
from pipeline.training.model import EVAL_BATCH_SIZE, build_model
from pipeline.training.stopping import Stopping

COMPLETED, FAILED, INVALID, SUPERSEDED = "COMPLETED", "FAILED", "INVALID", "SUPERSEDED"


@dataclass
class Result:
    """How a trial's life ended, for the oracle and the progress line.

    Attributes:
        trial_id: Keras Tuner's trial id.
        config: the trial's `TrialConfig`.
        started: `time.perf_counter()` when its life began.
        status: COMPLETED, FAILED, INVALID (its run could not be written; run it
            again) or SUPERSEDED (re-issued to another worker meanwhile).
        metrics: the objective's metrics at the kept epoch (COMPLETED only).
        run_id: its MLflow run.
        reason: why it did not complete, one line.
        ended: how a COMPLETED trial ended before its last epoch ("pruned at epoch 4",
            "stopped early at epoch 11"), with the epoch it kept; else None.
    """

    trial_id: str
    config: TrialConfig
    started: float
    status: str | None = None
    metrics: dict | None = None
    run_id: str | None = None
    reason: str | None = None
    ended: str | None = None


def trial_seed(seed, trial_id):
    """The training seed of a trial: the same trial always trains the same way."""
    return seed * 1000 + int(trial_id)


class Lifecycle:
    """The lives of one process's trials, and their runs still being written.

    Args:
        spec: the sweep `Spec`.
        space: its `ConstrainedSpace`.
        options: `CompileOptions` for every model.
        progress: the sweep's `Progress`.
        parent: a function returning the sweep's `runs.Parent`.
        tuner_id: this process's Keras Tuner id (the runs' `worker` tag).
        lease: on a worker, a function of a trial id: whether the chief still has
            the trial handed to this worker; None elsewhere.
        report: under pruning, a function (trial id, epoch, objective value) -> the
            trial's status as the oracle answers it (STOPPED: pruned); else None.
    """

    def __init__(self, spec, space, options, progress, parent, tuner_id, lease=None,
                 report=None):
        self.spec, self.space, self.options = spec, space, options
        self.progress = progress
        self.parent = parent
        self.tuner_id = tuner_id
        self.lease = lease
        self.report = report
        self.pending = []  # Lives whose run is still being written, oldest first.
        self.unlogged = []  # Trial ids whose run could not be written whole.
        self.run_ids = {}  # Trial id -> the run this process wrote (or found) for it.

    def begin(self, trial, dataset, pack_size=None):
        """Begins `trial`'s life: returns a `Life`, already ended (`done`) when an
        earlier attempt finished it in MLflow. `pack_size`: the size of the pack it
        trains in (None: alone)."""
        config = self.space.config(trial.hyperparameters.values)
        life = Life(self, trial, config)
        earlier = runs.earlier_attempts(self.parent(), trial.trial_id,
                                        self.spec.tuner.objective)
        if earlier is not None:
            self.progress.say(f"trial {trial.trial_id} already finished in MLflow run "
                              f"{earlier.run_id}; not training it again")
            life.end(COMPLETED, earlier.metrics, earlier.run_id)
            self.run_ids[trial.trial_id] = earlier.run_id
            return life
        life.open(dataset, pack_size)
        self.run_ids[trial.trial_id] = life.run.run_id
        return life

    def fresh_model(self, trial, config, train_size):
        """The trial's model with its initial weights, as it trains alone.

        Frees what earlier trials left (cheap: `gc.freeze` in the tuner), then seeds
        the trial. Not `keras.backend.clear_session()`: it clears TensorFlow's kernel
        cache, which the previous trial's logging thread may be using. The global seed
        decides the batch order; the weights get seeds of their own, since the
        previous trial's logging thread may draw from the global generators.
        """
        gc.collect()
        seed = trial_seed(self.spec.tuner.seed, trial.trial_id)
        keras.utils.set_random_seed(seed)
        values = trial.hyperparameters.values
        if "tuner/trial_id" in values:  # Hyperband: continue an earlier trial's model.
            self.wait_for_logging()
            earlier = runs.finished_run_of(self.parent().run_id, values["tuner/trial_id"])
            uri = earlier and runs.model_uri(earlier)
            if uri:
                return mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": True})
        steps = math.ceil(train_size / config.batch_size)
        return build_model(config, self.options, seed=seed, steps_per_epoch=steps)

    def settle(self, life):
        """Settles a life whose run was handed its results: on a worker, waits for the
        run to be written and checks the lease, so the chief never hears of a trial
        whose run is not whole; elsewhere the writing goes on behind the next trial."""
        if life.run is None or self.lease is None:  # Found finished; or not a worker.
            return life.result
        self.wait_for_logging()
        if life.result.status != COMPLETED:  # Failed: its run has ended already.
            return life.result
        if life.run.superseded:
            life.end(SUPERSEDED, reason="re-issued to another worker")
        elif life.trial.trial_id in self.unlogged:
            self.unlogged.remove(life.trial.trial_id)
            life.end(INVALID, reason="its run could not be logged whole")
        return life.result

    def wait_for_logging(self):
        """Waits for every run still being written; a run that could not be written
        whole ends FAILED in MLflow and its trial runs again (`unlogged`).

        Raises:
            keras_tuner.errors.FatalError: the disk is full (every later trial would
                fail alike): the sweep stops, and the same command resumes it.
        """
        while self.pending:
            life = self.pending[0]
            try:
                # Its writer may wait on a chief that is away (a lease check): a signal
                # must not wait for it.
                with interrupts.interruptible():
                    life.run.wait()
            except LoggingFailed as e:
                self.pending.pop(0)
                if disk_full(e):
                    self.abandon()
                    raise keras_tuner.errors.FatalError(str(e)) from e
                self.unlogged.append(life.trial.trial_id)
                self.progress.say(f"trial {life.trial.trial_id}: {e}; it runs again")
                continue
            except BaseException:  # SIGTERM, Ctrl-C: no run may be left RUNNING.
                self.abandon()
                raise
            self.pending.pop(0)

    def abandon(self):
        """Ends the runs still being written KILLED unless they end at once: the process
        is stopping, and their writing threads stop with it."""
        while self.pending:
            self.pending.pop(0).run.abandon()


class Life:
    """One trial from begin to report (`Lifecycle.begin` makes it)."""

    def __init__(self, lifecycle, trial, config):
        self.lifecycle = lifecycle
        self.trial = trial
        self.config = config
        self.result = Result(trial.trial_id, config, time.perf_counter())
        report = lifecycle.report and functools.partial(lifecycle.report, trial.trial_id)
        self.stopping = Stopping(lifecycle.spec.training, lifecycle.spec.tuner.objective,
                                 report)
        self.model = self.order = self.run = None
        self.fit_seconds = 0.0

    @property
    def done(self):
        return self.result.status is not None

    def open(self, dataset, pack_size):
        """Builds the trial's model (and, in a pack, its batch order) and opens its run."""
        lifecycle = self.lifecycle
        self.model = lifecycle.fresh_model(self.trial, self.config, len(dataset.x_train))
        probe, tags = None, None
        if pack_size:  # Right after the model, under the trial's seed, as `fit` draws it.
            self.order = packed.keras_batch_order(len(dataset.x_train))
            tags = {names.PACK_SIZE: pack_size}  # The pack measures the gradients itself.
        else:
            probe = GradientProbe(self.model, dataset.x_train, dataset.y_train)
        self.run = trial_run.start_trial_run(lifecycle.parent(), lifecycle.spec.name,
                                             self.trial.trial_id, lifecycle.tuner_id,
                                             probe, tags=tags)
        self.result.run_id = self.run.run_id
        self.run.log_params(self.config)
        datasets.log(self.run.run_id, dataset)

    # -- train ----------------------------------------------------------------------

    def fit(self, arrays, verbose=0):
        """Trains the trial alone: Keras' `fit`, every epoch to the run."""
        start = time.perf_counter()
        self.model.fit(
            arrays["x_train"], arrays["y_train"],
            batch_size=self.config.batch_size,
            epochs=self.config.epochs,
            initial_epoch=self.config.initial_epoch,
            validation_data=(arrays["x_val"], arrays["y_val"]),
            validation_batch_size=EVAL_BATCH_SIZE,
            callbacks=[trial_run.EpochLogger(self.run), keras.callbacks.TerminateOnNaN(),
                       *self.stopping.callbacks(), interrupts.StopOnSignal()],
            verbose=verbose,
        )
        self.fit_seconds = time.perf_counter() - start

    def end_epoch(self, epoch, metrics, model_view):
        """A pack member's epoch (1-based): logged, then stopping asked. Returns whether
        the member trains on."""
        self.run.log_epoch(epoch, metrics)
        if not np.isfinite(metrics[names.LOSS]):
            return False
        return not self.stopping.end_epoch(model_view, epoch, metrics)

    # -- settle ---------------------------------------------------------------------

    def check(self):
        """After training: raises `FailedTrialError` for a trial that failed as such
        (a NaN loss, the divergence guard)."""
        losses = self.run.history[names.LOSS]
        if losses and not np.isfinite(losses[-1]):
            raise keras_tuner.errors.FailedTrialError(
                f"loss became NaN in epoch {self.run.epochs[-1]} (training diverged)")
        self.stopping.check()

    def finish(self, model, test_arrays, test_metrics=None):
        """Hands the run its results: the model of the kept epoch (restored by
        `Stopping`), test metrics, timing; the kept epoch's metrics become the result.

        Args:
            model: the trained model, with the kept epoch's weights.
            test_arrays: (x_test, y_test).
            test_metrics: (loss, accuracy) on the test set if already computed for
                these weights; else the run's writer evaluates `model`.
        """
        lifecycle, outcome = self.lifecycle, self.stopping.outcome(self.run.epochs,
                                                                    self.config.epochs)
        lifecycle.wait_for_logging()  # At most one trial's logging runs behind training.
        self.result.ended = self._ended(outcome)
        spec = lifecycle.spec
        self.run.finish(
            model, test_arrays, f"{spec.name} trial {self.trial.trial_id}: "
            f"{self.config.describe()}",
            {names.FIT_SECONDS: self.fit_seconds, names.BEST_EPOCH: outcome.best_epoch,
             names.TRIAL_SECONDS: time.perf_counter() - self.result.started},
            EVAL_BATCH_SIZE, test_metrics, confirm=self._confirm(), tags=self._tags(outcome))
        lifecycle.pending.append(self)
        epochs = self.run.epochs
        kept = epochs.index(outcome.best_epoch) if outcome.best_epoch in epochs else -1
        self.end(COMPLETED, {k: self.run.history[k][kept]
                             for k in (names.VAL_ACCURACY, names.VAL_LOSS)})

    def _ended(self, outcome):
        """How the trial ended before its last epoch, for its progress line; else None."""
        kept = f", kept {outcome.best_epoch}"
        if self.stopping.pruned_at is not None:
            return f"pruned at epoch {self.stopping.pruned_at}{kept}"
        if outcome.stopped_early:
            return f"stopped early at epoch {self.run.epochs[-1]}{kept}"
        return None

    def _tags(self, outcome):
        """`stopped_early` under early stopping or pruning; `pruned` and its rung."""
        tags = {}
        if self.stopping.early:
            tags[names.STOPPED_EARLY] = str(outcome.stopped_early).lower()
        if self.stopping.prune:
            tags[names.PRUNED] = str(self.stopping.pruned_at is not None).lower()
            if self.stopping.pruned_at is not None:
                tags[names.PRUNED_AT] = str(self.stopping.pruned_at)
        return tags or None

    def fail(self, error):
        """Ends the run FAILED with `error` as its reason."""
        if self.run is not None and not self.done:
            self.run.fail(error)
        self.end(FAILED, reason=f"{error.__class__.__name__}: {error}")

    def kill(self):
        """Ends the run KILLED (an interrupt)."""
        if self.run is not None and not self.done:
            self.run.kill()

    def end(self, status, metrics=None, run_id=None, reason=None):
        self.result.status = status
        self.result.metrics = metrics
        self.result.run_id = run_id or self.result.run_id
        self.result.reason = reason

    def _confirm(self):
        lease = self.lifecycle.lease
        trial_id = self.trial.trial_id
        return None if lease is None else (lambda: lease(trial_id))
