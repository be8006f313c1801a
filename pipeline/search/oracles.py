"""Keras Tuner's oracles, made to propose only configurations that meet the spec.

Keras Tuner draws random values through `Oracle._random_values()`, which rejects a
draw that `_duplicate()` flags and draws again. Flagging infeasible draws there
turns every random draw (random search, Bayesian warm-up, Hyperband brackets) into
rejection sampling over the feasible set, so an infeasible configuration is never
handed to a worker and never spends the trial budget. Values that an oracle
computes instead of drawing (a Bayesian proposal, the next grid point) are checked
in `populate_space()` and replaced.
"""

from __future__ import annotations

import copy
import re

import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus

from pipeline.errors import SweepStopped
from pipeline.search import internals, pruning

# Infeasible draws count as collisions; allow many before calling the space spent.
MAX_REJECTIONS = 2000
# A trial that raised (not one that diverged) is run once more: the error may have
# been the infrastructure's (a tracking server restarting, say).
MAX_RETRIES_PER_TRIAL = 1


def failure_reason(message):
    """The last line of a Keras Tuner trial message (a traceback), without module paths."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    return re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", lines[-1])[:300]


class ConstrainedOracle:
    """Mixin for a Keras Tuner oracle: only feasible configurations come out."""

    def __init__(self, *args, space, pruning=None, **kwargs):
        super().__init__(*args, max_retries_per_trial=MAX_RETRIES_PER_TRIAL, **kwargs)
        self.space = space
        self.pruning = pruning  # The spec's `tuner.pruning`, or None.
        internals.set_max_collisions(self, MAX_REJECTIONS)
        self.stopped = None  # Why the sweep stopped (the failure limit), once it has.
        # On a restarted chief, the keys of the leases it gave back to workers that
        # have not called since (`distributed.restore_leases`).
        self.restored_leases = set()

    def _check_consecutive_failures(self):
        """Notes that the sweep stops (`stopped`, the reason) rather than raising in the
        middle of `end_trial`: the trial is still saved and ended, and every later
        `create_trial` answers STOPPED, so each process ends its search loop cleanly
        (the tuner, or the chief's server, then raises `SweepStopped`)."""
        try:
            super()._check_consecutive_failures()
        except RuntimeError as e:
            self.stopped = (f"stopped after {self._failures_in_a_row()} failed "
                            f"trials in a row; the last: {failure_reason(str(e))}")

    @internals.synchronized
    def create_trial(self, tuner_id):
        if self.stopped and tuner_id not in self.ongoing_trials:
            self.tuner_ids.discard(tuner_id)
            return Trial(self.get_space(), status=TrialStatus.STOPPED)
        return super().create_trial(tuner_id)

    def check_stopped(self):
        """Raises `SweepStopped` when the sweep stopped (the failure limit)."""
        if self.stopped:
            raise SweepStopped(self.stopped)

    def _failures_in_a_row(self):
        """The longest run of FAILED trials in end order: more than the limit when a
        pack's trials (or several workers' trials) failed together."""
        longest = run = 0
        for trial_id in self.end_order:
            run = run + 1 if self.trials[trial_id].status == TrialStatus.FAILED else 0
            longest = max(longest, run)
        return longest

    @internals.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        """Keras Tuner's per-epoch report (`step` = the epoch). Returns the trial; a
        copy of it STOPPED when it is pruned at this rung (`pruning`): the oracle's own
        record stays RUNNING until the trial ends, as Keras Tuner expects."""
        trial = super().update_trial(trial_id, metrics, step=step)
        if (self.pruning and trial.status == TrialStatus.RUNNING
                and pruning.decide(self, self.pruning, trial_id, step)):
            trial = copy.copy(trial)
            trial.status = TrialStatus.STOPPED
        return trial

    @internals.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        # Keras Tuner saves its state before it drops the trial from the ongoing
        # ones, so a reload would run the last finished trial again: save once more.
        self.save()

    @internals.synchronized
    def requeue(self, trial_ids):
        """Runs completed trials again (their results never reached MLflow)."""
        for trial_id in trial_ids:
            trial = self.trials[trial_id]
            trial.status = TrialStatus.RUNNING
            if trial_id in self.end_order:
                self.end_order.remove(trial_id)
            internals.retry_queue(self).append(trial_id)
            internals.save_trial(self, trial)
        self.save()

    def budget_spent(self):
        """Whether every trial of `max_trials` was handed out and none waits for a retry."""
        return (bool(self.max_trials) and len(self.trials) >= self.max_trials
                and not internals.retry_queue(self))

    def feasible(self, values):
        config_values = {k: v for k, v in values.items() if not k.startswith("tuner/")}
        return self.space.violation(self.space.config(config_values)) is None

    def _duplicate(self, values):
        return super()._duplicate(values) or not self.feasible(values)

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response["status"] != TrialStatus.RUNNING or self.feasible(values):
            return response
        return self.replace_infeasible(values)

    def replace_infeasible(self, values):
        """Returns a feasible response in place of infeasible computed `values`."""
        values = self._random_values()
        if values is None:
            return {"status": TrialStatus.STOPPED, "values": None}
        return {"status": TrialStatus.RUNNING, "values": values}


@internals.lock_released_on_errors
class RandomSearchOracle(ConstrainedOracle, keras_tuner.oracles.RandomSearchOracle):
    pass


@internals.lock_released_on_errors
class BayesianOptimizationOracle(
    ConstrainedOracle, keras_tuner.oracles.BayesianOptimizationOracle
):
    pass


@internals.lock_released_on_errors
class HyperbandOracle(ConstrainedOracle, keras_tuner.oracles.HyperbandOracle):
    pass


@internals.lock_released_on_errors
class GridSearchOracle(ConstrainedOracle, keras_tuner.oracles.GridSearchOracle):
    """Walks the grid in Keras Tuner's order, stepping over infeasible points."""

    def _get_next_combination(self, values):
        values = super()._get_next_combination(values)
        while values is not None and not self.feasible(values):
            values = super()._get_next_combination(values)
        return values

    def replace_infeasible(self, values):
        # Only the first grid point (all defaults) can get here.
        values = self._get_next_combination(values)
        if values is None:
            return {"status": TrialStatus.STOPPED, "values": None}
        return {"status": TrialStatus.RUNNING, "values": values}


def make_oracle(spec, space):
    """Builds the oracle named by `spec.tuner.algorithm`.

    Args:
        spec: the sweep `Spec`.
        space: its `ConstrainedSpace`.

    Returns:
        A Keras Tuner oracle that proposes only feasible configurations.
    """
    t = spec.tuner
    common = dict(
        space=space,
        objective=keras_tuner.Objective(t.objective, direction=spec.direction),
        seed=t.seed,
        max_consecutive_failed_trials=t.max_consecutive_failed_trials,
        pruning=t.pruning,
    )
    if t.algorithm == "hyperband":
        oracle = HyperbandOracle(max_epochs=spec.training.epochs,
                                 factor=t.hyperband_factor, **common)
        oracle.max_trials = t.max_trials  # Hyperband has no budget of its own: cap it.
        return oracle
    if t.algorithm == "bayesian":
        return BayesianOptimizationOracle(max_trials=t.max_trials,
                                          num_initial_points=t.num_initial_points, **common)
    cls = {"random": RandomSearchOracle, "grid": GridSearchOracle}[t.algorithm]
    return cls(max_trials=t.max_trials, **common)
