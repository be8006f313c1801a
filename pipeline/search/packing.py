"""Packed trials: the oracle hands this process up to K trials at once, and those that
can share a step train as one `PackedNetworks`; each is still its own MLflow run and
goes through the same lifecycle as a trial alone (`pipeline.search.lifecycle`): this
module only groups trials, asks the oracle for K at a time and trains a pack.

Keras Tuner's oracle keys running trials by tuner id, as in its distributed mode;
here the process asks for K trials under K sub-ids (`tuner0/0`, `tuner0/1`, ...),
so Bayesian search sees them as pending trials, not as finished ones. Trials with
the same activation, batch size and epochs train together (depth and widths may
differ); a Hyperband trial that continues an earlier model trains alone.

Isolation: a member whose loss becomes NaN, or that early stopping or the divergence
guard stops, stops alone (its results are those of the epoch it keeps) and its
pack-mates go on; the pack ends when every member has stopped. An error in one
member's logging fails only that member's run. An interrupt (SIGTERM, Ctrl-C) ends
every run of the pack KILLED; resuming runs them again.
"""

from __future__ import annotations

import os
import time

from keras_tuner.engine.trial import TrialStatus

from pipeline.search import distributed, internals, interrupts, lifecycle
from pipeline.tracking import names
from pipeline.training import packed
from pipeline.training.device import device_arrays
from pipeline.training.gradients import PROBE_SIZE
from pipeline.training.model import EVAL_BATCH_SIZE

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
    alone), for Hyperband (its trials continue earlier models) and, on a CPU, for
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
    if threads is None:
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    if spec.part == 1 or spec.tuner.algorithm == "hyperband" or (
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
        tuner.pre_create_trial()
        trials, stopped = _create_trials(tuner, pack)
        for key, group in _groups(tuner, trials):
            if key[0] == "alone":
                _run_alone(tuner, group[0], dataset)
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
    """(key, [trial]) of the trials that can train in one pack; a key ("alone", trial
    id) marks one that trains alone (a Hyperband continuation, or an SGD that packs do
    not implement: the user is told once)."""
    groups = {}
    for trial in trials:
        config = tuner.space.config(trial.hyperparameters.values)
        continues = "tuner/trial_id" in trial.hyperparameters.values
        if not continues and not packed.packable([config]) and not _told_alone:
            _told_alone.append(True)
            tuner.progress.say("trials with a learning-rate schedule, warm-up, weight decay "
                               "or Nesterov momentum train alone: packs run plain SGD")
        key = (("alone", trial.trial_id) if continues or not packed.packable([config])
               else (config.activation, config.batch_size, config.epochs, config.initial_epoch))
        groups.setdefault(key, []).append(trial)
    return list(groups.items())


_told_alone = []  # Said once per process.


def _run_alone(tuner, trial, dataset):
    tuner.on_trial_begin(trial)
    internals.run_and_update_trial(tuner, trial, dataset)
    tuner.on_trial_end(trial)


def run_pack(tuner, trials, dataset):
    """Trains a group of trials as one pack, then ends each trial with the oracle."""
    lives = []
    for trial in trials:
        tuner.on_trial_begin(trial)
        lives.append(tuner.lifecycle.begin(trial, dataset, pack_size=len(trials)))
    members = [life for life in lives if not life.done]
    if members:
        _train(tuner, members, dataset)
    # One at a time, so the oracle never sees a completed trial it has not scored.
    # Every trial of the pack is ended, even once the oracle stops the sweep.
    for life in lives:
        _report(tuner, life)
        tuner.on_trial_end(life.trial)


def _report(tuner, life):
    """The oracle learns a pack member's result, as Keras Tuner's loop tells it a trial's."""
    result = life.result
    tuner.note_result(result)
    if result.status == lifecycle.COMPLETED:
        tuner.oracle.update_trial(life.trial.trial_id, result.metrics)
        life.trial.status = TrialStatus.COMPLETED
        return
    life.trial.message = result.reason
    life.trial.status = (TrialStatus.INVALID if result.status == lifecycle.INVALID
                         else TrialStatus.FAILED)


def _train(tuner, members, dataset):
    arrays = device_arrays(dataset)
    network = packed.PackedNetworks([m.config for m in members], [m.model for m in members],
                                    [m.order for m in members])
    views = [network.member_view(index) for index in range(len(members))]
    training = set(range(len(members)))
    fit_start = time.perf_counter()
    try:
        for epoch in range(members[0].config.initial_epoch, members[0].config.epochs):
            training -= _epoch(network, members, views, training, arrays, epoch + 1)
            interrupts.check()  # An epoch is one TensorFlow call: stop between epochs.
            if not training:  # Every member stopped: the pack ends early.
                break
    except Exception as e:
        for life in members:
            life.fail(e)
        raise
    except BaseException:
        for life in members:
            life.kill()
        raise
    fit_seconds = time.perf_counter() - fit_start
    for life in members:
        life.stopping.end_training()  # Restores the best weights of those still training.
        life.fit_seconds = fit_seconds
    test = network.evaluate(arrays["x_test"], arrays["y_test"], EVAL_BATCH_SIZE)
    for index, (life, view) in enumerate(zip(members, views, strict=True)):
        _settle(tuner, network, index, life, view, arrays, [float(t[index]) for t in test])


def _epoch(network, members, views, training, arrays, epoch):
    """One epoch of the pack; returns the members that stop after it."""
    epoch_start = time.perf_counter()
    loss, accuracy = network.train_epoch(arrays["x_train"], arrays["y_train"])
    val_loss, val_accuracy = network.evaluate(arrays["x_val"], arrays["y_val"])
    seconds = time.perf_counter() - epoch_start
    # As `GradientProbe`: on the first PROBE_SIZE training images, after the epoch.
    sizes = network.gradient_sizes(arrays["x_train"][:PROBE_SIZE],
                                   arrays["y_train"][:PROBE_SIZE])
    stops = set()
    for index in sorted(training):
        metrics = {names.LOSS: loss[index], names.ACCURACY: accuracy[index],
                   names.VAL_LOSS: val_loss[index], names.VAL_ACCURACY: val_accuracy[index],
                   names.EPOCH_SECONDS: seconds}
        metrics.update({names.gradient(i): g for i, g in enumerate(sizes[index])})
        if not members[index].end_epoch(epoch, metrics, views[index]):
            stops.add(index)
    return stops


def _settle(tuner, network, index, life, view, arrays, test_metrics):
    """A member's results to its run (its kept epoch's), then settled as a trial alone."""
    try:
        life.check()
    except Exception as e:  # noqa: BLE001 - a NaN loss or the guard: this member alone.
        life.fail(e)
        return
    # With early stopping, the weights it keeps are its best epoch's (`view.kept`), and
    # the run's writer evaluates them; else the pack's last weights, evaluated above.
    model = network.member_model(index, life.model, view.kept)
    life.finish(model, (arrays["x_test"], arrays["y_test"]),
                test_metrics if view.kept is None else None)
    tuner.lifecycle.settle(life)
