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

Every call carries the sweep's shared token (`auth`), and the chief checks each
request before it reaches the oracle (`servicer`). A restarted chief gives live
workers back the trials they were running (`restore_leases`), and a worker ends a
trial's run FINISHED only while the trial is still its own (`still_holds`).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures

import grpc
from keras_tuner.engine.trial import TrialStatus

from pipeline.errors import BadWorkerId, InputError
from pipeline.search import auth, internals, interrupts
from pipeline.search.roles import ENV_ID, ENV_IP, ENV_PORT, check_worker_id
from pipeline.search.servicer import IDLE_SECONDS, WatchingServicer

HEARTBEAT_SECONDS = 2.0
WORKER_TIMEOUT = 60.0
CHIEF_TIMEOUT = 600.0
MAX_CONCURRENT_CALLS = 64  # Beyond this the server answers RESOURCE_EXHAUSTED.
SERVER_THREADS = 32  # Waiting workers each hold a thread for up to `IDLE_SECONDS`.
LOST = "(lost)"  # The oracle's key for a lost trial being ended: never a worker's id.


def set_role(role, oracle_address, worker_id=None, chief_timeout=CHIEF_TIMEOUT, token=None,
             id_source=BadWorkerId.param):
    """Sets Keras Tuner's environment for this process (`role`: chief or worker).

    `chief_timeout` bounds how long a worker waits for the chief to answer (Keras
    Tuner waits an hour, which keeps a batch job alive long after its chief is gone).
    `token` is the sweep's shared secret (`auth`); it is kept in the environment,
    never on a command line. `id_source` names where `worker_id` came from, for the
    error when it is not a valid id.

    Raises:
        BadWorkerId: `worker_id` is not 1-63 letters, digits, ".", "_" or "-", or is
            reserved.
        TokenMissing, InputError: no token, or unreadable TLS files.
    """
    worker_id = worker_id or f"worker{os.getpid()}"
    if role == "worker":
        check_worker_id(worker_id, id_source)
    token = auth.require(token or os.environ.get(auth.ENV_TOKEN), role)
    auth.check_tls(role)
    host, _, port = oracle_address.rpartition(":")
    os.environ[ENV_IP] = host
    os.environ[ENV_PORT] = port
    os.environ[ENV_ID] = "chief" if role == "chief" else worker_id
    os.environ[auth.ENV_TOKEN] = token
    internals.set_client_timeout(chief_timeout)


def role():
    """"chief", "worker", or None when Keras Tuner's distributed variables are unset."""
    if not internals.has_chief():
        return None
    return "chief" if internals.is_chief() else "worker"


def tuner_id():
    return os.environ.get(ENV_ID, "tuner0")


def _channel(over=None):
    return auth.channel(f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}",
                        os.environ[auth.ENV_TOKEN], tuner_id(),
                        interceptors=[WaitForChief(over)])


class WaitForChief(grpc.UnaryUnaryClientInterceptor):
    """Calls the chief again while it is away (UNAVAILABLE), up to the chief timeout.

    gRPC's `wait_for_ready` waits for a chief that is not there when a call starts
    (and cannot be told to stop), but a call in flight when the chief dies fails at
    once: a worker would give up within seconds on a chief that a scheduler
    restarts. Here every attempt fails fast and this loop waits. Each retry waits
    `RETRY_SECONDS`; the call's own timeout still bounds each attempt. `over`, when
    given, says whether the sweep has finished (its chief then exited for good, and
    no chief will come back): checked every `CHECK_SECONDS` while waiting.
    """

    RETRY_SECONDS = 1.0
    CHECK_SECONDS = 5.0

    def __init__(self, over=None):
        self._over = over

    def intercept_unary_unary(self, continuation, client_call_details, request):
        deadline = time.monotonic() + internals.client_timeout()
        checked = time.monotonic()
        d = client_call_details
        # Fail fast while the chief is away: this loop does the waiting, so that it
        # can stop once the sweep is over.
        details = auth.CallDetails(d.method, d.timeout, d.metadata, d.credentials, False,
                                   d.compression)
        while True:
            with interrupts.interruptible():
                outcome = continuation(details, request)
            if (outcome.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() + self.RETRY_SECONDS > deadline):
                return outcome
            if self._over and time.monotonic() - checked > self.CHECK_SECONDS:
                checked = time.monotonic()
                if self._over():
                    return outcome
            with interrupts.interruptible():
                time.sleep(self.RETRY_SECONDS)


def authenticate(oracle_client, over=None):
    """Makes a worker's Keras Tuner client send the token and its id with every call,
    and wait for a chief that is away unless `over()` says the sweep finished."""
    internals.set_client_stub(oracle_client,
                              internals.service_grpc().OracleStub(_channel(over)))


class Heartbeat:
    """A worker's background heartbeat to the chief, so the chief sees it is alive."""

    def __init__(self, interval=HEARTBEAT_SECONDS):
        self._stub = internals.service_grpc().OracleStub(_channel())
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                self._stub.GetSpace(internals.service().GetSpaceRequest(),
                                    timeout=self._interval * 5)
            except grpc.RpcError:
                pass  # The chief is busy or gone; the trial's own calls will tell.

    def stop(self):
        self._stop.set()


@internals.synchronized
def restore_leases(oracle, running):
    """A restarted chief gives each worker back the trial it was running.

    Keras Tuner's reload puts every trial that was running into the retry queue,
    where the next worker to ask would train it a second time, while the worker
    that had it may well be alive and still training. Each (worker, trial id) in
    `running` (from the trial runs left RUNNING in MLflow, or FINISHED but not yet
    reported) is handed back to its worker instead, as a lease: if the worker calls
    within the worker timeout, it finishes its trial; if not, the trial is given
    back as for any lost worker.

    A lease is kept under the worker's id or one of its sub ids, which need not be
    the id the worker asks under next (a packed worker restarted with its chief
    asks under `<id>/0`, `<id>/1`, ...): the servicer hands a restored lease to
    whichever of the worker's ids asks first (`oracle.restored_leases`).

    Returns:
        The (worker, trial id) pairs restored.
    """
    queue = internals.retry_queue(oracle)
    restored = []
    for worker, trial_id in running:
        if trial_id in queue:
            queue.remove(trial_id)
            key = next(k for k in (worker, *(f"{worker}/{i}" for i in range(len(running))))
                       if k not in oracle.ongoing_trials)
            oracle.ongoing_trials[key] = oracle.trials[trial_id]
            oracle.tuner_ids.add(key)
            oracle.restored_leases.add(key)
            restored.append((worker, trial_id))
    return restored


def still_holds(oracle_client, trial_id):
    """Whether the chief still has `trial_id` handed to this worker (its lease).

    Waits for a chief that restarts (as every worker call does, up to the chief
    timeout); False when the trial was re-issued or is unknown to the chief.
    """
    try:
        internals.client_stub(oracle_client).UpdateTrial(
            internals.service().UpdateTrialRequest(trial_id=trial_id),
            wait_for_ready=True, timeout=internals.client_timeout())
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            return False
        raise
    return True


@internals.synchronized
def _take_back(oracle, tuner_id):
    """Takes a lost worker's trial (None if it had none) and forgets the worker."""
    oracle.tuner_ids.discard(tuner_id)
    return oracle.ongoing_trials.pop(tuner_id, None)


@internals.synchronized
def _queue_retry(oracle, trial):
    """Puts a taken-back trial in the oracle's retry queue, for the next worker."""
    internals.retry_queue(oracle).append(trial.trial_id)
    oracle.save()


@internals.synchronized
def _pop_orphan(oracle):
    """Takes a trial waiting for a retry out of the queue (None if there is none)."""
    queue = internals.retry_queue(oracle)
    if not queue:
        return None
    trial = oracle.trials[queue.pop()]
    oracle.ongoing_trials[LOST] = trial  # So that `end_trial` can close it.
    return trial


def _fail_orphans(oracle, reason):
    """Ends as FAILED the trials waiting for a retry that no worker is left to run."""
    while (trial := _pop_orphan(oracle)) is not None:
        trial.status = TrialStatus.FAILED
        trial.message = reason
        oracle.end_trial(trial)
        yield trial


def serve(oracle, on_lost=None, worker_timeout=WORKER_TIMEOUT, poll_seconds=1.0,
          idle_seconds=IDLE_SECONDS):
    """Runs the chief's oracle server until every trial is done (Keras Tuner's loop).

    Args:
        oracle: the sweep's oracle.
        on_lost: called as `on_lost(tuner_id, trial, re_issued)` for each trial of a
            worker that went silent for `worker_timeout` seconds.
        worker_timeout: seconds without a call before a worker counts as lost.
        poll_seconds: how often to check.
        idle_seconds: how long a worker told to wait is held before the answer.
    """
    servicer = WatchingServicer(oracle, idle_seconds, worker_timeout)
    server = _start_server(servicer)
    try:
        while True:
            with interrupts.interruptible():
                time.sleep(poll_seconds)
            _drop_silent(oracle, servicer.last_seen, worker_timeout, on_lost)
            # Over once a worker was told so, once every trial was handed out (a worker
            # that ended the last trial and died before asking again is never told,
            # and must not keep the chief waiting), or once the oracle stopped the
            # sweep (each worker is told when it next asks, then the chief raises).
            told = servicer.stop_triggered or oracle.stopped
            if told and not oracle.tuner_ids:
                for trial in _fail_orphans(oracle, "its worker was lost and no worker "
                                                   "was left to re-run it"):
                    if on_lost:
                        on_lost(None, trial, False)
            if (told or oracle.budget_spent()) and internals.chief_may_exit(oracle):
                oracle.check_stopped()
                return
    finally:
        server.stop(grace=5)


def _start_server(servicer):
    """The oracle's gRPC server: token checked, bounded, alone on its port."""
    address = f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                         interceptors=[auth.TokenCheck(os.environ[auth.ENV_TOKEN])],
                         maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS,
                         options=[("grpc.so_reuseport", 0)])
    internals.service_grpc().add_OracleServicer_to_server(servicer, server)
    tls = auth.server_credentials()
    try:
        bound = (server.add_secure_port(address, tls) if tls
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if not bound:
        raise InputError(f"--oracle: cannot listen on {address}: the port is taken (another "
                         "chief?) or the address is not this machine's")
    server.start()
    return server


def _drop_silent(oracle, last_seen, worker_timeout, on_lost):
    """Gives back the trials of workers silent for `worker_timeout`, and forgets those
    workers, so that a dead worker never keeps the chief waiting."""
    now = time.monotonic()
    for worker in list(oracle.ongoing_trials) + list(oracle.tuner_ids):
        holder = worker.split("/")[0]  # A packed worker's trials run under sub ids.
        seen = last_seen.setdefault(holder, now)
        if now - seen > worker_timeout:
            trial = _take_back(oracle, worker)
            if trial is None:
                continue
            # Told first (its run ends FAILED), then queued: the next worker must not
            # find the lost run still RUNNING and end it KILLED as its own leftover.
            try:
                if on_lost:
                    on_lost(worker, trial, True)
            finally:
                _queue_retry(oracle, trial)
