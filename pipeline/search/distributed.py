"""Keras Tuner's chief/worker mode, with lost workers noticed and their trials re-issued.

Keras Tuner runs one oracle on a chief process (a gRPC server) and trials on
worker processes that ask it for work. It reads three environment variables:
`KERASTUNER_TUNER_ID` ("chief" or a worker's id), `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT`. `--role` and `--oracle` on the command line set them;
schedulers may set them directly instead.

Keras Tuner's own chief waits forever for a worker that died in a trial. Here each
worker sends a heartbeat, and the chief gives a silent worker's trial back to the
oracle (which hands it to the next worker that asks) or, when no worker is left,
ends it as failed, so a sweep always finishes. A worker that asks for a trial when
the budget is spent but other workers' trials are still running is told to wait
(Keras Tuner's IDLE) instead of to exit, so it is still there to take a trial back
from a worker that dies.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures

import grpc
from keras_tuner import synchronized
from keras_tuner.engine.trial import Trial, TrialStatus

from pipeline.errors import SweepStopped
from pipeline.search import internals

ENV_ID = "KERASTUNER_TUNER_ID"
ENV_IP = "KERASTUNER_ORACLE_IP"
ENV_PORT = "KERASTUNER_ORACLE_PORT"
HEARTBEAT_SECONDS = 2.0
WORKER_TIMEOUT = 60.0
CHIEF_TIMEOUT = 600.0
METADATA_KEY = "tuner-id"
IDLE_SECONDS = 1.0  # How long the chief holds a waiting worker's request.


def set_role(role, oracle_address, worker_id=None, chief_timeout=CHIEF_TIMEOUT):
    """Sets Keras Tuner's environment for this process (`role`: chief or worker).

    `chief_timeout` bounds how long a worker waits for the chief to answer (Keras
    Tuner waits an hour, which keeps a batch job alive long after its chief is gone).
    """
    host, _, port = oracle_address.rpartition(":")
    os.environ[ENV_IP] = host
    os.environ[ENV_PORT] = port
    os.environ[ENV_ID] = "chief" if role == "chief" else (worker_id or f"worker{os.getpid()}")
    internals.set_client_timeout(chief_timeout)


def role():
    """"chief", "worker", or None when Keras Tuner's distributed variables are unset."""
    if not internals.has_chief():
        return None
    return "chief" if internals.is_chief() else "worker"


def tuner_id():
    return os.environ.get(ENV_ID, "tuner0")


class Heartbeat:
    """A worker's background heartbeat to the chief, so the chief sees it is alive."""

    def __init__(self, interval=HEARTBEAT_SECONDS):
        address = f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}"
        self._stub = internals.service_grpc().OracleStub(grpc.insecure_channel(address))
        self._metadata = [(METADATA_KEY, tuner_id())]
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                self._stub.GetSpace(internals.service().GetSpaceRequest(),
                                    metadata=self._metadata, timeout=self._interval * 5)
            except grpc.RpcError:
                pass  # The chief is busy or gone; the trial's own calls will tell.

    def stop(self):
        self._stop.set()


class WatchingServicer(internals.OracleServicer):
    """Keras Tuner's servicer, noting when each worker was last heard from."""

    def __init__(self, oracle, idle_seconds=IDLE_SECONDS):
        super().__init__(oracle)
        self.last_seen = {}
        self.idle_seconds = idle_seconds

    def _seen(self, tuner_id):
        self.last_seen[tuner_id] = time.monotonic()

    def GetSpace(self, request, context):
        for key, value in context.invocation_metadata():
            if key == METADATA_KEY:
                self._seen(value)
        return super().GetSpace(request, context)

    def CreateTrial(self, request, context):
        self._seen(request.tuner_id)
        if _only_others_running(self.oracle, request.tuner_id):
            time.sleep(self.idle_seconds)  # Keras Tuner's worker asks again at once.
            trial = Trial(self.oracle.get_space(), status=TrialStatus.IDLE)
            return internals.service().CreateTrialResponse(trial=trial.to_proto())
        return super().CreateTrial(request, context)


@synchronized
def _only_others_running(oracle, tuner_id):
    """Whether the trial budget is spent while other workers' trials still run."""
    return (oracle.budget_spent() and tuner_id not in oracle.ongoing_trials
            and any(other != tuner_id for other in oracle.ongoing_trials))


@synchronized
def _give_back(oracle, tuner_id):
    """Takes a lost worker's trial back into the oracle's retry queue."""
    trial = oracle.ongoing_trials.pop(tuner_id, None)
    oracle.tuner_ids.discard(tuner_id)
    if trial is not None:
        internals.retry_queue(oracle).append(trial.trial_id)
        oracle.save()
    return trial


@synchronized
def _pop_orphan(oracle):
    """Takes a trial waiting for a retry out of the queue (None if there is none)."""
    queue = internals.retry_queue(oracle)
    if not queue:
        return None
    trial = oracle.trials[queue.pop()]
    oracle.ongoing_trials["lost"] = trial  # So that `end_trial` can close it.
    return trial


def _fail_orphans(oracle, reason):
    """Ends as FAILED the trials waiting for a retry that no worker is left to run."""
    while (trial := _pop_orphan(oracle)) is not None:
        trial.status = TrialStatus.FAILED
        trial.message = reason
        oracle.end_trial(trial)
        yield trial


def serve(oracle, on_lost=None, worker_timeout=WORKER_TIMEOUT, poll_seconds=1.0):
    """Runs the chief's oracle server until every trial is done (Keras Tuner's loop).

    Args:
        oracle: the sweep's oracle.
        on_lost: called as `on_lost(tuner_id, trial, re_issued)` for each trial of a
            worker that went silent for `worker_timeout` seconds.
        worker_timeout: seconds without a heartbeat before a worker counts as lost.
        poll_seconds: how often to check.
    """
    # Waiting workers each hold a thread for up to `IDLE_SECONDS`.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    servicer = WatchingServicer(oracle)
    internals.service_grpc().add_OracleServicer_to_server(servicer, server)
    server.add_insecure_port(f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}")
    server.start()
    try:
        while True:
            time.sleep(poll_seconds)
            now = time.monotonic()
            for worker, trial in list(oracle.ongoing_trials.items()):
                seen = servicer.last_seen.setdefault(worker, now)
                if now - seen > worker_timeout and _give_back(oracle, worker) and on_lost:
                    on_lost(worker, trial, True)
            if servicer.stop_triggered and not oracle.tuner_ids:
                for trial in _fail_orphans(oracle, "its worker was lost and no worker "
                                                   "was left to re-run it"):
                    if on_lost:
                        on_lost(None, trial, False)
            if getattr(oracle, "stopped", None):
                raise SweepStopped(oracle.stopped)
            if servicer.stop_triggered and internals.chief_may_exit(oracle):
                return
    finally:
        server.stop(grace=5)
