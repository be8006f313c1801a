"""`python -m pipeline ui`: MLflow's UI on the sweeps' store, opened on one sweep.

On a local store (SQLite by default) it starts `mlflow ui` on 127.0.0.1 only and
stops it, with the workers it started, on Ctrl-C or SIGTERM. On a tracking server
the UI is already there: it prints the link and starts nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.errors import NoSweep, UiFailed
from pipeline.tracking import names, views
from pipeline.tracking.server import retry

HOST = "127.0.0.1"
START_SECONDS = 120
STOP_SECONDS = 15
# The UI's job runner serves GenAI jobs only; it would add seconds to the start.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def latest_sweep(experiment, spec=None):
    """The newest parent run of `experiment` (of sweep `spec` when given)."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise NoSweep(f"no experiment {experiment!r} in this store yet: run a sweep "
                      "first, e.g. python -m pipeline sweep part1-narrow")
    query = f"tags.{names.SWEEP_KEY} != ''"
    if spec:
        query += f" and tags.{names.SWEEP} = '{spec}'"
    parents = retry(lambda: client.search_runs([found.experiment_id], query,
                                               order_by=["attributes.start_time DESC"],
                                               max_results=1))
    if not parents:
        what = f"of spec {spec!r} " if spec else ""
        raise NoSweep(f"no sweep {what}in experiment {experiment!r} yet: run one first, "
                      f"e.g. python -m pipeline sweep {spec or 'part1-narrow'}")
    return parents[0]


def open_sweep(experiment, spec, port, say):
    """Prints (with `say`) the link of the newest sweep's view, serving the UI first
    on a local store until Ctrl-C or SIGTERM."""
    parent = latest_sweep(experiment, spec)
    ensure_view(parent)
    uri = mlflow.get_tracking_uri()
    name = parent.data.tags.get(names.SWEEP, "?")

    def ready(address):
        say(f"{name}: {views.sweep_link(address, parent.info.experiment_id, parent.info.run_id)}")

    if is_server(uri):
        ready(views.ui_address(uri))
        return
    serve(uri, port, lambda address: (ready(address),
                                      say(f"serving MLflow's UI on {address}; Ctrl-C stops it")))
    say("stopped MLflow's UI")


def ensure_view(parent):
    """Saves the sweep's view if it has none (a sweep from before views were saved):
    its columns are then the params that vary between its trials."""
    experiment_id = parent.info.experiment_id
    tags = MlflowClient().get_experiment(experiment_id).tags
    if views.SHARED_VIEW_TAG + views.view_key(parent.info.run_id) in tags:
        return
    trials = MlflowClient().search_runs(
        [experiment_id], f"tags.`{names.PARENT_RUN}` = '{parent.info.run_id}'",
        max_results=1000)
    keys = [key for key in (*names.TRIAL_PARAMS, names.SCHEDULE, names.WARMUP_EPOCHS,
                            names.WEIGHT_DECAY, names.NESTEROV)
            if len({trial.data.params.get(key) for trial in trials}) > 1]
    views.save_view(experiment_id, parent.info.run_id, keys)


def serve(tracking_uri, port, on_ready):
    """Runs `mlflow ui` on `tracking_uri` at 127.0.0.1:`port` until a signal.

    Calls `on_ready(address)` once it answers. Returns when stopped (Ctrl-C,
    SIGTERM) and raises `UiFailed` if it exits or never answers.
    """
    address = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
               "--host", HOST, "--port", str(port), "--workers", "1"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env={**os.environ, **SERVER_ENV},
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            _wait_until_healthy(address, process, log)
            on_ready(address)
            process.wait()
            raise UiFailed(f"mlflow ui exited {process.returncode}: {_last_line(log)}")
        except KeyboardInterrupt:
            return
        finally:
            signal.signal(signal.SIGTERM, previous)
            stop(process)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _wait_until_healthy(address, process, log):
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UiFailed(f"mlflow ui exited {process.returncode}: {_last_line(log)}")
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UiFailed(f"mlflow ui did not answer at {address} within {START_SECONDS} s")


def _last_line(log):
    """The last line `mlflow ui` wrote (why it stopped)."""
    log.seek(0)
    text = log.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def stop(process):
    """Stops `mlflow ui` and the workers it started (its process group)."""
    for sig, grace in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass


def is_server(tracking_uri):
    return urllib.parse.urlsplit(tracking_uri or "").scheme in ("http", "https")
