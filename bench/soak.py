"""Soak: the chief/worker chaos run (tests/chaos.py) once per seed, with totals.

    python bench/soak.py --faults 5 --seed 1
    python bench/soak.py --faults 8 --seeds 1,2,3,4 --data /path/to/mnist.npz

Starts its own throwaway PostgreSQL cluster (or uses $MNIST_SWEEPS_TEST_POSTGRES)
and, for each seed, a fresh database, `mlflow server` and working directory, then
runs one sweep with a chief and two workers under `schedule(faults, seed)`. Prints
one line per seed (faults injected by kind, trials finished, duplicates, runs left
RUNNING, hangs, wall time, exit codes of every process life) with its problems and
timeline, then the totals. Exits 1 if any seed saw a duplicate, a run left RUNNING,
a hang, or any other failed check.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402
from chaos import run_chaos  # noqa: E402
from servers import (  # noqa: E402
    POSTGRES_ENV,
    MlflowServer,
    PostgresCluster,
    PostgresDatabase,
    SweepProcess,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, required=True, help="faults per seed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", default="", help="comma-separated; overrides --seed")
    parser.add_argument("--trials", type=int, default=9, help="at most 9")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--bound", type=float, default=180,
                        help="seconds every process has to end after the last fault")
    parser.add_argument("--spec", default="part2-narrow")
    parser.add_argument("--pack", type=int, default=2, help="the packed worker's --pack")
    parser.add_argument("--data", default=os.environ.get("MNIST_NPZ", ""),
                        help="Keras-layout mnist.npz (default: $MNIST_NPZ)")
    parser.add_argument("--keep", action="store_true", help="keep each seed's directory")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or [args.seed]
    if not args.data or not Path(args.data).is_file():
        parser.error("--data (or $MNIST_NPZ) must name a Keras-layout mnist.npz")
    return args


def one_seed(admin_uri, seed, args):
    """One chaos run on a fresh database and server; its figures."""
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{seed}-"))
    database = PostgresDatabase(admin_uri)
    server = MlflowServer(database.uri, workdir)
    try:
        server.start()
        os.environ["MLFLOW_TRACKING_URI"] = server.url
        mlflow.set_tracking_uri(server.url)
        return run_chaos(workdir, args.data, mlflow.MlflowClient(server.url), args.faults,
                         seed, trials=args.trials, epochs=args.epochs, bound=args.bound,
                         spec=args.spec, pack=args.pack, strict=False)
    finally:
        for sweep in SweepProcess.started:
            if sweep.process.poll() is None:
                sweep.kill()
        SweepProcess.started.clear()
        server.stop()
        database.drop()
        if args.keep:
            print(f"  kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    cluster = None if os.environ.get(POSTGRES_ENV) else PostgresCluster()
    started = time.monotonic()
    results = []
    try:
        admin = os.environ.get(POSTGRES_ENV) or cluster.start().admin_uri
        for seed in args.seeds:
            figures = one_seed(admin, seed, args)
            results.append(figures)
            print(figures.report(), flush=True)
    finally:
        if cluster:
            cluster.stop()
    kinds = sum((f.injected for f in results), collections.Counter())
    failed = [f.seed for f in results if not f.ok]
    print(f"total: {len(results)} seeds; faults {sum(f.faults for f in results)}/"
          f"{sum(f.planned for f in results)} ("
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + "); trials "
          f"{sum(f.finished_trials for f in results)}/{sum(f.trials for f in results)}; "
          f"duplicates {sum(f.duplicates for f in results)}; RUNNING "
          f"{sum(f.running_left for f in results)}; hangs "
          f"{sum(len(f.hangs) for f in results)}; wall {time.monotonic() - started:.0f} s; "
          f"failed seeds: {', '.join(map(str, failed)) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
