import pytest

from pipeline.cli.commands import cli


def test_help_everywhere(runner):
    for args in ([], ["sweep"], ["list"], ["exercise"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0
        assert "Usage:" in result.output
    bare = runner.invoke(cli, [])  # No command: the help, as click shows it.
    assert bare.exit_code == 2 and "Usage:" in bare.output and "Commands:" in bare.output
    sweep_help = runner.invoke(cli, ["sweep", "--help"]).output
    for option in ("--max-trials", "--epochs", "--data", "--train-limit", "--seed",
                   "--experiment", "--directory", "--overwrite"):
        assert option in sweep_help


def test_list_shows_every_spec_with_its_constraints(runner):
    result = runner.invoke(cli, ["list"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()
             if line and not line.startswith(" ")}
    assert set(lines) == {"part1-wide", "part1-narrow", "part2-narrow", "part2-medium",
                          "part2-wide", "part3", "part3-hyperband", "activation"}
    assert "params 300,000..814,090" in lines["part1-wide"]
    assert "params 6,370..49,999" in lines["part1-narrow"]
    assert "layers 10..12  units 1..9" in lines["part2-narrow"]
    assert "sigmoid/tanh/relu" in lines["activation"]


@pytest.mark.parametrize("args, message", [
    (["sweep", "part9"], "Invalid value for SPEC: unknown spec 'part9'"),
    (["sweep", "part1-narrow", "--max-trials", "-1"],
     "Invalid value for '--max-trials': -1 is not in the range 0<=x<=100000."),
    (["sweep", "part1-narrow", "--seed", "4000001"],
     "Invalid value for '--seed': 4000001 is not in the range 0<=x<=4000000."),
    (["sweep", "part1-narrow", "--epochs", "ten"],
     "Invalid value for '--epochs': 'ten' is not a valid integer"),
    (["sweep", "part1-narrow", "--data", "missing.npz"],
     "Invalid value for '--data': MNIST file not found: missing.npz; pass a local"),
    (["sweep", "part1-narrow", "--colour"], "No such option '--colour'"),
    (["sweep"], "Missing argument 'SPEC'"),
    (["exercise", "--data", "missing.npz"], "Invalid value for '--data'"),
    (["--colour", "list"], "No such option '--colour'"),
    (["sweeep"], "No such command 'sweeep'"),
])
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(
        runner, workdir, args, message):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output  # No usage lines.
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "kt_sweeps").exists()


@pytest.mark.parametrize("args, token, message", [
    (["--role", "chief", "--oracle", "127.0.0.1:8000"], None,
     "Invalid value for MNIST_SWEEPS_ORACLE_TOKEN: --role chief needs the oracle's shared "
     "token"),
    (["--role", "worker", "--oracle", "127.0.0.1:8000"], None,
     "Invalid value for MNIST_SWEEPS_ORACLE_TOKEN: --role worker needs the oracle's shared"),
    (["--role", "chief", "--oracle", "127.0.0.1:8000"], "short",
     "Invalid value for MNIST_SWEEPS_ORACLE_TOKEN: the oracle token must be at least 16"),
    (["--role", "chief", "--oracle", "127.0.0.1:8000", "--oracle-token-file", "nope"], None,
     "Invalid value for '--oracle-token-file': cannot read nope: No such file"),
    (["--role", "worker", "--oracle", "10.0.0.5:8000"], "t" * 32,
     "Invalid value for MLFLOW_TRACKING_URI: --role worker with a store local to this "
     "machine (sqlite): a sweep on several machines needs a shared `mlflow server`"),
], ids=["chief-no-token", "worker-no-token", "short-token", "no-token-file",
        "sqlite-across-machines"])
def test_a_distributed_role_needs_a_token_and_a_shared_store(runner, workdir, monkeypatch,
                                                             args, token, message):
    monkeypatch.delenv("MNIST_SWEEPS_ORACLE_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("MNIST_SWEEPS_ORACLE_TOKEN", token)
    result = runner.invoke(cli, ["sweep", "part1-narrow", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    if token:
        assert token not in result.output
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "kt_sweeps").exists()


KT_ENV = {"KERASTUNER_TUNER_ID": "w1", "KERASTUNER_ORACLE_IP": "127.0.0.1",
          "KERASTUNER_ORACLE_PORT": "8000"}
TOKEN_ENV = {"MNIST_SWEEPS_ORACLE_TOKEN": "t" * 32}


@pytest.mark.parametrize("args, env, message", [
    (["--role", "worker", "--oracle", "127.0.0.1:8000", "--worker-id", "a/b"], TOKEN_ENV,
     "Invalid value for '--worker-id': 'a/b' cannot be a worker's id: use 1-128 letters"),
    (["--role", "worker", "--oracle", "127.0.0.1:8000", "--worker-id", "chief"], TOKEN_ENV,
     "Invalid value for '--worker-id': 'chief' cannot be a worker's id"),
    ([], KT_ENV, "Invalid value for MNIST_SWEEPS_ORACLE_TOKEN: --role worker needs the "
                 "oracle's shared token"),
    ([], {**KT_ENV, "KERASTUNER_TUNER_ID": "chief",
          "MNIST_SWEEPS_ORACLE_TOKEN": "short"},
     "Invalid value for MNIST_SWEEPS_ORACLE_TOKEN: the oracle token must be at least 16"),
    ([], {**KT_ENV, **TOKEN_ENV, "KERASTUNER_TUNER_ID": "w/1"},
     "Invalid value for KERASTUNER_TUNER_ID: 'w/1' cannot be a worker's id"),
    ([], {**KT_ENV, **TOKEN_ENV, "KERASTUNER_ORACLE_IP": "10.0.0.5"},
     "Invalid value for MLFLOW_TRACKING_URI: --role worker with a store local to this "
     "machine (sqlite)"),
    ([], {**KT_ENV, **TOKEN_ENV, "KERASTUNER_TUNER_ID": "chief",
          "MNIST_SWEEPS_ORACLE_TLS_CERT": "nope.pem"},
     "Invalid value for MNIST_SWEEPS_ORACLE_TLS_CERT: cannot read nope.pem"),
    ([], {"KERASTUNER_TUNER_ID": "w1", **TOKEN_ENV},
     "Invalid value for KERASTUNER_ORACLE_IP: Keras Tuner's distributed mode needs "
     "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT together"),
], ids=["slash-in-worker-id", "worker-id-chief", "kt-env-no-token", "kt-env-short-token",
        "kt-env-slash-in-id", "kt-env-sqlite-across-machines", "kt-env-tls-file",
        "kt-env-incomplete"])
def test_keras_tuners_variables_and_worker_ids_get_the_same_checks_as_role(
        runner, workdir, monkeypatch, args, env, message):
    for name in (*KT_ENV, "MNIST_SWEEPS_ORACLE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(cli, ["sweep", "part1-narrow", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "t" * 32 not in result.output
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "kt_sweeps").exists()


def test_invalid_spec_file_is_a_usage_error(runner, workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nsearch_space: {hidden_layers: 1, units: 8}\n"
                   "tuner: {algorithm: sa}\n")
    result = runner.invoke(cli, ["sweep", str(bad)])
    assert result.exit_code == 2
    assert "tuner.algorithm: 'sa' is not one of random, bayesian, hyperband, grid" in (
        result.output)
    assert not (workdir / "mlflow.db").exists()
