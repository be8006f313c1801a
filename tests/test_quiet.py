"""A sweep's output holds its own lines: TensorFlow's start-up lines and MLflow's INFO
lines only with -v."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

NOISE = ("absl::InitializeLog", "cudart_stub", "oneDNN", "INFO mlflow",
         "Successfully registered model", "Created version")


def sweep(mnist_path, workdir, *extra):
    command = [sys.executable, "-m", "pipeline", "sweep", "part1-narrow", "--data", mnist_path,
               "--train-limit", "500", "--epochs", "1", "--max-trials", "1", *extra]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_sweep_prints_only_its_own_lines_unless_verbose(mnist_path, workdir):
    quiet = sweep(mnist_path, workdir)
    assert [line for line in quiet.splitlines() if not line.startswith("[part1-narrow] ")] == []
    for noise in NOISE:
        assert noise not in quiet
    assert "compare the trials: http://127.0.0.1:5000/#/experiments/" in quiet

    loud = sweep(mnist_path, workdir, "--overwrite", "-v")
    assert "INFO mlflow" in loud and "━━━" in loud and "absl::InitializeLog" in loud


@pytest.mark.parametrize("level", [0, 1], ids=["quiet", "verbose"])
def test_the_bayesian_oracles_fitting_warnings_only_with_verbose(level):
    # What scikit-learn's Gaussian process warns, every few trials of a Bayesian search.
    code = ("from pipeline.cli import quiet; import sys, warnings; "
            "from sklearn.exceptions import ConvergenceWarning; "
            "quiet.libraries(int(sys.argv[1])); warnings.warn_explicit("
            "'The optimal value found for dimension 0 of parameter length_scale is close "
            "to the specified lower bound', ConvergenceWarning, 'kernels.py', 445, "
            "module='sklearn.gaussian_process.kernels')")
    done = subprocess.run([sys.executable, "-c", code, str(level)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("ConvergenceWarning" in done.stderr) == bool(level)
