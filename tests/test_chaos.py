"""Chaos for the chief/worker mode (tests/chaos.py): a chief, a plain worker and a
packed worker, killed and restarted on a seeded schedule while one sweep runs,
against a real PostgreSQL-backed `mlflow server`. `bench/soak.py` runs longer
schedules over many seeds."""

import signal

import pytest
from chaos import CHIEF, PACKED, PLAIN, TOGETHER, run_chaos, schedule

SEED = 7
FAULTS = 5
EPOCHS = 20  # Trials long enough for the whole schedule to land, on a loaded machine.


def test_the_schedule_is_seeded_and_covers_every_target_and_signal():
    faults = schedule(FAULTS, SEED)
    assert faults == schedule(FAULTS, SEED)  # The same faults for the same seed.
    assert faults != schedule(FAULTS, SEED + 1)
    assert len(faults) == FAULTS
    assert {tuple(sorted(f.targets)) for f in faults} >= {(CHIEF,), (PLAIN,), (PACKED,),
                                                          TOGETHER}
    assert {f.signum for f in faults} == {signal.SIGKILL, signal.SIGTERM}
    assert all(0 <= f.jitter <= 2 and 0 <= f.restart_jitter <= 2 for f in faults)
    for seed in range(20):  # The chief and the packed worker go together at least once.
        assert any(set(f.targets) == set(TOGETHER) for f in schedule(3, seed))


@pytest.mark.slow
def test_a_sweep_survives_seeded_kills_and_restarts_of_its_chief_and_workers(
        tracking_server, client, workdir, mnist_path):
    figures = run_chaos(workdir, mnist_path, client, FAULTS, SEED, trials=9, epochs=EPOCHS,
                        bound=150, strict=False)
    report = figures.report()
    assert not figures.hangs, report
    assert figures.duplicates == 0, report
    assert figures.running_left == 0, report
    assert figures.parent_status == "FINISHED", report
    assert figures.finished_trials == 9, report
    assert figures.ok, report  # Every process exited 0 at the end; each run whole.
    assert figures.faults == FAULTS, report  # The sweep outlasted the whole schedule.
    assert figures.injected["SIGKILL chief+wp"] + figures.injected[
        "SIGTERM chief+wp"] >= 1, report
