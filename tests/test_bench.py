"""The benchmark still runs (in its quick mode) and prints a figure for every target."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_benchmark_quick_mode_prints_every_target(mnist_path, workdir):
    result = subprocess.run(
        [sys.executable, "bench/bench_trials.py", "--quick", "--data", mnist_path],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TMPDIR": str(workdir)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    for heading in ("## Training speed", "## Tracking overhead", "## Gradient logging",
                    "## Memory", "## Throughput"):
        assert heading in out
    assert "per-epoch loss/accuracy/val_loss/val_accuracy equal: yes" in out
    assert "ratio N=2 / N=1:" in out
    assert out.count("[target") == 3


def test_packing_benchmark_quick_mode_prints_the_ratio_and_the_differences(mnist_path,
                                                                            workdir):
    result = subprocess.run(
        [sys.executable, "bench/bench_packing.py", "--quick", "--data", mnist_path],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TMPDIR": str(workdir)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("part2-narrow:")]
    assert "--pack 1" in line and "ratio" in line and "[target >= 4" in line
    assert "largest per-epoch difference packed vs alone" in result.stdout


def test_part3_benchmark_quick_mode_prints_the_ratio_to_plain_keras(mnist_path, workdir):
    result = subprocess.run(
        [sys.executable, "bench/bench_part3.py", "--quick", "--data", mnist_path],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TMPDIR": str(workdir)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "ratio trial fit / plain fit:" in out and "[target <= 1.00]" in out
    assert "plain Keras fit (XLA, every core):" in out and "rep 1:" in out
