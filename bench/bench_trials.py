"""Benchmark: pipeline trials against the plain Keras loop, in one invocation.

    python bench/bench_trials.py --data mnist.npz            # full figures
    python bench/bench_trials.py --data mnist.npz --quick    # does it still work (CI)

Every measurement runs in its own process, plain loop and pipeline alternating,
so one noisy moment of a shared machine hits both sides. For each target it prints
the baseline, the pipeline and their ratio (median, min, max over repetitions):

- training speed: median seconds per epoch of a pipeline trial / of the plain
  loop, for the exercise's 784-25-10 model and a >= 300,000-parameter one, with
  the per-epoch loss and accuracy of both checked equal;
- tracking overhead: the share of a sweep's wall time (first trial run's start to
  last trial run's end, so the work between trials and the last trial's logging
  count too) spent outside `model.fit`, for 10-epoch trials of the 784-25-10
  model (the per-epoch callback inside `fit` only hands metrics and a copy of the
  weights to the logging thread);
- memory: peak RSS of a 30-trial sweep / of a 3-trial sweep;
- gradient logging: the probe's seconds per epoch against an epoch's;
- throughput: trials per hour with 1 and 2 worker processes (`--workers`) on a
  Part Two spec.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = 1  # The spec seed; trial 0 trains with pipeline.search.lifecycle.trial_seed(SEED, 0).
TOLERANCE = 1e-4  # Relative; float32 sums in a different order differ in ~1e-6.

SPEC = """\
name: {name}
description: benchmark models
search_space: {{hidden_layers: 1, units: {units}, activation: sigmoid}}
training: {{epochs: {epochs}, batch_size: 32, learning_rate: 0.01, momentum: 0.0}}
tuner: {{algorithm: grid, max_trials: {trials}, seed: {seed}}}
"""


def run_measured(command, env=None):
    """Runs a command; returns (stdout, its peak RSS in MiB, wall seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, cwd=REPO)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"failed ({process.returncode}): {' '.join(map(str, command))}\n{out[-2000:]}")
    return out, usage.ru_maxrss / 1024, time.perf_counter() - start


def finished_trials(uri, experiment):
    """The FINISHED trial runs of `experiment` in store `uri`, and the seconds from the
    first one's start to the last one's end."""
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' "
                                                   "and tags.trial_id != ''")
    window = max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)
    return client, runs, window / 1000


def plain_loop(units, epochs, data, train_limit):
    from pipeline.search.lifecycle import trial_seed

    command = [sys.executable, "bench/plain_loop.py", "--units", str(units), "--epochs",
               str(epochs), "--seed", str(trial_seed(SEED, 0)), "--data", data]
    if train_limit:
        command += ["--train-limit", str(train_limit)]
    out, _, _ = run_measured(command)
    return json.loads(out.strip().splitlines()[-1])


def pipeline_sweep(name, units, trials, epochs, data, train_limit, workdir):
    """A pipeline sweep over `units` (a number or a YAML {min, max}); returns its trials."""
    spec = Path(workdir) / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, units=units, epochs=epochs, seed=SEED,
                                trials=trials))
    uri = f"sqlite:///{Path(workdir) / 'bench.db'}"
    experiment = f"bench-{time.time_ns()}"
    command = [sys.executable, "-m", "pipeline", "sweep", str(spec), "--data", data,
               "--directory", str(Path(workdir) / "kt"), "--experiment", experiment,
               "--pack", "1"]  # One trial at a time: bench_packing.py measures packs.
    if train_limit:
        command += ["--train-limit", str(train_limit)]
    run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.trial_id != ''",
                              order_by=["attributes.start_time"])
    return [_trial(client, run) for run in runs]


def _trial(client, run):
    history = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                             key=lambda m: m.step)]
               for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")}
    return {"epoch_seconds": history.pop("epoch_seconds"), "history": history,
            "fit_seconds": run.data.metrics["fit_seconds"],
            "start": run.info.start_time / 1000, "end": run.info.end_time / 1000}


def spread(values):
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def max_relative_difference(a, b):
    worst = 0.0
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        x, y = np.array(a[key]), np.array(b[key])
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))))
    return worst


def bench_speed(args, workdir):
    print(f"\n## Training speed: median seconds per epoch ({args.epochs} epochs, batch 32, "
          f"{args.reps} repetitions, alternating)")
    for units in args.units:
        base, pipe, ratios, diffs = [], [], [], []
        for _ in range(args.reps):
            plain = plain_loop(units, args.epochs, args.data, args.train_limit)
            (trial,) = pipeline_sweep(f"speed-{units}", units, 1, args.epochs, args.data,
                                      args.train_limit, workdir)
            b = statistics.median(plain["epoch_seconds"])
            p = statistics.median(trial["epoch_seconds"])
            base.append(b)
            pipe.append(p)
            ratios.append(p / b)
            diffs.append(max_relative_difference(plain["history"], trial["history"]))
        params = 795 * units + 10
        print(f"784-{units}-10 ({params:,} params): plain loop {spread(base)} s, "
              f"pipeline {spread(pipe)} s, ratio {spread(ratios)} "
              f"[target <= 0.4: {'met' if statistics.median(ratios) <= 0.4 else 'NOT met'}]")
        same = max(diffs) <= TOLERANCE
        print(f"  per-epoch loss/accuracy/val_loss/val_accuracy equal: "
              f"{'yes' if same else 'NO'} (max relative difference {max(diffs):.2e}, "
              f"tolerance {TOLERANCE:g})")


def bench_overhead(args, workdir):
    print(f"\n## Tracking overhead: share of wall time outside model.fit "
          f"({args.overhead_trials} trials of 784-24..26-10, {args.epochs} epochs each)")
    shares, per_trial, epochs_share = [], [], []
    for _ in range(args.reps):
        trials = pipeline_sweep("overhead", "{min: 24, max: 26}", args.overhead_trials,
                                args.epochs, args.data, args.train_limit, workdir)
        wall = max(t["end"] for t in trials) - trials[0]["start"]
        fit = sum(t["fit_seconds"] for t in trials)
        shares.append((wall - fit) / wall)
        per_trial.append((wall - fit) / len(trials))
        epochs_share.append(1 - sum(sum(t["epoch_seconds"]) for t in trials) / wall)
    print(f"outside fit {spread(per_trial)} s per trial, share {spread(shares)} "
          f"[target <= 0.05: {'met' if statistics.median(shares) <= 0.05 else 'NOT met'}]")
    print(f"  (outside the epochs themselves, Keras' own set-up in fit included: share "
          f"{spread(epochs_share)})")


def bench_gradients(args, workdir):
    """Cost of the per-epoch gradient probe against an epoch of training, in-process."""
    import keras

    from pipeline import data
    from pipeline.space import TrialConfig
    from pipeline.training.gradients import GradientProbe
    from pipeline.training.model import build_model

    print("\n## Gradient logging: seconds per epoch of the probe (snapshot on the training "
          "thread, measure on the logging thread) / of training an epoch")
    ds = data.load(args.data, train_limit=args.train_limit)
    for units in ([25], [378], [512] * 3, [50] * 12):
        config = TrialConfig(units=tuple(units), activation="sigmoid", learning_rate=0.01,
                             momentum=0.0, batch_size=32, epochs=1)
        model = build_model(config)
        start = time.perf_counter()
        model.fit(ds.x_train, ds.y_train, batch_size=32, epochs=2, verbose=0)
        epoch = (time.perf_counter() - start) / 2
        probe = GradientProbe(model, ds.x_train, ds.y_train)
        probe.measure(probe.snapshot(model))  # The first call traces; time the rest.
        start = time.perf_counter()
        for _ in range(5):
            probe.measure(probe.snapshot(model))
        cost = (time.perf_counter() - start) / 5
        shape = "-".join(map(str, units))
        print(f"784-{shape}-10: probe {cost * 1000:.1f} ms, epoch {epoch:.2f} s "
              f"(first one included), share {cost / epoch:.2%}")
        keras.backend.clear_session()


def bench_memory(args, workdir):
    few, many = args.memory_trials
    print(f"\n## Memory: peak RSS of a {many}-trial sweep / a {few}-trial sweep "
          "(part2-narrow, 1 epoch, 500 training images, packed by default)")
    peaks = {}
    for trials in (few, many):
        uri = f"sqlite:///{Path(workdir) / f'memory-{trials}.db'}"
        command = [sys.executable, "-m", "pipeline", "sweep", "part2-narrow", "--data",
                   args.data, "--train-limit", "500", "--epochs", "1", "--max-trials",
                   str(trials), "--directory", str(Path(workdir) / f"kt-memory-{trials}")]
        _, peaks[trials], _ = run_measured(command, env={**os.environ,
                                                         "MLFLOW_TRACKING_URI": uri})
    ratio = peaks[many] / peaks[few]
    print(f"{few} trials {peaks[few]:.0f} MiB, {many} trials {peaks[many]:.0f} MiB, ratio "
          f"{ratio:.3f} [target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}]")


def bench_throughput(args, workdir):
    trials, epochs = args.throughput
    print(f"\n## Throughput: trials per hour, part2-medium, {trials} trials of {epochs} "
          f"epochs, chief + N workers on this machine")
    rates = {}
    for workers in (1, 2):
        uri = f"sqlite:///{Path(workdir) / f'throughput-{workers}.db'}"
        experiment = f"throughput-{workers}"
        command = [sys.executable, "-m", "pipeline", "sweep", "part2-medium", "--data",
                   args.data, "--epochs", str(epochs), "--max-trials", str(trials),
                   "--workers", str(workers), "--experiment", experiment,
                   "--directory", str(Path(workdir) / f"kt-throughput-{workers}")]
        if args.train_limit:
            command += ["--train-limit", str(args.train_limit)]
        run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        _, runs, window = finished_trials(uri, experiment)
        rates[workers] = len(runs) / window * 3600
        print(f"N={workers}: {len(runs)} trials in {window:.1f} s (first trial start "
              f"to last trial end): {rates[workers]:.0f} trials/hour")
    print(f"ratio N=2 / N=1: {rates[2] / rates[1]:.2f}")


SECTIONS = {"speed": bench_speed, "overhead": bench_overhead, "gradients": bench_gradients,
            "memory": bench_memory, "throughput": bench_throughput}


def bench_parser(doc):
    """The benchmarks' command line: `--data` and `--quick`; add a script's own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_NPZ"),
                        help="Keras-layout mnist.npz (default $MNIST_NPZ)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the benchmark still works")
    return parser


def parse_bench_args(parser):
    args = parser.parse_args()
    if not args.data:
        parser.error("--data: give a Keras-layout mnist.npz (or set MNIST_NPZ)")
    return args


def main():
    parser = bench_parser(__doc__)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these sections")
    args = parse_bench_args(parser)
    if args.quick:
        args.reps, args.epochs, args.train_limit = 1, 2, 2000
        args.units, args.memory_trials, args.overhead_trials = [25], (2, 4), 2
        args.throughput = (2, 1)
    else:
        args.reps, args.epochs, args.train_limit = 3, 10, None
        args.units, args.memory_trials, args.overhead_trials = [25, 378], (3, 30), 3
        args.throughput = (8, 3)
    print(f"# bench_trials on {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}{' (quick mode)' if args.quick else ''}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.only:
            SECTIONS[name](args, workdir)


if __name__ == "__main__":
    main()
