"""The sweep's champion in MLflow's real Model Registry (SQLite store), and served by
MLflow's real `mlflow models serve` on 127.0.0.1."""

import json
import os
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
from servers import free_port, wait_for

from pipeline import sweep
from pipeline.spec import load as specfile
from pipeline.tracking import registry, runs

pytestmark = pytest.mark.usefixtures("fresh_store")

# Grid order: a 1-unit network first (it learns little), then a 64-unit one.
SPEC = """\
name: duo
description: a weak and a strong one-layer network
search_space: {hidden_layers: 1, units: {min: 1, max: 64, step: 63}, activation: sigmoid}
training: {epochs: 1, learning_rate: 0.5}
tuner: {algorithm: grid, max_trials: 2}
"""


@pytest.fixture
def duo(tmp_path):
    (tmp_path / "duo.yaml").write_text(SPEC)
    return specfile.load(tmp_path / "duo.yaml")


def champion(name):
    return mlflow.MlflowClient().get_model_version_by_alias(name, registry.ALIAS)


def test_the_best_trial_is_the_champion_and_the_alias_moves_with_a_better_one(
        duo, small_mnist, tmp_path, client, capsys):
    settings = sweep.Settings(experiment="reg", directory=str(tmp_path / "kt"))
    result = sweep.run(duo, small_mnist, settings)
    name = "reg.duo"
    assert result.best_trial == "1"  # The 64-unit network.
    assert f"champion: models:/{name}@champion (version 1, trial 1)" in capsys.readouterr().out
    best = runs.finished_run_of(result.parent_run_id, "1")
    assert champion(name).run_id == best
    model = mlflow.keras.load_model(f"models:/{name}@champion")
    assert model.count_params() == 50_890

    sweep.run(duo, small_mnist, settings)  # Nothing new: the registry is left as it is.
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    client.delete_registered_model(name)  # Say its registration had failed:
    sweep.run(duo, small_mnist, settings)  # the finished sweep's re-run registers it.
    assert champion(name).run_id == best

    # A resumed or extended sweep whose best changed moves the alias to a new version.
    other = runs.finished_run_of(result.parent_run_id, "0")
    assert registry.register_champion("reg", "duo", other) == (name, "2")
    assert (str(champion(name).version), champion(name).run_id) == ("2", other)
    assert registry.register_champion("reg", "duo", other) == (name, "2")  # Once.


def test_no_register_leaves_the_registry_alone(duo, small_mnist, tmp_path, client):
    settings = sweep.Settings(experiment="unreg", directory=str(tmp_path / "kt"),
                              register=False)
    assert sweep.run(duo.with_overrides(max_trials=1), small_mnist, settings).best_trial
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_champion(duo, small_mnist, tmp_path):
    sweep.run(duo, small_mnist, sweep.Settings(experiment="serve",
                                               directory=str(tmp_path / "kt")))
    uri = f"models:/serve.duo@{registry.ALIAS}"
    expected = mlflow.keras.load_model(uri).predict(small_mnist.x_test[:20], verbose=0)
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "-h", "127.0.0.1",
         "-p", str(port), "--env-manager", "local"],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ping():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            except OSError:
                assert server.poll() is None, log_path.read_text()[-2000:]
                return None

        wait_for(ping, 180, "mlflow models serve")
        body = json.dumps({"inputs": small_mnist.x_test[:20].tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = np.array(json.loads(reply.read())["predictions"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    np.testing.assert_allclose(answer, expected, atol=1e-5)
    # The plain {"inputs": [[...]]} body reaches Keras as the array it was built for.
    assert "doesn't match the expected structure" not in log_path.read_text()
    accuracy = np.mean(answer.argmax(1) == small_mnist.y_test[:20].argmax(1))
    assert accuracy >= 0.5  # The 64-unit champion, not the 1-unit network.
