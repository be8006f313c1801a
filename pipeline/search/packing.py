"""Packed trials: the oracle hands this process up to K trials at once, and those that
can share a step train as one `PackedNetworks`; each is still its own MLflow run.

Keras Tuner's oracle keys running trials by tuner id, as in its distributed mode;
here the process asks for K trials under K sub-ids (`tuner0/0`, `tuner0/1`, ...),
so Bayesian search sees them as pending trials, not as finished ones. Trials with
the same activation, batch size and epochs train together (depth and widths may
differ); a Hyperband trial that continues an earlier model trains alone.

Isolation: a member whose loss becomes NaN ends FAILED alone, and its pack-mates go
on; an error in one member's logging fails only that member's run. An interrupt
(SIGTERM, Ctrl-C) ends every run of the pack KILLED; resuming runs them again.
"""

from __future__ import annotations

import os
import time

import keras_tuner
import numpy as np
from keras_tuner.engine.trial import TrialStatus

from pipeline import packed
from pipeline.device import device_arrays
from pipeline.errors import SweepStopped
from pipeline.gradients import PROBE_SIZE
from pipeline.model import EVAL_BATCH_SIZE
from pipeline.search import distributed, internals
from pipeline.tracking import datasets, names, runs, trial_run

# On the CPU, past about 100 units a layer, a member's arithmetic (every layer padded
# to the pack's widest) outweighs the step costs a pack saves: part2-wide (50-100
# units) still trains 1.1-1.2x as many trials an hour packed, part2-medium 1.4-1.6x,
# part2-narrow 2.7-2.8x (bench/bench_packing.py, 2 cores, 2026-11-24).
CPU_MAX_WIDTH = 100
CPU_MAX_PACK = 8  # Past 8, each member's share of a step grows again here.
GPU_MAX_PACK = 32
MEMORY_BUDGET = 2 * 1024 ** 3  # Bytes of weights, momenta and activations per pack.


def choose_pack(spec, space, requested=0, threads=None):
    """How many trials train at once: `requested`, else the spec's `tuner.pack`, else
    chosen from the model size and the device.

    Chosen: 1 for Part One (the exercise asks how long an epoch of each model takes
    alone), for Hyperband (its trials continue earlier models), with early stopping
    or the divergence guard (each trial stops on its own) and, on a CPU, for
    layers wider than `CPU_MAX_WIDTH` or when TensorFlow's operations run on more
    than one thread each (`threads`: TensorFlow's intra-op threads, read from its
    settings when None); else as many as the budget of trials, up to
    `CPU_MAX_PACK` (`GPU_MAX_PACK` on a GPU), and never more than fit in
    `MEMORY_BUDGET`.

    A pack runs many small operations, on a CPU one chain per core: split over
    threads as well, its epochs took 2-3x longer here (part2-medium, 2 cores). So a
    sweep that sets TensorFlow to every core (`exercise`, whose part1-wide and part3
    need them) trains its trials one at a time on a CPU.
    """
    import tensorflow as tf

    if requested or spec.tuner.pack:
        return int(requested or spec.tuner.pack)
    _, most = space.param_bounds()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    stops = spec.training.early_stopping or spec.training.divergence_guard
    if threads is None:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    if spec.part == 1 or spec.tuner.algorithm == "hyperband" or stops or (
            not gpu and (space.max_units > CPU_MAX_WIDTH or threads > 1)):
        return 1
    widest = max(space.max_units, 10)
    per_member = 4 * (3 * most + 4 * spec.training.batch_size * widest * space.max_layers)
    fits = max(1, MEMORY_BUDGET // per_member)
    return int(max(1, min(spec.tuner.max_trials, GPU_MAX_PACK if gpu else CPU_MAX_PACK, fits)))


def search(tuner, dataset, pack):
    """Keras Tuner's search loop, K trials at a time (`BaseTuner.search`'s contract)."""
    tuner.on_search_begin()
    worker = distributed.role() == "worker"
    while True:
        trials, stopped = _create_trials(tuner, pack)
        for key, group in _groups(tuner, trials):
            if key[0] == "alone":
                _run_alone(tuner, group[0][0], dataset)
            else:
                run_pack(tuner, group, dataset)
        # A worker told to wait (IDLE) asks again: the chief says when to stop.
        if stopped or (not trials and not worker):
            break
    tuner.on_search_end()


def _create_trials(tuner, pack):
    trials = []
    for index in range(pack):
        trial = tuner.oracle.create_trial(f"{tuner.tuner_id}/{index}")
        if trial.status == TrialStatus.STOPPED:
            return trials, True
        if trial.status == TrialStatus.RUNNING:
            trials.append(trial)
    return trials, False


def _groups(tuner, trials):
    """(key, [(trial, config)]) of the trials that can train in one pack; a key
    ("alone", trial id) marks one that trains alone (a Hyperband continuation)."""
    groups = {}
    for trial in trials:
        config = tuner.space.config(trial.hyperparameters.values)
        continues = "tuner/trial_id" in trial.hyperparameters.values
        key = (("alone", trial.trial_id) if continues or not packed.packable([config])
               else (config.activation, config.batch_size, config.epochs, config.initial_epoch))
        groups.setdefault(key, []).append((trial, config))
    return list(groups.items())


def _run_alone(tuner, trial, dataset):
    tuner.on_trial_begin(trial)
    internals.run_and_update_trial(tuner, trial, dataset)
    tuner.on_trial_end(trial)


def run_pack(tuner, group, dataset):
    """Trains a group of trials as one pack, then ends each trial with the oracle."""
    start = time.perf_counter()
    members, status = [], {}
    for trial, config in group:
        tuner.on_trial_begin(trial)
        tuner._outcome[trial.trial_id] = (config, start, None)
        logged = runs.earlier_attempts(tuner.parent, trial.trial_id, tuner.spec.tuner.objective)
        if logged is not None:
            status[trial.trial_id] = _already_finished(tuner, trial, *logged)
        else:
            members.append(_Member(tuner, trial, config, dataset, len(group)))
    if members:
        status.update(_train(tuner, members, dataset, start))
    # One at a time, so the oracle never sees a completed trial it has not scored.
    # Every trial of the pack is ended, even once the oracle stops the sweep.
    stopped = None
    for trial, _ in group:
        trial.status = status[trial.trial_id]
        try:
            tuner.on_trial_end(trial)
        except SweepStopped as e:
            stopped = e
    if stopped is not None:
        raise stopped


def _already_finished(tuner, trial, run_id, metrics):
    tuner.progress.say(f"trial {trial.trial_id} already finished in MLflow run {run_id}; "
                       "not training it again")
    config, start, _ = tuner._outcome[trial.trial_id]
    tuner._outcome[trial.trial_id] = (config, start, metrics)
    return _complete(tuner, trial, {k: metrics[k] for k in (names.VAL_ACCURACY,
                                                            names.VAL_LOSS)})


class _Member:
    """One trial of a pack: its alone model (for its initial weights), order and run."""

    def __init__(self, tuner, trial, config, dataset, pack_size):
        self.trial = trial
        self.config = config
        self.model = tuner._fresh_model(trial, config, len(dataset.x_train))  # As alone.
        self.order = packed.keras_batch_order(len(dataset.x_train))
        # No probe: the pack measures every member's gradients at once (`_epoch`).
        self.run = trial_run.start_trial_run(
            tuner.parent, tuner.spec.name, trial.trial_id, tuner.tuner_id,
            tags={names.PACK_SIZE: pack_size})
        self.run.log_params(config)
        datasets.log(self.run.run_id, dataset)
        self.failed = None


def _train(tuner, members, dataset, start):
    arrays = device_arrays(dataset)
    network = packed.PackedNetworks([m.config for m in members], [m.model for m in members],
                                    [m.order for m in members])
    fit_start = time.perf_counter()
    try:
        for epoch in range(members[0].config.initial_epoch, members[0].config.epochs):
            _epoch(network, members, arrays, epoch + 1)
    except Exception as e:
        for member in members:
            if member.failed is None:
                member.failed = e
                member.run.fail(e)
        raise
    except BaseException:
        for member in members:
            if member.failed is None:
                member.run.kill()
        raise
    timing = {names.FIT_SECONDS: time.perf_counter() - fit_start}
    tuner.wait_for_logging()
    test = network.evaluate(arrays["x_test"], arrays["y_test"], EVAL_BATCH_SIZE)
    return {member.trial.trial_id: _finish(tuner, network, index, member, arrays, timing,
                                           start, [float(t[index]) for t in test])
            for index, member in enumerate(members)}


def _epoch(network, members, arrays, epoch):
    epoch_start = time.perf_counter()
    loss, accuracy = network.train_epoch(arrays["x_train"], arrays["y_train"])
    val_loss, val_accuracy = network.evaluate(arrays["x_val"], arrays["y_val"])
    seconds = time.perf_counter() - epoch_start
    # As `GradientProbe`: on the first PROBE_SIZE training images, after the epoch.
    sizes = network.gradient_sizes(arrays["x_train"][:PROBE_SIZE],
                                   arrays["y_train"][:PROBE_SIZE])
    for index, member in enumerate(members):
        if member.failed is not None:
            continue
        metrics = {names.LOSS: loss[index], names.ACCURACY: accuracy[index],
                   names.VAL_LOSS: val_loss[index], names.VAL_ACCURACY: val_accuracy[index],
                   names.EPOCH_SECONDS: seconds}
        metrics.update({names.gradient(i): g for i, g in enumerate(sizes[index])})
        member.run.log_epoch(epoch, metrics)
        if not np.isfinite(loss[index]):
            member.failed = keras_tuner.errors.FailedTrialError(
                f"loss became NaN in epoch {epoch} (training diverged)")
            member.run.fail(member.failed)


def _finish(tuner, network, index, member, arrays, timing, start, test_metrics):
    trial, config = member.trial, member.config
    if member.failed is not None:
        trial.message = f"{member.failed.__class__.__name__}: {member.failed}"
        return TrialStatus.FAILED
    model = network.member_model(index, member.model)
    member.run.finish(model, (arrays["x_test"], arrays["y_test"]),
                      f"{tuner.spec.name} trial {trial.trial_id}: {config.describe()}",
                      {**timing, names.TRIAL_SECONDS: time.perf_counter() - start,
                       names.BEST_EPOCH: config.epochs},  # Packs train every epoch.
                      EVAL_BATCH_SIZE, test_metrics, confirm=tuner._lease(trial.trial_id))
    tuner._logging.append((trial.trial_id, member.run))
    outcome = tuner.settle(trial.trial_id) if distributed.role() == "worker" else "whole"
    if outcome == "superseded":
        return TrialStatus.FAILED
    if outcome == "unlogged":  # The oracle hands it out again.
        trial.message = "its run could not be logged whole"
        return TrialStatus.INVALID
    metrics = {k: member.run.history[k][-1] for k in (names.VAL_ACCURACY, names.VAL_LOSS)}
    tuner._outcome[trial.trial_id] = (config, start, metrics)
    return _complete(tuner, trial, metrics)


def _complete(tuner, trial, metrics):
    tuner.oracle.update_trial(trial.trial_id, metrics)
    return TrialStatus.COMPLETED
