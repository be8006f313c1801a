"""The exercise's questions answered from loaded `Sweep`s, each answer with its run.

`answer()` returns plain JSON-serialisable data (`report.json` holds it as written);
its keys are the report's own and stay put if an MLflow name changes.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats

from pipeline.spec.schema import EXERCISE
from pipeline.tracking import names

PART_ONE = ("part1-wide", "part1-narrow")
PART_TWO = ("part2-narrow", "part2-medium", "part2-wide")
CHANCE = 0.2  # "Did any beat 20% accuracy?"
TARGET = 0.92  # Part Three: better than 92% on validation and test.
# A Spearman correlation counts as "clear" when it is significant and strong, over
# enough trials: with fewer than 8, even a perfect ranking is too likely by chance to
# mean much about a space of thousands of networks.
CLEAR_P, CLEAR_RHO, CLEAR_MIN_TRIALS = 0.05, 0.5, 8
PERMUTATIONS = 9_999  # Below 8 trials (5,040 orderings) the test is exact.
# The best published plain MLPs on MNIST without augmentation, dropout or
# normalisation, as listed on the MNIST database's page (yann.lecun.com/exdb/mnist).
REFERENCES = (
    {"network": "784-800-10, cross-entropy", "test_accuracy": 0.984,
     "source": "Simard, Steinkraus and Platt, ICDAR 2003 (1.6% error)"},
    {"network": "784-500-300-10, softmax, cross-entropy, weight decay",
     "test_accuracy": 0.9847, "source": "Hinton, unpublished 2005, in LeCun et al.'s "
     "MNIST table (1.53% error)"},
)


def answer(sweeps):
    """Computes every answer of the exercise from the loaded sweeps.

    Returns:
        A JSON-serialisable dict; `report.json` holds it as written.
    """
    answers = {"missing": [name for name in EXERCISE if name not in sweeps]}
    answers["part1"] = {name: _part_one(sweeps[name].best) for name in PART_ONE
                        if name in sweeps}
    answers["part2"] = {name: _band(sweeps[name]) for name in PART_TWO if name in sweeps}
    answers["activation"] = _activations(sweeps.get("activation"))
    answers["gradients"] = _gradient_ratios(sweeps)
    correlated = [name for name in PART_ONE + PART_TWO if name in sweeps]
    answers["correlation"] = _correlation(
        [t for name in correlated for t in sweeps[name].trials])
    answers["correlation"]["sweeps"] = {name: len(sweeps[name].trials) for name in correlated}
    answers["pareto"] = [_model(t) for t in pareto_front(
        [t for name in EXERCISE if name in sweeps for t in sweeps[name].trials])]
    answers["part3"] = _part_three(sweeps)
    answers["best_so_far"] = {name: best_so_far(sweeps[name].trials)
                              for name in EXERCISE if name in sweeps}
    return answers


def best_so_far(trials):
    """The sweep's best validation accuracy so far at each trial's end:
    [[seconds since its first trial started, best val_accuracy, that trial's run]]."""
    start = min(t.run.info.start_time for t in trials)
    curve, best = [], -math.inf
    for trial in sorted(trials, key=lambda t: t.run.info.end_time or 0):
        best = max(best, trial.metrics[names.VAL_ACCURACY])
        curve.append([((trial.run.info.end_time or start) - start) / 1000, best,
                       trial.run_id])
    return curve


def pareto_front(trials):
    """The trials with the best test accuracy for at most their parameter count,
    smallest first: no other trial is as small (or smaller) and more accurate."""
    front, best = [], -math.inf
    for trial in sorted(trials, key=lambda t: (t.metrics[names.TRAINABLE_PARAMS],
                                               -t.metrics[names.TEST_ACCURACY])):
        if trial.metrics[names.TEST_ACCURACY] > best:
            front.append(trial)
            best = trial.metrics[names.TEST_ACCURACY]
    return front


def _model(trial):
    m = trial.metrics
    return {
        "run_id": trial.run_id, "sweep": trial.sweep, "trial_id": trial.trial_id,
        "architecture": trial.label, "hidden_layers": trial.hidden_layers,
        "units": trial.params[names.UNITS],
        "trainable_params": int(m[names.TRAINABLE_PARAMS]), "weights": int(m[names.WEIGHTS]),
        "biases": int(m[names.BIASES]), "epochs": int(trial.params[names.EPOCHS]),
        "accuracy": m[names.ACCURACY], "val_accuracy": m[names.VAL_ACCURACY],
        "test_accuracy": m[names.TEST_ACCURACY],
    }


def _part_one(best):
    model = _model(best)
    model.update({
        "val_accuracy_epoch_10": best.at_step(names.VAL_ACCURACY, 10),
        "train_val_gap": model["accuracy"] - model["val_accuracy"],
        "test_val_gap": model["test_accuracy"] - model["val_accuracy"],
        "median_epoch_seconds": statistics.median(
            v for _, v in best.history(names.EPOCH_SECONDS)),
        "best_epoch": best.best_epoch(),
    })
    return model


def _band(sweep):
    trials = sorted(sweep.trials, key=lambda t: t.metrics[names.TRAINABLE_PARAMS])
    return {
        "best": _model(sweep.best),
        "best_test_accuracy": max(t.metrics[names.TEST_ACCURACY] for t in trials),
        "beat_chance": any(
            max(t.metrics[names.VAL_ACCURACY], t.metrics[names.TEST_ACCURACY]) > CHANCE
            for t in trials),
        "trials": [_model(t) for t in trials],
    }


def _activations(sweep):
    if sweep is None:
        return None
    best = {}
    for trial in sweep.trials:
        name = trial.params[names.ACTIVATION]
        if (name not in best or trial.metrics[names.VAL_ACCURACY]
                > best[name].metrics[names.VAL_ACCURACY]):
            best[name] = trial
    return {name: _model(trial) for name, trial in sorted(best.items())}


def _gradient_ratios(sweeps):
    """First hidden layer's gradient over the output layer's, after epoch 1."""
    ratios = {}
    for name in PART_ONE + PART_TWO:
        if name in sweeps:
            grads = sweeps[name].best.gradients(step=1)
            if len(grads) >= 2 and grads[-1] > 0:
                ratios[name] = {"run_id": sweeps[name].best.run_id,
                                "first": grads[0], "output": grads[-1],
                                "ratio": grads[0] / grads[-1]}
    return ratios


def _correlation(trials):
    points = [(t.metrics[names.TRAINABLE_PARAMS], t.metrics[names.TEST_ACCURACY])
              for t in trials]
    if len(points) < 3 or len({p for p, _ in points}) < 2 or len({a for _, a in points}) < 2:
        return {"n": len(points), "rho": None, "p_value": None, "clear": False}
    params, accuracy = (np.array(v, float) for v in zip(*points, strict=True))
    rho = float(stats.spearmanr(params, accuracy).statistic)
    # A permutation test: exact when every pairing can be tried, else Monte Carlo
    # with scipy's (k + 1) / (n + 1), so p is never 0.
    test = stats.permutation_test(
        (params,), lambda x: stats.spearmanr(x, accuracy).statistic,
        permutation_type="pairings", n_resamples=PERMUTATIONS,
        rng=np.random.default_rng(0))
    p_value = float(test.pvalue)
    exact = math.factorial(len(points)) <= PERMUTATIONS
    clear = (len(points) >= CLEAR_MIN_TRIALS and p_value < CLEAR_P and abs(rho) >= CLEAR_RHO)
    return {"n": len(points), "rho": rho, "p_value": p_value, "exact": exact,
            "clear": clear}


def _part_three(sweeps):
    if "part3" not in sweeps:
        return None
    deep = [t for t in sweeps["part3"].trials if t.hidden_layers >= 3]
    best = max(deep, key=lambda t: t.metrics[names.VAL_ACCURACY])
    model = _model(best)
    model["best_epoch"] = best.best_epoch()
    model["beats_target"] = {"validation": model["val_accuracy"] > TARGET,
                             "test": model["test_accuracy"] > TARGET}
    contenders = {"part3": best, **{n: sweeps[n].best for n in PART_ONE if n in sweeps}}
    model["comparison"] = {
        name: {"run_id": t.run_id, "architecture": t.label,
               "test_accuracy": t.metrics[names.TEST_ACCURACY],
               "best_epoch": int(t.metrics.get(names.BEST_EPOCH) or t.best_epoch()),
               "epochs_trained": t.epochs_trained, "epochs": int(t.params[names.EPOCHS])}
        for name, t in contenders.items()}
    model["references"] = [{**r, "beaten": model["test_accuracy"] > r["test_accuracy"]}
                           for r in REFERENCES]
    model["best_of_parts_one_and_three"] = max(
        model["comparison"], key=lambda n: model["comparison"][n]["test_accuracy"])
    return model
