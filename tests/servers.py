"""Real servers and real sweep processes for the tests: PostgreSQL-backed `mlflow server`.

PostgreSQL is a throwaway cluster that the test session makes itself (`PostgresCluster`,
started by conftest's `postgres_admin_uri` fixture the first time a test needs it), or
the server `MNIST_SWEEPS_TEST_POSTGRES` names: an account that may create databases.
Each test gets a fresh database and its own `mlflow server`.
"""

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

POSTGRES_ENV = "MNIST_SWEEPS_TEST_POSTGRES"
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")


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


def postgres_bin():
    """The newest Debian PostgreSQL's programs (/usr/lib/postgresql/N/bin), else PATH's."""
    versions = sorted(DEBIAN_POSTGRES.glob("*/bin/initdb"),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-3])])
    if versions:
        return versions[-1].parent
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).parent
    raise AssertionError("PostgreSQL's initdb is not installed: tests/run installs it "
                         "(apt-get install postgresql)")


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary directory, for one test session.

    It listens on 127.0.0.1 only, on a free port, with its Unix socket inside the
    directory, and every connection must authenticate (scram-sha-256) as `postgres`
    with a random password that only this process knows: it reaches initdb through a
    file (`--pwfile`, deleted at once) and the server's clients through their URI,
    never a command line. PostgreSQL refuses to run as root, so as root the cluster
    runs as the `postgres` system user (Debian's package makes it).
    """

    SUPERUSER = "postgres"

    def __init__(self):
        self.bin = postgres_bin()
        self.password = secrets.token_urlsafe(24)
        self.root = Path(tempfile.mkdtemp(prefix="mnist-sweeps-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = None
        self.owner = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                raise AssertionError("as root the tests' PostgreSQL runs as the `postgres` "
                                     "system user, and there is none: apt-get install "
                                     "postgresql makes it") from None
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    @property
    def admin_uri(self):
        return (f"postgresql://{self.SUPERUSER}:{self.password}@127.0.0.1:{self.port}"
                f"/postgres")

    def _run(self, program, *args, check=True):
        command = [str(self.bin / program), *args]
        if self.owner:
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(command, cwd=self.root, env={**env, "LC_ALL": "C"},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120)
        if check and result.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{program} failed (exit status {result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}{log}")
        return result

    def start(self, attempts=3):
        pwfile = self.root / "pwfile"
        with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(self.password + "\n")
        if self.owner:
            os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        try:
            self._run("initdb", "--pgdata", str(self.data), "--username", self.SUPERUSER,
                      "--pwfile", str(pwfile), "--auth", "scram-sha-256",
                      "--encoding", "UTF8", "--locale", "C", "--no-sync")
        finally:
            pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            # Throwaway data: no need to survive a crash, so no waiting on the disk.
            conf.write(f"\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        for attempt in range(attempts):  # A free port may be taken before the server binds.
            self.port = free_port()
            result = self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log),
                               "--options", f"-p {self.port}", "--wait", "--timeout", "60",
                               "start", check=attempt == attempts - 1)
            if result.returncode == 0:
                return self

    def running(self):
        return (self.data / "postmaster.pid").exists() and self._run(
            "pg_ctl", "--pgdata", str(self.data), "status", check=False).returncode == 0

    def stop(self):
        """Stops the server (if it runs) and removes the directory with its data."""
        try:
            if self.data.exists() and self.running():
                if self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait",
                             "--timeout", "30", "stop", check=False).returncode:
                    self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "immediate",
                              "--wait", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PostgresDatabase:
    """A fresh database on the tests' PostgreSQL server, dropped afterwards.

    `admin` is a URI of an account that may create databases (conftest's
    `postgres_admin_uri`).
    """

    def __init__(self, admin):
        import psycopg

        self.admin = admin
        self.name = f"mlflow_test_{uuid.uuid4().hex[:12]}"
        try:
            with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.OperationalError as e:
            where = f"${POSTGRES_ENV}" if os.environ.get(POSTGRES_ENV) else "the tests' cluster"
            raise AssertionError(f"PostgreSQL is not reachable at {where} ({e})") from e
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
                   "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # The backend URI holds the database password: through the environment (which
        # only this user can read), never the command line (which `ps` shows everyone).
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri,
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
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
    """A user's Ctrl-C reaches a sweep even when the tests run in the background (a
    non-interactive shell starts background jobs with SIGINT ignored, and an ignored
    signal stays ignored through exec): this process handles it again, so the
    sweeps it starts get the default. Not a `preexec_fn` per child: that forces a
    plain fork, whose gRPC post-fork handler can abort the child before it execs
    (grpc/grpc#43055); without one, Python spawns with vfork."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_default_sigint()


class SweepProcess:
    """`python -m pipeline sweep ...` (or another `command`) as its own process group,
    output to a file.

    Every one started is in `SweepProcess.started`; the `no_sweep_left_behind`
    fixture kills those still running when a test ends, failed or not.
    """

    started = []

    def __init__(self, args, workdir, env=None, command="sweep"):
        SweepProcess.started.append(self)
        self.output = Path(workdir) / f"sweep-{uuid.uuid4().hex[:6]}.log"
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", command, *args], cwd=workdir,
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True)  # No preexec_fn: see `_default_sigint`.

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
