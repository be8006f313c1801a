"""Keras Tuner's chief/worker mode: a real oracle served over real gRPC on 127.0.0.1.

Workers are played by this test through Keras Tuner's own stub and messages, so
each step (a trial handed out, a worker going silent, the budget running out) is
under the test's control; nothing of Keras Tuner or gRPC is mocked.
"""

import os
import socket
import threading
import time
from concurrent import futures

import grpc
import keras_tuner
import pytest
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.src.distribute import oracle_client

from pipeline import space as space_module
from pipeline import specfile
from pipeline.errors import SweepStopped
from pipeline.search import distributed, internals
from pipeline.search.local_cluster import free_port
from pipeline.search.oracles import make_oracle

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
        self.channel = grpc.insecure_channel(self.address)
        self.stub = internals.service_grpc().OracleStub(self.channel)
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

    def create_trial(self, worker):
        response = self.stub.CreateTrial(
            internals.service().CreateTrialRequest(tuner_id=worker),
            wait_for_ready=True, timeout=RPC_TIMEOUT)
        return Trial.from_proto(response.trial)

    def finish(self, trial, accuracy=0.5):
        """Reports the trial's objective and ends it COMPLETED, as a worker's tuner does."""
        service = internals.service()
        self.stub.UpdateTrial(
            service.UpdateTrialRequest(trial_id=trial.trial_id,
                                       metrics={"val_accuracy": accuracy}, step=0),
            timeout=RPC_TIMEOUT)
        trial.status = TrialStatus.COMPLETED
        self.stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()),
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
        self.channel.close()
        assert not self.thread.is_alive(), "serve() did not stop"


@pytest.fixture
def chief_env(monkeypatch):
    """Keras Tuner's variables and the worker's client timeout, restored afterwards
    (`set_role` writes `os.environ` itself: setenv first records what to restore)."""
    for name in (distributed.ENV_ID, distributed.ENV_IP, distributed.ENV_PORT):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setattr(oracle_client, "TIMEOUT", oracle_client.TIMEOUT)
    return monkeypatch


@pytest.fixture
def serve_oracle(tmp_path, chief_env):
    """Starts `distributed.serve` on a real oracle of `max_trials` trials."""
    chiefs = []

    def start(max_trials=2, spec=None):
        spec = spec or specfile.load("part2-narrow").with_overrides(max_trials=max_trials)
        chief = Chief(real_oracle(tmp_path, spec), chief_env)
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


def test_a_worker_waits_while_others_run_the_last_trials(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.keep_alive("w1")
    chief.keep_alive("w2")
    first, second = chief.create_trial("w1"), chief.create_trial("w2")
    assert (first.trial_id, second.trial_id) == ("0", "1")  # The budget is spent.

    chief.finish(first)
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

    chief.finish(retried)
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
    chief.finish(first, 0.4)
    chief.finish(second, 0.6)

    assert chief.create_trial("w1").status == TrialStatus.STOPPED
    time.sleep(POLL_SECONDS * 5)
    assert chief.thread.is_alive()  # w2 has not been told to stop yet.
    assert chief.create_trial("w2").status == TrialStatus.STOPPED
    chief.wait_until_served()

    assert chief.lost == []
    assert chief.oracle.end_order == ["0", "1"]
    assert chief.oracle.get_best_trials(1)[0].trial_id == "1"
    with pytest.raises(grpc.RpcError) as error:  # The server is gone with serve().
        chief.stub.GetSpace(internals.service().GetSpaceRequest(), timeout=1)
    assert error.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_lost_trial_fails_when_no_worker_is_left_to_run_it(tmp_path, serve_oracle):
    path = tmp_path / "one-config.yaml"
    path.write_text(ONE_CONFIGURATION)
    chief = serve_oracle(spec=specfile.load(path))
    only = chief.create_trial("w1")  # w1 has no heartbeat: it dies in its trial.
    assert only.status == TrialStatus.RUNNING
    # The space is spent (not the budget of 3): w2 is told to stop, and leaves.
    assert chief.create_trial("w2").status == TrialStatus.STOPPED

    chief.wait_until_served()
    assert chief.lost == [("w1", only.trial_id, True), (None, only.trial_id, False)]
    trial = chief.oracle.trials[only.trial_id]
    assert trial.status == TrialStatus.FAILED
    assert "no worker was left" in trial.message
    assert chief.oracle.ongoing_trials == {}


def test_serve_raises_when_the_oracle_stops_the_sweep(serve_oracle):
    chief = serve_oracle(max_trials=2)
    chief.oracle.stopped = "stopped after 3 failed trials in a row"
    chief.thread.join(timeout=5)
    assert not chief.thread.is_alive()
    assert isinstance(chief.error, SweepStopped)
    assert "3 failed trials" in str(chief.error)


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
