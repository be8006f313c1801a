"""End to end: real sweeps on a real MNIST slice, checked in the real MLflow store."""

import json
import warnings

import mlflow
import numpy as np
import pytest

from pipeline.cli.commands import cli
from pipeline.tracking import names
from pipeline.tracking import runs as runs_module

pytestmark = pytest.mark.slow

SMALL = ["--train-limit", "1000", "--epochs", "2"]
EPOCH_METRICS = {*names.EPOCH_METRICS, names.EPOCH_SECONDS}


def sweep(runner, mnist_path, spec, *args):
    result = runner.invoke(cli, ["sweep", spec, "--data", mnist_path, *SMALL, *args])
    assert result.exit_code == 0, result.output
    return result


def runs_of(client, sweep_name):
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.{names.SWEEP} = '{sweep_name}'")
    parents = [r for r in runs if names.TRIAL_ID not in r.data.tags]
    children = [r for r in runs if names.TRIAL_ID in r.data.tags]
    return parents, children


def test_sweep_logs_every_name_of_the_contract(runner, client, mnist_path, small_mnist):
    result = sweep(runner, mnist_path, "part1-narrow", "--max-trials", "3")
    assert "trial 2 (3/3)" in result.output and "left" in result.output

    parents, children = runs_of(client, "part1-narrow")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_name == "part1-narrow"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.PART] == "1"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["part1-narrow.yaml"]

    # Every run says what it learned from: MNIST's three splits, as MLflow datasets.
    for run in [parent, *children]:
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "test"}, run.info.run_id
        assert json.loads(inputs["training"].profile)["num_rows"] == 1_000  # --train-limit
        assert json.loads(inputs["test"].profile)["num_rows"] == 10_000
        assert json.loads(inputs["training"].source)["uri"] == mnist_path
        assert inputs["training"].digest.startswith(small_mnist.fingerprint)

    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[names.PARENT_RUN] == parent.info.run_id
        assert child.data.tags[names.SWEEP] == "part1-narrow"
        params = child.data.params
        assert set(params) == set(names.TRIAL_PARAMS)
        assert params[names.ACTIVATION] == "sigmoid" and params[names.OPTIMIZER] == "SGD"
        assert params[names.EPOCHS] == "2" and params[names.HIDDEN_LAYERS] == "1"
        units = int(params[names.UNITS])
        metrics = child.data.metrics
        assert metrics[names.TRAINABLE_PARAMS] == 795 * units + 10 < 50_000
        assert metrics[names.WEIGHTS] == 794 * units and metrics[names.BIASES] == units + 10
        for name in EPOCH_METRICS | {names.gradient(0), names.gradient(1)}:
            history = client.get_metric_history(child.info.run_id, name)
            assert [m.step for m in history] == [1, 2], name
        assert 0 < metrics[names.TEST_ACCURACY] <= 1 and metrics[names.TEST_LOSS] > 0
        assert names.CURVES in [a.path for a in client.list_artifacts(child.info.run_id)]

    # The parent points at its best trial by validation accuracy.
    best = max(children, key=lambda r: r.data.metrics[names.VAL_ACCURACY])
    assert parent.data.tags[names.BEST_TRIAL] == best.data.tags[names.TRIAL_ID]
    assert parent.data.tags[names.BEST_RUN_ID] == best.info.run_id
    assert parent.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(
        best.data.metrics[names.VAL_ACCURACY])

    # The logged model reloads through the Keras flavor and reproduces test_accuracy.
    model = mlflow.keras.load_model(runs_module.model_uri(best.info.run_id))
    predictions = model.predict(small_mnist.x_test, verbose=0)
    accuracy = np.mean(predictions.argmax(1) == small_mnist.y_test.argmax(1))
    assert accuracy == pytest.approx(best.data.metrics[names.TEST_ACCURACY], abs=1e-6)
    pyfunc = mlflow.pyfunc.load_model(runs_module.model_uri(best.info.run_id))
    (spec,) = pyfunc.metadata.signature.inputs.inputs
    assert (spec.name, spec.type, spec.shape) == (None, np.dtype("float32"), (-1, 784))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = pyfunc.predict(small_mnist.x_test[:5])
    np.testing.assert_allclose(served, predictions[:5], atol=1e-6)
    assert not [w for w in caught if "structure" in str(w.message)], "Keras warned"


def test_deep_sweep_logs_only_active_layers(runner, client, mnist_path):
    sweep(runner, mnist_path, "part2-narrow", "--max-trials", "3", "--epochs", "1")
    _, children = runs_of(client, "part2-narrow")
    assert len(children) == 3
    for child in children:
        layers = int(child.data.params[names.HIDDEN_LAYERS])
        units = [int(u) for u in child.data.params[names.UNITS].split(",")]
        assert 10 <= layers <= 12 and len(units) == layers
        assert all(1 <= u <= 9 for u in units)
        assert not any(k.startswith("units_") for k in child.data.params)
        assert {names.gradient(i) for i in range(layers + 1)} <= set(
            child.data.metrics)


def test_same_seed_same_configurations_and_metrics(runner, client, mnist_path):
    sweep(runner, mnist_path, "part1-narrow", "--max-trials", "2",
          "--experiment", "first", "--directory", "first")
    sweep(runner, mnist_path, "part1-narrow", "--max-trials", "2",
          "--experiment", "second", "--directory", "second")

    def outcome(name):
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], f"tags.{names.TRIAL_ID} != ''",
                                  order_by=[f"tags.{names.TRIAL_ID}"])
        return [(r.data.params[names.UNITS], round(r.data.metrics[names.VAL_ACCURACY], 6),
                 round(r.data.metrics[names.LOSS], 5)) for r in runs]

    assert outcome("first") == outcome("second")
    assert len(outcome("first")) == 2


def test_rerun_resumes_the_same_parent_and_trains_nothing_twice(runner, client, mnist_path):
    sweep(runner, mnist_path, "part1-narrow", "--max-trials", "2")
    again = sweep(runner, mnist_path, "part1-narrow", "--max-trials", "2")
    assert "already finished: 2 trials" in again.output and "(1/2)" not in again.output
    more = sweep(runner, mnist_path, "part1-narrow", "--max-trials", "3")
    assert "resuming" in more.output and "trial 2 (3/3)" in more.output
    parents, children = runs_of(client, "part1-narrow")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags[names.TRIAL_ID] for r in children) == ["0", "1", "2"]
    fresh = sweep(runner, mnist_path, "part1-narrow", "--max-trials", "1", "--overwrite")
    assert "starting" in fresh.output
    parents, _ = runs_of(client, "part1-narrow")
    assert len(parents) == 2


def test_diverging_trial_fails_with_reason_and_the_sweep_goes_on(
        runner, client, mnist_path, tmp_path):
    spec = tmp_path / "diverge.yaml"
    spec.write_text(
        "name: diverge\ndescription: relu at a huge learning rate diverges\n"
        "search_space: {hidden_layers: 2, units: 64, activation: relu,\n"
        "               learning_rate: [1000000.0, 0.01]}\n"
        "tuner: {algorithm: grid, max_trials: 2}\n")
    result = sweep(runner, mnist_path, str(spec))
    assert "FAILED (" in result.output
    parents, children = runs_of(client, "diverge")
    by_lr = {float(r.data.params[names.LEARNING_RATE]): r for r in children}
    failed = by_lr[1_000_000.0]
    assert failed.info.status == "FAILED"
    assert "NaN" in failed.data.tags[names.FAILURE_REASON]
    assert by_lr[0.01].info.status == "FINISHED"
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[names.BEST_TRIAL] == by_lr[0.01].data.tags[names.TRIAL_ID]


@pytest.mark.parametrize("pack, failed", [(1, 2), (3, 3)])
def test_sweep_stops_after_consecutive_failures_with_a_clear_message(
        runner, client, mnist_path, tmp_path, pack, failed):
    # Alone, the sweep stops at the limit; packed, the pack that reached it trains
    # (and fails) whole, and no other pack starts.
    spec = tmp_path / "diverging.yaml"
    spec.write_text(
        "name: diverging\ndescription: every trial diverges\n"
        "search_space: {hidden_layers: 2, units: {min: 60, max: 70}, activation: relu,\n"
        "               learning_rate: 1000000.0}\n"
        "tuner: {max_trials: 6, max_consecutive_failed_trials: 2}\n")
    result = runner.invoke(cli, ["sweep", str(spec), "--data", mnist_path, *SMALL,
                                 "--pack", str(pack)])
    assert result.exit_code == 1
    assert (f"Error: stopped after {failed} failed trials in a row; the last: "
            "FailedTrialError: loss became NaN") in result.output
    parents, children = runs_of(client, "diverging")
    assert parents[0].info.status == "FAILED"
    assert [r.info.status for r in children] == ["FAILED"] * failed
