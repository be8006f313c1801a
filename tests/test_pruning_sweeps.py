"""Pruning across trials in real sweeps: alone, packed, resumed and distributed, each
decision the one the rule gives against the trials that reached the rung before."""

import statistics

import pytest
from servers import SweepProcess

from pipeline.cli.commands import cli
from pipeline.tracking import names

pytestmark = pytest.mark.slow

RUNG, EPOCHS, MIN_TRIALS = 2, 3, 2
SPEC = f"""name: pruned
description: learning rates far apart, so that some trials fall behind at epoch {RUNG}
search_space:
  hidden_layers: 1
  units: {{min: 16, max: 64, step: 16}}
  activation: sigmoid
  learning_rate: [0.003, 0.03, 0.3, 1.0]
training: {{epochs: {EPOCHS}, batch_size: 64}}
tuner:
  algorithm: random
  max_trials: 6
  seed: 5
  pruning: {{rungs: [{RUNG}], rule: median, min_trials: {MIN_TRIALS}}}
"""


@pytest.fixture
def spec_path(workdir):
    path = workdir / "pruned.yaml"
    path.write_text(SPEC)
    return str(path)


def sweep(runner, spec_path, mnist_path, *extra, trials=6):
    result = runner.invoke(cli, ["sweep", spec_path, "--data", mnist_path, "--train-limit",
                                 "1000", "--epochs", str(EPOCHS), "--max-trials", str(trials),
                                 *extra])
    assert result.exit_code == 0, result.output
    return result.output


def trials(client):
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    found = client.search_runs([experiment.experiment_id],
                               f"tags.{names.TRIAL_ID} != '' and tags.{names.SWEEP} = 'pruned'")
    assert all(run.info.status == "FINISHED" for run in found)
    return sorted(found, key=lambda run: int(run.data.tags[names.TRIAL_ID]))


def history(client, run, key=names.VAL_ACCURACY):
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                    key=lambda m: m.step)]


def check_trial(client, run, pruned):
    """A trial's run says whether it was pruned, and holds its kept epoch's results."""
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[names.PRUNED] == str(pruned).lower(), tags
    accuracy = history(client, run)
    if pruned:
        assert tags[names.PRUNED_AT] == str(RUNG) and len(accuracy) == RUNG
        assert tags[names.STOPPED_EARLY] == "true"
    else:
        assert names.PRUNED_AT not in tags and len(accuracy) == EPOCHS
    # The kept epoch is the best one so far, pruned or not; its model was tested.
    assert metrics[names.BEST_EPOCH] == accuracy.index(max(accuracy)) + 1
    assert names.TEST_ACCURACY in metrics


def check_decisions(client, runs):
    """Each trial was pruned exactly when, at the rung, it was below the median of the
    trials that had reached the rung before it (trials report in id order)."""
    at_rung = [history(client, run)[RUNG - 1] for run in runs]
    pruned = []
    for i, run in enumerate(runs):
        others = at_rung[:i]
        expected = len(others) >= MIN_TRIALS and at_rung[i] < statistics.median(others)
        check_trial(client, run, expected)
        pruned.append(expected)
    assert any(pruned) and not all(pruned), at_rung  # The test sweep prunes some.
    return pruned


@pytest.mark.parametrize("pack", ["1", "3"], ids=["alone", "packed"])
def test_trials_behind_the_median_at_the_rung_stop_and_keep_their_best_epoch(
        runner, client, spec_path, mnist_path, pack):
    output = sweep(runner, spec_path, mnist_path, "--pack", pack)
    runs = trials(client)
    assert len(runs) == 6
    if pack != "1":  # Trained in packs: a pruned member stops, its pack-mates go on.
        assert {run.data.tags.get(names.PACK_SIZE) for run in runs} == {pack}
    check_decisions(client, runs)
    # The parent's best is a kept epoch's val_accuracy.
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.{names.SWEEP_KEY} != ''")
    kept = [history(client, run)[int(run.data.metrics[names.BEST_EPOCH]) - 1] for run in runs]
    assert parent.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(max(kept))
    assert "Traceback" not in output
    # Each pruned trial's line says so, with its rung and the epoch it kept.
    for run in runs:
        if run.data.tags.get(names.PRUNED) == "true":
            line = next(x for x in output.splitlines()
                        if f"trial {run.data.tags[names.TRIAL_ID]} (" in x)
            assert (f"(pruned at epoch {run.data.tags[names.PRUNED_AT]}, kept "
                    f"{int(run.data.metrics[names.BEST_EPOCH])})") in line


def test_a_resumed_sweep_prunes_against_the_trials_of_the_first_run(
        runner, client, spec_path, mnist_path):
    sweep(runner, spec_path, mnist_path, trials=3)
    sweep(runner, spec_path, mnist_path, trials=6)  # Resumed: the rung's records reloaded.
    runs = trials(client)
    assert len(runs) == 6
    check_decisions(client, runs)


def test_workers_prune_against_every_workers_trials(tracking_server, client, spec_path,
                                                     mnist_path, workdir):
    process = SweepProcess([spec_path, "--data", mnist_path, "--train-limit", "1000",
                            "--epochs", str(EPOCHS), "--max-trials", "6", "--workers", "2",
                            "--pack", "1"],
                           workdir)
    assert process.wait(600) == 0, process.text
    runs = trials(client)
    assert len(runs) == 6
    assert len({run.data.tags[names.WORKER] for run in runs}) == 2
    at_rung = {run.info.run_id: history(client, run)[RUNG - 1] for run in runs}
    pruned = [run for run in runs if run.data.tags[names.PRUNED] == "true"]
    assert pruned, at_rung
    for run in runs:
        check_trial(client, run, run in pruned)
    for run in pruned:  # Below the median of some trials that reached the rung, which
        # on two workers may have run on either.
        others = [v for rid, v in at_rung.items() if rid != run.info.run_id]
        assert at_rung[run.info.run_id] < max(others)
