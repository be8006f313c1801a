"""Damaged sweep state: never a traceback. Our parent record is rebuilt from MLflow;
Keras Tuner's files stop the sweep with one line naming the file and the ways on.
And every state file is written whole (temporary file, then rename)."""

import errno
import json
import os

import pytest
from keras_tuner.src import utils as kt_utils

from pipeline import sweep
from pipeline.cli.commands import cli
from pipeline.errors import DiskFull, StateDamaged
from pipeline.search import internals
from pipeline.spec import load as specfile
from pipeline.tracking import names, runs

pytestmark = pytest.mark.usefixtures("fresh_store")

SPEC = """\
name: tiny
description: two one-layer networks, one epoch
search_space: {hidden_layers: 1, units: {min: 8, max: 16, step: 8}, activation: sigmoid}
training: {epochs: 1, learning_rate: 0.5}
tuner: {algorithm: grid, max_trials: 2}
"""


@pytest.fixture
def finished(tmp_path, small_mnist):
    """A finished two-trial sweep: (spec, settings, its project directory, result)."""
    (tmp_path / "tiny.yaml").write_text(SPEC)
    spec = specfile.load(tmp_path / "tiny.yaml")
    settings = sweep.Settings(experiment="state", directory=str(tmp_path / "kt"))
    result = sweep.run(spec, small_mnist, settings)
    project = tmp_path / "kt" / sweep.project_name(spec, small_mnist, "state")
    return spec, settings, project, result


@pytest.mark.parametrize("content", [b"", b"{\"parent_run_id\": \"ab", b"\xff\xfe garbage",
                                     b"[1, 2]", b"{\"other\": 1}"],
                         ids=["empty", "truncated", "binary", "a-list", "no-run-id"])
def test_a_damaged_parent_record_is_rebuilt_from_mlflow(finished, small_mnist, content,
                                                         capsys):
    spec, settings, project, result = finished
    (project / names.PARENT_FILE).write_bytes(content)
    again = sweep.run(spec, small_mnist, settings)
    assert again.resumed and again.parent_run_id == result.parent_run_id
    assert "already finished: 2 trials" in capsys.readouterr().out
    assert len(runs.trial_runs(result.parent_run_id)) == 2  # Nothing trained again.


@pytest.mark.parametrize("victim, content", [
    ("oracle.json", "truncated"), ("oracle.json", "empty"),
    ("trial_0/trial.json", "empty"), ("trial_1/trial.json", "binary"),
])
def test_damaged_keras_tuner_state_stops_with_one_line_naming_the_file(
        finished, small_mnist, runner, victim, content):
    spec, settings, project, result = finished
    path = project / victim
    assert path.exists()
    text = path.read_bytes()
    path.write_bytes({"truncated": text[:len(text) // 2], "empty": b"",
                      "binary": b"\x00\xff\x13"}[content])
    with pytest.raises(StateDamaged) as error:
        sweep.run(spec, small_mnist, settings)
    message = str(error.value)
    assert str(path) in message and "--overwrite" in message
    assert "\n" not in message
    # Nothing was touched: the parent stays FINISHED, no run was added.
    assert runs.trial_runs(result.parent_run_id, status="FINISHED")
    assert len(runs.trial_runs(result.parent_run_id)) == 2
    assert path.read_bytes() != text  # Left as found, for the user to look at.

    # --overwrite starts the search state afresh.
    fresh = sweep.run(spec, small_mnist, sweep.Settings(
        experiment="state", directory=settings.directory, overwrite=True))
    assert fresh.best_trial is not None
    json.loads((project / "oracle.json").read_text())


def test_the_cli_says_a_damaged_state_in_one_line(finished, runner, mnist_path, tmp_path):
    spec, settings, project, _ = finished
    (project / "oracle.json").write_text("{")
    result = runner.invoke(cli, ["sweep", str(tmp_path / "tiny.yaml"), "--data", mnist_path,
                                 "--train-limit", "1000", "--experiment", "state",
                                 "--directory", settings.directory])
    assert result.exit_code == 1, result.output
    assert "oracle.json is damaged (not whole JSON" in result.output
    assert "Traceback" not in result.output


def test_keras_tuners_state_files_are_written_whole(tmp_path, monkeypatch):
    internals.write_state_atomically()
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / "oracle.json"
    kt_utils.save_json(str(path), {"trials": [1, 2, 3]})
    assert json.loads(path.read_text()) == {"trials": [1, 2, 3]}

    # A crash mid-write (the disk fills) leaves the previous file whole, no stray file.
    def full_disk(fd, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        kt_utils.save_json(str(path), {"trials": [1, 2, 3, 4]})
    assert json.loads(path.read_text()) == {"trials": [1, 2, 3]}
    assert os.listdir(tmp_path / "state") == ["oracle.json"]


def test_a_full_disk_mid_sweep_stops_in_one_line_and_the_same_command_resumes(
        tmp_path, small_mnist, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    spec = specfile.load(tmp_path / "tiny.yaml")
    settings = sweep.Settings(experiment="disk", directory=str(tmp_path / "kt"))
    writes = []
    real_fsync = os.fsync

    def fills_up(fd):
        writes.append(fd)
        if len(writes) > 6:  # The disk fills after a few state files.
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fills_up)
    with pytest.raises(DiskFull) as error:
        sweep.run(spec, small_mnist, settings)
    message = str(error.value)
    assert message.startswith("no space left on the disk (OSError: ")
    assert "run the same command again" in message and "\n" not in message

    monkeypatch.setattr(os, "fsync", real_fsync)  # Space was freed.
    result = sweep.run(spec, small_mnist, settings)
    assert result.resumed
    finished = runs.trial_runs(result.parent_run_id, status="FINISHED")
    assert sorted(r.data.tags[names.TRIAL_ID] for r in finished) == ["0", "1"]  # Once each.
