"""One trial's run, written by its own thread: params, epochs, results, how it ends."""


import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import LoggingFailed
from pipeline.space import LOSS, OPTIMIZER, TrialConfig
from pipeline.tracking import names, runs
from pipeline.tracking.trial_run import (
    SIGNATURE,
    EpochLogger,
    one_line,
    start_trial_run,
    trial_params,
)
from pipeline.training.gradients import GradientProbe
from pipeline.training.model import build_model

CONFIG = TrialConfig(units=(8,), activation="sigmoid", learning_rate=0.1, momentum=0.0,
                     batch_size=32, epochs=2)
TIMING = {names.FIT_SECONDS: 1.0, names.TRIAL_SECONDS: 2.0}
N = 200  # images of each split


pytestmark = pytest.mark.usefixtures("fresh_store")


@pytest.fixture
def parent():
    experiment = runs.experiment_id(names.DEFAULT_EXPERIMENT)
    run_id = MlflowClient().create_run(experiment, run_name="s").info.run_id
    return runs.Parent(run_id, experiment)


def history(client, run_id, key):
    return client.get_metric_history(run_id, key)


def epoch_metrics(epoch):
    return {names.LOSS: 1.0 / epoch, names.ACCURACY: 0.5, names.VAL_LOSS: 1.1 / epoch,
            names.VAL_ACCURACY: 0.4, names.EPOCH_SECONDS: 0.1}


def test_trial_params_maps_every_contract_name():
    params = trial_params(TrialConfig(units=(16, 8), activation="tanh", learning_rate=0.05,
                                      momentum=0.9, batch_size=64, epochs=3))
    assert set(params) == set(names.TRIAL_PARAMS)
    assert params == {
        names.HIDDEN_LAYERS: 2, names.UNITS: "16,8", names.ACTIVATION: "tanh",
        names.OPTIMIZER: OPTIMIZER, names.LEARNING_RATE: 0.05, names.MOMENTUM: 0.9,
        names.BATCH_SIZE: 64, names.EPOCHS: 3, names.LOSS_FUNCTION: LOSS,
    }
    assert (OPTIMIZER, LOSS) == ("SGD", "categorical_crossentropy")
    assert trial_params(CONFIG)[names.UNITS] == "8"


def test_start_trial_run_creates_a_child_run(client, parent, small_mnist):
    probe = GradientProbe(build_model(CONFIG), small_mnist.x_train, small_mnist.y_train)

    run = start_trial_run(parent, "s", "3", "tuner0", probe)

    assert run.probe is probe
    info = client.get_run(run.run_id)
    assert info.info.experiment_id == parent.experiment_id
    assert info.info.run_name == "s-trial-3"
    assert info.info.status == "RUNNING"
    tags = info.data.tags
    assert tags[names.SWEEP] == "s"
    assert tags[names.TRIAL_ID] == "3"
    assert tags[names.WORKER] == "tuner0"
    assert tags[names.PARENT_RUN] == parent.run_id
    assert [r.info.run_id for r in runs.trial_runs(parent.run_id, trial_id="3")] == [run.run_id]
    run.kill()


def test_a_whole_trial_is_logged_through_the_callback(client, parent, small_mnist):
    data = small_mnist
    x, y = data.x_train[:N], data.y_train[:N]
    x_test, y_test = data.x_test[:N], data.y_test[:N]
    model = build_model(CONFIG)
    run = start_trial_run(parent, "s", "0", "tuner0", GradientProbe(model, x, y))

    run.log_params(CONFIG)
    fit = model.fit(x, y, validation_data=(data.x_val[:N], data.y_val[:N]),
                    epochs=CONFIG.epochs, batch_size=CONFIG.batch_size,
                    callbacks=[EpochLogger(run)], verbose=0)
    assert client.get_run(run.run_id).info.status == "RUNNING"  # until finish()
    run.finish(model, (x_test, y_test), "title", TIMING, 256)
    run.wait()

    assert run.status == "FINISHED" and run.error is None
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert names.FAILURE_REASON not in logged.data.tags
    assert logged.data.params == {k: str(v) for k, v in trial_params(CONFIG).items()}

    per_epoch = [*names.EPOCH_METRICS, names.EPOCH_SECONDS, names.gradient(0),
                 names.gradient(1)]
    for key in per_epoch:
        assert [m.step for m in history(client, run.run_id, key)] == [1, 2], key
    assert names.gradient(2) not in logged.data.metrics  # one hidden layer + output
    for key in names.EPOCH_METRICS:
        values = [m.value for m in history(client, run.run_id, key)]
        assert values == pytest.approx(fit.history[key], abs=1e-6), key
    assert run.epochs == [1, 2]
    assert run.history[names.VAL_ACCURACY] == pytest.approx(fit.history[names.VAL_ACCURACY])
    for layer in (0, 1):
        gradients = [m.value for m in history(client, run.run_id, names.gradient(layer))]
        assert all(np.isfinite(g) and g > 0 for g in gradients)

    count = CONFIG.params
    assert count.total == model.count_params()
    for key, value in [(names.TRAINABLE_PARAMS, count.total), (names.WEIGHTS, count.weights),
                       (names.BIASES, count.biases)]:
        assert [(m.step, m.value) for m in history(client, run.run_id, key)] == [(0, value)]

    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    metrics = logged.data.metrics
    assert metrics[names.TEST_ACCURACY] == pytest.approx(test_accuracy, abs=1e-6)
    assert metrics[names.TEST_LOSS] == pytest.approx(test_loss, abs=1e-6)
    assert [m.step for m in history(client, run.run_id, names.TEST_ACCURACY)] == [2]
    assert metrics[names.FIT_SECONDS] == 1.0 and metrics[names.TRIAL_SECONDS] == 2.0

    assert names.CURVES in [a.path for a in client.list_artifacts(run.run_id)]
    # MLflow 3: the logged model carries the trial's metrics, so a sweep's models can
    # be ranked, and loads by its own URI.
    (found,) = mlflow.search_logged_models(
        experiment_ids=[parent.experiment_id], filter_string=f"source_run_id = '{run.run_id}'",
        order_by=[{"field_name": f"metrics.{names.VAL_ACCURACY}", "ascending": False}],
        output_format="list")
    assert found.model_id == run.model_id and str(found.status) == "READY"
    on_model = {m.key: m.value for m in found.metrics}
    assert on_model[names.TEST_ACCURACY] == pytest.approx(test_accuracy, abs=1e-6)
    assert on_model[names.VAL_ACCURACY] == pytest.approx(fit.history[names.VAL_ACCURACY][-1])
    uri = f"models:/{run.model_id}"
    assert mlflow.models.get_model_info(uri).signature == SIGNATURE
    reloaded = mlflow.keras.load_model(uri)
    np.testing.assert_allclose(reloaded.predict(x_test[:50], verbose=0),
                               model.predict(x_test[:50], verbose=0), atol=1e-6)


def test_fail_ends_the_run_failed_after_the_queued_epochs(client, parent):
    run = start_trial_run(parent, "s", "1", "tuner0")
    run.log_epoch(1, epoch_metrics(1))

    run.fail(ValueError("boom\nmore"))

    assert run.status == "FAILED"
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags[names.FAILURE_REASON] == "ValueError: boom"
    assert [m.step for m in history(client, run.run_id, names.LOSS)] == [1]
    run.wait()  # the trial's own failure is not a logging failure


def test_a_run_that_does_not_finish_leaves_no_usable_logged_model(client, parent):
    run = start_trial_run(parent, "s", "5", "tuner0")
    run.log_epoch(1, epoch_metrics(1))
    run.kill()
    assert str(client.get_logged_model(run.model_id).status) == "FAILED"


def test_kill_ends_the_run_killed_after_the_queued_epochs(client, parent):
    run = start_trial_run(parent, "s", "2", "tuner0")
    run.log_epoch(1, epoch_metrics(1))
    run.log_epoch(2, epoch_metrics(2))

    run.kill()

    assert run.status == "KILLED"
    logged = client.get_run(run.run_id)
    assert logged.info.status == "KILLED"
    assert names.FAILURE_REASON not in logged.data.tags
    assert [m.step for m in history(client, run.run_id, names.VAL_LOSS)] == [1, 2]
    assert logged.data.metrics[names.VAL_LOSS] == pytest.approx(0.55)


def test_a_write_that_fails_for_good_fails_the_run_and_wait(client, parent, small_mnist):
    model = build_model(CONFIG)
    run = start_trial_run(parent, "s", "4", "tuner0")
    run.log_epoch(1, epoch_metrics(1))
    wrong_shape = (small_mnist.x_test[:10, :100], small_mnist.y_test[:10])

    run.finish(model, wrong_shape, "title", TIMING, 256)
    with pytest.raises(LoggingFailed) as error:
        run.wait()

    cause = error.value.__cause__
    assert cause is run.error and cause is not None
    assert run.run_id in str(error.value) and one_line(cause) in str(error.value)
    assert "\n" not in str(error.value)
    assert run.status == "FAILED"
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags[names.FAILURE_REASON] == one_line(cause)
    assert names.TEST_ACCURACY not in logged.data.metrics
    assert names.CURVES not in [a.path for a in client.list_artifacts(run.run_id)]
    assert [m.step for m in history(client, run.run_id, names.LOSS)] == [1]  # kept


def test_one_line():
    assert one_line(ValueError("boom\nmore")) == "ValueError: boom"
    assert one_line(RuntimeError("\n\nfirst line\nsecond")) == "RuntimeError: first line"
    assert one_line(RuntimeError()) == "RuntimeError: "
    assert one_line(KeyError("units")) == "KeyError: 'units'"
    long = one_line(ValueError("x" * 1000))
    assert len(long) == 500 and long.startswith("ValueError: xxx")
