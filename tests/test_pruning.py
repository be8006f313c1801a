"""Pruning across trials: the rules, the spec option, and the oracle's answer."""

import keras_tuner
import pytest
from keras_tuner.engine.trial import TrialStatus

from pipeline import space as space_module
from pipeline.errors import SpecError
from pipeline.search import internals, oracles, pruning
from pipeline.spec import load as specfile
from pipeline.spec.schema import Pruning

MEDIAN = Pruning(rungs=(2,), rule="median", min_trials=3)
HALVING = Pruning(rungs=(2,), rule="halving", eta=3, min_trials=1)


@pytest.mark.parametrize("rule, value, others, direction, stops", [
    (MEDIAN, 0.5, [0.6, 0.7], "max", False),          # Too few others yet.
    (MEDIAN, 0.5, [0.6, 0.7, 0.4], "max", True),      # Below the median 0.6.
    (MEDIAN, 0.6, [0.6, 0.7, 0.4], "max", False),     # At the median: goes on.
    (MEDIAN, 0.5, [0.6, 0.7, 0.4], "min", False),     # A loss: 0.5 < 0.6 is better.
    (HALVING, 0.7, [0.9, 0.8, 0.6, 0.5, 0.4], "max", True),   # Top 2 of 6: 0.9, 0.8.
    (HALVING, 0.8, [0.9, 0.7, 0.6, 0.5, 0.4], "max", False),
    (HALVING, 0.1, [0.2], "min", False),              # Best 1 of 2 (a loss).
    (HALVING, 0.3, [0.2], "min", True),
])
def test_the_rules_stop_a_trial_behind_the_others_at_its_rung(
        rule, value, others, direction, stops):
    assert pruning.prunes(rule, value, others, direction) is stops


def spec_with(tmp_path, pruning_yaml):
    path = tmp_path / "pruned.yaml"
    path.write_text("name: pruned\ndescription: d\nsearch_space: {hidden_layers: 1, "
                    "units: {min: 8, max: 64}, activation: sigmoid}\n"
                    f"training: {{epochs: 6}}\ntuner: {{max_trials: 8, pruning: {pruning_yaml}}}\n")
    return specfile.load(str(path))


def test_the_spec_option_is_read_and_checked(tmp_path):
    spec = spec_with(tmp_path, "{rungs: [2, 4], rule: halving, eta: 2}")
    assert spec.tuner.pruning == Pruning(rungs=(2, 4), rule="halving", eta=2, min_trials=3)
    for bad, field in (("{rungs: []}", "tuner.pruning.rungs"),
                       ("{rungs: [4, 2]}", "tuner.pruning.rungs"),
                       ("{rungs: [0]}", "tuner.pruning.rungs"),
                       ("{rungs: [2], rule: mean}", "tuner.pruning.rule"),
                       ("{rungs: [2], eta: 1}", "tuner.pruning.eta"),
                       ("{rungs: [2], every: 1}", "tuner.pruning")):
        with pytest.raises(SpecError, match=f"pruned.yaml: {field}[:.]"):
            spec_with(tmp_path, bad)
    # Pruning changes what trials compute: another sweep, not a resume of this one.
    assert spec.fingerprint() != spec_with(tmp_path, "{rungs: [2]}").fingerprint()


def test_the_oracle_answers_stopped_at_a_rung_and_keeps_the_trial_running(tmp_path):
    spec = spec_with(tmp_path, "{rungs: [2], min_trials: 2}")
    space = space_module.build(spec)
    oracle = oracles.make_oracle(spec, space)
    oracle._set_project_dir(str(tmp_path / "oracle"), "p")
    hp = keras_tuner.HyperParameters()
    space.sample(hp)  # Declares the space, as the tuner does before its first trial.
    oracle.update_space(hp)
    trials = [oracle.create_trial(f"w{i}") for i in range(3)]
    for trial, accuracy in zip(trials[:2], (0.8, 0.9), strict=True):
        for epoch in (1, 2):
            assert internals.report_epoch(oracle, trial.trial_id, {"val_accuracy": accuracy},
                                          epoch) == TrialStatus.RUNNING
    last = trials[2].trial_id
    assert internals.report_epoch(oracle, last, {"val_accuracy": 0.95}, 1) == "RUNNING"
    assert internals.report_epoch(oracle, last, {"val_accuracy": 0.7}, 2) == "STOPPED"
    # The oracle's own record stays RUNNING until the trial ends (its kept score).
    assert oracle.trials[last].status == TrialStatus.RUNNING
    assert pruning.at_step(oracle.trials[last], "val_accuracy", 2) == 0.7
