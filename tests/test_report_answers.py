"""The report's answers from a small hand-made tracking store: no training, seconds.

The store holds what the sweeps would log (parent runs, trial runs with per-epoch
histories), written with `MlflowClient` under the names of `pipeline.tracking.names`,
so each expected number below is known exactly.
"""

import itertools
import json
import shutil

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag

from pipeline.report import answers as answers_module
from pipeline.report import publish, render
from pipeline.report.answers import answer
from pipeline.report.load import load_sweeps
from pipeline.spec.schema import EXERCISE
from pipeline.tracking import names

EXPERIMENT = "mnist-sweeps"
FIGURES = ("curves.png", "accuracy_vs_params.png", "gradients.png", "best_so_far.png")


def dense_counts(units):
    """(weights, biases) of an MLP 784 -> units... -> 10."""
    widths = [784, *units, 10]
    weights = sum(a * b for a, b in itertools.pairwise(widths))
    return weights, sum(widths[1:])


class Store:
    """Writes parent and trial runs as the sweeps do; remembers the trial run ids."""

    def __init__(self):
        self.client = mlflow.MlflowClient()
        self.exp_id = self.client.create_experiment(EXPERIMENT)

    def parent(self, sweep, start_time):
        run = self.client.create_run(self.exp_id, start_time=start_time, run_name=sweep,
                                     tags={names.SWEEP: sweep})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def trial(self, parent_id, sweep, trial_id, units, val, test, *, activation="sigmoid",
              seconds=None, grads=None, status="FINISHED", log_val=True, epochs=None,
              kept=None):
        """One trial: `val` is its validation accuracy per epoch (step 1, 2, ...);
        `grads` maps a step to the mean |gradient| per layer; `kept`: the epoch
        early stopping kept (it trained `len(val)` of `epochs`)."""
        tags = {names.SWEEP: sweep, names.TRIAL_ID: str(trial_id), names.PARENT_RUN: parent_id}
        if kept:
            tags[names.STOPPED_EARLY] = "true"
        run_id = self.client.create_run(self.exp_id, tags=tags).info.run_id
        weights, biases = dense_counts(units)
        params = {names.HIDDEN_LAYERS: len(units), names.UNITS: ",".join(map(str, units)),
                  names.ACTIVATION: activation, names.EPOCHS: epochs or len(val)}
        metrics = [Metric(names.TRAINABLE_PARAMS, weights + biases, 0, 0),
                   Metric(names.WEIGHTS, weights, 0, 0), Metric(names.BIASES, biases, 0, 0),
                   Metric(names.TEST_ACCURACY, test, 0, 0),
                   Metric(names.TEST_LOSS, 1 - test, 0, 0)]
        if kept:
            metrics.append(Metric(names.BEST_EPOCH, kept, 0, len(val)))
        seconds = seconds or [1.0] * len(val)
        for step, (v, s) in enumerate(zip(val, seconds, strict=True), start=1):
            metrics += [Metric(names.ACCURACY, v + 0.03, step, step),
                        Metric(names.LOSS, 1 - v - 0.03, step, step),
                        Metric(names.VAL_LOSS, 1 - v, step, step),
                        Metric(names.EPOCH_SECONDS, s, step, step)]
            if log_val:
                metrics.append(Metric(names.VAL_ACCURACY, v, step, step))
        for step, layers in (grads or {}).items():
            metrics += [Metric(names.gradient(i), g, step, step) for i, g in enumerate(layers)]
        self.client.log_batch(run_id, metrics=metrics,
                              params=[Param(k, str(v)) for k, v in params.items()],
                              tags=[RunTag("note", "test")])
        if status != "RUNNING":
            self.client.set_terminated(run_id, status)
        return run_id


# Part One, wide: 12 epochs, validation accuracy 0.900, 0.905, ... (0.945 after epoch 10).
WIDE_VAL = [0.9 + 0.005 * i for i in range(12)]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The store, built once per module (creating an SQLite store takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the experiment's artifacts go under `folder`
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            ids = build_store()
        finally:
            mlflow.set_tracking_uri(None)
    return folder / "mlflow.db", ids


@pytest.fixture
def store(template, workdir):
    """A copy of the store where the test's tracking URI points; the trial run ids."""
    db, ids = template
    shutil.copyfile(db, workdir / "mlflow.db")
    return ids


def build_store():
    """Every exercise sweep except part2-wide, with decoys that must be ignored.

    Over the Part One and Part Two trials that count, test accuracy rises strictly
    with the parameter count, so Spearman's rho is exactly 1.
    """
    s = Store()
    ids = {}
    # part1-wide: the newest parent has no usable trial, so the one before it counts.
    old = s.parent("part1-wide", 2000)
    ids["wide"] = s.trial(old, "part1-wide", 0, [400], WIDE_VAL, 0.97,
                          seconds=[1.0] * 11 + [50.0],
                          grads={1: [0.02, 0.01], 12: [0.002, 0.001]})
    ids["wide_other"] = s.trial(old, "part1-wide", 1, [384], [0.93, 0.94], 0.96)
    newest = s.parent("part1-wide", 3000)
    s.trial(newest, "part1-wide", 0, [500], [0.99], 0.99, status="FAILED")
    s.trial(newest, "part1-wide", 1, [500], [0.99], 0.99, log_val=False)
    # part1-narrow: the newer parent counts, with its FINISHED trials only.
    ids["narrow_old_parent"] = s.parent("part1-narrow", 1000)
    s.trial(ids["narrow_old_parent"], "part1-narrow", 0, [100], [0.99], 0.10)
    ids["narrow_parent"] = s.parent("part1-narrow", 2000)
    ids["narrow"] = s.trial(ids["narrow_parent"], "part1-narrow", 0, [50], [0.8, 0.92, 0.9],
                            0.91, seconds=[6.0, 1.0, 2.0], grads={1: [0.05]})
    ids["narrow_small"] = s.trial(ids["narrow_parent"], "part1-narrow", 1, [45], [0.85],
                                  0.90)
    s.trial(ids["narrow_parent"], "part1-narrow", 2, [49], [0.995], 0.05, status="RUNNING")
    s.trial(ids["narrow_parent"], "part1-narrow", 3, [48], [0.995], 0.05, status="FAILED")
    # part2-narrow stays at or below 20% (a FAILED trial above it does not count);
    # part2-medium beats it on test accuracy only.
    p2n = s.parent("part2-narrow", 1000)
    ids["p2n_best"] = s.trial(p2n, "part2-narrow", 0, [8] * 10, [0.10, 0.13], 0.11,
                              grads={1: [1e-6] + [1e-4] * 9 + [1e-2]})
    s.trial(p2n, "part2-narrow", 1, [16] * 10, [0.10, 0.12], 0.12)
    s.trial(p2n, "part2-narrow", 2, [24] * 10, [0.5], 0.5, status="FAILED")
    p2m = s.parent("part2-medium", 1000)
    ids["p2m"] = s.trial(p2m, "part2-medium", 0, [32] * 10, [0.15], 0.25,
                         grads={1: [1e-5, 1e-3]})
    # The activation sweep: the best trial of each activation.
    act = s.parent("activation", 1000)
    s.trial(act, "activation", 0, [32] * 10, [0.11], 0.11)
    s.trial(act, "activation", 1, [32] * 10, [0.85], 0.84, activation="tanh")
    ids["tanh"] = s.trial(act, "activation", 2, [32] * 10, [0.90], 0.89, activation="tanh")
    s.trial(act, "activation", 3, [32] * 10, [0.95], 0.94, activation="relu")
    # part3: only the 3+ layer trials compete. Its best peaked at epoch 2, early
    # stopping ended it after 3 of 8 and kept epoch 2's model: it is scored 0.95
    # (its last epoch's 0.94 would lose to trial 2's 0.945).
    p3 = s.parent("part3", 1000)
    s.trial(p3, "part3", 0, [256, 128], [0.99], 0.99, activation="relu")
    ids["p3"] = s.trial(p3, "part3", 1, [256, 128, 64], [0.93, 0.95, 0.94], 0.915,
                        activation="relu", epochs=8, kept=2)
    s.trial(p3, "part3", 2, [64, 64, 64], [0.90, 0.91, 0.945], 0.91, activation="relu")
    return ids


def test_load_sweeps_takes_the_latest_parent_with_finished_trials(store):
    sweeps = load_sweeps(EXPERIMENT)
    assert list(sweeps) == [n for n in EXERCISE if n != "part2-wide"]
    narrow = sweeps["part1-narrow"]
    assert narrow.parent_run_id == store["narrow_parent"]
    assert {t.run_id for t in narrow.trials} == {store["narrow"], store["narrow_small"]}
    assert narrow.best.run_id == store["narrow"]
    # The newest part1-wide parent has only a FAILED trial and one without val_accuracy.
    assert {t.run_id for t in sweeps["part1-wide"].trials} == {
        store["wide"], store["wide_other"]}
    trial = narrow.best
    assert trial.label == "1x50 sigmoid" and trial.hidden_layers == 1
    assert trial.history(names.EPOCH_SECONDS) == [(1, 6.0), (2, 1.0), (3, 2.0)]
    assert trial.best_epoch() == 2
    assert sweeps["part2-narrow"].best.gradients(1) == [1e-6] + [1e-4] * 9 + [1e-2]
    assert sweeps["part3"].best.label == "256-128 relu"  # answer() keeps 3+ layers
    assert load_sweeps("no-such-experiment") == {}


def test_answers_part_one(store):
    part1 = answer(load_sweeps(EXPERIMENT))["part1"]
    wide, narrow = part1["part1-wide"], part1["part1-narrow"]
    assert wide["run_id"] == store["wide"] and narrow["run_id"] == store["narrow"]
    assert wide["val_accuracy_epoch_10"] == WIDE_VAL[9]
    assert narrow["val_accuracy_epoch_10"] is None  # three epochs run
    assert wide["median_epoch_seconds"] == 1.0  # not the mean: one slow epoch
    assert narrow["median_epoch_seconds"] == 2.0
    assert wide["train_val_gap"] == pytest.approx(0.03)
    assert wide["test_val_gap"] == pytest.approx(0.97 - WIDE_VAL[-1])
    assert narrow["test_val_gap"] == pytest.approx(0.91 - 0.9)
    assert (narrow["weights"], narrow["biases"], narrow["trainable_params"]) == (
        39_700, 60, 39_760)
    assert narrow["best_epoch"] == 2 and wide["best_epoch"] == 12
    assert narrow["epochs"] == 3 and narrow["architecture"] == "1x50 sigmoid"


def test_answers_part_two_gradients_and_correlation(store):
    sweeps = load_sweeps(EXPERIMENT)
    answers = answer(sweeps)
    part2 = answers["part2"]
    assert set(part2) == {"part2-narrow", "part2-medium"}
    assert part2["part2-narrow"]["beat_chance"] is False
    assert part2["part2-medium"]["beat_chance"] is True
    assert part2["part2-narrow"]["best"]["run_id"] == store["p2n_best"]
    assert part2["part2-narrow"]["best_test_accuracy"] == 0.12
    assert [t["units"] for t in part2["part2-narrow"]["trials"]] == [
        ",".join(["8"] * 10), ",".join(["16"] * 10)]  # by parameter count

    grads = answers["gradients"]
    assert set(grads) == {"part1-wide", "part2-narrow", "part2-medium"}  # narrow: 1 layer
    assert grads["part2-narrow"]["ratio"] == pytest.approx(1e-4)
    assert grads["part2-narrow"]["run_id"] == store["p2n_best"]
    assert grads["part1-wide"]["ratio"] == pytest.approx(2.0)

    corr = answers["correlation"]
    assert corr["n"] == 7  # the counted Part One and Part Two trials, no decoys
    assert corr["rho"] == pytest.approx(1.0)
    # Exact: 2 of the 7! pairings are as extreme (rho = +1 or -1), never p = 0...
    assert corr["exact"] and corr["p_value"] == pytest.approx(2 / 5040)
    assert corr["clear"] is False  # ...and 7 trials are too few to call it clear.
    few = answer({"part1-narrow": sweeps["part1-narrow"]})["correlation"]
    assert few == {"n": 2, "rho": None, "p_value": None, "clear": False,
                   "sweeps": {"part1-narrow": 2}}  # Named with the sweeps it covers.

    acts = answers["activation"]
    assert list(acts) == ["relu", "sigmoid", "tanh"]
    assert acts["tanh"]["run_id"] == store["tanh"]


class Trial:
    def __init__(self, params, accuracy):
        self.metrics = {names.TRAINABLE_PARAMS: params, names.TEST_ACCURACY: accuracy}


def test_a_correlation_is_clear_only_over_enough_trials_and_p_is_never_0():
    correlation = answers_module._correlation
    three = correlation([Trial(p, a) for p, a in [(1, 0.1), (2, 0.2), (3, 0.3)]])
    assert three["rho"] == pytest.approx(1.0)
    assert three["p_value"] == pytest.approx(2 / 6) and three["clear"] is False
    many = correlation([Trial(p, p / 100 + (p % 3) / 1000) for p in range(1, 21)])
    assert many["clear"] is True and not many["exact"]
    assert 0 < many["p_value"] <= 1 / (answers_module.PERMUTATIONS + 1) * 2
    flat = correlation([Trial(p, 0.5) for p in range(10)])
    assert flat["rho"] is None and flat["clear"] is False


def test_answers_part_three_and_missing(store):
    answers = answer(load_sweeps(EXPERIMENT))
    assert answers["missing"] == ["part2-wide"]
    part3 = answers["part3"]
    assert part3["run_id"] == store["p3"]  # the 2-layer trial does not compete
    assert part3["best_epoch"] == 2
    assert part3["beats_target"] == {"validation": True, "test": False}
    assert set(part3["comparison"]) == {"part3", "part1-wide", "part1-narrow"}
    assert part3["val_accuracy"] == pytest.approx(0.95)  # The kept epoch's.
    assert {k: part3["comparison"]["part3"][k]
            for k in ("epochs", "epochs_trained", "best_epoch")} == {
        "epochs": 8, "epochs_trained": 3, "best_epoch": 2}
    assert part3["comparison"]["part1-wide"]["epochs_trained"] == 12
    assert part3["best_of_parts_one_and_three"] == "part1-wide"
    # 91.5% beats neither published MLP (98.40% and 98.47%).
    assert [(r["test_accuracy"], r["beaten"]) for r in part3["references"]] == [
        (0.984, False), (0.9847, False)]

    nothing = answer({})
    assert nothing["missing"] == list(EXERCISE)
    assert nothing["part3"] is None and nothing["activation"] is None
    assert nothing["part1"] == {} and nothing["correlation"]["n"] == 0


def test_write_logs_the_report_files_to_a_finished_report_run(store, workdir, client):
    out, run_id, answers = publish.write(EXPERIMENT, workdir / "out")
    files = {*names.REPORT_FILES, *FIGURES}
    assert {p.name for p in out.iterdir()} == files  # no staging folder left behind
    for figure in FIGURES:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(answers))
    assert answers["part3"]["run_id"] == store["p3"]
    markdown = (out / "report.md").read_text()
    assert "| 784-800-10, cross-entropy | 98.40% | Simard, Steinkraus and Platt, ICDAR 2003" \
        in markdown
    assert "| part3 | 256-128-64 relu | 91.50% | 3 (8) | 2 |" in markdown
    assert f"`part2-wide`: {render.missing_command('part2-wide')}" in markdown
    assert store["narrow"] in markdown and "| training - validation gap |" in markdown

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == names.REPORT
    assert run.data.tags[names.REPORT] == "exercise"
    assert run.info.experiment_id == client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert {a.path for a in client.list_artifacts(run_id)} == files
    # The report run is no sweep: the next report reads the same sweeps.
    assert answer(load_sweeps(EXPERIMENT)) == answers


def test_report_run_is_the_launcher_run_of_the_same_experiment(store, client):
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    launcher = client.create_run(exp_id, run_name="launcher").info.run_id
    assert publish._report_run(EXPERIMENT, launcher) == launcher
    run = client.get_run(launcher)
    assert run.info.run_name == names.REPORT and run.data.tags[names.REPORT] == "exercise"

    elsewhere = client.create_run(client.create_experiment("other")).info.run_id
    run_id = publish._report_run(EXPERIMENT, elsewhere)
    assert run_id != elsewhere
    assert client.get_run(run_id).info.experiment_id == exp_id
    assert client.get_run(elsewhere).data.tags[names.REPORT_RUN_ID] == run_id
