"""Pruning across trials: at chosen epochs (rungs), a trial that is behind the others
that reached the same epoch stops (`tuner.pruning` in a spec).

The decision is the oracle's, in Keras Tuner's own early-stopping hook: each epoch's
objective reaches it through `Oracle.update_trial(trial_id, metrics, step=epoch)`,
which records it in the trial's metric history (saved with the oracle's state, so a
resumed sweep, or a chief's workers, prune against every trial) and answers the
trial's status; STOPPED tells the trainer to stop. The trainer keeps the trial's
best epoch (`training.stopping`), logs it `pruned` and reports the kept score.

Two rules, as Optuna's `MedianPruner` and successive halving (ASHA) have them:
`median` stops a trial worse than the median of the others at its rung;
`halving` stops one outside the best 1/`eta` of all at its rung (itself included).
A rung decides nothing before `min_trials` other trials have reached it.
"""

from __future__ import annotations

import math
import statistics


def at_step(trial, metric, step):
    """A trial's last recorded value of `metric` at `step`, or None."""
    if not trial.metrics.exists(metric):
        return None
    values = [o.value for o in trial.metrics.get_history(metric) if o.step == step]
    if not values:
        return None
    value = values[-1]
    return float(value[-1] if isinstance(value, list) else value)


def prunes(pruning, value, others, direction):
    """Whether a trial scoring `value` at a rung stops, against the `others`' values
    there (`direction`: "max" or "min")."""
    if value is None or len(others) < pruning.min_trials:
        return False
    sign = 1 if direction == "max" else -1
    if pruning.rule == "median":
        return sign * value < sign * statistics.median(others)
    ranked = sorted([value, *others], key=lambda v: -sign * v)
    kept = max(1, math.floor(len(ranked) / pruning.eta))
    return sign * value < sign * ranked[kept - 1]


def decide(oracle, pruning, trial_id, step):
    """Whether trial `trial_id` stops at `step` (a rung), from the oracle's trials."""
    if step not in pruning.rungs:
        return False
    metric, direction = oracle.objective.name, oracle.objective.direction
    value = at_step(oracle.trials[trial_id], metric, step)
    others = [v for tid, t in oracle.trials.items() if tid != trial_id
              if (v := at_step(t, metric, step)) is not None]
    return prunes(pruning, value, others, direction)
