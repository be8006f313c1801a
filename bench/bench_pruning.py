"""Benchmark: time to accuracy of a search with pruning across trials against the same
search without it.

    python bench/bench_pruning.py --data mnist.npz                  # part3, its defaults
    python bench/bench_pruning.py --data mnist.npz --keep runs/     # and keep both stores
    python bench/bench_pruning.py --data mnist.npz --spec part1-narrow --rungs 2,4
    python bench/bench_pruning.py --data mnist.npz --algorithm random   # part3's space
    python bench/bench_pruning.py --data mnist.npz --quick          # does it still work (CI)

Both searches run the same spec (same oracle, seed and space), one after the other
through the CLI, each in its own process and store (`--keep DIR`: DIR/pruned.db and
DIR/unpruned.db, to open in the MLflow UI, and each sweep's output beside them). The
pruned one, first, is the spec's own `tuner.pruning` (so on `part3` it is the shipped
sweep itself), or `--rungs` and `--rule`; the unpruned one drops it. From MLflow it
prints, for each, the best validation accuracy reached against wall time (at each
trial's end, from the first trial's start), then the time at which each first reaches
the unpruned search's final best, and their ratio (target: pruning reaches it in at
most half the time).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_trials import bench_parser, parse_bench_args, run_measured

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.5


def spec_data(args):
    source = Path(args.spec)
    if not source.is_file():
        source = REPO / "sweeps" / f"{args.spec}.yaml"
    return yaml.safe_load(source.read_text())


def spec_copy(args, workdir, name, pruning):
    """The spec as `name`, with `pruning` (a dict) or without any."""
    data = spec_data(args)
    data["name"] = name
    data.setdefault("tuner", {}).pop("pruning", None)
    if args.algorithm:
        data["tuner"]["algorithm"] = args.algorithm
    if pruning:
        data["tuner"]["pruning"] = pruning
    path = Path(workdir) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def search(args, workdir, name, pruning):
    """Runs one search; returns its curve [(seconds, best so far)] and its wall time."""
    spec = spec_copy(args, workdir, name, pruning)
    uri = f"sqlite:///{Path(workdir) / f'{name}.db'}"
    command = [sys.executable, "-m", "pipeline", "sweep", str(spec), "--data", args.data,
               "--directory", str(Path(workdir) / "kt"), "--experiment", name,
               "--no-register"]
    for option, value in (("--max-trials", args.trials), ("--epochs", args.epochs),
                          ("--train-limit", args.train_limit)):
        if value:
            command += [option, str(value)]
    out, _, wall = run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    (Path(workdir) / f"{name}.log").write_text(out)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id],
                              "attributes.status = 'FINISHED' and tags.trial_id != ''")
    start = min(r.info.start_time for r in runs)
    curve, best, pruned, test = [], 0.0, 0, None
    for run in sorted(runs, key=lambda r: r.info.end_time):
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        kept = int(run.data.metrics["best_epoch"])
        value = next((m.value for m in history if m.step == kept), max(
            m.value for m in history))
        if value > best:
            best, test = value, run.data.metrics.get("test_accuracy")
        curve.append(((run.info.end_time - start) / 1000, best))
        pruned += run.data.tags.get("pruned") == "true"
    return curve, wall, len(runs), pruned, test


def first_reaching(curve, level):
    return next((seconds for seconds, best in curve if best >= level), None)


def main():
    parser = bench_parser(__doc__)
    parser.add_argument("--spec", default="part3", help="a spec name or path (default part3)")
    parser.add_argument("--trials", type=int, default=0, help="max trials (0: the spec's)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs (0: the spec's)")
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--rungs", default="",
                        help="pruning rungs, epochs (default: the spec's, else 3,6,12)")
    parser.add_argument("--rule", default="", choices=("", "median", "halving"),
                        help="default: the spec's, else median")
    parser.add_argument("--algorithm", default="", choices=("", "random", "bayesian"),
                        help="the oracle of both searches (default: the spec's)")
    parser.add_argument("--keep", default="", metavar="DIR",
                        help="keep both searches' MLflow stores and tuner state in DIR")
    args = parse_bench_args(parser)
    if args.quick:
        args.spec, args.trials, args.epochs, args.train_limit = "part1-narrow", 6, 3, 1500
        args.rungs = "1"
    pruning = dict(spec_data(args).get("tuner", {}).get("pruning") or {
        "rungs": [3, 6, 12], "rule": "median", "min_trials": 2})
    if args.rungs:
        pruning["rungs"] = [int(r) for r in args.rungs.split(",")]
    if args.rule:
        pruning["rule"] = args.rule
    stamp = time.strftime("%Y-%m-%d %H:%M")
    spec = f"{args.spec} under {args.algorithm}" if args.algorithm else args.spec
    print(f"# Pruning: time to accuracy ({stamp}, {spec}, rungs {pruning['rungs']}, "
          f"rule {pruning.get('rule', 'median')})\n")
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory()) as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        pruned = search(args, workdir, "pruned", pruning)
        plain = search(args, workdir, "unpruned", None)
    for label, (curve, wall, trials, cut, test) in (("without pruning", plain),
                                                    ("with pruning", pruned)):
        print(f"{label}: {trials} trials ({cut} pruned), {wall:.0f} s wall; its best "
              f"val_accuracy {curve[-1][1]:.4f} (test_accuracy {test:.4f}); best "
              "val_accuracy so far at each trial's end:")
        print("  " + ", ".join(f"{s:.0f} s {b:.4f}" for s, b in curve))
    goal = plain[0][-1][1]
    reach_plain, reach_pruned = first_reaching(plain[0], goal), first_reaching(pruned[0], goal)
    print(f"\nunpruned final best {goal:.4f}: reached at {reach_plain:.0f} s without pruning, "
          + (f"{reach_pruned:.0f} s with pruning" if reach_pruned is not None
             else "never with pruning (its best: " f"{pruned[0][-1][1]:.4f})"))
    if reach_pruned is None:
        print(f"ratio pruned / unpruned time to that accuracy: n/a [target <= {TARGET:.2f}]")
    else:
        print(f"ratio pruned / unpruned time to that accuracy: "
              f"{reach_pruned / reach_plain:.2f} [target <= {TARGET:.2f}]")


if __name__ == "__main__":
    main()
