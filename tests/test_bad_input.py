"""Every bad input ends in one line on stderr, its exit status, and nothing written.

One table: each case breaks one thing (a spec field, the spec file itself, an option
or argument, the `--data` file, `--experiment`, `MLFLOW_TRACKING_URI`) and runs the
real command line,
`python -m pipeline sweep ...`, in a process of its own. Bad input is refused before
TensorFlow or MLflow is imported, so a case takes well under a second.
"""

import os
import socket
import sqlite3
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO

from pipeline.errors import TrackingUnavailable

SPEC = (REPO / "sweeps" / "part2-narrow.yaml").read_text()
SPEC_NAME = "part2-narrow.yaml"
PASSWORD = "s3cret-pw"  # In every bad tracking URI; must never be shown.
# TensorFlow's and absl's C++ log lines, should any appear despite TF_CPP_MIN_LOG_LEVEL.
NOISE = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ")


# -- how each case breaks its input ------------------------------------------
# A builder takes the test's directory and returns (arguments, environment).

def spec_edit(old, new):
    """The shipped part2-narrow spec with one piece of text replaced."""
    assert old in SPEC, old
    return spec_file(SPEC.replace(old, new, 1))


def spec_file(content):
    def build(tmp):
        path = tmp / SPEC_NAME
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return ["sweep", str(path)], {}
    return build


def data_file(make):
    """`--data` pointing at what `make(tmp)` wrote (the spec itself is fine)."""
    def build(tmp):
        return ["sweep", "part2-narrow", "--data", str(make(tmp))], {}
    return build


def option(*args):
    return lambda tmp: (["sweep", "part2-narrow", *args], {})


def command(*args):
    """The command line as given (then `--directory`, like every case)."""
    return lambda tmp: (list(args), {})


def tracking_uri(uri, *args):
    return lambda tmp: (["sweep", "part2-narrow", *args], {"MLFLOW_TRACKING_URI": uri})


def mnist_like(tmp, name="bad.npz", **arrays):
    """A small `.npz` in the Keras layout, with some arrays replaced."""
    layout = {"x_train": np.zeros((20, 28, 28), np.uint8), "y_train": np.zeros(20, np.uint8),
              "x_test": np.zeros((5, 28, 28), np.uint8), "y_test": np.zeros(5, np.uint8)}
    layout.update(arrays)
    np.savez(tmp / name, **layout)
    return tmp / name


def npy(tmp):
    np.save(tmp / "mnist.npy", np.zeros((20, 28, 28), np.uint8))
    return tmp / "mnist.npy"


def truncated(tmp):
    mnist_like(tmp, "whole.npz")
    (tmp / "bad.npz").write_bytes((tmp / "whole.npz").read_bytes()[:3000])
    return tmp / "bad.npz"


def wrong_members(tmp):
    with zipfile.ZipFile(tmp / "bad.npz", "w") as archive:
        archive.writestr("images.npy", b"not an array")
        archive.writestr("readme.txt", "hello")
    return tmp / "bad.npz"


def nan_pixels(tmp):
    images = np.full((20, 28, 28), 0.5, np.float32)
    images[0, 0, 0] = np.nan
    return mnist_like(tmp, x_train=images)


def billion_laughs():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def free_ipv6_port():
    """A port on [::1] that nothing listens on (5000 where IPv6 is off: no answer either)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            return sock.getsockname()[1]
    except OSError:
        return 5000


def unreachable_ipv6(tmp):
    """A well-formed IPv6 URI: valid input, so the spec and data load, then the check."""
    uri = f"http://alice:{PASSWORD}@[::1]:{free_ipv6_port()}"
    return (["sweep", "part2-narrow", "--data", os.environ["MNIST_NPZ"]],
            {"MLFLOW_TRACKING_URI": uri, "CHECK_SECONDS": "0"})


COMMAND = [sys.executable, "-m", "pipeline"]
# The same, but the tracking server check's wait (15 s of retries, for a server that
# is still starting) set from $CHECK_SECONDS: for a case that gets that far.
COMMAND_SHORT_CHECK = [sys.executable, "-c", (
    "import os, runpy; from pipeline.tracking import server; "
    "server.check_reachable.__defaults__ = (float(os.environ['CHECK_SECONDS']),); "
    "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)")]


def case(name, build, *expected, exit_code=2):
    return pytest.param(build, expected, exit_code, id=name)


SPEC_AT = f"{SPEC_NAME}: "
CASES = [
    # Numbers: NaN and infinities wherever a number is read.
    case("spec-max-trials-inf", spec_edit("max_trials: 5", "max_trials: .inf"),
         SPEC_AT + "tuner.max_trials: expected a finite number"),
    case("spec-learning-rate-nan", spec_edit("learning_rate: 0.01", "learning_rate: .nan"),
         SPEC_AT + "training.learning_rate: expected a finite number"),
    case("spec-momentum-nan", spec_edit("momentum: 0.0", "momentum: .NaN"),
         SPEC_AT + "training.momentum"),
    case("spec-constraint-minus-inf", spec_edit("min_units: 1", "min_units: -.inf"),
         SPEC_AT + "constraints.min_units: expected a finite number"),
    case("spec-units-max-nan", spec_edit("{min: 1, max: 9}", "{min: 1, max: .nan}"),
         SPEC_AT + "search_space.units.max"),
    case("spec-layers-min-inf", spec_edit("{min: 10, max: 12}", "{min: .inf, max: 12}"),
         SPEC_AT + "search_space.hidden_layers.min"),
    case("spec-searched-momentum-nan",
         spec_edit("activation: sigmoid", "activation: sigmoid\n  momentum: [0.0, .nan]"),
         SPEC_AT + "search_space.momentum"),
    case("spec-searched-learning-rate-inf",
         spec_edit("activation: sigmoid",
                   "activation: sigmoid\n  learning_rate: {min: 0.01, max: .inf}"),
         SPEC_AT + "search_space.learning_rate.max"),
    case("spec-validation-split-nan",
         spec_edit("validation_split: 10000", "validation_split: .nan"),
         SPEC_AT + "training.validation_split"),
    case("spec-seed-inf", spec_edit("seed: 21", "seed: -.inf"), SPEC_AT + "tuner.seed"),
    # Booleans and other types where numbers or names belong.
    case("spec-epochs-true", spec_edit("epochs: 10", "epochs: true"),
         SPEC_AT + "training.epochs: expected an integer, got True"),
    case("spec-part-true", spec_edit("part: 2", "part: true"), SPEC_AT + "part: True"),
    case("spec-objective-list", spec_edit("objective: val_accuracy", "objective: [val_loss]"),
         SPEC_AT + "tuner.objective"),
    # Keys that are not field names.
    case("spec-int-key", spec_file(SPEC + "1: x\n"),
         SPEC_AT + "spec: field names must be strings, got 1"),
    case("spec-int-key-nested", spec_edit("training:\n", "training:\n  2: x\n"),
         SPEC_AT + "training: field names must be strings"),
    case("spec-null-and-unknown-keys", spec_file(SPEC + "null: x\nextra: y\n"),
         SPEC_AT + "spec: field names must be strings, got None"),
    case("spec-complex-key", spec_file(SPEC + "? [a, b]\n: x\n"),
         SPEC_AT + "not valid YAML", "unhashable key"),
    case("spec-duplicate-key", spec_edit("max_trials: 5", "max_trials: 5\n  max_trials: 500"),
         SPEC_AT + "not valid YAML at line", "'max_trials' is given twice"),
    # The file as a whole.
    case("spec-not-utf8", spec_file(SPEC.encode() + b"# caf\xe9 \xff\xfe\n"),
         SPEC_AT + "not UTF-8 text"),
    case("spec-binary", spec_file(bytes(np.random.default_rng(0).integers(0, 256, 512,
                                                                            np.uint8)) + b"\0"),
         SPEC_AT + "not UTF-8 text"),
    case("spec-nul-bytes", spec_file(b"name: part2-narrow\x00\x01\x02\n"),
         SPEC_AT + "not valid YAML", "#x0000"),
    case("spec-deep-nesting", spec_file("x: " + "[" * 1000 + "]" * 1000 + "\n"),
         SPEC_AT + "not valid YAML at line 1: nested deeper than 10 levels"),
    case("spec-alias-bomb", spec_file(billion_laughs()),
         SPEC_AT + "not valid YAML at line 1: anchors and aliases"),
    case("spec-list", spec_file("- name\n- part\n"),
         SPEC_AT + "spec: expected a mapping, got list"),
    case("spec-scalar", spec_file("part2-narrow\n"),
         SPEC_AT + "spec: expected a mapping, got str"),
    case("spec-empty", spec_file(""), SPEC_AT + "spec: expected a mapping, got nothing"),
    # Caps (spec.MAX_*): what a spec may ask for, refused before the space is built.
    case("spec-layers-max-huge", spec_edit("{min: 10, max: 12}", "{min: 10, max: 1000000000}"),
         SPEC_AT + "search_space.hidden_layers.max: expected at most 64, got 1000000000"),
    case("spec-layers-number-huge",
         spec_edit("hidden_layers: {min: 10, max: 12}", "hidden_layers: 65"),
         SPEC_AT + "search_space.hidden_layers: expected at most 64, got 65"),
    case("spec-units-max-huge", spec_edit("{min: 1, max: 9}", "{min: 1, max: 10000000}"),
         SPEC_AT + "search_space.units.max: expected at most 8192, got 10000000"),
    case("spec-max-trials-huge", spec_edit("max_trials: 5", "max_trials: 100001"),
         SPEC_AT + "tuner.max_trials: expected at most 100000, got 100001"),
    case("spec-epochs-huge", spec_edit("epochs: 10", "epochs: 10001"),
         SPEC_AT + "training.epochs: expected at most 10000, got 10001"),
    case("spec-batch-size-huge", spec_edit("batch_size: 32", "batch_size: 65537"),
         SPEC_AT + "training.batch_size: expected at most 65536, got 65537"),
    case("spec-searched-batch-size-huge",
         spec_edit("activation: sigmoid", "activation: sigmoid\n  batch_size: [32, 1000000]"),
         SPEC_AT + "search_space.batch_size: expected at most 65536, got 1000000"),
    case("spec-pack-huge", spec_edit("seed: 21", "seed: 21\n  pack: 257"),
         SPEC_AT + "tuner.pack: expected at most 256, got 257"),
    case("spec-validation-split-fraction-all",
         spec_edit("validation_split: 10000", "validation_split: 0.9999999"),
         SPEC_AT + "training.validation_split: expected an image count in 1..59999"),
    case("spec-validation-split-fraction-none",
         spec_edit("validation_split: 10000", "validation_split: 0.000001"),
         SPEC_AT + "training.validation_split: expected an image count in 1..59999"),
    case("spec-validation-split-all-images",
         spec_edit("validation_split: 10000", "validation_split: 60000"),
         SPEC_AT + "training.validation_split: expected an image count in 1..59999"),
    case("spec-min-params-unreachable",
         spec_edit("min_units: 1", "min_units: 1\n  min_trainable_params: 1000000000000000"),
         SPEC_AT + "constraints.min_trainable_params: expected at most 8,155 (the largest "
         "network here: 12 hidden layers of 9 units), got 1,000,000,000,000,000"),
    case("spec-over-a-mebibyte", spec_file(SPEC + "# " + "x" * 2**20 + "\n"),
         SPEC_AT + "larger than 1,048,576 bytes"),
    # Seeds: a trial trains under seed * 1000 + trial number, which must stay < 2**32.
    case("spec-seed-huge", spec_edit("seed: 21", "seed: 4294968"),
         SPEC_AT + "tuner.seed: expected at most 4000000, got 4294968"),
    case("spec-seed-negative", spec_edit("seed: 21", "seed: -1"),
         SPEC_AT + "tuner.seed: must be >= 1, got -1"),
    case("option-seed-huge", option("--seed", "4294968"),
         "Error: Invalid value for '--seed': 4294968 is not in the range 0<=x<=4000000."),
    case("option-seed-negative", option("--seed", "-1"),
         "Error: Invalid value for '--seed': -1 is not in the range 0<=x<=4000000."),
    # Click's own usage errors: the one line, without the usage and "Try --help" lines.
    case("option-max-trials-negative", option("--max-trials", "-1"),
         "Error: Invalid value for '--max-trials': -1 is not in the range 0<=x<=100000."),
    case("option-max-trials-huge", option("--max-trials", "100001"),
         "Error: Invalid value for '--max-trials': 100001 is not in the range"),
    case("option-epochs-not-a-number", option("--epochs", "ten"),
         "Error: Invalid value for '--epochs': 'ten' is not a valid integer"),
    case("option-epochs-huge", option("--epochs", "10001"),
         "Error: Invalid value for '--epochs': 10001 is not in the range 0<=x<=10000."),
    case("option-unknown", option("--colour"), "Error: No such option '--colour'."),
    case("option-unknown-before-command", command("--colour", "sweep", "part2-narrow"),
         "Error: No such option '--colour'."),
    case("command-unknown", command("sweeep", "part2-narrow"),
         "Error: No such command 'sweeep'."),
    case("spec-argument-missing", command("sweep"), "Error: Missing argument 'SPEC'."),
    case("option-pack-huge", option("--pack", "100000"),
         "Error: Invalid value for '--pack': 100000 is not in the range 0<=x<=256."),
    case("option-workers-huge", option("--workers", "100000"),
         "Error: Invalid value for '--workers': 100000 is not in the range 0<=x<=64."),
    case("option-threads-huge", option("--threads", "1000000000"),
         "Error: Invalid value for '--threads': 1000000000 is not in the range 0<=x<=1024."),
    case("option-worker-timeout-nan", option("--worker-timeout", "nan"),
         "Error: Invalid value for '--worker-timeout': 'nan' is not a number of seconds"),
    case("option-role-with-workers", option("--workers", "2", "--role", "chief"),
         "Error: --workers starts its own chief and workers: drop --role"),
    # --data
    case("data-npy", data_file(npy), "'--data'", "is a single .npy array, not a .npz"),
    case("data-truncated-npz", data_file(truncated), "'--data'", "could not be read as .npz"),
    case("data-zip-wrong-members", data_file(wrong_members), "'--data'",
         "no 'x_train' array"),
    case("data-pickled-objects",
         data_file(lambda tmp: mnist_like(tmp, x_train=np.array([[1], "x"], dtype=object))),
         "'--data'", "x_train could not be read (Object arrays cannot be loaded"),
    case("data-nan-pixels", data_file(nan_pixels), "'--data'", "x_train must be uint8"),
    case("data-pixels-out-of-range",
         data_file(lambda tmp: mnist_like(tmp, x_test=np.full((5, 28, 28), 300, np.int16))),
         "'--data'", "x_test must be uint8"),
    case("data-labels-out-of-range",
         data_file(lambda tmp: mnist_like(tmp, y_test=np.full(5, 10, np.uint8))),
         "'--data'", "y_test labels must be in 0..9"),
    case("data-flat-images",
         data_file(lambda tmp: mnist_like(tmp, x_train=np.zeros((20, 784), np.uint8))),
         "'--data'", "x_train must be uint8 of shape (N, 28, 28)"),
    case("data-no-test-images",
         data_file(lambda tmp: mnist_like(tmp, x_test=np.zeros((0, 28, 28), np.uint8),
                                          y_test=np.zeros(0, np.uint8))),
         "'--data'", "N >= 1"),
    case("data-directory", data_file(lambda tmp: tmp), "'--data'", "is a directory"),
    # --experiment
    case("experiment-empty", option("--experiment", ""), "'--experiment'", "got ''"),
    case("experiment-whitespace", option("--experiment", " \t "), "'--experiment'",
         "not only spaces"),
    case("experiment-newline", option("--experiment", "a\nb"), "'--experiment'",
         "printable"),
    # MLFLOW_TRACKING_URI
    case("uri-port-not-a-number", tracking_uri(f"http://alice:{PASSWORD}@localhost:abc"),
         "MLFLOW_TRACKING_URI: the port must be a number from 1 to 65535"),
    case("uri-port-out-of-range", tracking_uri(f"https://alice:{PASSWORD}@host:70000"),
         "MLFLOW_TRACKING_URI: the port must be a number"),
    case("uri-ipv6-unclosed", tracking_uri(f"http://alice:{PASSWORD}@[::1:5000"),
         "MLFLOW_TRACKING_URI: the host is not a valid address"),
    case("uri-no-host", tracking_uri(f"http://alice:{PASSWORD}@:5000/"),
         "MLFLOW_TRACKING_URI: no host"),
    case("uri-ipv6-valid-but-unreachable", unreachable_ipv6,
         "cannot reach the MLflow tracking server at http://[::1]:",
         exit_code=TrackingUnavailable.exit_code),
]


@pytest.mark.usefixtures("mnist_path")  # Some cases pass the real file ($MNIST_NPZ).
@pytest.mark.parametrize(("build", "expected", "exit_code"), CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, build, expected, exit_code):
    args, env_changes = build(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MNIST_SWEEPS_DIR")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    env.update(env_changes)
    result = subprocess.run(
        [*(COMMAND_SHORT_CHECK if "CHECK_SECONDS" in env else COMMAND), *args,
         "--directory", str(tmp_path / "t")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(NOISE)]
    assert result.returncode == exit_code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr[-2000:]
    for part in expected:
        assert part in lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / "t").exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert runs_in(tmp_path / "m.db") == 0


def runs_in(db):
    """How many MLflow runs an SQLite store holds (0 when there is no store)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if (
            "runs" in tables) else 0
