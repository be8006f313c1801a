"""Keras Tuner's Hyperband with a learning-rate schedule: a trial continued in a later
rung resumes its schedule where it stopped (the schedule spans the whole budget)."""

import math

import keras
import mlflow
import pytest

from pipeline.cli.commands import cli
from pipeline.tracking import names, runs

pytestmark = pytest.mark.slow

EPOCHS, TRAIN, BATCH, RATE = 4, 1000, 32, 0.5
SPEC = f"""name: hyperband
description: Hyperband over a cosine schedule
search_space: {{hidden_layers: 1, units: {{min: 16, max: 64, step: 16}}, activation: sigmoid}}
training: {{epochs: {EPOCHS}, batch_size: {BATCH}, learning_rate: {RATE}, schedule: cosine}}
tuner: {{algorithm: hyperband, hyperband_factor: 2, max_trials: 8, seed: 3}}
"""


def test_a_continued_trial_resumes_its_schedule_where_it_stopped(
        runner, client, mnist_path, workdir):
    spec = workdir / "hyperband.yaml"
    spec.write_text(SPEC)
    result = runner.invoke(cli, ["sweep", str(spec), "--data", mnist_path, "--train-limit",
                                 str(TRAIN), "--no-register"])
    assert result.exit_code == 0, result.output
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    trials = client.search_runs([experiment.experiment_id], f"tags.{names.TRIAL_ID} != ''")
    steps = math.ceil(TRAIN / BATCH)
    full = keras.optimizers.schedules.CosineDecay(RATE, decay_steps=steps * EPOCHS)
    continued = 0
    for run in trials:
        epochs = [m.step for m in client.get_metric_history(run.info.run_id,
                                                            names.VAL_ACCURACY)]
        continued += min(epochs) > 1  # It went on from an earlier rung's model.
        optimizer = mlflow.keras.load_model(runs.model_uri(run.info.run_id)).optimizer
        # Its optimizer counted every step of every rung, and its rate is the full
        # budget's cosine there: a rung of 1 or 2 epochs does not decay it to 0.
        assert int(optimizer.iterations) == max(epochs) * steps, (epochs, run.info.run_id)
        assert float(optimizer.learning_rate) == pytest.approx(
            float(full(max(epochs) * steps)), abs=1e-6)
    assert continued, "no trial was continued in a later rung"


def test_the_shipped_part3_hyperband_spec_continues_trials_under_part3s_rules(
        runner, client, mnist_path, workdir):
    result = runner.invoke(cli, ["sweep", "part3-hyperband", "--data", mnist_path,
                                 "--epochs", "3", "--max-trials", "6", "--train-limit",
                                 "600", "--directory", str(workdir / "kt"), "--no-register"])
    assert result.exit_code == 0, result.output
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    trials = client.search_runs([experiment.experiment_id], f"tags.{names.TRIAL_ID} != ''")
    assert len(trials) == 6 and {r.info.status for r in trials} == {"FINISHED"}
    first = {r.info.run_id: min(m.step for m in client.get_metric_history(
        r.info.run_id, names.VAL_ACCURACY)) for r in trials}
    assert any(step > 1 for step in first.values()), "no trial was continued"
    for run in trials:  # Part Three's rules, and its warm-up before a cosine decay.
        params = run.data.params
        assert int(params[names.HIDDEN_LAYERS]) >= 3 and params[names.ACTIVATION] == "sigmoid"
        assert params[names.WARMUP_EPOCHS] == ("1" if params[names.SCHEDULE] == "cosine"
                                               else "0")
