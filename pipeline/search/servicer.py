"""The chief's gRPC servicer: Keras Tuner's, checking every request first.

Keras Tuner's oracle lock is never released when a call inside it raises, so a
request for an unknown trial, or metrics without the objective, would hang the
chief for good. Each request is checked before it reaches the oracle: a trial may be
updated or ended only by the worker it was handed to (the caller's id comes with
every call, `auth.WORKER_KEY`), with its own hyperparameters and an ended status;
the search space is the chief's alone. The servicer also notes when each worker
was last heard from, and tells a worker to wait (Keras Tuner's IDLE) rather than
to exit while other workers' trials still run.
"""

from __future__ import annotations

import math
import time

import grpc
from keras_tuner.engine.trial import Trial, TrialStatus

from pipeline.search import auth, internals

IDLE_SECONDS = 1.0  # How long the chief holds a waiting worker's request.
ENDED = {TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.INVALID}


class WatchingServicer(internals.OracleServicer):
    """Keras Tuner's servicer, checking each request and noting when each worker was
    last heard from."""

    def __init__(self, oracle, idle_seconds=IDLE_SECONDS, worker_timeout=60.0):
        super().__init__(oracle)
        self.last_seen = {}
        self.idle_seconds = idle_seconds
        self.worker_timeout = worker_timeout

    def _seen(self, context):
        worker = auth.caller(context)
        if not worker:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no worker id in the call")
        self.last_seen[worker] = time.monotonic()
        return worker

    def GetSpace(self, request, context):
        self._seen(context)
        return super().GetSpace(request, context)

    def UpdateSpace(self, request, context):
        self._seen(context)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "the search space is the chief's")

    def CreateTrial(self, request, context):
        worker = self._seen(context)
        if request.tuner_id != worker and not request.tuner_id.startswith(f"{worker}/"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"worker {worker!r} asked for a trial as {request.tuner_id!r}")
        if self.oracle.stopped and not _holds_a_trial(self.oracle, request.tuner_id):
            _forget(self.oracle, worker)  # Told: it exits, as every worker that asks.
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.oracle.stopped)
        _claim_restored_lease(self.oracle, worker, request.tuner_id)
        # A pack's first member waits like a worker alone; its further members are
        # answered at once (a pack of 32 would otherwise wait 32 times).
        first = request.tuner_id == worker or request.tuner_id.endswith("/0")
        if not first and not _within_share(self.oracle, worker, request.tuner_id,
                                           self._idle_workers(worker)):
            return self._idle(0)
        if not _only_others_running(self.oracle, request.tuner_id):
            response = super().CreateTrial(request, context)
            stopped = Trial.from_proto(response.trial).status == TrialStatus.STOPPED
            if not stopped:
                return response
            if not _waits_for_others(self.oracle, request.tuner_id):
                _forget(self.oracle, worker)  # It exits, with all of its packed ids.
                return response
        return self._idle(self.idle_seconds if first else 0)

    def _idle(self, seconds):
        """Keras Tuner's IDLE: the worker asks again at once, so the chief holds it."""
        time.sleep(seconds)
        trial = Trial(self.oracle.get_space(), status=TrialStatus.IDLE)
        return internals.service().CreateTrialResponse(trial=trial.to_proto())

    def _idle_workers(self, worker):
        """The workers heard from within the worker timeout, but for `worker`."""
        now = time.monotonic()
        return {w for w, seen in list(self.last_seen.items())
                if w != worker and now - seen < self.worker_timeout}

    def UpdateTrial(self, request, context):
        """A worker's metrics for its trial; with no metrics, a check that the trial is
        still the worker's (its lease: see `still_holds`)."""
        held = self._check_holder(request.trial_id, context)
        if not request.metrics:
            return internals.service().UpdateTrialResponse(trial=held.to_proto())
        missing = set(_objective_names(self.oracle)) - set(request.metrics)
        if missing or len(request.metrics) > 64 or any(len(k) > 128 for k in request.metrics):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"metrics must hold the objective ({', '.join(sorted(missing))} "
                          "missing) and at most 64 names")
        return super().UpdateTrial(request, context)

    def EndTrial(self, request, context):
        held = self._check_holder(request.trial.trial_id, context)
        try:
            trial = Trial.from_proto(request.trial)
        except Exception:  # noqa: BLE001 - any malformed trial is refused alike.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed trial")
        if trial.status not in ENDED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a trial ends {', '.join(sorted(ENDED))}, not {trial.status}")
        if trial.hyperparameters.values != held.hyperparameters.values:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "the trial's hyperparameters are not those handed out")
        # The oracle merges a trial's hyperparameters into its space: the ones it
        # handed out, never the definitions a request carries.
        trial.hyperparameters = held.hyperparameters
        return super().EndTrial(
            internals.service().EndTrialRequest(trial=trial.to_proto()), context)

    def GetTrial(self, request, context):
        self._seen(context)
        if request.trial_id not in self.oracle.trials:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no trial {request.trial_id!r}")
        return super().GetTrial(request, context)

    def GetBestTrials(self, request, context):
        self._seen(context)
        if not 0 < request.num_trials <= 1000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "num_trials must be 1-1000")
        return super().GetBestTrials(request, context)

    def _check_holder(self, trial_id, context):
        """The running trial `trial_id`; aborts unless it was handed to the caller."""
        worker = self._seen(context)
        holder, trial = _holder(self.oracle, trial_id)
        if holder is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no running trial {trial_id!r}")
        if holder != worker and not holder.startswith(f"{worker}/"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"trial {trial_id} is not {worker!r}'s (re-issued or never its)")
        return trial


def _objective_names(oracle):
    objective = oracle.objective
    if hasattr(objective, "name_to_direction"):  # A MultiObjective.
        return list(objective.name_to_direction)
    return [objective.name]


@internals.synchronized
def _holder(oracle, trial_id):
    """(tuner id, trial) of the running trial `trial_id`; (None, None) if none runs it.
    A restored lease whose trial is asked about is claimed: its worker is alive."""
    tuner_id, trial = next(((tid, trial) for tid, trial in oracle.ongoing_trials.items()
                            if trial.trial_id == trial_id), (None, None))
    oracle.restored_leases.discard(tuner_id)
    return tuner_id, trial


@internals.synchronized
def _claim_restored_lease(oracle, worker, tuner_id):
    """Hands `worker` a trial a restarted chief restored to it under another of its ids.

    Keras Tuner gives a tuner id back the trial it holds; a worker that asks under
    an id with none (a packed worker asks under `<id>/0`, ... whatever its lease's
    key) gets one of its restored leases moved to that id, so that no lease waits
    for an id that will never ask while the worker's heartbeat keeps it alive.
    """
    oracle.restored_leases.discard(tuner_id)
    if tuner_id in oracle.ongoing_trials:
        return
    key = next((k for k in sorted(oracle.restored_leases)
                if k == worker or k.startswith(f"{worker}/")), None)
    if key is not None:
        oracle.restored_leases.discard(key)
        oracle.ongoing_trials[tuner_id] = oracle.ongoing_trials.pop(key)
        oracle.tuner_ids.discard(key)
        oracle.tuner_ids.add(tuner_id)


@internals.synchronized
def _within_share(oracle, worker, tuner_id, others):
    """Whether `worker` may take one more trial into its pack: the trials not yet
    handed out are shared among it and the other live workers (`others`) that hold
    none, so that one worker of many GPUs never takes the whole budget at once."""
    if tuner_id in oracle.ongoing_trials or not oracle.max_trials:
        return True
    holders = [key.split("/")[0] for key in oracle.ongoing_trials]
    held = holders.count(worker)
    waiting = len(set(others) - set(holders))
    left = oracle.max_trials - len(oracle.trials) + len(internals.retry_queue(oracle))
    return held < math.ceil((left + held) / (1 + waiting))


@internals.synchronized
def _holds_a_trial(oracle, tuner_id):
    return tuner_id in oracle.ongoing_trials


@internals.synchronized
def _forget(oracle, worker):
    """Drops a worker that was told to stop, and the sub ids its packs ran under."""
    for tuner_id in list(oracle.tuner_ids):
        if tuner_id == worker or tuner_id.startswith(f"{worker}/"):
            oracle.tuner_ids.discard(tuner_id)


@internals.synchronized
def _only_others_running(oracle, tuner_id):
    """Whether the trial budget is spent while other workers' trials still run."""
    if not (oracle.budget_spent() and tuner_id not in oracle.ongoing_trials):
        return False
    return _waits_for_others(oracle, tuner_id)


@internals.synchronized
def _waits_for_others(oracle, tuner_id):
    """True, and `tuner_id` kept registered, when other workers' trials still run, so
    that this worker is told to wait (and can take over a lost worker's trial)."""
    if any(other != tuner_id for other in oracle.ongoing_trials):
        oracle.tuner_ids.add(tuner_id)
        return True
    return False
