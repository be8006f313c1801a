"""Benchmark: a Part Three pipeline trial against plain Keras `fit` of the same model.

    python bench/bench_part3.py --data mnist.npz            # 3x384, batch 64, 30 epochs
    python bench/bench_part3.py --data mnist.npz --quick    # does it still work (CI)

The model is the issue's reference point: 3 sigmoid layers of 384 units, SGD with
momentum 0.88 and a cosine decay from 0.24, batch 64, on full MNIST (50,000 training
images). The baseline is `bench/plain_fit.py`: `model.fit` with XLA on TensorFlow's
default threads and nothing else. The pipeline side is a one-trial sweep through
the CLI (`python -m pipeline sweep`), early stopping off, so both train every epoch.
Runs alternate, each in its own process, so one noisy moment of a shared machine
hits both. Prints, as medians over repetitions: the plain `fit` seconds, the
trial's `fit_seconds` and `trial_seconds` (from MLflow), their ratio to the plain
`fit`, and where the trial's other seconds go.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_trials import bench_parser, parse_bench_args, run_measured

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402

SEED = 1
MODEL = {"layers": 3, "units": 384, "learning_rate": 0.24, "momentum": 0.88, "batch_size": 64}
SPEC = """\
name: part3-bench
part: 3
description: the Part Three reference model, alone
search_space: {{hidden_layers: {layers}, units: {units}, activation: sigmoid}}
training: {{epochs: {epochs}, batch_size: {batch_size}, learning_rate: {learning_rate},
           momentum: {momentum}, schedule: cosine}}
tuner: {{algorithm: grid, max_trials: 1, seed: {seed}}}
"""


def plain(args):
    from pipeline.search.lifecycle import trial_seed

    command = [sys.executable, "bench/plain_fit.py", "--epochs", str(args.epochs),
               "--seed", str(trial_seed(SEED, 0)), "--data", args.data]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in MODEL.items()]
    if args.train_limit:
        command += ["--train-limit", str(args.train_limit)]
    out, _, _ = run_measured(command)
    return json.loads(out.strip().splitlines()[-1])


def pipeline_trial(args, workdir, rep):
    spec = Path(workdir) / "part3-bench.yaml"
    spec.write_text(SPEC.format(epochs=args.epochs, seed=SEED, **MODEL))
    uri = f"sqlite:///{Path(workdir) / 'bench.db'}"
    experiment = f"part3-bench-{rep}-{time.time_ns()}"
    command = [sys.executable, "-m", "pipeline", "sweep", str(spec), "--data", args.data,
               "--directory", str(Path(workdir) / f"kt-{rep}"), "--experiment", experiment,
               "--no-register"]
    if args.train_limit:
        command += ["--train-limit", str(args.train_limit)]
    run_measured(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], "tags.trial_id != ''")
    return run.data.metrics


def main():
    args = parse_bench_args(bench_parser(__doc__))
    args.reps, args.epochs, args.train_limit = (1, 1, 2000) if args.quick else (2, 30, None)
    print(f"# bench_part3 on {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
          f"{args.epochs} epochs{' (quick mode)' if args.quick else ''}")
    plain_fit, fit, trial, accuracy = [], [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(args.reps):
            baseline = plain(args)
            metrics = pipeline_trial(args, workdir, rep)
            plain_fit.append(baseline["fit_seconds"])
            fit.append(metrics["fit_seconds"])
            trial.append(metrics["trial_seconds"])
            accuracy.append((baseline["test_accuracy"], metrics["test_accuracy"]))
            print(f"rep {rep + 1}: plain fit {plain_fit[-1]:.1f} s, trial fit {fit[-1]:.1f} s,"
                  f" trial {trial[-1]:.1f} s", flush=True)
    base, ours, whole = (statistics.median(v) for v in (plain_fit, fit, trial))
    print(f"plain Keras fit (XLA, every core): {base:.1f} s")
    print(f"pipeline trial fit: {ours:.1f} s; whole trial: {whole:.1f} s "
          f"(the rest, {whole - ours:.1f} s: building the model, logging its params "
          "and datasets; test evaluation and the model's logging run behind it)")
    print(f"ratio trial fit / plain fit: {ours / base:.2f} [target <= 1.00]")
    print(f"ratio whole trial / plain fit: {whole / base:.2f}")
    print("test accuracy plain / pipeline: "
          + ", ".join(f"{a:.4f} / {b:.4f}" for a, b in accuracy))


if __name__ == "__main__":
    main()
