"""Every configuration a real Keras Tuner oracle proposes meets the spec's constraints."""

import random

import keras_tuner
import pytest

from pipeline import space as space_module
from pipeline.search.oracles import make_oracle
from pipeline.spec import load as spec_module
from pipeline.tracking import names

SPEC = """\
name: constrained
description: only part of this space has 30,000-60,000 parameters
search_space:
  hidden_layers: {{min: 1, max: 3}}
  units: {{min: 4, max: 124, step: 8}}
  activation: [sigmoid, relu]
  learning_rate: {learning_rate}
constraints:
  min_trainable_params: 30000
  max_trainable_params: 60000
training: {{epochs: 9}}
tuner: {{algorithm: {algorithm}, max_trials: {max_trials}, seed: 7{extra}}}
"""


def drive(tmp_path, algorithm, max_trials, learning_rate="[0.01, 0.1]", extra=""):
    """Runs the oracle's create/end loop as Keras Tuner's search does, without training."""
    path = tmp_path / "constrained.yaml"
    path.write_text(SPEC.format(algorithm=algorithm, max_trials=max_trials,
                                learning_rate=learning_rate, extra=extra))
    spec = spec_module.load(path)
    space = space_module.build(spec)
    oracle = make_oracle(spec, space)
    oracle._set_project_dir(str(tmp_path), "project")
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    oracle.update_space(hp)
    scores = random.Random(0)
    configs = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        assert trial.status == "RUNNING"
        config = space.config(trial.hyperparameters.values)
        configs.append((config, space.violation(config)))
        oracle.update_trial(trial.trial_id, {names.VAL_ACCURACY: scores.random()})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return configs


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_every_proposal_is_feasible_and_the_budget_is_kept(tmp_path, algorithm):
    configs = drive(tmp_path, algorithm, max_trials=12)
    assert len(configs) == 12  # No trial of the budget went to an infeasible draw.
    assert [v for _, v in configs] == [None] * 12
    assert len({c.hidden_layers for c, _ in configs}) > 1  # Search still spans depths.


def test_bayesian_proposals_after_warm_up_are_feasible(tmp_path):
    configs = drive(tmp_path, "bayesian", max_trials=4,
                    learning_rate="{min: 0.001, max: 0.3, sampling: log}",
                    extra=", num_initial_points: 2")
    assert len(configs) == 4  # 2 random draws, then 2 Gaussian-process proposals
    assert all(v is None for _, v in configs)


def test_grid_steps_over_infeasible_points(tmp_path):
    configs = drive(tmp_path, "grid", max_trials=40)
    assert len(configs) == 40
    assert all(v is None for _, v in configs)
    # Keras Tuner's grid starts at the defaults (1 layer of 4 units: infeasible).
    assert configs[0][0].params.total >= 30_000


def test_small_feasible_space_is_exhausted_not_padded(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndescription: three feasible widths\n"
                    "search_space: {hidden_layers: 1, units: {min: 1, max: 100}}\n"
                    "constraints: {min_trainable_params: 78000, max_trainable_params: 79600}\n"
                    "tuner: {max_trials: 10}\n")
    spec = spec_module.load(path)
    space = space_module.build(spec)
    oracle = make_oracle(spec, space)
    oracle._set_project_dir(str(tmp_path), "tiny")
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    oracle.update_space(hp)
    widths = []
    while (trial := oracle.create_trial("tuner0")).status == "RUNNING":
        widths.append(trial.hyperparameters.values["units_0"])
        oracle.update_trial(trial.trial_id, {names.VAL_ACCURACY: 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert sorted(widths) == [99, 100]  # 795 * u + 10 in range only for these
