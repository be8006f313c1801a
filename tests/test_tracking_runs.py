"""The parent run's life and the queries over trial runs, in a real SQLite store."""

import http.server
import json
import threading

import mlflow
import pytest

from pipeline.errors import ParentNotFound, TrackingUnavailable
from pipeline.spec import load as specfile
from pipeline.tracking import names, runs

EXPERIMENT = names.DEFAULT_EXPERIMENT
KEY = "part1-narrow-0123456789"


pytestmark = pytest.mark.usefixtures("fresh_store")


@pytest.fixture
def spec():
    return specfile.load("part1-narrow")


@pytest.fixture
def project_dir(workdir):
    return workdir / "tuner" / KEY


@pytest.fixture
def parent(spec, project_dir):
    return runs.open_parent(spec, EXPERIMENT, project_dir)


def trial(client, parent, trial_id, status="RUNNING", metrics=None):
    """A trial's child run under `parent`, ended with `status` unless RUNNING."""
    run_id = client.create_run(parent.experiment_id, tags={
        names.PARENT_RUN: parent.run_id, names.TRIAL_ID: trial_id,
        names.SWEEP: "part1-narrow"}).info.run_id
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def ids(found):
    return {run.info.run_id for run in found}


# -- the parent ---------------------------------------------------------------

def test_open_parent_starts_a_run_named_after_the_spec(client, spec, project_dir):
    parent = runs.open_parent(spec, EXPERIMENT, project_dir)

    assert not parent.resumed
    assert parent.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.get_run(parent.run_id)
    assert run.info.run_name == spec.name == "part1-narrow"
    assert run.info.status == "RUNNING"
    assert names.PARENT_RUN not in run.data.tags
    tags = run.data.tags
    assert tags[names.SWEEP] == "part1-narrow"
    assert tags[names.SWEEP_KEY] == KEY
    assert tags[names.PART] == "1"
    assert tags[names.ALGORITHM] == spec.tuner.algorithm == "random"
    assert tags[names.OBJECTIVE] == "val_accuracy"
    assert tags[names.MAX_TRIALS] == str(spec.tuner.max_trials) == "8"
    assert tags[names.EPOCHS] == str(spec.training.epochs) == "10"
    assert tags[names.SEED] == str(spec.tuner.seed) == "12"
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["part1-narrow.yaml"]
    state = json.loads((project_dir / names.PARENT_FILE).read_text())
    assert state == {"parent_run_id": parent.run_id}
    assert not list(project_dir.glob("*.tmp"))


def test_open_parent_again_resumes_the_same_run(client, spec, project_dir, parent):
    left_running = trial(client, parent, "0")
    finished = trial(client, parent, "1", "FINISHED", {names.VAL_ACCURACY: 0.9})
    client.set_terminated(parent.run_id, "KILLED")

    again = runs.open_parent(spec.with_overrides(max_trials=20), EXPERIMENT, project_dir)

    assert again.run_id == parent.run_id
    assert again.resumed
    run = client.get_run(parent.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[names.MAX_TRIALS] == "20"  # the tags follow the new budget
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["part1-narrow.yaml"]
    killed = client.get_run(left_running)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[names.FAILURE_REASON].startswith("interrupted")
    untouched = client.get_run(finished)
    assert untouched.info.status == "FINISHED"
    assert names.FAILURE_REASON not in untouched.data.tags
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs([experiment], f"tags.{names.SWEEP_KEY} = '{KEY}'")
    assert ids(parents) == {parent.run_id}


def test_existing_parent(client, project_dir, parent):
    assert runs.existing_parent(project_dir.parent / "other") is None  # no file

    found = runs.existing_parent(project_dir)
    assert (found.run_id, found.experiment_id, found.resumed) == (
        parent.run_id, parent.experiment_id, True)

    client.delete_run(parent.run_id)
    assert runs.existing_parent(project_dir) is None

    (project_dir / names.PARENT_FILE).write_text(json.dumps({"parent_run_id": "0" * 32}))
    assert runs.existing_parent(project_dir) is None  # not in this store at all


class RefusingServer:
    """A real HTTP server on 127.0.0.1 that answers every call with one status, as a
    tracking server behind an auth proxy or in trouble does."""

    def __init__(self, status, error_code):
        body = json.dumps({"error_code": error_code, "message": f"{status} from the server"})

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status, error_code", [
    (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (500, "INTERNAL_ERROR")])
def test_a_refusal_on_resume_is_not_a_missing_parent(project_dir, parent, monkeypatch,
                                                     status, error_code):
    record = (project_dir / names.PARENT_FILE).read_text()
    server = RefusingServer(status, error_code)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(server.uri)
    try:
        with pytest.raises(TrackingUnavailable, match=f"could not read the sweep's parent "
                                                      f"run {parent.run_id}.*nothing was "
                                                      "changed") as error:
            runs.existing_parent(project_dir)
    finally:
        server.stop()
    assert "\n" not in str(error.value)
    assert (project_dir / names.PARENT_FILE).read_text() == record  # Kept for the resume.


def test_a_deleted_parent_is_replaced_by_a_new_one(client, spec, project_dir, parent):
    client.delete_run(parent.run_id)

    new = runs.open_parent(spec, EXPERIMENT, project_dir)

    assert new.run_id != parent.run_id and not new.resumed
    state = json.loads((project_dir / names.PARENT_FILE).read_text())
    assert state["parent_run_id"] == new.run_id


def test_find_parent(client, project_dir):
    with pytest.raises(ParentNotFound, match=KEY):
        runs.find_parent(EXPERIMENT, KEY, wait_seconds=0)  # no experiment yet

    parent = runs.open_parent(specfile.load("part1-narrow"), EXPERIMENT, project_dir)
    runs.open_parent(specfile.load("part1-wide"), EXPERIMENT, project_dir.parent / "other")
    trial(client, parent, "0")  # a running trial is not a parent

    found = runs.find_parent(EXPERIMENT, KEY, wait_seconds=0)
    assert (found.run_id, found.experiment_id) == (parent.run_id, parent.experiment_id)
    with pytest.raises(ParentNotFound):
        runs.find_parent(EXPERIMENT, "some-other-key", wait_seconds=0)

    runs.end_parent(parent, "FINISHED")
    with pytest.raises(ParentNotFound, match=KEY):
        runs.find_parent(EXPERIMENT, KEY, wait_seconds=0)


def test_a_new_parent_supersedes_a_running_one_of_the_same_sweep(client, spec, project_dir,
                                                                 parent):
    other = runs.open_parent(specfile.load("part1-wide"), EXPERIMENT,
                             project_dir.parent / "part1-wide-key")
    (project_dir / names.PARENT_FILE).unlink()  # its state lost: started afresh

    new = runs.open_parent(spec, EXPERIMENT, project_dir)

    assert new.run_id != parent.run_id and not new.resumed
    stale = client.get_run(parent.run_id)
    assert stale.info.status == "KILLED"
    assert stale.data.tags[names.FAILURE_REASON] == "superseded by a new sweep"
    assert client.get_run(new.run_id).info.status == "RUNNING"
    assert client.get_run(other.run_id).info.status == "RUNNING"  # another sweep
    assert runs.find_parent(EXPERIMENT, KEY, wait_seconds=0).run_id == new.run_id


def test_a_same_named_state_directory_elsewhere_supersedes_too(client, spec, workdir, parent):
    new = runs.open_parent(spec, EXPERIMENT, workdir / "elsewhere" / KEY)

    assert new.run_id != parent.run_id
    assert client.get_run(parent.run_id).info.status == "KILLED"


def test_record_best_and_end_parent(client, parent):
    runs.record_best(parent, runs.Best("2", 0.91))
    run = client.get_run(parent.run_id)
    assert run.data.tags[names.BEST_TRIAL] == "2"
    assert names.BEST_RUN_ID not in run.data.tags
    assert run.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(0.91)
    assert run.info.status == "RUNNING"

    best_run = trial(client, parent, "5", "FINISHED")
    runs.end_parent(parent, "FINISHED", runs.Best("5", 0.95, best_run))

    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.BEST_TRIAL] == "5"
    assert run.data.tags[names.BEST_RUN_ID] == best_run
    assert run.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(0.95)
    history = client.get_metric_history(parent.run_id, names.BEST_VAL_ACCURACY)
    assert [m.value for m in history] == pytest.approx([0.91, 0.95])


def test_end_parent_without_a_best_trial(client, parent):
    runs.end_parent(parent, "KILLED")
    run = client.get_run(parent.run_id)
    assert run.info.status == "KILLED"
    assert names.BEST_TRIAL not in run.data.tags
    assert names.BEST_VAL_ACCURACY not in run.data.metrics


# -- trial runs ---------------------------------------------------------------

def test_trial_runs_filter_by_status_and_trial_id(client, spec, workdir, parent):
    finished = trial(client, parent, "0", "FINISHED")
    running = trial(client, parent, "0")
    failed = trial(client, parent, "1", "FAILED")
    # Not trials of this parent: a run nested without a trial id, another sweep's trial.
    client.create_run(parent.experiment_id, tags={names.PARENT_RUN: parent.run_id})
    other = runs.open_parent(specfile.load("part1-wide"), EXPERIMENT, workdir / "other")
    trial(client, other, "0", "FINISHED")

    assert ids(runs.trial_runs(parent.run_id)) == {finished, running, failed}
    assert ids(runs.trial_runs(parent.run_id, status="RUNNING")) == {running}
    assert ids(runs.trial_runs(parent.run_id, trial_id="0")) == {finished, running}
    assert ids(runs.trial_runs(parent.run_id, status="FINISHED", trial_id="0")) == {finished}
    assert ids(runs.trial_runs(parent.run_id, status="FINISHED", trial_id="1")) == set()

    assert runs.finished_run_of(parent.run_id, "0") == finished
    assert runs.finished_run_of(parent.run_id, "1") is None
    assert runs.finished_run_of(parent.run_id, "7") is None


def test_earlier_attempts_kills_a_running_one_and_returns_a_finished_one(client, parent):
    running = trial(client, parent, "3")
    finished = trial(client, parent, "3", "FINISHED",
                     {names.VAL_ACCURACY: 0.87, names.VAL_LOSS: 0.4})
    other = trial(client, parent, "4")

    done = runs.earlier_attempts(parent, "3", names.VAL_ACCURACY)

    assert done == runs.Earlier(finished, {names.VAL_ACCURACY: 0.87, names.VAL_LOSS: 0.4})
    killed = client.get_run(running)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[names.FAILURE_REASON].startswith("interrupted")
    assert client.get_run(other).info.status == "RUNNING"  # another trial
    assert client.get_run(finished).info.status == "FINISHED"


def test_earlier_attempts_without_a_finished_run_with_the_objective(client, parent):
    assert runs.earlier_attempts(parent, "0", names.VAL_ACCURACY) is None  # first attempt

    trial(client, parent, "0", "FINISHED", {names.LOSS: 0.3})  # the objective is missing
    trial(client, parent, "0", "FAILED", {names.VAL_ACCURACY: 0.9})
    assert runs.earlier_attempts(parent, "0", names.VAL_ACCURACY) is None


def test_fail_trial_runs_fails_only_the_running_runs_of_that_trial(client, parent):
    running = trial(client, parent, "2")
    finished = trial(client, parent, "2", "FINISHED")
    other = trial(client, parent, "3")

    runs.fail_trial_runs(parent.run_id, "2", "worker tuner1 stopped answering")

    failed = client.get_run(running)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[names.FAILURE_REASON] == "worker tuner1 stopped answering"
    assert client.get_run(finished).info.status == "FINISHED"
    assert names.FAILURE_REASON not in client.get_run(finished).data.tags
    assert client.get_run(other).info.status == "RUNNING"
    assert names.FAILURE_REASON not in client.get_run(other).data.tags


# -- the `mlflow run` launcher run --------------------------------------------

def test_umbrella_run(client):
    assert runs.umbrella_run(EXPERIMENT, None) is None
    assert runs.umbrella_run(EXPERIMENT, "") is None

    elsewhere = client.create_run(client.create_experiment("elsewhere"), run_name="launch")
    assert runs.umbrella_run(EXPERIMENT, elsewhere.info.run_id) is None
    assert client.get_run(elsewhere.info.run_id).info.run_name == "launch"

    launcher = client.create_run(runs.experiment_id(EXPERIMENT), run_name="launch")
    assert runs.umbrella_run(EXPERIMENT, launcher.info.run_id) == launcher.info.run_id
    renamed = client.get_run(launcher.info.run_id)
    assert renamed.info.run_name == "exercise"
    assert renamed.info.status == "RUNNING"


def test_point_to(client):
    launcher = client.create_run(runs.experiment_id(EXPERIMENT)).info.run_id
    runs.point_to(launcher, names.SWEEP_RUN_ID, "abc123")
    assert client.get_run(launcher).data.tags[names.SWEEP_RUN_ID] == "abc123"


def test_experiment_id_creates_the_experiment_once(client):
    first = runs.experiment_id("fresh")
    assert client.get_experiment_by_name("fresh").experiment_id == first
    assert runs.experiment_id("fresh") == first


def test_the_experiment_is_one_of_model_training(client):
    runs.experiment_id("fresh")
    assert client.get_experiment_by_name("fresh").tags[names.EXPERIMENT_KIND] == (
        "custom_model_development")  # The UI opens it on its runs, not on traces.
    made_elsewhere = client.create_experiment("elsewhere")
    assert runs.experiment_id("elsewhere") == made_elsewhere
    assert client.get_experiment(made_elsewhere).tags[names.EXPERIMENT_KIND] == (
        "custom_model_development")


def test_a_fresh_launcher_in_the_same_experiment_becomes_the_parent(client, spec,
                                                                     project_dir):
    launcher = client.create_run(runs.experiment_id(EXPERIMENT), run_name="launch")

    parent = runs.open_parent(spec, EXPERIMENT, project_dir,
                              launcher_run_id=launcher.info.run_id)

    assert parent.run_id == launcher.info.run_id
    run = client.get_run(parent.run_id)
    assert run.info.run_name == "part1-narrow"
    assert run.data.tags[names.SWEEP_KEY] == KEY
    assert names.SWEEP_RUN_ID not in run.data.tags
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["part1-narrow.yaml"]


def test_a_launcher_elsewhere_points_to_the_parent(client, spec, project_dir):
    launcher = client.create_run(client.create_experiment("elsewhere")).info.run_id

    parent = runs.open_parent(spec, EXPERIMENT, project_dir, launcher_run_id=launcher)

    assert parent.run_id != launcher
    assert client.get_run(launcher).data.tags[names.SWEEP_RUN_ID] == parent.run_id
    assert names.SWEEP not in client.get_run(launcher).data.tags


def test_a_parent_nests_under_the_umbrella_run(client, spec, project_dir):
    umbrella = client.create_run(runs.experiment_id(EXPERIMENT)).info.run_id

    parent = runs.open_parent(spec, EXPERIMENT, project_dir, nest_under=umbrella)

    assert parent.run_id != umbrella
    assert client.get_run(parent.run_id).data.tags[names.PARENT_RUN] == umbrella
    assert ids(runs.trial_runs(umbrella)) == set()  # a nested parent is not a trial


def test_trial_runs_reads_every_page(client, parent, monkeypatch):
    monkeypatch.setattr(runs, "PAGE_SIZE", 2)  # Five runs: three pages.
    made = [trial(client, parent, str(trial_id), status="FINISHED") for trial_id in range(5)]
    assert ids(runs.trial_runs(parent.run_id)) == set(made)
    assert ids(runs.trial_runs(parent.run_id, trial_id="3")) == {made[3]}
