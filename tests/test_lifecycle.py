"""One trial's lifecycle on a real oracle's trial and a real SQLite store: the steps a
trial alone and a member of a pack share."""

import signal
import sqlite3
import sys
import threading
import time

import pytest

from pipeline import space
from pipeline.errors import Interrupted
from pipeline.progress import Progress
from pipeline.search import lifecycle
from pipeline.search.tuner import SweepTuner
from pipeline.spec import load as specfile
from pipeline.tracking import runs
from pipeline.training.device import device_arrays
from pipeline.training.model import CompileOptions

SPEC = """\
name: tiny
description: one one-layer network, one epoch
search_space: {hidden_layers: 1, units: 8, activation: sigmoid}
training: {epochs: 1, learning_rate: 0.5}
tuner: {algorithm: grid, max_trials: 1, seed: 3}
"""


def in_trial_run_wait(thread_id):
    """Whether the thread `thread_id` is waiting in `TrialRun.wait` (its stack, now)."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wait" and code.co_filename.endswith("trial_run.py"):
            return True
        frame = frame.f_back
    return False


def test_sigterm_while_a_workers_run_is_written_leaves_no_run_running(
        tmp_path, small_mnist, client, fresh_store):
    """A worker waits for its trial's run to be written before it reports the trial:
    a SIGTERM then must not leave the run RUNNING behind a writing thread that dies
    with the process."""
    (tmp_path / "tiny.yaml").write_text(SPEC)
    spec = specfile.load(tmp_path / "tiny.yaml")
    tuner = SweepTuner(spec, space.build(spec), experiment="life",
                       directory=str(tmp_path / "kt"), project_name="tiny-project")
    parent = runs.open_parent(spec, "life", tmp_path / "kt" / "tiny-project")
    trials = lifecycle.Lifecycle(spec, tuner.space, CompileOptions(), Progress("tiny", 1),
                                 lambda: parent, "w1", lease=lambda trial_id: True)
    life = trials.begin(tuner.oracle.create_trial("w1"), small_mnist)
    arrays = device_arrays(small_mnist)
    life.fit(arrays)
    life.check()

    store = sqlite3.connect(fresh_store, isolation_level=None, check_same_thread=False)
    store.execute("BEGIN EXCLUSIVE")  # The run's results wait for the store.
    life.finish(life.model, (arrays["x_test"], arrays["y_test"]))
    main = threading.get_ident()

    def interrupt():
        deadline = time.monotonic() + 60
        while not in_trial_run_wait(main) and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGTERM)  # As the kernel, to the main thread.
        store.execute("COMMIT")  # The store answers again.

    def stop(signum, frame):
        raise Interrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    killer = threading.Thread(target=interrupt)
    killer.start()
    try:
        with pytest.raises(Interrupted):
            trials.settle(life)
    finally:
        killer.join()
        signal.signal(signal.SIGTERM, previous)
        store.close()
    assert trials.pending == []
    assert client.get_run(life.run.run_id).info.status in ("FINISHED", "KILLED")
