"""Faults at scale, with real processes: a chief and a worker started as a scheduler
would (`--role`), a real PostgreSQL-backed `mlflow server`, and callers on the
oracle's port that are not the sweep's."""

import signal
import time

import grpc
import keras_tuner
import mlflow
import pytest
from keras_tuner.engine.trial import Trial, TrialStatus
from servers import SweepProcess, free_port, wait_for
from test_scale import check_complete, mid_trial, mid_trials, runs, sweep_args

from pipeline.search import auth, internals
from pipeline.tracking import names
from pipeline.tracking import runs as runs_module

pytestmark = pytest.mark.slow

TOKEN = auth.new_token()


def start(mnist_path, workdir, port, trials, *extra, role="chief", worker_id=None):
    args = sweep_args(mnist_path, trials, "--role", role, "--oracle", f"127.0.0.1:{port}",
                      *extra, epochs=10)
    if worker_id:
        args += ["--worker-id", worker_id]
    return SweepProcess(args, workdir, env={auth.ENV_TOKEN: TOKEN})


def call(address, name, request, token=None, worker="stranger"):
    channel = (auth.channel(address, token, worker) if token
               else grpc.insecure_channel(address))
    try:
        stub = internals.service_grpc().OracleStub(channel)
        getattr(stub, name)(request, timeout=30, wait_for_ready=True)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    finally:
        channel.close()


def test_strangers_and_bogus_requests_change_nothing_and_the_sweep_finishes(
        tracking_server, client, workdir, mnist_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    chief = start(mnist_path, workdir, port, 3)
    worker = start(mnist_path, workdir, port, 3, role="worker", worker_id="w1")
    running = wait_for(lambda: [r for r in runs(client) if r.info.status == "RUNNING"], 300,
                       "a trial run")
    service = internals.service()
    # A stranger without the token: three "failed" trials would have ended the
    # sweep, a claimed trial would have been lost, a fake best trial planted.
    fake = Trial(keras_tuner.HyperParameters(), trial_id=running[0].data.tags[names.TRIAL_ID],
                 status=TrialStatus.FAILED)
    for name, request in [("CreateTrial", service.CreateTrialRequest(tuner_id="stranger")),
                          ("EndTrial", service.EndTrialRequest(trial=fake.to_proto())),
                          ("EndTrial", service.EndTrialRequest(trial=fake.to_proto())),
                          ("EndTrial", service.EndTrialRequest(trial=fake.to_proto())),
                          ("UpdateTrial", service.UpdateTrialRequest(
                              trial_id=fake.trial_id, metrics={"val_accuracy": 1.0}))]:
        assert call(address, name, request) == grpc.StatusCode.UNAUTHENTICATED
        assert call(address, name, request, token="x" * 43) == grpc.StatusCode.UNAUTHENTICATED
    # With the token, bogus requests: an unknown trial (Keras Tuner would hang on
    # its lock), another worker's trial.
    assert call(address, "UpdateTrial", service.UpdateTrialRequest(
        trial_id="9999", metrics={"val_accuracy": 1.0}), TOKEN,
                "w1") == grpc.StatusCode.NOT_FOUND
    assert call(address, "EndTrial", service.EndTrialRequest(trial=fake.to_proto()), TOKEN,
                "w2") == grpc.StatusCode.PERMISSION_DENIED

    assert worker.wait() == 0, worker.text
    assert chief.wait() == 0, chief.text
    _, finished = check_complete(client, 3, epochs=10)
    assert {r.data.tags[names.WORKER] for r in finished} == {"w1"}
    assert all(r.data.metrics[names.VAL_ACCURACY] < 1.0 for r in finished)  # Nothing planted.
    for process in (chief, worker):
        assert TOKEN not in process.text
        assert "Traceback" not in process.text


def test_a_worker_terminated_after_its_last_trial_leaves_its_run_whole(
        tracking_server, client, workdir, mnist_path):
    port = free_port()
    # The chief waits for the terminated worker until --worker-timeout before it ends.
    chief = start(mnist_path, workdir, port, 1, "--worker-timeout", "20")
    worker = start(mnist_path, workdir, port, 1, role="worker", worker_id="w1")
    # The worker reports its trial only once its run is whole: the moment the chief
    # knows the trial ended, the run is FINISHED with its model.
    wait_for(lambda: "trial 0 (1/1)" in worker.text, 300, "the worker to end trial 0")
    worker.signal_group(signal.SIGTERM)
    worker.process.wait(timeout=60)
    assert chief.wait(timeout=180) == 0, chief.text
    _, (run,) = check_complete(client, 1, epochs=10)
    assert names.CURVES in {a.path for a in client.list_artifacts(run.info.run_id)}
    model = mlflow.keras.load_model(runs_module.model_uri(run.info.run_id))
    assert model.count_params() == run.data.metrics[names.TRAINABLE_PARAMS]


def test_a_worker_of_a_finished_sweep_exits_0_without_a_chief(
        tracking_server, client, workdir, mnist_path, monkeypatch):
    port = free_port()
    chief = start(mnist_path, workdir, port, 1)
    worker = start(mnist_path, workdir, port, 1, role="worker", worker_id="w1")
    assert chief.wait() == 0, chief.text
    assert worker.wait() == 0, worker.text
    # The next night's job: the chief finds nothing to do and exits; its worker,
    # started after it, must not wait for it and fail.
    assert start(mnist_path, workdir, port, 1).wait() == 0
    late = start(mnist_path, workdir, port, 1, role="worker", worker_id="w2")
    assert late.wait(timeout=120) == 0, late.text
    assert "the sweep already finished" in late.text


def test_a_chief_restarted_under_a_live_worker_loses_nothing_and_logs_nothing_twice(
        tracking_server, client, workdir, mnist_path):
    port = free_port()
    chief = start(mnist_path, workdir, port, 3)
    worker = start(mnist_path, workdir, port, 3, role="worker", worker_id="w1")
    victim = wait_for(lambda: mid_trial(client), 300, "a trial mid-way")
    chief.kill()  # SIGKILL: the chief cannot clean up; the worker trains on.
    again = start(mnist_path, workdir, port, 3)
    assert again.wait() == 0, again.text
    assert worker.wait() == 0, worker.text
    _, finished = check_complete(client, 3, epochs=10)
    assert len(runs(client)) == 3  # No run KILLED by the restart, no trial trained twice.
    # The trial the worker was training when the chief died is the same run, whole.
    assert client.get_run(victim.info.run_id).info.status == "FINISHED"
    assert f"{victim.data.tags[names.TRIAL_ID]} on w1" in again.text


def test_a_waiting_worker_outlives_its_chiefs_restart(tracking_server, client, workdir,
                                                     mnist_path):
    # One trial, two workers: one trains it, the other waits in a call the chief holds
    # (IDLE). That call fails at once when the chief dies: the worker must wait for
    # the restarted chief (up to --chief-timeout), not exit 1.
    port = free_port()
    chief = start(mnist_path, workdir, port, 1)
    workers = [start(mnist_path, workdir, port, 1, role="worker", worker_id=w)
               for w in ("w1", "w2")]
    wait_for(lambda: mid_trial(client), 300, "the trial mid-way")
    wait_for(lambda: all("worker for" in w.text for w in workers), 120, "both workers")
    chief.kill()
    again = start(mnist_path, workdir, port, 1)
    assert again.wait() == 0, again.text
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.text
        assert "lost the chief" not in worker.text
    check_complete(client, 1, epochs=10)


def test_the_failure_limit_ends_chief_and_workers_with_one_line_each(
        tracking_server, client, workdir, mnist_path):
    spec = workdir / "diverging.yaml"
    spec.write_text(
        "name: diverging\ndescription: every trial diverges\n"
        "search_space: {hidden_layers: 2, units: {min: 60, max: 70}, activation: relu,\n"
        "               learning_rate: 1000000.0}\n"
        "tuner: {max_trials: 8, max_consecutive_failed_trials: 2}\n")
    port = free_port()
    address = ["--role", "chief", "--oracle", f"127.0.0.1:{port}"]
    args = [str(spec), "--data", mnist_path, "--train-limit", "2000", "--epochs", "2"]
    env = {auth.ENV_TOKEN: TOKEN}
    chief = SweepProcess([*args, *address], workdir, env=env)
    workers = [SweepProcess([*args, *address[:1], "worker", *address[2:], "--worker-id", w],
                            workdir, env=env) for w in ("w1", "w2")]
    for process in (chief, *workers):
        assert process.wait(timeout=300) == 1, process.text
        errors = [line for line in process.text.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, process.text
        assert "failed trials in a row" in errors[0]
        assert "Traceback" not in process.text
    assert not [r for r in runs(client) if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs(client)} == {"FAILED"}
    assert [r.info.status for r in runs(client, "parent")] == ["FAILED"]


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
def test_ctrl_c_stops_every_process_once_with_every_run_killed(
        tracking_server, client, workdir, mnist_path, workers):
    sweep = SweepProcess(sweep_args(mnist_path, 6, "--workers", str(workers), "--train-limit",
                                    "50000", epochs=10), workdir)
    wait_for(lambda: len(mid_trials(client)) >= max(1, workers), 300, "every worker mid-trial")
    started = time.monotonic()
    sweep.signal_group(signal.SIGINT)  # A terminal's Ctrl-C: the whole process group.
    time.sleep(0.2)
    sweep.signal_group(signal.SIGINT)  # Pressed twice, impatiently.
    assert sweep.wait(timeout=60) == 128 + signal.SIGINT, sweep.text
    assert time.monotonic() - started < 30
    assert "Traceback" not in sweep.text and "Aborted" not in sweep.text
    assert sweep.text.count("stopped by Ctrl-C") == 1
    assert not [r for r in runs(client) if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs(client, "parent")} == {"KILLED"}
    assert len([r for r in runs(client) if r.info.status == "KILLED"]) >= max(1, workers)


def test_packed_workers_each_train_a_pack_and_log_every_trial_once(
        tracking_server, client, workdir, mnist_path):
    sweep = SweepProcess(sweep_args(mnist_path, 6, "--workers", "2", "--pack", "3",
                                    spec="part2-narrow", epochs=3), workdir)
    assert sweep.wait() == 0, sweep.text
    _, finished = check_complete(client, 6, epochs=3)
    assert len(runs(client)) == 6
    sizes = [int(r.data.tags[names.PACK_SIZE]) for r in finished]
    assert max(sizes) > 1 and max(sizes) <= 3  # Trained in packs, not one at a time.
    assert "up to 3 trials at once" in sweep.text
    assert {r.data.tags[names.WORKER] for r in finished} == {"worker0", "worker1"}
    # Keras Tuner 1.4.8 printed a deep spec's conditions (11, 12) for every message.
    assert not [line for line in sweep.text.splitlines() if line.strip().isdigit()]
