"""`--workers N`: a chief and N workers of one sweep, as processes on this machine.

Each process is the same `python -m pipeline sweep` command with a role, exactly
what a cluster scheduler would start on separate nodes (see `deploy/`). The chief
listens on 127.0.0.1 only, and the processes share a random token made for this
run, passed in their environment. SIGTERM or Ctrl-C reaches each of them once, as
SIGTERM (each closes its runs KILLED), and the chief's exit status is returned: 0
when the sweep finished.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from pipeline.search import auth, distributed

# How long the chief may take to notice lost workers and finish after the last
# worker exits, beyond the worker timeout itself.
GRACE_SECONDS = 30


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(sweep_args, workers, port, threads):
    """The chief's and the workers' commands (each an argv list)."""
    base = [sys.executable, "-m", "pipeline", "sweep", *sweep_args,
            "--oracle", f"127.0.0.1:{port}"]
    chief = [*base, "--role", "chief"]
    return chief, [[*base, "--role", "worker", "--worker-id", f"worker{i}",
                    "--threads", str(threads)] for i in range(workers)]


def _create_store():
    """Creates the tracking store's tables once, here: a chief and workers that all
    find a fresh SQLite file would each try to create them, and all but one fail."""
    import mlflow

    mlflow.MlflowClient().search_experiments(max_results=1)


def _launcher_run(environ):
    """The chief keeps `mlflow run`'s run id (its parent run); workers do not."""
    return {"MLFLOW_RUN_ID": environ["MLFLOW_RUN_ID"]} if "MLFLOW_RUN_ID" in environ else {}


def _start(command, env):
    """A chief or worker process; it ignores the terminal's Ctrl-C, which reaches
    the whole process group: the launcher alone turns it into one SIGTERM each.

    The child inherits an ignored SIGINT through exec (not a `preexec_fn`: that
    forces a plain fork, whose gRPC post-fork handler can abort the child before
    it execs, grpc/grpc#43055; without one, Python spawns with vfork)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.Popen(command, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for_chief(chief, procs, worker_timeout):
    all_gone_at = None
    while chief.poll() is None:
        time.sleep(0.5)
        if all(p.poll() is not None for p in procs):
            all_gone_at = all_gone_at or time.monotonic()
            if time.monotonic() - all_gone_at > worker_timeout + GRACE_SECONDS:
                print("every worker exited before the sweep finished; stopping the "
                      "chief (run the same command again to resume)",
                      file=sys.stderr, flush=True)
                chief.terminate()


def run(sweep_args, workers, worker_timeout=distributed.WORKER_TIMEOUT):
    """Runs a chief and `workers` workers until the chief exits.

    Args:
        sweep_args: the `sweep` command's arguments, without any role options.
        workers: how many worker processes to start.
        worker_timeout: the chief's worker timeout (for the shutdown grace).

    Returns:
        The chief's exit status (non-zero if every worker exited before the sweep
        finished: the chief is then stopped, and the same command resumes it), or
        130 after Ctrl-C: each process was sent SIGTERM once and closed its runs.
    """
    _create_store()
    threads = max(1, (os.cpu_count() or 1) // workers)
    chief_cmd, worker_cmds = commands(sweep_args, workers, free_port(), threads)
    token = {auth.ENV_TOKEN: auth.new_token()}
    worker_env = {k: v for k, v in os.environ.items()
                  if k not in ("MLFLOW_RUN_ID", auth.ENV_TOKEN_FILE)}
    chief = _start(chief_cmd, {**worker_env, **token, **_launcher_run(os.environ)})
    procs = [_start(cmd, {**worker_env, **token}) for cmd in worker_cmds]
    everyone = [chief, *procs]
    stopping = []

    def stop(signum, frame):
        # Once: a second Ctrl-C must not interrupt the processes' own clean-up.
        if not stopping:
            stopping.append(signum)
            for process in everyone:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _wait_for_chief(chief, procs, worker_timeout)
        # The chief exits once no trial is left: workers only wait for its "stop".
        for process in procs:
            try:
                process.wait(timeout=GRACE_SECONDS if stopping else 10)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait()
        if stopping == [signal.SIGINT]:
            print("stopped by Ctrl-C: every trial run that was training ended KILLED; run "
                  "the same command again to resume", file=sys.stderr, flush=True)
            return 128 + signal.SIGINT
        return chief.returncode
    finally:
        if not stopping:  # Stopping: stay deaf to signals until the process exits.
            for sig, handler in previous.items():
                signal.signal(sig, handler)
