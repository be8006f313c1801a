"""Distributed sweeps, resume after a crash, and faults, against a real PostgreSQL-backed
`mlflow server` (see the `tracking_server` fixture)."""

import os
import signal
import subprocess
import time

import mlflow
import pytest
from servers import SweepProcess, free_port, wait_for

from pipeline.tracking import names
from pipeline.tracking import runs as runs_module

pytestmark = pytest.mark.slow

EPOCHS = 3
# Tests that stop a sweep mid-trial train longer, so a trial is mid-way for seconds,
# not for the fraction of a second that 3 epochs on 2,000 images take.
LONG_EPOCHS = 10


def sweep_args(mnist_path, trials, *extra, spec="part1-narrow", epochs=EPOCHS):
    return [spec, "--data", mnist_path, "--train-limit", "2000", "--epochs", str(epochs),
            "--max-trials", str(trials), *extra]


def runs(client, kind="trial"):
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id], f"tags.{names.SWEEP} != ''")
    if kind == "parent":
        return [r for r in found if names.TRIAL_ID not in r.data.tags]
    return [r for r in found if names.TRIAL_ID in r.data.tags]


def mid_trials(client, epochs=LONG_EPOCHS):
    """The trial runs still training (one epoch logged, not all).

    A run also stays RUNNING while its model is logged in the background, after
    training: that one is not mid-trial.
    """
    return [run for run in runs(client)
            if run.info.status == "RUNNING" and names.LOSS in run.data.metrics
            and len(client.get_metric_history(run.info.run_id, names.LOSS)) < epochs]


def mid_trial(client, epochs=LONG_EPOCHS):
    """A trial run still training, if any."""
    return next(iter(mid_trials(client, epochs)), None)


def check_complete(client, trials, epochs=EPOCHS):
    """Exactly one finished run per trial, each whole; nothing left RUNNING."""
    parents = runs(client, "parent")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = runs(client)
    assert not [r for r in children if r.info.status == "RUNNING"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.tags[names.TRIAL_ID] for r in finished) == [str(i) for i in range(trials)]
    for run in finished:
        assert run.data.tags[names.PARENT_RUN] == parents[0].info.run_id
        history = client.get_metric_history(run.info.run_id, names.VAL_ACCURACY)
        assert [m.step for m in history] == list(range(1, epochs + 1))
        assert names.TEST_ACCURACY in run.data.metrics
    return parents[0], finished


def test_chief_and_two_workers_log_one_sweep(tracking_server, client, workdir, mnist_path,
                                             small_mnist):
    sweep = SweepProcess(sweep_args(mnist_path, 4, "--workers", "2"), workdir)
    assert sweep.wait() == 0, sweep.text
    parent, finished = check_complete(client, 4)
    assert len(runs(client)) == 4  # No duplicates, no failed attempts.
    assert {r.data.tags[names.WORKER] for r in finished} == {"worker0", "worker1"}
    assert "serving the oracle to workers" in sweep.text
    # Every trial's model is in the server's artifact store and loads in safe mode.
    model = mlflow.keras.load_model(runs_module.model_uri(finished[0].info.run_id),
                                    load_model_kwargs={"safe_mode": True})
    accuracy = model.evaluate(small_mnist.x_test, small_mnist.y_test, verbose=0)[1]
    assert accuracy == pytest.approx(finished[0].data.metrics[names.TEST_ACCURACY], abs=1e-6)


@pytest.mark.parametrize("workers, pack", [(0, 1), (2, 1), (0, 2)],
                         ids=["single-process", "distributed", "packed"])
def test_sigkill_mid_trial_then_rerun_finishes_without_duplicates(
        tracking_server, client, workdir, mnist_path, workers, pack):
    # A pack trains small models fast: on all 50,000 images it is mid-way for seconds.
    longer = ["--train-limit", "50000"] if pack > 1 else []
    args = sweep_args(mnist_path, 4, "--workers", str(workers), "--pack", str(pack), *longer,
                      epochs=LONG_EPOCHS)
    first = SweepProcess(args, workdir)
    wait_for(lambda: len([r for r in runs(client) if r.info.status == "FINISHED"]) >= 1
             and mid_trial(client), 300, "a finished trial and another mid-trial")
    first.kill()  # SIGKILL to every process of the sweep: nothing can clean up.
    before = {r.data.tags[names.TRIAL_ID]: r.info.run_id for r in runs(client)
              if r.info.status == "FINISHED"}
    interrupted = {r.info.run_id for r in runs(client) if r.info.status == "RUNNING"}
    assert interrupted

    second = SweepProcess(args, workdir)
    assert second.wait() == 0, second.text
    parent, finished = check_complete(client, 4, LONG_EPOCHS)
    assert "resuming" in second.text
    # Finished trials were not run again: the same runs still hold them.
    assert {t: r.info.run_id for t, r in ((r.data.tags[names.TRIAL_ID], r) for r in finished)
            if t in before} == before
    for run_id in interrupted:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert "interrupted" in run.data.tags[names.FAILURE_REASON]


@pytest.mark.parametrize("pack", [1, 3], ids=["alone", "packed"])
def test_sigterm_ends_the_trial_run_and_exits_non_zero(tracking_server, client, workdir,
                                                       mnist_path, pack):
    # A pack's epoch is one short call: on 10,000 images its runs stay mid-way long
    # enough for this test to see all of them, however loaded the machine.
    args = sweep_args(mnist_path, 3, "--pack", str(pack), *(
        ["--train-limit", "10000"] if pack > 1 else []), epochs=LONG_EPOCHS)
    first = SweepProcess(args, workdir)
    running = wait_for(lambda: len(mid_trials(client)) >= pack and mid_trials(client), 300,
                       "every trial of a pack mid-way")
    started = time.monotonic()
    first.signal_group(signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30  # Within a scheduler's grace period.
    assert "run the same command again to resume" in first.text
    # Every trial of the pack that was training ends KILLED.
    assert len(running) == pack
    assert {client.get_run(r.info.run_id).info.status for r in running} == {"KILLED"}
    (parent,) = runs(client, "parent")
    assert parent.info.status == "KILLED"

    second = SweepProcess(args, workdir)
    assert second.wait() == 0, second.text
    resumed, _ = check_complete(client, 3, LONG_EPOCHS)
    assert resumed.info.run_id == parent.info.run_id


def test_sigterm_with_a_hung_tracking_server_still_ends_within_the_grace_period(
        tracking_server, client, workdir, mnist_path):
    # A server that accepts connections and never answers (stopped, swapping, a
    # dead proxy): MLflow's client would wait 120 s per attempt, 8 attempts per call.
    sweep = SweepProcess(sweep_args(mnist_path, 3, epochs=LONG_EPOCHS), workdir)
    wait_for(lambda: mid_trial(client), 300, "a trial mid-way")
    os.killpg(tracking_server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        sweep.signal_group(signal.SIGTERM)
        assert sweep.wait(timeout=120) == 128 + signal.SIGTERM, sweep.text
        assert time.monotonic() - started < 30, sweep.text  # Slurm's KillWait, k8s' grace.
    finally:
        os.killpg(tracking_server.process.pid, signal.SIGCONT)


def test_dead_worker_trial_is_reissued_and_the_sweep_finishes(tracking_server, client,
                                                              workdir, mnist_path):
    sweep = SweepProcess(sweep_args(mnist_path, 4, "--workers", "2", "--worker-timeout",
                                    "5", epochs=LONG_EPOCHS), workdir)
    victim = wait_for(lambda: mid_trial(client), 300, "a trial mid-way")
    worker = victim.data.tags[names.WORKER]
    pids = subprocess.run(["pgrep", "-f", "--", f"--worker-id {worker}"],
                          capture_output=True, text=True).stdout.split()
    assert pids, f"no process for {worker}"
    for pid in pids:
        subprocess.run(["kill", "-KILL", pid], check=True)
    assert sweep.wait() == 0, sweep.text
    check_complete(client, 4, LONG_EPOCHS)
    lost = client.get_run(victim.info.run_id)
    assert lost.info.status == "FAILED"
    assert f"worker {worker} stopped answering; trial re-issued" in lost.data.tags[
        names.FAILURE_REASON]


def test_tracking_server_restart_loses_no_finished_metrics(tracking_server, client,
                                                           workdir, mnist_path):
    sweep = SweepProcess(sweep_args(mnist_path, 4, epochs=LONG_EPOCHS), workdir)
    wait_for(lambda: any(r.info.status == "FINISHED" for r in runs(client)), 300,
             "a finished trial")
    tracking_server.stop()  # While the next trial trains and logs.
    time.sleep(3)
    tracking_server.start()
    assert sweep.wait() == 0, sweep.text
    _, finished = check_complete(client, 4, LONG_EPOCHS)
    for run in finished:
        assert client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'")


def test_unreachable_server_fails_fast_and_trains_nothing(workdir, mnist_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    sweep = SweepProcess(sweep_args(mnist_path, 2), workdir)
    code = sweep.wait(timeout=60)
    assert code == 1
    assert time.monotonic() - start < 30
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:" in sweep.text
    assert not (workdir / "kt_sweeps").exists()


def test_credentials_in_the_tracking_uri_are_never_printed_or_logged(
        tracking_server, client, workdir, mnist_path):
    secret_uri = tracking_server.url.replace("http://", "http://sweeper:s3cret-pw@")
    sweep = SweepProcess(sweep_args(mnist_path, 1), workdir,
                         env={"MLFLOW_TRACKING_URI": secret_uri})
    assert sweep.wait() == 0, sweep.text
    assert "s3cret-pw" not in sweep.text
    for run in runs(client) + runs(client, "parent"):
        logged = {**run.data.params, **run.data.tags}
        assert not [k for k, v in logged.items() if "s3cret-pw" in v]
