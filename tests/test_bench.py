"""The benchmark still runs (in its quick mode) and prints a figure for every target."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def quick(script, mnist_path, workdir):
    """Runs `bench/<script> --quick`; returns what it printed (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", "--data", mnist_path],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TMPDIR": str(workdir)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_benchmark_quick_mode_prints_every_target(mnist_path, workdir):
    out = quick("bench_trials.py", mnist_path, workdir)
    for heading in ("## Training speed", "## Tracking overhead", "## Gradient logging",
                    "## Memory", "## Throughput"):
        assert heading in out
    assert "per-epoch loss/accuracy/val_loss/val_accuracy equal: yes" in out
    assert "ratio N=2 / N=1:" in out
    assert out.count("[target") == 3


def test_packing_benchmark_quick_mode_prints_the_ratio_and_the_differences(mnist_path,
                                                                            workdir):
    out = quick("bench_packing.py", mnist_path, workdir)
    (line,) = [x for x in out.splitlines() if x.startswith("part2-narrow:")]
    assert "--pack 1" in line and "ratio" in line and "[target >= 4" in line
    assert "largest per-epoch difference packed vs alone" in out
    (line,) = [x for x in out.splitlines() if "wall time --pack 1" in x]
    assert "ratio" in line and "[target <= 0.75" in line
    assert "part3: best val_accuracy --pack 1" in out


def test_part3_benchmark_quick_mode_prints_the_ratio_to_plain_keras(mnist_path, workdir):
    out = quick("bench_part3.py", mnist_path, workdir)
    assert "ratio trial fit / plain fit:" in out and "[target <= 1.00]" in out
    assert "plain Keras fit (XLA, every core):" in out and "rep 1:" in out


def test_pruning_benchmark_quick_mode_prints_the_time_to_accuracy_ratio(mnist_path, workdir):
    out = quick("bench_pruning.py", mnist_path, workdir)
    assert "without pruning: 6 trials (0 pruned)" in out
    assert "with pruning: 6 trials (" in out
    (line,) = [x for x in out.splitlines() if x.startswith("ratio pruned / unpruned")]
    assert "[target <= 0.50]" in line
