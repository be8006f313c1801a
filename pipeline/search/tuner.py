"""The Keras Tuner subclass: Keras Tuner's search loop, one trial = one MLflow child run.

The search loop, the oracles, resuming and the chief/worker protocol are Keras
Tuner's own. This class overrides only the hooks: `run_trial` takes one trial
through its lifecycle (`pipeline.search.lifecycle`); `on_trial_end` keeps the
parent run's best trial current and reports progress; `search` hands packed
searches to `pipeline.search.packing` and, on a chief, serves the oracle with
`distributed.serve`, which also notices lost workers.
"""

from __future__ import annotations

import contextlib
import gc
import time

import keras_tuner
import tensorflow as tf

from pipeline.errors import LoggingFailed, SweepStopped
from pipeline.progress import Progress
from pipeline.search import distributed, internals, interrupts, lifecycle, packing, pruning
from pipeline.search.oracles import failure_reason, make_oracle
from pipeline.tracking import names, runs
from pipeline.training.device import device_arrays
from pipeline.training.model import CompileOptions, MnistHyperModel

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
        internals.quiet_condition_protos()  # No stray lines in a distributed sweep.
        internals.print_trial_tracebacks(verbose > 0)  # Ours: `on_trial_end`.
        oracle = make_oracle(spec, space)
        oracle.verbose = 0  # Our own one-line progress replaces Keras Tuner's table.
        super().__init__(oracle=oracle, hypermodel=MnistHyperModel(space, options),
                         **kwargs)
        worker = distributed.role() == "worker"
        if worker:
            distributed.authenticate(self.oracle, over=lambda: runs.sweep_finished(
                self.experiment, self.project_name))
        self.spec = spec
        self.space = space
        self.experiment = experiment
        self._parent = parent
        self.progress = progress or Progress(spec.name, spec.tuner.max_trials)
        self.verbose = verbose
        self.worker_timeout = worker_timeout
        self.pack = pack
        self.lifecycle = lifecycle.Lifecycle(
            spec, space, options, self.progress, lambda: self.parent, self.tuner_id,
            lease=(lambda trial_id: distributed.still_holds(self.oracle, trial_id))
            if worker else None,
            report=self._report_epoch if spec.tuner.pruning else None)
        self._results = {}  # Trial id -> its `lifecycle.Result`, until `on_trial_end`.
        self._heartbeat = None
        self._superseded = set()  # A worker's trials re-issued to another worker.
        self.leased_runs = set()  # A restarted chief's trial runs that workers still write.
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
            # RUNNING first; a FINISHED run's worker may be about to report its trial.
            running = sorted((r for r in runs.trial_runs(parent.run_id)
                              if r.info.status in ("RUNNING", "FINISHED")),
                             key=lambda r: r.info.status != "RUNNING")
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
            self.unlogged.clear()
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
        try:
            if self.pack > 1:
                packing.search(self, *args, pack=self.pack)
            else:
                super().search(*args, **kwargs)
        except Exception:  # The runs being written are finished first.
            with contextlib.suppress(Exception):  # Never hiding the first error.
                self.lifecycle.wait_for_logging()
            raise
        except BaseException:  # Stopping: no run of this process is left RUNNING.
            self.lifecycle.abandon()
            raise
        if distributed.role() is None:
            self.oracle.check_stopped()  # The failure limit ended the search loop.

    def _lost(self, worker, trial, re_issued):
        outcome = ("re-issued to the next worker" if re_issued
                   else "failed: no worker was left to re-run it")
        reason = f"worker {worker or '?'} stopped answering; trial {outcome}"
        self.progress.say(f"trial {trial.trial_id}: {reason}")
        runs.fail_trial_runs(self.parent.run_id, trial.trial_id, reason)

    def on_search_begin(self):
        if distributed.role() == "worker":
            self._heartbeat = distributed.Heartbeat()

    def pre_create_trial(self):
        interrupts.check()  # Keras Tuner's hook before each trial is asked for.

    def on_search_end(self):
        self.lifecycle.wait_for_logging()
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def run_trial(self, trial, dataset):
        """One trial alone through its lifecycle; returns the kept epoch's metrics.

        A worker reports a trial to the chief only once its run is written whole (so
        the chief never ends the sweep while a worker still writes), and trains a
        trial whose logging failed once more before it gives up on it.
        """
        for _ in range(WORKER_ATTEMPTS if self.lifecycle.lease else 1):
            result = self._live(trial, dataset)
            if result.status == lifecycle.COMPLETED:
                if self.lifecycle.report:  # Its epochs were reported: so is what it kept
                    # (Keras Tuner reports nothing for a trial that reported itself).
                    self.oracle.update_trial(trial.trial_id, result.metrics)
                return result.metrics
            if result.status == lifecycle.SUPERSEDED:
                self._superseded.add(trial.trial_id)
                raise keras_tuner.errors.FailedTrialError(result.reason)
        raise LoggingFailed(f"trial {trial.trial_id} could not be logged to MLflow in "
                            f"{WORKER_ATTEMPTS} attempts")

    def _live(self, trial, dataset):
        life = self.lifecycle.begin(trial, dataset)
        self._results[trial.trial_id] = life.result
        if life.done:
            return life.result
        arrays = device_arrays(dataset)
        try:
            life.fit(arrays, self.verbose)
            life.check()
        except Exception as e:
            life.fail(e)
            raise
        except BaseException:
            life.kill()
            raise
        life.finish(life.model, (arrays["x_test"], arrays["y_test"]))
        return self.lifecycle.settle(life)

    def wait_for_logging(self):
        """Waits for the trials' runs still being written (`Lifecycle.wait_for_logging`)."""
        self.lifecycle.wait_for_logging()

    @property
    def unlogged(self):
        return self.lifecycle.unlogged

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

    def note_result(self, result):
        """Keeps a trial's `Result` for `on_trial_end` (a pack's trials end there too)."""
        self._results[result.trial_id] = result
        if result.status == lifecycle.SUPERSEDED:
            self._superseded.add(result.trial_id)

    def on_trial_end(self, trial):
        result = self._results.pop(trial.trial_id, None)
        if trial.trial_id in self._superseded:  # Not ours to report any more.
            self.progress.say(f"trial {trial.trial_id} was re-issued to another worker "
                              "while this one was taken for lost; its run ended KILLED")
            return
        # The best so far is recorded first: the progress line says the parent is current.
        super().on_trial_end(trial)  # The oracle records the trial; state is saved.
        best = self.best_trial()
        if best is not None:
            runs.record_best(self.parent, best)
        if result is not None:
            failure = None if result.metrics else (
                result.reason if trial.status == "FAILED" and result.reason
                else failure_reason(trial.message))
            if _a_bug(trial) and not result.reason and not self.verbose:
                self.progress.say(trial.message.rstrip())  # A real bug: its traceback.
            self.progress.trial(trial.trial_id, result.config,
                                time.perf_counter() - result.started, result.metrics, failure,
                                result.ended)

    def _report_epoch(self, trial_id, epoch, value):
        """A trial's epoch to the oracle, which may prune it (`pruning`)."""
        return internals.report_epoch(self.oracle, trial_id,
                                      {self.spec.tuner.objective: value}, epoch)

    def best_trial(self):
        """The best completed trial (`runs.Best`), or None.

        Its run is the one this process wrote or found for it, else its FINISHED run
        in MLflow: a best trial whose run is still being written is named at once.
        """
        best = self.oracle.get_best_trials(1)
        if not best or best[0].status != "COMPLETED" or best[0].score is None:
            return None
        trial = best[0]
        run_id = self.lifecycle.run_ids.get(trial.trial_id) or runs.finished_run_of(
            self.parent.run_id, trial.trial_id)
        # The kept epoch's, reported last at step 0 (under pruning, epochs 1.. are
        # reported too, and Keras Tuner's "last value" would be the last epoch's).
        kept = pruning.at_step(trial, names.VAL_ACCURACY, 0)
        return runs.Best(trial.trial_id, kept if kept is not None
                         else trial.metrics.get_last_value(names.VAL_ACCURACY), run_id)


def _a_bug(trial):
    """Whether a trial ended by an error that is no expected failure: not Keras Tuner's
    `FailedTrialError` (a NaN loss, the divergence guard) nor one of ours."""
    if trial.status != "INVALID" or not trial.message:
        return False
    last = trial.message.strip().splitlines()[-1]
    return not last.startswith(("pipeline.errors.", "keras_tuner"))
