"""The `mlflow run` path, as users run it: a real `mlflow run` subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def mlflow_run(workdir, entry_point, *args):
    env = dict(os.environ)
    # `--env-manager local` runs `python` from PATH: this test's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MNIST_SWEEPS_DIR"] = str(workdir / "kt_sweeps")
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point,
         "--env-manager", "local", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_sweep_entry_point_logs_where_experiment_name_says_under_the_project_run(
        workdir, client, mnist_path):
    mlflow_run(workdir, "sweep", "--experiment-name", "my-sweeps",
               "-P", "spec=part1-narrow", "-P", "max_trials=2", "-P", "epochs=1",
               "-P", "train_limit=500", "-P", f"data={mnist_path}")
    assert client.get_experiment_by_name("mnist-sweeps") is None  # Not the default's.
    experiment = client.get_experiment_by_name("my-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "trial_id" not in r.data.tags]
    children = [r for r in runs if "trial_id" in r.data.tags]
    assert parent.info.run_name == "part1-narrow" and parent.info.status == "FINISHED"
    assert parent.data.params["spec"] == "part1-narrow"  # logged by `mlflow run`
    assert parent.data.tags["sweep"] == "part1-narrow"
    assert len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.data.params["epochs"] == "1" for c in children)


def test_main_entry_point_runs_every_exercise_sweep(workdir, client, mnist_path):
    result = mlflow_run(workdir, "main", "-P", "max_trials=1", "-P", "epochs=1",
                        "-P", "train_limit=200", "-P", f"data={mnist_path}")
    experiment = client.get_experiment_by_name("mnist-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags["sweep"]: r for r in runs
               if "sweep" in r.data.tags and "trial_id" not in r.data.tags}
    assert set(parents) == {"part1-wide", "part1-narrow", "part2-narrow", "part2-medium",
                            "part2-wide", "activation", "part3"}
    assert all(p.info.status == "FINISHED" for p in parents.values())
    assert len([r for r in runs if "trial_id" in r.data.tags]) == 7
    # Without --experiment-name, `mlflow run` made its run in the Default experiment;
    # it points at the sweeps, which stay in mnist-sweeps.
    (launcher,) = client.search_runs(["0"])
    assert {name: launcher.data.tags[f"sweep_run_id.{name}"] for name in parents} == {
        name: p.info.run_id for name, p in parents.items()}
    assert "[part3] finished" in result.stdout
