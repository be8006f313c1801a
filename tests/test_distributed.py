"""Keras Tuner's chief/worker mode: a real oracle served over real gRPC on 127.0.0.1.

Workers are played by this test through Keras Tuner's own stub and messages, so
each step (a trial handed out, a worker going silent, the budget running out) is
under the test's control; nothing of Keras Tuner or gRPC is mocked.
"""

import dataclasses
import os
import socket
import threading
import time
import types
from concurrent import futures

import grpc
import keras_tuner
import pytest
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.src.distribute import oracle_client

from pipeline import errors
from pipeline import space as space_module
from pipeline.errors import InputError, SweepStopped
from pipeline.search import auth, distributed, internals
from pipeline.search.local_cluster import free_port
from pipeline.search.oracles import make_oracle
from pipeline.spec import load as specfile

TOKEN = "a-test-token-of-the-sweep-0123456789"
WORKER_TIMEOUT = 1.0
POLL_SECONDS = 0.1
RPC_TIMEOUT = 10  # Seconds; an IDLE answer alone takes distributed.IDLE_SECONDS.

# The only configuration of this space is drawn by the first trial; the next draw
# finds the space spent before the trial budget is.
ONE_CONFIGURATION = """\
name: one-config
description: a space of a single configuration
search_space:
  hidden_layers: {min: 1, max: 1}
  units: {min: 8, max: 8}
  activation: relu
training: {epochs: 1}
tuner: {algorithm: random, max_trials: 3, seed: 7}
"""


def wait_for(condition, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def real_oracle(tmp_path, spec):
    """The sweep's oracle, set up as `SweepTuner` would: project directory, space."""
    space = space_module.build(spec)
    oracle = make_oracle(spec, space)
    oracle.verbose = 0
    oracle._set_project_dir(str(tmp_path / "kt"), "project")  # Where `save()` writes.
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    oracle.update_space(hp)
    return oracle


class Chief:
    """`distributed.serve` on a free port in a thread, and the workers' side of it."""

    def __init__(self, oracle, monkeypatch):
        self.oracle = oracle
        self.monkeypatch = monkeypatch
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        distributed.set_role("chief", self.address)
        self.lost = []  # (worker, trial id, re-issued), as `on_lost` reported them.
        self.lost_at = None
        self.error = None
        self.heartbeats = {}
        self.channels = {}
        self.channel = auth.channel(self.address, TOKEN, "test")
        self.thread = threading.Thread(target=self._serve, daemon=True, name="chief")
        self.thread.start()
        try:
            # Connect once the server listens: gRPC waits 1 s to retry a refused connection.
            wait_for(lambda: listening(port) or not self.thread.is_alive(), what="the server")
            assert self.thread.is_alive(), f"serve() did not start: {self.error!r}"
            grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _serve(self):
        try:
            distributed.serve(self.oracle, on_lost=self._on_lost,
                              worker_timeout=WORKER_TIMEOUT, poll_seconds=POLL_SECONDS)
        except BaseException as e:  # Reported by `wait_until_served`.
            self.error = e

    def _on_lost(self, worker, trial, re_issued):
        self.lost_at = self.lost_at or time.monotonic()
        self.lost.append((worker, trial.trial_id, re_issued))

    # -- A worker's calls ------------------------------------------------------

    def stub(self, worker, token=TOKEN):
        """A stub whose calls carry `token` and `worker`'s id, as a worker's client's do."""
        if (worker, token) not in self.channels:
            self.channels[worker, token] = auth.channel(self.address, token, worker)
        return internals.service_grpc().OracleStub(self.channels[worker, token])

    def create_trial(self, worker, tuner_id=None):
        response = self.stub(worker).CreateTrial(
            internals.service().CreateTrialRequest(tuner_id=tuner_id or worker),
            wait_for_ready=True, timeout=RPC_TIMEOUT)
        return Trial.from_proto(response.trial)

    def finish(self, trial, worker, accuracy=0.5):
        """Reports the trial's objective and ends it COMPLETED, as a worker's tuner does."""
        service = internals.service()
        self.stub(worker).UpdateTrial(
            service.UpdateTrialRequest(trial_id=trial.trial_id,
                                       metrics={"val_accuracy": accuracy}, step=0),
            timeout=RPC_TIMEOUT)
        trial.status = TrialStatus.COMPLETED
        self.stub(worker).EndTrial(service.EndTrialRequest(trial=trial.to_proto()),
                                   timeout=RPC_TIMEOUT)

    def keep_alive(self, worker):
        """Starts `worker`'s real heartbeat (it reads its id from the environment)."""
        self.monkeypatch.setenv(distributed.ENV_ID, worker)
        self.heartbeats[worker] = distributed.Heartbeat(interval=0.1)

    def go_silent(self, worker):
        heartbeat = self.heartbeats.pop(worker)
        heartbeat.stop()
        heartbeat._thread.join(timeout=5)

    # -- The chief -------------------------------------------------------------

    def wait_until_served(self, timeout=5.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"serve() still running after {timeout} s"
        assert self.error is None, f"serve() raised {self.error!r}"

    def stop(self):
        for worker in list(self.heartbeats):
            self.go_silent(worker)
        if self.thread.is_alive():
            self.oracle.stopped = "the test is over"  # serve() raises SweepStopped.
            self.thread.join(timeout=10)
        for channel in [self.channel, *self.channels.values()]:
            channel.close()
        assert not self.thread.is_alive(), "serve() did not stop"


@pytest.fixture
def chief_env(monkeypatch):
    """Keras Tuner's variables and the worker's client timeout, restored afterwards
    (`set_role` writes `os.environ` itself: setenv first records what to restore)."""
    for name in (distributed.ENV_ID, distributed.ENV_IP, distributed.ENV_PORT):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setattr(oracle_client, "TIMEOUT", oracle_client.TIMEOUT)
    monkeypatch.setenv(auth.ENV_TOKEN, TOKEN)
    return monkeypatch


@pytest.fixture
def serve_oracle(tmp_path, chief_env):
    """Starts `distributed.serve` on a real oracle of `max_trials` trials."""
    chiefs = []

    def start(max_trials=2, spec=None):
        spec = spec or specfile.load("part2-narrow").with_overrides(max_trials=max_trials)
        chief = Chief(real_oracle(tmp_path, spec), chief_env)
        chief.oracle_spec = spec
        chiefs.append(chief)
        return chief

    yield start
    for chief in chiefs:
        chief.stop()


# -- Roles ---------------------------------------------------------------------

def test_set_role_worker_sets_keras_tuners_environment_and_client_timeout(chief_env):
    assert oracle_client.TIMEOUT != 7
    distributed.set_role("worker", "127.0.0.1:40123", "w1", chief_timeout=7)
    assert os.environ[distributed.ENV_ID] == "w1"
    assert os.environ[distributed.ENV_IP] == "127.0.0.1"
    assert os.environ[distributed.ENV_PORT] == "40123"
    assert distributed.role() == "worker"
    assert distributed.tuner_id() == "w1"
    assert oracle_client.TIMEOUT == 7  # Every worker call to the chief waits 7 s at most.


def test_set_role_worker_without_an_id_gets_one_of_its_own(chief_env):
    distributed.set_role("worker", "10.0.0.5:8000")
    assert distributed.role() == "worker"
    assert distributed.tuner_id() == f"worker{os.getpid()}"
    assert distributed.tuner_id() != "chief"


def test_set_role_refuses_a_chief_or_worker_without_a_token(chief_env):
    chief_env.delenv(auth.ENV_TOKEN)
    for role in ("chief", "worker"):
        with pytest.raises(errors.TokenMissing, match=f"--role {role} needs the oracle's "
                                                    "shared token") as error:
            distributed.set_role(role, "127.0.0.1:40125", "w1")
        assert error.value.param == auth.ENV_TOKEN


def test_set_role_chief(chief_env):
    distributed.set_role("chief", "127.0.0.1:40124", "ignored")
    assert distributed.role() == "chief"
    assert distributed.tuner_id() == "chief"
    assert internals.is_chief()


def test_no_role_when_keras_tuners_variables_are_unset(chief_env):
    assert distributed.role() is None
    assert distributed.tuner_id() == "tuner0"  # Keras Tuner's own single-process id.


# -- The chief's server ----------------------------------------------------------

def test_a_silent_workers_trial_goes_to_the_next_worker(serve_oracle):
    chief = serve_oracle(max_trials=2)
    start = time.monotonic()
    first = chief.create_trial("w1")  # w1 has no heartbeat: it dies in its trial.
    assert first.status == TrialStatus.RUNNING
    chief.keep_alive("w2")

    wait_for(lambda: chief.lost, what="w1 to count as lost")
    assert chief.lost == [("w1", first.trial_id, True)]
    assert chief.lost_at - start >= WORKER_TIMEOUT  # Not before its timeout.
    assert "w1" not in chief.oracle.tuner_ids
    assert "w1" not in chief.oracle.ongoing_trials
    assert internals.retry_queue(chief.oracle) == [first.trial_id]

    again = chief.create_trial("w2")
    assert again.status == TrialStatus.RUNNING
    assert again.trial_id == first.trial_id  # The same trial, not a new one.
    assert again.hyperparameters.values == first.hyperparameters.values
    assert len(chief.oracle.trials) == 1  # The budget was not spent on a new draw.

    # w2's heartbeat keeps it (and its trial) alive well past the timeout.
    time.sleep(WORKER_TIMEOUT * 1.5)
    assert len(chief.lost) == 1
    assert chief.oracle.ongoing_trials["w2"].trial_id == first.trial_id


def test_a_lost_trials_run_is_failed_before_the_trial_is_offered_again(tmp_path,
                                                                       chief_env):
    # The next worker settles a run it finds RUNNING as its own leftover (KILLED): the
    # lost worker's run must have ended FAILED, with its reason, before it can look.
    oracle = real_oracle(tmp_path, specfile.load("part2-narrow"))
    lost = oracle.create_trial("w1")
    queued_when_told = []

    def on_lost(worker, trial, re_issued):
        queued_when_told.append(list(internals.retry_queue(oracle)))

    distributed._drop_silent(oracle, {"w1": time.monotonic() - 60}, 5, on_lost)
    assert queued_when_told == [[]]  # Told while no worker could take it yet.
    assert internals.retry_queue(oracle) == [lost.trial_id]  # Then offered again.
    assert "w1" not in oracle.ongoing_trials and "w1" not in oracle.tuner_ids


def test_a_worker_waits_while_others_run_the_last_trials(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    first, second = chief.create_trial("w1"), chief.create_trial("w2")
    assert (first.trial_id, second.trial_id) == ("0", "1")  # The budget is spent.

    chief.finish(first, "w1")
    waiting = chief.create_trial("w1")  # Only w2's trial is left: w1 must stay.
    assert waiting.status == TrialStatus.IDLE
    assert "w1" in chief.oracle.tuner_ids
    latecomer = chief.create_trial("w3")
    assert latecomer.status == TrialStatus.IDLE
    assert chief.thread.is_alive()

    # w2 dies in the last trial: the worker that waited takes it over.
    chief.go_silent("w2")
    wait_for(lambda: chief.lost, what="w2 to count as lost")
    assert chief.lost == [("w2", second.trial_id, True)]
    retried = chief.create_trial("w1")
    assert retried.status == TrialStatus.RUNNING
    assert retried.trial_id == second.trial_id

    chief.finish(retried, "w1")
    # w3 first: a worker only ever told IDLE is not one the chief waits for.
    assert chief.create_trial("w3").status == TrialStatus.STOPPED
    assert chief.create_trial("w1").status == TrialStatus.STOPPED
    chief.wait_until_served()
    assert [chief.oracle.trials[t].status for t in ("0", "1")] == ["COMPLETED"] * 2


def test_the_chief_stops_every_worker_then_returns_when_all_trials_ended(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    first, second = chief.create_trial("w1"), chief.create_trial("w2")
    chief.finish(first, "w1", 0.4)
    chief.finish(second, "w2", 0.6)

    assert chief.create_trial("w1").status == TrialStatus.STOPPED
    time.sleep(POLL_SECONDS * 5)
    assert chief.thread.is_alive()  # w2 has not been told to stop yet.
    assert chief.create_trial("w2").status == TrialStatus.STOPPED
    chief.wait_until_served()

    assert chief.lost == []
    assert chief.oracle.end_order == ["0", "1"]
    assert chief.oracle.get_best_trials(1)[0].trial_id == "1"
    # The server is gone with serve(). A call that met its shutdown half-way ends
    # CANCELLED; the next one finds no server.
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as error:
            chief.stub("w1").GetSpace(internals.service().GetSpaceRequest(), timeout=1)
        if error.value.code() != grpc.StatusCode.CANCELLED:
            break
        time.sleep(0.5)
    assert error.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_lost_trial_fails_when_no_worker_is_left_to_run_it(tmp_path, serve_oracle):
    path = tmp_path / "one-config.yaml"
    path.write_text(ONE_CONFIGURATION)
    chief = serve_oracle(spec=specfile.load(path))
    only = chief.create_trial("w1")  # w1 has no heartbeat: it dies in its trial.
    assert only.status == TrialStatus.RUNNING
    # The space is spent (not the budget of 3), but w1's trial still runs: w2 waits,
    # in case w1 dies.
    chief.keep_alive("w2")
    assert chief.create_trial("w2").status == TrialStatus.IDLE
    assert "w2" in chief.oracle.tuner_ids
    chief.go_silent("w2")  # And then w2 dies too, holding no trial.

    chief.wait_until_served()
    assert chief.lost == [("w1", only.trial_id, True), (None, only.trial_id, False)]
    trial = chief.oracle.trials[only.trial_id]
    assert trial.status == TrialStatus.FAILED
    assert "no worker was left" in trial.message
    assert chief.oracle.ongoing_trials == {}


def test_a_waiting_worker_reruns_a_lost_trial_when_the_space_is_spent(tmp_path,
                                                                     serve_oracle):
    path = tmp_path / "one-config.yaml"
    path.write_text(ONE_CONFIGURATION)
    chief = serve_oracle(spec=specfile.load(path))
    only = chief.create_trial("w1")  # w1 has no heartbeat: it dies in its trial.
    chief.keep_alive("w2")
    assert chief.create_trial("w2").status == TrialStatus.IDLE  # Not STOPPED: w1 runs.

    wait_for(lambda: chief.lost, what="w1 to count as lost")
    retried = chief.create_trial("w2")
    assert (retried.status, retried.trial_id) == (TrialStatus.RUNNING, only.trial_id)
    chief.finish(retried, "w2")
    assert chief.create_trial("w2").status == TrialStatus.STOPPED
    chief.wait_until_served()
    assert chief.oracle.trials[only.trial_id].status == TrialStatus.COMPLETED


def test_a_worker_that_dies_between_trials_does_not_keep_the_chief_waiting(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    first, second = chief.create_trial("w1"), chief.create_trial("w2")
    chief.finish(second, "w2")
    chief.go_silent("w2")  # w2 dies before it asks for another trial.
    assert "w2" in chief.oracle.tuner_ids
    chief.finish(first, "w1")
    assert chief.create_trial("w1").status == TrialStatus.STOPPED
    chief.wait_until_served(timeout=WORKER_TIMEOUT + 5)  # Not forever.
    assert chief.lost == []  # It held no trial: nothing to re-issue.
    assert "w2" not in chief.oracle.tuner_ids


def test_serve_raises_when_the_oracle_stops_the_sweep(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.oracle.stopped = "stopped after 3 failed trials in a row"
    chief.thread.join(timeout=5)
    assert not chief.thread.is_alive()
    assert isinstance(chief.error, SweepStopped)
    assert "3 failed trials" in str(chief.error)


def test_packed_workers_share_the_budget_among_the_workers_that_wait(serve_oracle):
    # Four GPU workers packing up to 8 trials each, 20 trials: the first to ask must
    # not take 8 (or all 20) while the others have nothing to train.
    chief = serve_oracle(max_trials=20)
    workers = ["w1", "w2", "w3", "w4"]
    for worker in workers:
        chief.stub(worker).GetSpace(internals.service().GetSpaceRequest(),
                                    timeout=RPC_TIMEOUT)
        chief.keep_alive(worker)
    packs = {}
    for worker in workers:
        started = time.monotonic()
        answers = [chief.create_trial(worker, f"{worker}/{i}") for i in range(8)]
        packs[worker] = [t for t in answers if t.status == TrialStatus.RUNNING]
        assert time.monotonic() - started < RPC_TIMEOUT / 2  # Members not held 1 s each.
    assert [len(pack) for pack in packs.values()] == [5, 5, 5, 5]
    assert len({t.trial_id for pack in packs.values() for t in pack}) == 20


def test_ending_a_trial_cannot_add_to_the_search_space(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    trial = chief.create_trial("w1")
    chief.stub("w1").UpdateTrial(internals.service().UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"val_accuracy": 0.5}), timeout=RPC_TIMEOUT)
    # Same values, one more definition (inactive: its condition never holds).
    with trial.hyperparameters.conditional_scope("activation", ["no-such-activation"]):
        trial.hyperparameters.Int("planted", 0, 10)
    assert "planted" not in trial.hyperparameters.values
    trial.status = TrialStatus.COMPLETED
    chief.stub("w1").EndTrial(internals.service().EndTrialRequest(trial=trial.to_proto()),
                              timeout=RPC_TIMEOUT)
    assert chief.oracle.trials[trial.trial_id].status == TrialStatus.COMPLETED
    assert "planted" not in [hp.name for hp in chief.oracle.get_space().space]


def test_a_call_that_makes_the_oracle_raise_leaves_its_lock_free(serve_oracle):
    # Ended COMPLETED without its objective, the trial makes Keras Tuner's
    # `end_trial` raise inside its lock; every later call used to wait for good.
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    trial = chief.create_trial("w1")
    trial.status = TrialStatus.COMPLETED
    with pytest.raises(grpc.RpcError):
        chief.stub("w1").EndTrial(internals.service().EndTrialRequest(trial=trial.to_proto()),
                                  timeout=RPC_TIMEOUT)
    assert not internals.holds_lock(chief.oracle)
    started = time.monotonic()
    assert chief.create_trial("w2").status == TrialStatus.RUNNING
    assert time.monotonic() - started < RPC_TIMEOUT / 2


def test_the_failure_limit_tells_every_worker_then_the_chief_raises(serve_oracle):
    spec = specfile.load("part2-narrow").with_overrides(max_trials=6)
    spec = dataclasses.replace(spec, tuner=dataclasses.replace(
        spec.tuner, max_consecutive_failed_trials=2))
    chief = serve_oracle(spec=spec)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    first, second = chief.create_trial("w1"), chief.create_trial("w2")
    service = internals.service()
    for trial, worker in ((first, "w1"), (second, "w2")):
        trial.status = TrialStatus.FAILED
        trial.message = "FailedTrialError: loss became NaN"
        chief.stub(worker).EndTrial(service.EndTrialRequest(trial=trial.to_proto()),
                                    timeout=RPC_TIMEOUT)
    assert not internals.holds_lock(chief.oracle)
    assert chief.thread.is_alive()  # w1 and w2 are still to be told.
    for worker in ("w1", "w2"):
        with pytest.raises(grpc.RpcError) as told:
            chief.create_trial(worker)
        assert told.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert told.value.details().startswith("stopped after 2 failed trials in a row")
    chief.thread.join(timeout=5)
    assert not chief.thread.is_alive()
    assert isinstance(chief.error, SweepStopped)
    assert [chief.oracle.trials[t].status for t in ("0", "1")] == ["FAILED"] * 2
    assert not chief.oracle.ongoing_trials  # Both ended and saved, not left running.


# -- The worker's heartbeat ------------------------------------------------------

def test_heartbeat_updates_the_chiefs_last_seen_for_its_worker(tmp_path, chief_env):
    oracle = real_oracle(tmp_path, specfile.load("part2-narrow"))
    servicer = distributed.WatchingServicer(oracle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    internals.service_grpc().add_OracleServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    heartbeat = None
    try:
        distributed.set_role("worker", f"127.0.0.1:{port}", "w7")
        heartbeat = distributed.Heartbeat(interval=0.05)
        wait_for(lambda: "w7" in servicer.last_seen, what="the first heartbeat")
        first = servicer.last_seen["w7"]
        wait_for(lambda: servicer.last_seen["w7"] > first, what="a second heartbeat")
        assert set(servicer.last_seen) == {"w7"}

        heartbeat.stop()
        heartbeat._thread.join(timeout=5)
        assert not heartbeat._thread.is_alive()
        last = servicer.last_seen["w7"]
        time.sleep(0.3)
        assert servicer.last_seen["w7"] == last  # Stopped means silent.
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        server.stop(grace=None)


# -- Strangers and bogus requests ------------------------------------------------

ALL_CALLS = {
    "GetSpace": lambda s: s.GetSpaceRequest(),
    "UpdateSpace": lambda s: s.UpdateSpaceRequest(),
    "CreateTrial": lambda s: s.CreateTrialRequest(tuner_id="stranger"),
    "UpdateTrial": lambda s: s.UpdateTrialRequest(trial_id="0", metrics={"val_accuracy": 1}),
    "EndTrial": lambda s: s.EndTrialRequest(),
    "GetTrial": lambda s: s.GetTrialRequest(trial_id="0"),
    "GetBestTrials": lambda s: s.GetBestTrialsRequest(num_trials=1),
}


@pytest.mark.parametrize("token", [None, "a-wrong-token-of-the-same-length-01"],
                         ids=["no-token", "wrong-token"])
def test_a_stranger_is_refused_every_call_and_changes_nothing(serve_oracle, token):
    chief = serve_oracle(max_trials=2)
    first = chief.create_trial("w1")
    before = (dict(chief.oracle.ongoing_trials), set(chief.oracle.tuner_ids),
              len(chief.oracle.trials))
    channel = (grpc.insecure_channel(chief.address) if token is None
               else auth.channel(chief.address, token, "w1"))
    stub = internals.service_grpc().OracleStub(channel)
    try:
        for name, request in ALL_CALLS.items():
            with pytest.raises(grpc.RpcError) as error:
                getattr(stub, name)(request(internals.service()), timeout=RPC_TIMEOUT)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    finally:
        channel.close()
    assert (dict(chief.oracle.ongoing_trials), set(chief.oracle.tuner_ids),
            len(chief.oracle.trials)) == before
    assert chief.oracle.trials[first.trial_id].status == TrialStatus.RUNNING


def test_bogus_requests_are_answered_and_the_oracle_goes_on(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    trial = chief.create_trial("w1")
    service = internals.service()

    def refused(worker, name, request):
        with pytest.raises(grpc.RpcError) as error:
            getattr(chief.stub(worker), name)(request, timeout=RPC_TIMEOUT)
        return error.value.code()

    ended = Trial.from_proto(trial.to_proto())
    ended.status = TrialStatus.COMPLETED
    running = Trial.from_proto(trial.to_proto())
    NOT_FOUND, DENIED, INVALID = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INVALID_ARGUMENT)
    # An unknown trial id: Keras Tuner's oracle would raise inside its lock and hang.
    assert refused("w1", "UpdateTrial", service.UpdateTrialRequest(
        trial_id="no-such-trial", metrics={"val_accuracy": 1.0})) == NOT_FOUND
    assert refused("w1", "GetTrial", service.GetTrialRequest(trial_id="nope")) == NOT_FOUND
    # Another worker's trial: neither its metrics nor its end.
    assert refused("w2", "UpdateTrial", service.UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"val_accuracy": 1.0})) == DENIED
    assert refused("w2", "EndTrial", service.EndTrialRequest(trial=ended.to_proto())) == DENIED
    assert refused("w2", "CreateTrial", service.CreateTrialRequest(tuner_id="w1")) == DENIED
    # Metrics without the objective (Keras Tuner raises inside its lock), a trial
    # ended with other hyperparameters than it was handed.
    assert refused("w1", "UpdateTrial", service.UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"loss": 1.0})) == INVALID
    altered = Trial.from_proto(ended.to_proto())
    altered.hyperparameters.values["units_0"] = 10**6
    assert refused("w1", "EndTrial", service.EndTrialRequest(trial=altered.to_proto())) == INVALID
    # A trial "ended" RUNNING, a space rewritten, an absurd count, no worker id.
    assert refused("w1", "EndTrial", service.EndTrialRequest(trial=running.to_proto())) == INVALID
    assert refused("w1", "UpdateSpace", service.UpdateSpaceRequest()) == DENIED
    assert refused("w1", "GetBestTrials", service.GetBestTrialsRequest(num_trials=10**6)) == INVALID
    assert refused("", "GetSpace", service.GetSpaceRequest()) == INVALID
    # Bytes that are no message at all.
    raw = chief.channels["w1", TOKEN].unary_unary("/keras_tuner.Oracle/CreateTrial")
    with pytest.raises(grpc.RpcError) as error:
        raw(b"\xff\x00garbage\x01", timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INTERNAL  # Refused as it is parsed.

    # Nothing above changed the oracle, and its lock is free: the sweep finishes.
    assert chief.oracle.ongoing_trials["w1"].trial_id == trial.trial_id
    assert chief.oracle.trials[trial.trial_id].status == TrialStatus.RUNNING
    second = chief.create_trial("w2")
    chief.finish(trial, "w1")
    chief.finish(second, "w2")
    for worker in ("w1", "w2"):
        assert chief.create_trial(worker).status == TrialStatus.STOPPED
    chief.wait_until_served()
    assert sorted(chief.oracle.end_order) == ["0", "1"]


def test_a_second_chief_on_a_taken_port_fails_at_once(serve_oracle, tmp_path):
    chief = serve_oracle(max_trials=2)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"--oracle: cannot listen on 127\.0\.0\.1:\d+: "
                                         r"the port is taken"):
        distributed.serve(real_oracle(tmp_path / "second", chief.oracle_spec))
    assert time.monotonic() - started < 5
    assert chief.thread.is_alive()  # The first chief is untouched.


def test_a_worker_taken_for_lost_no_longer_holds_its_trial(serve_oracle):
    chief = serve_oracle(max_trials=2)
    first = chief.create_trial("w1")  # w1 has no heartbeat: it is taken for lost...
    client = types.SimpleNamespace(stub=chief.stub("w1"))
    assert distributed.still_holds(client, first.trial_id)
    chief.keep_alive("w2")
    wait_for(lambda: chief.lost, what="w1 to count as lost")
    again = chief.create_trial("w2")
    assert again.trial_id == first.trial_id
    # ...and comes back late: its run must not end FINISHED, nor its result count.
    assert not distributed.still_holds(client, first.trial_id)
    assert distributed.still_holds(types.SimpleNamespace(stub=chief.stub("w2")),
                                   first.trial_id)
    with pytest.raises(grpc.RpcError) as error:
        chief.finish(first, "w1")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_restarted_chief_gives_each_live_worker_its_trial_back(tmp_path, serve_oracle):
    spec = specfile.load("part2-narrow").with_overrides(max_trials=3)
    before = real_oracle(tmp_path, spec)
    trials = [before.create_trial(w) for w in ("w1", "w2")]
    before.save()
    after = real_oracle(tmp_path, spec)
    after.reload()  # As a restarted chief's tuner does: running trials go to retry.
    assert sorted(internals.retry_queue(after)) == ["0", "1"]
    restored = distributed.restore_leases(after, [("w1", "0"), ("w9", "7")])
    assert restored == [("w1", "0")]
    assert after.ongoing_trials["w1"].trial_id == trials[0].trial_id
    assert internals.retry_queue(after) == ["1"]  # w2's, unclaimed: the next worker's.
    assert "w1" in after.tuner_ids


def test_a_packed_worker_restarted_with_its_chief_gets_every_restored_trial_back(
        tmp_path, chief_env):
    # The chief restores the pack's leases under "wp", "wp/0", "wp/1"; the packed
    # worker, restarted too, asks under "wp/0", "wp/1", "wp/2": the lease kept under
    # "wp" used to wait for good, the worker's heartbeat keeping it alive.
    spec = specfile.load("part2-narrow").with_overrides(max_trials=3)
    before = real_oracle(tmp_path, spec)
    trials = [before.create_trial(f"wp/{i}") for i in range(3)]
    before.save()
    after = real_oracle(tmp_path, spec)
    after.reload()
    assert len(distributed.restore_leases(after, [("wp", t.trial_id) for t in trials])) == 3
    chief = Chief(after, chief_env)
    try:
        chief.keep_alive("wp")
        got = [chief.create_trial("wp", f"wp/{i}") for i in range(3)]
        assert [t.status for t in got] == [TrialStatus.RUNNING] * 3
        assert sorted(t.trial_id for t in got) == ["0", "1", "2"]
        assert len(after.trials) == 3  # Its own trials, not new draws.
        for trial in got:
            chief.finish(trial, "wp")
        assert chief.create_trial("wp", "wp/0").status == TrialStatus.STOPPED
        chief.wait_until_served()
    finally:
        chief.stop()


# -- TLS -------------------------------------------------------------------------

def self_signed(directory, host="127.0.0.1"):
    """A certificate for `host` and its key, PEM files: (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{host}.crt", directory / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_over_tls_a_worker_that_trusts_the_chief_gets_through_and_plain_text_does_not(
        tmp_path, serve_oracle, chief_env):
    cert, key = self_signed(tmp_path)
    chief_env.setenv(auth.ENV_TLS_CERT, str(cert))
    chief_env.setenv(auth.ENV_TLS_KEY, str(key))
    chief_env.setenv(auth.ENV_TLS_CA, str(cert))  # The Chief helper's own channels.
    chief = serve_oracle(max_trials=2)
    assert chief.create_trial("w1").status == TrialStatus.RUNNING  # TLS, token: through.

    service = internals.service()
    plain = grpc.insecure_channel(chief.address)
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")  # A certificate the chief does not hold.
    untrusting = auth.channel(chief.address, TOKEN, "w2", {auth.ENV_TLS_CA: str(other)})
    try:
        for channel in (plain, untrusting):
            with pytest.raises(grpc.RpcError) as error:
                internals.service_grpc().OracleStub(channel).GetSpace(
                    service.GetSpaceRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()
        untrusting.close()
    assert list(chief.oracle.ongoing_trials) == ["w1"]


def test_tls_needs_both_the_certificate_and_its_key(chief_env, tmp_path):
    cert, _ = self_signed(tmp_path)
    chief_env.setenv(auth.ENV_TLS_CERT, str(cert))
    with pytest.raises(InputError, match="TLS needs both") as error:
        distributed.set_role("chief", "127.0.0.1:40126")
    assert error.value.param == auth.ENV_TLS_KEY
    chief_env.setenv(auth.ENV_TLS_KEY, str(tmp_path / "missing.key"))
    with pytest.raises(InputError, match="cannot read .*missing.key"):
        distributed.set_role("chief", "127.0.0.1:40126")
