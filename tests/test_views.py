"""The saved comparison view of a sweep, and the links that open MLflow's UI on it
(the browser checks are in test_ui.py)."""

import json

import pytest

from pipeline import space
from pipeline.spec import load as specfile
from pipeline.tracking import names, runs, views


@pytest.mark.parametrize("uri, address", [
    ("sqlite:///mlflow.db", views.LOCAL_UI),
    ("", views.LOCAL_UI),
    ("postgresql://u:p@db/mlflow", views.LOCAL_UI),
    ("http://alice:s3cret@10.0.0.5:5000/", "http://10.0.0.5:5000"),
    ("https://mlflow.example.org/team", "https://mlflow.example.org/team"),
])
def test_the_ui_address_is_the_tracking_server_or_mlflow_ui_and_never_holds_a_password(
        uri, address):
    assert views.ui_address(uri) == address


def test_a_sweep_link_opens_its_saved_view_in_the_model_training_view():
    link = views.sweep_link("http://h:1", "7", "abc")
    assert link == ("http://h:1/#/experiments/7/runs?viewStateShareKey=sweep-abc"
                    "&workflowType=machine_learning")
    assert views.sweep_link("http://h:1", "7", "abc", chart=True).endswith(
        "&compareRunsMode=CHART")
    assert views.run_link("http://h:1", "7", "r1") == (
        "http://h:1/#/experiments/7/runs/r1?workflowType=machine_learning")


@pytest.mark.parametrize("spec, searched", [
    ("part1-narrow", [names.UNITS]),
    ("part2-medium", [names.HIDDEN_LAYERS, names.UNITS]),
    ("activation", [names.UNITS, names.ACTIVATION]),
    ("part3", [names.HIDDEN_LAYERS, names.UNITS, names.LEARNING_RATE, names.MOMENTUM,
               names.BATCH_SIZE, names.SCHEDULE, names.WEIGHT_DECAY, names.NESTEROV]),
])
def test_the_searched_params_are_those_the_space_varies(spec, searched):
    assert space.build(specfile.load(spec)).searched_params() == searched


def test_the_view_shows_the_sweeps_trials_best_first_with_what_to_compare():
    state = views.view_state("p1", [names.UNITS, names.ACTIVATION])
    assert state["searchFilter"] == "tags.`mlflow.parentRunId` = 'p1'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_accuracy`", False)
    assert state["selectedColumns"] == [
        "params.`units`", "params.`activation`", "metrics.`trainable_params`",
        "metrics.`val_accuracy`", "metrics.`test_accuracy`", "metrics.`best_epoch`"]
    parallel, *curves = state["compareRunCharts"]
    assert parallel["type"] == "PARALLEL"
    assert parallel["selectedParams"] == [names.UNITS, names.ACTIVATION]
    assert parallel["selectedMetrics"] == [names.VAL_ACCURACY]
    assert [c["metricKey"] for c in curves] == [names.VAL_ACCURACY, names.VAL_LOSS]
    assert state["runsHiddenMode"] == "SHOW_ALL"  # Every trial in the charts.


def test_the_view_is_saved_as_an_experiment_tag_mlflows_ui_reads(client):
    experiment_id = runs.experiment_id("views")
    every = [*names.TRIAL_PARAMS, names.SCHEDULE, names.WARMUP_EPOCHS, names.WEIGHT_DECAY,
             names.NESTEROV]
    key = views.save_view(experiment_id, "a" * 32, every)
    assert key == "sweep-" + "a" * 32
    value = client.get_experiment(experiment_id).tags[views.SHARED_VIEW_TAG + key]
    assert json.loads(value) == views.view_state("a" * 32, every)
    assert len(value) < 20_000  # MLflow's limit on an experiment tag's value.
