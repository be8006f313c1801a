"""Packed trials through the whole pipeline: each trial as if trained alone, each its
own MLflow run, a diverging trial failing alone."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipeline.cli.commands import cli
from pipeline.search.packing import CPU_MAX_PACK
from pipeline.tracking import names
from pipeline.tracking import runs as runs_module

pytestmark = pytest.mark.slow

SMALL = ["--train-limit", "2000", "--epochs", "2"]


def sweep(runner, mnist_path, spec, experiment, *args):
    result = runner.invoke(cli, ["sweep", spec, "--data", mnist_path, *SMALL,
                                 "--experiment", experiment, "--directory", experiment, *args])
    assert result.exit_code == 0, result.output
    return result


def trials(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.{names.TRIAL_ID} != ''")
    return {r.data.tags[names.TRIAL_ID]: r for r in runs}


def history(client, run, key):
    points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.step for m in points], np.array([m.value for m in points])


@pytest.mark.parametrize("spec", ["part1-narrow", "part2-narrow"])
def test_packed_trials_equal_trials_trained_alone(runner, client, mnist_path, small_mnist,
                                                  spec):
    sweep(runner, mnist_path, spec, "alone", "--max-trials", "3", "--pack", "1")
    result = sweep(runner, mnist_path, spec, "packed", "--max-trials", "3", "--pack", "3")
    assert "up to 3 at once" in result.output
    alone, packed = trials(client, "alone"), trials(client, "packed")
    assert sorted(alone) == sorted(packed) == ["0", "1", "2"]
    for trial_id, run in packed.items():
        twin = alone[trial_id]
        assert run.info.status == twin.info.status == "FINISHED"
        assert run.data.params == twin.data.params
        assert run.data.tags[names.PACK_SIZE] == "3" and names.PACK_SIZE not in twin.data.tags
        assert set(run.data.metrics) == set(twin.data.metrics)
        assert run.data.metrics[names.BEST_EPOCH] == twin.data.metrics[names.BEST_EPOCH] == 2
        for key in (names.LOSS, names.VAL_LOSS):
            steps, values = history(client, run, key)
            assert steps == [1, 2]
            assert values == pytest.approx(history(client, twin, key)[1], rel=1e-4), key
        for key in (names.gradient(0), names.gradient(1)):
            assert history(client, run, key)[1] == pytest.approx(
                history(client, twin, key)[1], rel=1e-3), key
        for key in (names.ACCURACY, names.VAL_ACCURACY, names.TEST_ACCURACY):
            assert history(client, run, key)[1] == pytest.approx(
                history(client, twin, key)[1], abs=1e-3), key
        assert names.CURVES in [a.path for a in client.list_artifacts(run.info.run_id)]

    # The logged model is a plain Sequential that reproduces its test accuracy.
    best = max(packed.values(), key=lambda r: r.data.metrics[names.VAL_ACCURACY])
    model = mlflow.keras.load_model(runs_module.model_uri(best.info.run_id))
    accuracy = np.mean(model.predict(small_mnist.x_test, verbose=0).argmax(1)
                       == small_mnist.y_test.argmax(1))
    assert accuracy == pytest.approx(best.data.metrics[names.TEST_ACCURACY], abs=1e-6)


def test_a_diverging_trial_fails_alone_and_its_pack_mate_finishes(
        runner, client, mnist_path, tmp_path):
    spec = tmp_path / "diverge.yaml"
    spec.write_text(
        "name: diverge\ndescription: relu at a huge learning rate diverges\n"
        "search_space: {hidden_layers: 2, units: 64, activation: relu,\n"
        "               learning_rate: [1000000.0, 0.01]}\n"
        "tuner: {algorithm: grid, max_trials: 2, pack: 2}\n")
    result = sweep(runner, mnist_path, str(spec), "diverge")
    assert "up to 2 at once" in result.output and "FAILED (" in result.output
    by_lr = {float(r.data.params[names.LEARNING_RATE]): r
             for r in trials(client, "diverge").values()}
    failed, finished = by_lr[1_000_000.0], by_lr[0.01]
    assert failed.info.status == "FAILED"
    assert "NaN" in failed.data.tags[names.FAILURE_REASON]
    assert finished.info.status == "FINISHED"
    parent = client.get_run(finished.data.tags[names.PARENT_RUN])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.BEST_TRIAL] == finished.data.tags[names.TRIAL_ID]


def peak_rss_of_sweep(mnist_path, trials, directory):
    """Runs a part2-narrow sweep (default pack) in its own process; its peak RSS in MiB."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sweep", "part2-narrow", "--data", mnist_path,
         "--train-limit", "500", "--epochs", "1", "--max-trials", str(trials),
         "--experiment", directory, "--directory", directory],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:]
    return usage.ru_maxrss / 1024


def test_a_packed_30_trial_sweep_peaks_within_1_2x_the_memory_of_a_3_trial_one(
        client, mnist_path, workdir):
    few = peak_rss_of_sweep(mnist_path, 3, "few")
    many = peak_rss_of_sweep(mnist_path, 30, "many")
    sizes = [int(r.data.tags[names.PACK_SIZE]) for r in trials(client, "many").values()]
    assert len(sizes) == 30 and max(sizes) == CPU_MAX_PACK  # Packed, as big as allowed.
    assert many <= 1.2 * few, f"30 trials peaked at {many:.0f} MiB, 3 at {few:.0f} MiB"


STOPPING_SPEC = """\
name: packstop
description: early stopping and the divergence guard, per member of a pack
search_space: {hidden_layers: 1, units: {min: 16, max: 32, step: 16}, activation: sigmoid,
               learning_rate: [0.5, 0.2, 0.001]}
training: {epochs: 6, early_stopping: {patience: 1, min_delta: 0.03},
           divergence_guard: {epochs: 2, below: 0.5}}
tuner: {algorithm: random, max_trials: 6, seed: 5}
"""


def test_a_packed_sweep_stops_each_member_as_the_same_sweep_alone(
        runner, client, mnist_path, tmp_path):
    """Early stopping and the divergence guard hold per member: a member that stops
    keeps its best epoch's model and metrics while its pack-mates go on; one stuck at
    chance ends FAILED with the reason; everything as when each trains alone."""
    spec = tmp_path / "packstop.yaml"
    spec.write_text(STOPPING_SPEC)
    args = ["--train-limit", "2000", "--max-trials", "6", "--epochs", "6"]
    by_itself = sweep(runner, mnist_path, str(spec), "alone", *args, "--pack", "1")
    result = sweep(runner, mnist_path, str(spec), "packed", *args, "--pack", "6")
    assert "up to 6 at once" in result.output
    for output in (by_itself.output, result.output):  # Expected failures: one line each.
        assert "Traceback" not in output and "divergence guard))" in output
    alone, packed = trials(client, "alone"), trials(client, "packed")
    assert sorted(alone) == sorted(packed) == [str(i) for i in range(6)]
    statuses = {r.info.status for r in alone.values()}
    assert statuses == {"FINISHED", "FAILED"}  # The guard failed the slow learners.
    stopped = [r for r in alone.values() if r.data.tags.get(names.STOPPED_EARLY) == "true"]
    assert stopped, "no trial stopped early: the test would not tell the paths apart"
    for trial_id, run in packed.items():
        twin = alone[trial_id]
        assert run.info.status == twin.info.status, trial_id
        assert run.data.tags[names.PACK_SIZE] == "6"
        steps, values = history(client, run, names.VAL_ACCURACY)
        assert steps == history(client, twin, names.VAL_ACCURACY)[0], trial_id
        assert values == pytest.approx(history(client, twin, names.VAL_ACCURACY)[1], abs=1e-3)
        if run.info.status == "FAILED":
            assert "divergence guard" in run.data.tags[names.FAILURE_REASON]
            assert run.data.tags[names.FAILURE_REASON] == twin.data.tags[names.FAILURE_REASON]
            continue
        for key in (names.BEST_EPOCH,):
            assert run.data.metrics[key] == twin.data.metrics[key], trial_id
        assert run.data.tags[names.STOPPED_EARLY] == twin.data.tags[names.STOPPED_EARLY]
        assert run.data.metrics[names.TEST_ACCURACY] == pytest.approx(
            twin.data.metrics[names.TEST_ACCURACY], abs=1e-3), trial_id
    # The oracle scored each trial by its kept epoch, packed as alone.
    parents = {name: client.get_run(next(iter(runs.values())).data.tags[names.PARENT_RUN])
               for name, runs in (("alone", alone), ("packed", packed))}
    assert parents["packed"].data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(
        parents["alone"].data.metrics[names.BEST_VAL_ACCURACY], abs=1e-3)
    best = parents["packed"].data.tags[names.BEST_TRIAL]
    kept = int(packed[best].data.metrics[names.BEST_EPOCH])
    at_kept = dict(zip(*history(client, packed[best], names.VAL_ACCURACY), strict=True))[kept]
    assert parents["packed"].data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(at_kept)
