"""Shared fixtures: a seed, a private MLflow store and working directory, real MNIST,
and a PostgreSQL-backed tracking server on a throwaway cluster the session makes."""

import functools
import os
import shutil
import signal
from pathlib import Path

import keras
import mlflow
import pytest
from click.testing import CliRunner

from pipeline import data
from pipeline.errors import DataError

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


HOW_TO_POINT = f"export {data.ENV_VAR}=/path/to/mnist.npz (a Keras-layout MNIST file)"


def keras_cache():
    """Where `keras.datasets.mnist.load_data()` keeps its download: ~/.keras/datasets
    (`$KERAS_HOME/datasets`; /tmp/.keras/datasets where that cannot be written)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~") if os.access(os.path.expanduser("~"), os.W_OK) else "/tmp",
        ".keras")
    if not os.access(os.path.expanduser(home), os.W_OK):
        home = "/tmp/.keras"
    return Path(home).expanduser() / "datasets" / "mnist.npz"


@functools.cache
def find_mnist():
    """The real MNIST file: `$MNIST_NPZ`, else Keras' cache, else Keras' download.

    None of them: the session stops with one line saying how to point at a file.
    """
    path = os.environ.get(data.ENV_VAR)
    if path:
        if not Path(path).is_file():
            pytest.exit(f"{data.ENV_VAR}={path} does not exist; {HOW_TO_POINT}", returncode=4)
        return path
    cached = keras_cache()
    if not cached.is_file():
        try:
            data._download()
        except DataError as e:
            pytest.exit(f"no MNIST: {data.ENV_VAR} is not set, {cached} does not exist and "
                        f"{str(e).partition(';')[0]}; {HOW_TO_POINT}", returncode=4)
        if not cached.is_file():
            pytest.exit(f"no MNIST: Keras' download is not at {cached}; {HOW_TO_POINT}",
                        returncode=4)
    return str(cached)


def pytest_collection_modifyitems(items):
    """Finds MNIST before the first test and sets `MNIST_NPZ` to it, so that the session
    runs as if it had been given; downloads only when a collected test needs it."""
    needed = any("mnist_path" in getattr(item, "fixturenames", ()) for item in items)
    if needed or os.environ.get(data.ENV_VAR) or keras_cache().is_file():
        os.environ[data.ENV_VAR] = find_mnist()


@pytest.fixture(scope="session")
def mnist_path():
    """The real MNIST file (see `find_mnist`). Missing: the session stops, never skips."""
    os.environ[data.ENV_VAR] = path = find_mnist()
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


@pytest.fixture(scope="session")
def postgres_admin_uri():
    """A PostgreSQL account that may create databases, as a URI (password included).

    `$MNIST_SWEEPS_TEST_POSTGRES` if set; else a throwaway cluster of this session's
    own, in a temporary directory, started the first time a test asks for it and
    stopped and removed when the session ends.
    """
    from servers import POSTGRES_ENV, PostgresCluster

    external = os.environ.get(POSTGRES_ENV)
    if external:
        yield external
        return
    cluster = PostgresCluster()
    # SIGTERM (a CI job's timeout) ends the session as Ctrl-C does, through this
    # teardown, instead of leaving the cluster running.
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield cluster.start().admin_uri
    finally:
        try:
            cluster.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def tracking_server(workdir, monkeypatch, postgres_admin_uri):
    """A real `mlflow server` on a fresh PostgreSQL database; MLflow points at it."""
    from servers import MlflowServer, PostgresDatabase

    database = PostgresDatabase(postgres_admin_uri)
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
