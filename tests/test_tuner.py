"""The tuner's hooks on a real oracle and a real SQLite store: one trial, one run."""

import mlflow
import pytest

from pipeline import space
from pipeline.progress import Progress
from pipeline.search.lifecycle import trial_seed
from pipeline.search.tuner import SweepTuner
from pipeline.spec import load as specfile
from pipeline.tracking import names, runs

pytestmark = pytest.mark.usefixtures("fresh_store")

SPEC = """\
name: tiny
description: two one-layer networks, one epoch each
search_space: {hidden_layers: 1, units: {min: 8, max: 16, step: 8}, activation: sigmoid}
training: {epochs: 1, learning_rate: 0.5}
tuner: {algorithm: grid, max_trials: 2, seed: 3}
"""


def tuner_for(tmp_path, capsys_stream=None):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    spec = specfile.load(path)
    tuner = SweepTuner(spec, space.build(spec), experiment="tuner-test",
                       progress=Progress("tiny", 2, stream=capsys_stream),
                       directory=str(tmp_path / "kt"), project_name="tiny-project")
    return spec, tuner


def test_search_logs_one_finished_run_per_trial_and_the_best(tmp_path, small_mnist, client):
    spec, tuner = tuner_for(tmp_path)
    parent = runs.open_parent(spec, "tuner-test", tmp_path / "kt" / "tiny-project")
    tuner.open(parent)
    tuner.search_and_retry(small_mnist)
    tuner.wait_for_logging()

    trials = runs.trial_runs(parent.run_id)
    assert sorted(r.data.tags[names.TRIAL_ID] for r in trials) == ["0", "1"]
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert sorted(r.data.params[names.UNITS] for r in trials) == ["16", "8"]
    best = max(trials, key=lambda r: r.data.metrics[names.VAL_ACCURACY])
    best_trial = tuner.best_trial()
    trial_id, score, run_id = best_trial.trial_id, best_trial.val_accuracy, best_trial.run_id
    assert (trial_id, run_id) == (best.data.tags[names.TRIAL_ID], best.info.run_id)
    assert score == best.data.metrics[names.VAL_ACCURACY]
    tags = client.get_run(parent.run_id).data.tags
    assert tags[names.BEST_TRIAL] == trial_id and tags[names.BEST_RUN_ID] == run_id
    assert tuner.finished()


def test_a_trial_whose_run_is_gone_is_trained_again_on_resume(tmp_path, small_mnist, client):
    spec, tuner = tuner_for(tmp_path)
    project_dir = tmp_path / "kt" / "tiny-project"
    parent = runs.open_parent(spec, "tuner-test", project_dir)
    tuner.open(parent)
    tuner.search_and_retry(small_mnist)
    tuner.wait_for_logging()
    lost = runs.finished_run_of(parent.run_id, "1")
    client.delete_run(lost)

    _, again = tuner_for(tmp_path)
    again.resume(runs.existing_parent(project_dir))
    assert not again.finished()
    again.search_and_retry(small_mnist)
    again.wait_for_logging()
    finished = runs.trial_runs(parent.run_id, status="FINISHED")
    assert sorted(r.data.tags[names.TRIAL_ID] for r in finished) == ["0", "1"]
    assert runs.finished_run_of(parent.run_id, "1") != lost
    assert again.finished()


def test_earlier_finished_run_is_not_trained_twice(tmp_path, small_mnist, capsys):
    spec, tuner = tuner_for(tmp_path)
    parent = runs.open_parent(spec, "tuner-test", tmp_path / "kt" / "tiny-project")
    tuner.open(parent)
    # Trial 0 finished in MLflow, but its process died before Keras Tuner recorded it.
    run = mlflow.MlflowClient().create_run(parent.experiment_id, tags={
        names.PARENT_RUN: parent.run_id, names.TRIAL_ID: "0", names.SWEEP: "tiny"})
    mlflow.MlflowClient().log_metric(run.info.run_id, names.VAL_ACCURACY, 0.5)
    mlflow.MlflowClient().log_metric(run.info.run_id, names.VAL_LOSS, 1.5)
    mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
    tuner.search_and_retry(small_mnist)
    tuner.wait_for_logging()
    assert "trial 0 already finished in MLflow run" in capsys.readouterr().out
    assert len(runs.trial_runs(parent.run_id, trial_id="0")) == 1


def test_trial_seed_is_fixed_per_trial():
    assert trial_seed(11, "3") == 11003
    assert trial_seed(11, "3") != trial_seed(12, "3")


class BestChecker:
    """A progress stream that, at each trial's line, reads the parent's best from MLflow."""

    def __init__(self, client, parent):
        self.client, self.parent = client, parent
        self.seen = []  # (best_trial tag, the trial id of the best_run_id tag's run)

    def write(self, text):
        if " params " in text:  # A trial's line.
            tags = self.client.get_run(self.parent.run_id).data.tags
            run = self.client.get_run(tags[names.BEST_RUN_ID]) if (
                names.BEST_RUN_ID in tags) else None
            self.seen.append((tags.get(names.BEST_TRIAL),
                              run and run.data.tags[names.TRIAL_ID]))

    def flush(self):
        pass


def test_best_run_id_names_the_best_trials_run_after_every_trial(tmp_path, small_mnist,
                                                                    client):
    """The parent's `best_run_id` is current at every trial's end, while the best
    trial's run is still being written in the background."""
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC.replace("max_trials: 2", "max_trials: 3").replace(
        "max: 16", "max: 24"))
    spec = specfile.load(path)
    parent = runs.open_parent(spec, "tuner-test", tmp_path / "kt" / "tiny-project")
    checker = BestChecker(client, parent)
    tuner = SweepTuner(spec, space.build(spec), experiment="tuner-test",
                       progress=Progress("tiny", 3, stream=checker),
                       directory=str(tmp_path / "kt"), project_name="tiny-project")
    tuner.open(parent)
    tuner.search_and_retry(small_mnist)
    tuner.wait_for_logging()
    assert len(checker.seen) == 3
    for best_trial, run_trial in checker.seen:
        assert best_trial is not None and run_trial == best_trial
