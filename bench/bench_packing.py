"""Benchmark: packed trials against one trial at a time (`--pack 1`), in one invocation.

    python bench/bench_packing.py --data mnist.npz                  # every spec
    python bench/bench_packing.py --data mnist.npz --specs part2-narrow --max-trials 3
    python bench/bench_packing.py --data mnist.npz --quick          # does it still work

For each spec, at its own settings (epochs, batch size, trials) unless told
otherwise, the same sweep runs twice in fresh processes, `--pack 1` then `--pack
K` (K: the spec's default choice, or `--pack`), alternating over repetitions. Trials
per hour is the number of FINISHED trial runs over the window from the first trial
run's start to the last one's end, as MLflow recorded them; the ratio is packed
over alone. It also prints the largest per-epoch difference of each trial's
`loss`/`val_loss` (relative) and `accuracy`/`val_accuracy` (points) between the two.

`exercise` (one of the default `--specs`) runs the whole exercise (`python -m pipeline
exercise`, what `mlflow run . -e main` runs) with `--pack 1` and with its default
packs, and prints the wall time of each, their ratio, and each sweep's best
`val_accuracy` both ways (the answers).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from bench_trials import (  # noqa: E402
    bench_parser,
    finished_trials,
    parse_bench_args,
    run_measured,
)

TARGETS = {"part2-narrow": 4.0, "part2-medium": 4.0, "part2-wide": 4.0, "part1-narrow": 1.5,
           "part1-wide": 0.95, "part3": 0.95}
EXERCISE_TARGET = 0.75  # Wall time, default packs over --pack 1: at most.
EPOCH_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy")


def overrides(args):
    """The command-line options that override every spec's settings."""
    command = []
    for option in ("max_trials", "epochs", "train_limit"):
        if getattr(args, option):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return command


def sweep(spec, pack, args, workdir, tag):
    """Runs one sweep; returns (trials per hour, {trial_id: per-epoch histories})."""
    uri = f"sqlite:///{Path(workdir) / f'{tag}.db'}"
    experiment = f"{tag}-{time.time_ns()}"
    command = [sys.executable, "-m", "pipeline", "sweep", spec, "--data", args.data,
               "--experiment", experiment, "--directory", str(Path(workdir) / tag),
               "--pack", str(pack), *overrides(args)]
    run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    client, runs, window = finished_trials(uri, experiment)
    histories = {r.data.tags["trial_id"]: {
        key: np.array([m.value for m in sorted(client.get_metric_history(r.info.run_id, key),
                                               key=lambda m: m.step)])
        for key in EPOCH_KEYS} for r in runs}
    return len(runs) / window * 3600, histories


def differences(alone, packed):
    """Largest relative loss and absolute accuracy difference over common trials."""
    loss, accuracy = 0.0, 0.0
    for trial_id in set(alone) & set(packed):
        a, p = alone[trial_id], packed[trial_id]
        for key in ("loss", "val_loss"):
            loss = max(loss, float(np.max(np.abs(a[key] - p[key]) / np.abs(a[key]))))
        for key in ("accuracy", "val_accuracy"):
            accuracy = max(accuracy, float(np.max(np.abs(a[key] - p[key]))))
    return loss, accuracy


def default_pack(spec_name, max_trials=0):
    """The pack a sweep of this spec alone chooses (with the threads it would use)."""
    from pipeline import space
    from pipeline.search.packing import choose_pack
    from pipeline.spec import load as specfile
    from pipeline.training import device, model

    spec = specfile.load(spec_name).with_overrides(max_trials=max_trials)
    built = space.build(spec)
    return choose_pack(spec, built, threads=device.cpu_threads(model.compute_bound(built)))


def bench_spec(spec, args, workdir):
    pack = args.pack or default_pack(spec, args.max_trials)
    if pack == 1:
        print(f"{spec}: the default trains one trial at a time (pack 1): nothing to compare; "
              f"--pack K forces a pack")
        return
    ratios, alone_rates, packed_rates, diffs = [], [], [], []
    for rep in range(args.reps):
        alone_rate, alone = sweep(spec, 1, args, workdir, f"{spec}-alone-{rep}")
        packed_rate, packed = sweep(spec, pack, args, workdir, f"{spec}-packed-{rep}")
        alone_rates.append(alone_rate)
        packed_rates.append(packed_rate)
        ratios.append(packed_rate / alone_rate)
        diffs.append(differences(alone, packed))
    ratio = statistics.median(ratios)
    target = TARGETS.get(spec)
    verdict = "" if target is None else (
        f" [target >= {target:g}: {'met' if ratio >= target else 'NOT met'}]")
    print(f"{spec}: --pack 1 {statistics.median(alone_rates):.0f} trials/hour, "
          f"--pack {pack} {statistics.median(packed_rates):.0f} trials/hour, "
          f"ratio {ratio:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}){verdict}")
    print(f"  largest per-epoch difference packed vs alone: loss/val_loss "
          f"{max(d[0] for d in diffs):.1e} relative, accuracy/val_accuracy "
          f"{max(d[1] for d in diffs) * 100:.3f} points")


def exercise(pack, args, workdir):
    """Runs the whole exercise; returns (wall seconds, {sweep: best val_accuracy})."""
    import mlflow

    tag = f"exercise-pack-{pack}"
    uri = f"sqlite:///{Path(workdir) / f'{tag}.db'}"
    command = [sys.executable, "-m", "pipeline", "exercise", "--data", args.data,
               "--experiment", tag, "--directory", str(Path(workdir) / tag),
               "--out", str(Path(workdir) / f"{tag}-report"), "--pack", str(pack),
               *overrides(args)]
    _, _, wall = run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(tag).experiment_id],
                              "attributes.status = 'FINISHED' and tags.trial_id != ''")
    best = {}
    for run in runs:
        name = run.data.tags["sweep"]
        best[name] = max(best.get(name, 0.0), run.data.metrics["val_accuracy"])
    return wall, best


def bench_exercise(args, workdir):
    print("exercise (python -m pipeline exercise, as mlflow run . -e main):")
    alone_wall, alone = exercise(1, args, workdir)
    packed_wall, packed = exercise(0, args, workdir)
    ratio = packed_wall / alone_wall
    met = "met" if ratio <= EXERCISE_TARGET else "NOT met"
    print(f"  wall time --pack 1 {alone_wall:.0f} s, default packs {packed_wall:.0f} s, "
          f"ratio {ratio:.2f} [target <= {EXERCISE_TARGET:g}: {met}]")
    for name in sorted(set(alone) | set(packed)):
        a, p = alone.get(name, float("nan")), packed.get(name, float("nan"))
        print(f"  {name}: best val_accuracy --pack 1 {a:.4f}, default {p:.4f} "
              f"(difference {abs(a - p) * 100:.2f} points)")


def main():
    parser = bench_parser(__doc__)
    parser.add_argument("--specs", nargs="+", default=[*TARGETS, "exercise"],
                        help="specs to compare, and `exercise` for the whole exercise "
                             "(default: all of them)")
    parser.add_argument("--pack", type=int, default=0, help="K (default: the spec's choice)")
    parser.add_argument("--max-trials", type=int, default=0, help="override the spec's")
    parser.add_argument("--epochs", type=int, default=0, help="override the spec's")
    parser.add_argument("--train-limit", type=int, default=0, help="train on N images")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, alternating")
    args = parse_bench_args(parser)
    if args.quick:
        args.specs, args.max_trials, args.epochs, args.train_limit = (
            ["part2-narrow", "exercise"], 2, 1, 2000)
    print(f"# bench_packing on {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}{' (quick mode)' if args.quick else ''}")
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.specs:
            if spec == "exercise":
                bench_exercise(args, workdir)
            else:
                bench_spec(spec, args, workdir)


if __name__ == "__main__":
    main()
