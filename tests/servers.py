"""Real servers and real sweep processes for the tests: PostgreSQL-backed `mlflow server`.

PostgreSQL itself is Debian's, started by `.ci/run` on 127.0.0.1 (see README,
"Running at scale"); `MNIST_SWEEPS_TEST_POSTGRES` names an account that may
create databases. Each test gets a fresh database and its own `mlflow server`.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

POSTGRES_ENV = "MNIST_SWEEPS_TEST_POSTGRES"
POSTGRES_DEFAULT = "postgresql://mlflow:mlflow@127.0.0.1:5432/postgres"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout, what, interval=0.5):
    """Polls `condition` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class PostgresDatabase:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""

    def __init__(self):
        import psycopg

        self.admin = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
        self.name = f"mlflow_test_{uuid.uuid4().hex[:12]}"
        try:
            with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.OperationalError as e:
            raise AssertionError(
                f"PostgreSQL is not reachable at ${POSTGRES_ENV} ({e}); .ci/run installs and "
                "starts it: apt-get install postgresql && pg_ctlcluster 15 main start") from e
        base, _, _ = self.admin.rpartition("/")
        self.uri = f"{base}/{self.name}"

    def drop(self):
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend and served artifacts."""

    def __init__(self, backend_uri, workdir):
        self.backend_uri = backend_uri
        self.artifacts = Path(workdir) / "server-artifacts"
        self.log = Path(workdir) / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout=120):
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        wait_for(self._healthy, timeout, f"mlflow server (log: {self.log})")

    def _healthy(self):
        if self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _default_sigint():
    """A user's Ctrl-C reaches the sweep even when the tests run in the background
    (a non-interactive shell starts background jobs with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SweepProcess:
    """`python -m pipeline sweep ...` as its own process group, output to a file.

    Every one started is in `SweepProcess.started`; the `no_sweep_left_behind`
    fixture kills those still running when a test ends, failed or not.
    """

    started = []

    def __init__(self, args, workdir, env=None):
        SweepProcess.started.append(self)
        self.output = Path(workdir) / f"sweep-{uuid.uuid4().hex[:6]}.log"
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "sweep", *args], cwd=workdir,
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True, preexec_fn=_default_sigint)

    @property
    def text(self):
        return self.output.read_text()

    def wait(self, timeout=600):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"sweep still running after {timeout} s:\n{self.text[-3000:]}") from None

    def signal_group(self, signum):
        os.killpg(self.process.pid, signum)

    def kill(self):
        try:
            self.signal_group(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
