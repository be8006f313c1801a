"""One sweep's life in a single process: start, finish, re-run, the lock; and the
CLI's one line per error."""

import fcntl

import pytest

from pipeline import sweep
from pipeline.cli.commands import cli
from pipeline.errors import SweepBusy
from pipeline.spec import load as specfile
from pipeline.tracking import names, runs

pytestmark = pytest.mark.usefixtures("fresh_store")

SPEC = """\
name: tiny
description: one one-layer network, one epoch
search_space: {hidden_layers: 1, units: 8, activation: sigmoid}
training: {epochs: 1, learning_rate: 0.5}
tuner: {algorithm: grid, max_trials: 1}
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    return specfile.load(tmp_path / "tiny.yaml")


def test_a_sweep_finishes_and_a_rerun_does_nothing(spec, small_mnist, tmp_path, capsys):
    settings = sweep.Settings(experiment="life", directory=str(tmp_path / "kt"))
    result = sweep.run(spec, small_mnist, settings)
    assert not result.resumed and result.best_trial == "0"
    parent = runs.existing_parent(tmp_path / "kt" / sweep.project_name(
        spec, small_mnist, "life"))
    assert parent.run_id == result.parent_run_id
    (trial,) = runs.trial_runs(parent.run_id, status="FINISHED")
    assert trial.data.metrics[names.VAL_ACCURACY] == pytest.approx(result.best_val_accuracy)

    again = sweep.run(spec, small_mnist, settings)
    assert again.resumed and again.parent_run_id == result.parent_run_id
    assert "already finished: 1 trials" in capsys.readouterr().out
    assert len(runs.trial_runs(parent.run_id)) == 1



@pytest.mark.parametrize("left", ["RUNNING", "KILLED"])
def test_a_rerun_closes_a_finished_sweep_whose_run_was_left_open(
        spec, small_mnist, tmp_path, client, capsys, left):
    # SIGKILL (RUNNING) or SIGTERM (KILLED) between the last trial and closing the run:
    # waiting workers wait on the parent's FINISHED, so a re-run must close it.
    settings = sweep.Settings(experiment="life", directory=str(tmp_path / "kt"))
    result = sweep.run(spec, small_mnist, settings)
    client.update_run(result.parent_run_id, status=left)
    capsys.readouterr()

    sweep.run(spec, small_mnist, settings)
    assert f"FINISHED: it was left {left}" in capsys.readouterr().out
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.BEST_TRIAL] == "0"
    assert runs.sweep_finished("life", sweep.project_name(spec, small_mnist, "life"))


def hold_lock(spec, dataset, directory):
    project = sweep.project_name(spec, dataset, "life")
    lock = open(directory / f".{project}.lock", "w")  # noqa: SIM115 - held by the caller.
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def test_a_second_process_on_the_same_state_is_refused(spec, small_mnist, tmp_path):
    (tmp_path / "kt").mkdir()
    with hold_lock(spec, small_mnist, tmp_path / "kt"):
        with pytest.raises(SweepBusy, match="sweep tiny is already running from"):
            sweep.run(spec, small_mnist, sweep.Settings(experiment="life",
                                                        directory=str(tmp_path / "kt")))


def test_the_cli_prints_a_pipeline_error_as_one_line_with_its_status(
        runner, spec, small_mnist, mnist_path, tmp_path):
    (tmp_path / "kt").mkdir()
    data = ["--data", mnist_path, "--train-limit", "1000"]
    with hold_lock(spec, small_mnist, tmp_path / "kt"):
        result = runner.invoke(cli, ["sweep", spec.path, *data, "--experiment", "life",
                                     "--directory", str(tmp_path / "kt")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: sweep tiny is already running from")
    assert len(result.output.strip().splitlines()) == 1


def test_the_sweep_logs_into_the_experiment_mlflow_run_chose(spec, runner, mnist_path, tmp_path,
                                                            client, monkeypatch):
    chosen = client.create_experiment("chosen-by-mlflow-run")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", chosen)  # As `mlflow run --experiment-name`.
    result = runner.invoke(cli, ["sweep", str(tmp_path / "tiny.yaml"), "--data", mnist_path,
                                 "--train-limit", "1000", "--directory", str(tmp_path / "kt")])
    assert result.exit_code == 0, result.output
    assert "in experiment 'chosen-by-mlflow-run'" in result.output
    assert len(client.search_runs([chosen])) == 2  # The parent and its one trial.

    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "987654")
    gone = runner.invoke(cli, ["sweep", str(tmp_path / "tiny.yaml"), "--data", mnist_path])
    assert gone.exit_code == 2
    assert "Invalid value for MLFLOW_EXPERIMENT_ID: no experiment '987654'" in gone.output


def test_the_parent_run_holds_the_sweeps_system_metrics(spec, small_mnist, tmp_path, client,
                                                        monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    result = sweep.run(spec, small_mnist, sweep.Settings(experiment="system",
                                                         directory=str(tmp_path / "kt")))
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    samples = client.get_metric_history(result.parent_run_id, "system/cpu_utilization_percentage")
    assert len(samples) >= 2  # Sampled through the sweep, not once.
