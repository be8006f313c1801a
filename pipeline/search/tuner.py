"""The Keras Tuner subclass: Keras Tuner's search loop, one trial = one MLflow child run.

The search loop, the oracles, resuming and the chief/worker protocol are Keras
Tuner's own. This class overrides only the hooks: `run_trial` trains, evaluates
and logs one configuration; `on_trial_end` reports progress and keeps the
parent run's best trial current; on a chief, `search` serves the oracle with
`distributed.serve`, which also notices lost workers.
"""

from __future__ import annotations

import gc
import math
import time

import keras
import keras_tuner
import mlflow
import numpy as np
import tensorflow as tf

from pipeline.device import device_arrays
from pipeline.errors import LoggingFailed, SweepStopped, disk_full
from pipeline.gradients import GradientProbe
from pipeline.model import EVAL_BATCH_SIZE, CompileOptions, MnistHyperModel, build_model
from pipeline.progress import Progress
from pipeline.search import distributed, internals, packing
from pipeline.search.oracles import failure_reason, make_oracle
from pipeline.stopping import Stopping
from pipeline.tracking import datasets, names, runs, trial_run

WORKER_ATTEMPTS = 2  # A worker trains a trial whose logging failed once more.

# Every trial builds a new model, so Keras traces a new step function per trial;
# TensorFlow's "retracing" warning about that is expected here.
tf.get_logger().setLevel("ERROR")


class SweepTuner(keras_tuner.Tuner):
    """Searches a spec's space; every trial is logged to MLflow under `parent`.

    Args:
        spec: the sweep `Spec`.
        space: its `ConstrainedSpace`.
        parent: the sweep's `runs.Parent` run; None until `open` or `resume` sets
            it; on a worker it is looked up in `experiment` by the project name
            when the first trial starts.
        experiment: the MLflow experiment's name.
        options: `CompileOptions` for every trial's model.
        progress: a `Progress` that prints a line per trial.
        verbose: Keras' per-epoch output (0: off).
        worker_timeout: on a chief, seconds of silence before a worker is lost.
        pack: trials trained together in one step (`pipeline.search.packing`).
        **kwargs: `directory`, `project_name` for Keras Tuner.
    """

    def __init__(self, spec, space, parent=None, experiment=names.DEFAULT_EXPERIMENT,
                 options=CompileOptions(), progress=None, verbose=0,
                 worker_timeout=distributed.WORKER_TIMEOUT, pack=1, **kwargs):
        internals.write_state_atomically()
        oracle = make_oracle(spec, space)
        oracle.verbose = 0  # Our own one-line progress replaces Keras Tuner's table.
        super().__init__(oracle=oracle, hypermodel=MnistHyperModel(space, options),
                         **kwargs)
        if distributed.role() == "worker":
            distributed.authenticate(self.oracle)
        self.spec = spec
        self.space = space
        self.experiment = experiment
        self._parent = parent
        self.progress = progress or Progress(spec.name, spec.tuner.max_trials)
        self.verbose = verbose
        self.worker_timeout = worker_timeout
        self.pack = pack
        self._outcome = {}
        self._heartbeat = None
        self._superseded = set()  # A worker's trials re-issued to another worker.
        self.leased_runs = set()  # A restarted chief's trial runs that workers still write.
        self._logging = []  # (trial_id, TrialRun) whose logging may still run.
        self.unlogged = []
        # Everything alive now (TensorFlow, MLflow, the data) lives as long as the
        # process: keep it out of the garbage collector's way, so the collection
        # after each trial scans only what trials create (~0.5 s -> ~10 ms).
        gc.collect()
        gc.freeze()

    @property
    def parent(self):
        if self._parent is None:  # A worker: the chief opened it.
            self._parent = runs.find_parent(self.experiment, self.project_name)
        return self._parent

    def resume(self, parent):
        """Continues `parent`'s sweep: trials done in Keras Tuner but never logged to
        MLflow are handed back to the oracle. A restarted chief gives live workers
        back the trials they were running (`distributed.restore_leases`); their runs
        are left RUNNING (`leased_runs`)."""
        self._parent = parent
        self.requeue_unlogged()
        if distributed.role() == "chief":
            running = runs.trial_runs(parent.run_id, status="RUNNING")
            restored = set(distributed.restore_leases(self.oracle, [
                (r.data.tags[names.WORKER], r.data.tags[names.TRIAL_ID]) for r in running]))
            self.leased_runs = {r.info.run_id for r in running if (
                r.data.tags[names.WORKER], r.data.tags[names.TRIAL_ID]) in restored}
            if restored:
                self.progress.say(f"{len(restored)} trials wait for their workers to call "
                                  f"(up to {self.worker_timeout:g} s): "
                                  + ", ".join(f"{t} on {w}" for w, t in sorted(restored)))

    def open(self, parent):
        """Logs the coming trials under `parent` (opened or reopened by the sweep)."""
        self._parent = parent

    def search_and_retry(self, dataset):
        """Runs the search; trials whose logging failed are run once more.

        Raises:
            SweepStopped: if some trials still could not be logged.
        """
        self.search(dataset)
        if distributed.role() is None and self.unlogged and self.requeue_unlogged():
            self.unlogged = []
            self.search(dataset)
        if self.unlogged:
            raise SweepStopped(f"trials {', '.join(self.unlogged)} could not be logged "
                               "to MLflow; run the same command again to re-run them")

    def finished(self):
        """Whether the search already ran all its trials (a re-run has nothing to do)."""
        return self.oracle.budget_spent() and not self.oracle.ongoing_trials

    def search(self, *args, **kwargs):
        if distributed.role() == "chief":
            self.save()
            distributed.serve(self.oracle, on_lost=self._lost,
                              worker_timeout=self.worker_timeout)
            return
        if self.pack > 1:
            packing.search(self, *args, pack=self.pack)
            return
        super().search(*args, **kwargs)

    def _lost(self, worker, trial, re_issued):
        outcome = ("re-issued to the next worker" if re_issued
                   else "failed: no worker was left to re-run it")
        reason = f"worker {worker or '?'} stopped answering; trial {outcome}"
        self.progress.say(f"trial {trial.trial_id}: {reason}")
        runs.fail_trial_runs(self.parent.run_id, trial.trial_id, reason)

    def on_search_begin(self):
        if distributed.role() == "worker":
            self._heartbeat = distributed.Heartbeat()

    def on_search_end(self):
        self.wait_for_logging()
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def run_trial(self, trial, dataset):
        """Trains, evaluates and logs one configuration; returns its final metrics.

        A worker reports a trial to the chief only once its run is written whole (so
        the chief never ends the sweep while a worker still writes), and trains a
        trial whose logging failed once more before it gives up on it.
        """
        if distributed.role() != "worker":
            return self._run_trial(trial, dataset)
        for _ in range(WORKER_ATTEMPTS):
            metrics = self._run_trial(trial, dataset)
            outcome = self.settle(trial.trial_id)
            if outcome == "superseded":
                raise keras_tuner.errors.FailedTrialError("re-issued to another worker")
            if outcome == "whole":
                return metrics
        raise LoggingFailed(f"trial {trial.trial_id} could not be logged to MLflow in "
                            f"{WORKER_ATTEMPTS} attempts")

    def _run_trial(self, trial, dataset):
        start = time.perf_counter()
        config = self.space.config(trial.hyperparameters.values)
        self._outcome[trial.trial_id] = (config, start, None)
        logged = runs.earlier_attempts(self.parent, trial.trial_id,
                                       self.spec.tuner.objective)
        if logged is not None:
            run_id, metrics = logged
            self.progress.say(f"trial {trial.trial_id} already finished in MLflow run "
                              f"{run_id}; not training it again")
            self._outcome[trial.trial_id] = (config, start, metrics)
            return {k: metrics[k] for k in (names.VAL_ACCURACY, names.VAL_LOSS)}
        arrays = device_arrays(dataset)
        model = self._fresh_model(trial, config, len(dataset.x_train))
        run = trial_run.start_trial_run(self.parent, self.spec.name, trial.trial_id,
                                        self.tuner_id,
                                        GradientProbe(model, dataset.x_train, dataset.y_train))
        stopping = Stopping(self.spec.training, self.spec.tuner.objective)
        try:
            run.log_params(config)
            datasets.log(run.run_id, dataset)
            fit_start = time.perf_counter()
            self._fit(model, config, arrays, run, stopping.callbacks)
            fit_seconds = time.perf_counter() - fit_start
            _fail_on_nan(run)
            stopping.check()
        except Exception as e:
            run.fail(e)
            raise
        except BaseException:
            run.kill()
            raise
        # At most one trial's logging runs behind the training of the next.
        self.wait_for_logging()
        outcome = stopping.outcome(run.epochs, config.epochs)
        run.finish(model, (arrays["x_test"], arrays["y_test"]),
                   f"{self.spec.name} trial {trial.trial_id}: {config.describe()}",
                   {names.FIT_SECONDS: fit_seconds, names.BEST_EPOCH: outcome.best_epoch,
                    names.TRIAL_SECONDS: time.perf_counter() - start}, EVAL_BATCH_SIZE,
                   confirm=self._lease(trial.trial_id),
                   tags={names.STOPPED_EARLY: str(outcome.stopped_early).lower()}
                   if stopping.early else None)
        self._logging.append((trial.trial_id, run))
        # The model is its best epoch's (early stopping restored it): so are its results.
        best = run.epochs.index(outcome.best_epoch) if outcome.best_epoch in run.epochs else -1
        metrics = {k: run.history[k][best] for k in (names.VAL_ACCURACY, names.VAL_LOSS)}
        self._outcome[trial.trial_id] = (config, start, metrics)
        return metrics

    def settle(self, trial_id):
        """On a worker, waits for `trial_id`'s run to be written, before the trial is
        reported; returns "whole", "superseded" (the trial went to another worker
        meanwhile) or "unlogged" (its run could not be written)."""
        pending = [run for logged_id, run in self._logging if logged_id == trial_id]
        self.wait_for_logging()
        if any(run.superseded for run in pending):
            self._superseded.add(trial_id)
            return "superseded"
        if trial_id in self.unlogged:
            self.unlogged.remove(trial_id)
            return "unlogged"
        return "whole"

    def _lease(self, trial_id):
        """A worker's check, before its run ends FINISHED, that the trial is still its."""
        if distributed.role() != "worker":
            return None
        return lambda: distributed.still_holds(self.oracle, trial_id)

    def wait_for_logging(self):
        """Waits for the last trial's background logging; reports it if it failed.

        A trial whose run could not be logged whole ends FAILED in MLflow and is run
        again when the sweep is resumed (`requeue_unlogged`).
        """
        while self._logging:
            trial_id, run = self._logging.pop(0)
            try:
                run.wait()
            except LoggingFailed as e:
                if disk_full(e):  # Every trial after it would fail alike: stop.
                    raise
                self.unlogged.append(trial_id)
                self.progress.say(f"trial {trial_id}: {e}; it runs again")

    def requeue_unlogged(self):
        """Hands completed trials without a FINISHED run back to the oracle to run again.

        Trials are logged in the background, so a process that died may have left a
        trial complete in Keras Tuner's state but not in MLflow.
        """
        logged = {r.data.tags[names.TRIAL_ID]
                  for r in runs.trial_runs(self.parent.run_id, status="FINISHED")}
        missing = [t for t, trial in self.oracle.trials.items()
                   if trial.status == "COMPLETED" and t not in logged]
        if missing:
            self.oracle.requeue(missing)
            self.progress.say(f"trials {', '.join(missing)} finished without their MLflow "
                              "runs: running them again")
        return missing

    def _fit(self, model, config, arrays, run, callbacks=()):
        model.fit(
            arrays["x_train"], arrays["y_train"],
            batch_size=config.batch_size,
            epochs=config.epochs,
            initial_epoch=config.initial_epoch,
            validation_data=(arrays["x_val"], arrays["y_val"]),
            validation_batch_size=EVAL_BATCH_SIZE,
            callbacks=[trial_run.EpochLogger(run), keras.callbacks.TerminateOnNaN(),
                       *callbacks],
            verbose=self.verbose,
        )

    def _fresh_model(self, trial, config, train_size):
        # Free what earlier trials left (cheap: see __init__), then seed this trial.
        # Not keras.backend.clear_session(): it clears TensorFlow's kernel cache,
        # which the previous trial's logging thread may be using. The global seed
        # decides the batch order; the weights get seeds of their own, since the
        # previous trial's logging thread may draw from the global generators.
        gc.collect()
        seed = trial_seed(self.spec.tuner.seed, trial.trial_id)
        keras.utils.set_random_seed(seed)
        values = trial.hyperparameters.values
        if "tuner/trial_id" in values:  # Hyperband: continue an earlier trial's model.
            self.wait_for_logging()
            earlier = runs.finished_run_of(self.parent.run_id, values["tuner/trial_id"])
            uri = earlier and runs.model_uri(earlier)
            if uri:
                return mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": True})
        steps = math.ceil(train_size / config.batch_size)
        return build_model(config, self.hypermodel.options, seed=seed, steps_per_epoch=steps)

    def on_trial_end(self, trial):
        if trial.trial_id in self._superseded:  # Not ours to report any more.
            self.progress.say(f"trial {trial.trial_id} was re-issued to another worker "
                              "while this one was taken for lost; its run ended KILLED")
            self._outcome.pop(trial.trial_id, None)
            return
        super().on_trial_end(trial)  # The oracle records the trial; state is saved.
        config, start, metrics = self._outcome.pop(trial.trial_id, (None, None, None))
        if config is not None:
            failure = None if metrics else failure_reason(trial.message)
            self.progress.trial(trial.trial_id, config, time.perf_counter() - start,
                                metrics, failure)
        best = self.best_trial()
        if best is not None:
            runs.record_best(self.parent, *best)

    def best_trial(self):
        """Returns (trial_id, val_accuracy, run_id) of the best completed trial, or None."""
        best = self.oracle.get_best_trials(1)
        if not best or best[0].status != "COMPLETED" or best[0].score is None:
            return None
        trial = best[0]
        return (trial.trial_id, trial.metrics.get_last_value(names.VAL_ACCURACY),
                runs.finished_run_of(self.parent.run_id, trial.trial_id))


def trial_seed(seed, trial_id):
    """The training seed of a trial: the same trial always trains the same way."""
    return seed * 1000 + int(trial_id)


def _fail_on_nan(run):
    losses = run.history[names.LOSS]
    if losses and not np.isfinite(losses[-1]):
        raise keras_tuner.errors.FailedTrialError(
            f"loss became NaN in epoch {run.epochs[-1]} (training diverged)")
