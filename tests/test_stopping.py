"""Early stopping keeps a trial's best epoch, model and metrics; the divergence guard
fails a trial still at chance. Real sweeps on a real MNIST slice, a real store."""

import mlflow
import numpy as np
import pytest

from pipeline import sweep
from pipeline.spec import load as specfile
from pipeline.spec.schema import EXERCISE
from pipeline.tracking import names, runs

pytestmark = pytest.mark.usefixtures("fresh_store")

SPEC = """\
name: stops
description: one network, stopped by its training settings
search_space: {hidden_layers: 1, units: 32, activation: sigmoid}
training: {learning_rate: 0.5, TRAINING}
tuner: {algorithm: grid, max_trials: 1}
"""


def run_sweep(tmp_path, data, training, experiment="stops"):
    (tmp_path / "stops.yaml").write_text(SPEC.replace("TRAINING", training))
    spec = specfile.load(tmp_path / "stops.yaml")
    settings = sweep.Settings(experiment=experiment, directory=str(tmp_path / experiment),
                              register=False)
    return sweep.run(spec, data, settings)


def the_trial(client, result):
    (run,) = runs.trial_runs(result.parent_run_id)
    return client.get_run(run.info.run_id)


def history(client, run, key):
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def accuracy(model, x, y):
    predictions = model.predict(x, verbose=0, batch_size=1024)
    return float(np.mean(predictions.argmax(1) == y.argmax(1)))


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epochs_model_and_its_metrics(
        tmp_path, small_mnist, client):
    # No later epoch can beat the first by 0.5: training stops after 1 + 2 epochs.
    result = run_sweep(tmp_path, small_mnist,
                       "epochs: 6, early_stopping: {patience: 2, min_delta: 0.5}")
    run = the_trial(client, result)
    val = history(client, run, names.VAL_ACCURACY)
    assert sorted(val) == [1, 2, 3]
    assert run.data.tags[names.STOPPED_EARLY] == "true"
    assert run.data.metrics[names.BEST_EPOCH] == 1
    assert val[1] != val[3]  # So the check below tells the epochs apart.

    # The logged model is epoch 1's: its validation accuracy is the one logged then,
    # and its test metrics are of that model.
    model = mlflow.keras.load_model(runs.model_uri(run.info.run_id))
    assert accuracy(model, small_mnist.x_val, small_mnist.y_val) == pytest.approx(val[1])
    assert accuracy(model, small_mnist.x_test, small_mnist.y_test) == pytest.approx(
        run.data.metrics[names.TEST_ACCURACY])
    # The oracle, and so the sweep's best, scored the trial by its kept epoch.
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(val[1])
    # Found FINISHED when a resumed sweep hands the trial out again, it is scored by
    # its kept epoch too, not by its last logged step.
    earlier = runs.earlier_attempts(runs.Parent(result.parent_run_id, run.info.experiment_id),
                                    "0", names.VAL_ACCURACY)
    assert earlier.run_id == run.info.run_id
    assert earlier.metrics[names.VAL_ACCURACY] == pytest.approx(val[1])
    assert earlier.metrics[names.VAL_ACCURACY] != run.data.metrics[names.VAL_ACCURACY]


@pytest.mark.slow
def test_without_a_stop_the_best_epoch_is_still_the_one_kept(tmp_path, small_mnist, client):
    # With the SGD settings Part Three searches: a cosine schedule after a warm-up,
    # Nesterov and weight decay, each logged as a param.
    result = run_sweep(tmp_path, small_mnist, "epochs: 3, early_stopping: {patience: 5}, "
                       "schedule: cosine, warmup_epochs: 1, nesterov: true, "
                       "weight_decay: 0.0001")
    run = the_trial(client, result)
    assert {k: run.data.params[k] for k in (names.SCHEDULE, names.WARMUP_EPOCHS,
                                            names.NESTEROV, names.WEIGHT_DECAY)} == {
        names.SCHEDULE: "cosine", names.WARMUP_EPOCHS: "1", names.NESTEROV: "True",
        names.WEIGHT_DECAY: "0.0001"}
    val = history(client, run, names.VAL_ACCURACY)
    assert sorted(val) == [1, 2, 3]
    assert run.data.tags[names.STOPPED_EARLY] == "false"
    best = max(val, key=val.get)
    assert run.data.metrics[names.BEST_EPOCH] == best
    model = mlflow.keras.load_model(runs.model_uri(run.info.run_id))
    assert accuracy(model, small_mnist.x_val, small_mnist.y_val) == pytest.approx(val[best])


@pytest.mark.slow
def test_the_divergence_guard_fails_a_trial_at_chance_with_the_reason(
        tmp_path, small_mnist, client):
    # Every network here is "at chance" against a bar of 99%: the guard ends it.
    result = run_sweep(tmp_path, small_mnist,
                       "epochs: 6, divergence_guard: {epochs: 2, below: 0.99}")
    assert result.best_trial is None  # Its only trial failed.
    (run,) = runs.trial_runs(result.parent_run_id)
    assert run.info.status == "FAILED"
    reason = run.data.tags[names.FAILURE_REASON]
    assert "after 2 epochs: still at chance (divergence guard)" in reason
    assert sorted(history(client, run, names.VAL_ACCURACY)) == [1, 2]  # Not 6 epochs.


def test_part_two_keeps_the_guard_off_and_part_three_prunes_instead():
    specs = {name: specfile.load(name) for name in EXERCISE}
    for name, spec in specs.items():
        if spec.part == 2:  # Their failure to learn is the answer the exercise wants.
            assert spec.training.divergence_guard is None, name
    # Part Three's deep trials still at chance are pruned at the first rung: scored,
    # so the oracle learns from them, where a failed trial teaches it nothing.
    part3 = specs["part3"]
    assert part3.training.early_stopping is not None
    assert part3.training.divergence_guard is None and part3.tuner.pruning.rungs[0] <= 4


@pytest.mark.slow
def test_the_same_seed_trains_the_same_trial_again(tmp_path, small_mnist, client):
    training = ("epochs: 3, schedule: cosine, warmup_epochs: 1, nesterov: true, "
                "weight_decay: 0.0005, early_stopping: {patience: 2}")
    first, second = (the_trial(client, run_sweep(tmp_path, small_mnist, training, name))
                     for name in ("first", "second"))
    assert history(client, first, names.VAL_ACCURACY) == history(
        client, second, names.VAL_ACCURACY)
    assert first.data.metrics[names.TEST_ACCURACY] == second.data.metrics[names.TEST_ACCURACY]
