"""Shared fixtures: a seed, a private MLflow store and working directory, real MNIST."""

import os
import shutil
from pathlib import Path

import keras
import mlflow
import pytest
from click.testing import CliRunner

from pipeline import data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Each test runs in its own directory with its own SQLite tracking store."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An SQLite store with MLflow's tables, made once: making them takes seconds."""
    folder = tmp_path_factory.mktemp("empty-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def fresh_store(workdir, empty_store):
    """The test's own store (`workdir`'s), starting as a copy of the empty one.

    For fast tests that write to MLflow; tests that check that nothing was written
    leave it out.
    """
    shutil.copyfile(empty_store, workdir / "mlflow.db")
    return workdir / "mlflow.db"


@pytest.fixture(scope="session")
def mnist_path():
    """The real MNIST file that `.ci/run` points `MNIST_NPZ` at. Missing: fail, never skip."""
    path = os.environ.get(data.ENV_VAR)
    assert path, f"set {data.ENV_VAR} to a Keras-layout mnist.npz (see README)"
    assert Path(path).is_file(), f"{data.ENV_VAR}={path} does not exist"
    return path


@pytest.fixture(scope="session")
def small_mnist(mnist_path):
    """A real slice: 1,000 training images, the usual validation and test sets."""
    return data.load(mnist_path, validation_split=10_000, train_limit=1_000)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def client():
    return mlflow.MlflowClient()


@pytest.fixture
def tracking_server(workdir, monkeypatch):
    """A real `mlflow server` on a fresh PostgreSQL database; MLflow points at it."""
    from servers import MlflowServer, PostgresDatabase

    database = PostgresDatabase()
    server = MlflowServer(database.uri, workdir)
    try:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        mlflow.set_tracking_uri(server.url)
        yield server
    finally:
        server.stop()
        database.drop()


@pytest.fixture(autouse=True)
def no_sweep_left_behind():
    """Kills the sweep processes a test started and left running (it failed midway)."""
    yield
    from servers import SweepProcess

    for sweep in SweepProcess.started:
        if sweep.process.poll() is None:
            sweep.kill()
    SweepProcess.started.clear()
