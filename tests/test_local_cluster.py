"""`sweep --workers N`: the chief's and workers' commands repeat the user's options."""

import socket
import sys

import pytest

from pipeline.cli.commands import _sweep_args, sweep
from pipeline.search import local_cluster

# The options `sweep` hands to the chief and to each worker unchanged.
FORWARDED = ("spec", "max_trials", "epochs", "seed", "data_path", "train_limit",
             "experiment", "directory", "overwrite", "verbose", "mixed_precision",
             "worker_timeout", "chief_timeout", "no_register", "pack")
# `sweep`'s own parameters; the rest are the shared sweep options (`**options`).
SWEEP_ONLY = ("spec", "workers", "role", "oracle", "worker_id", "worker_timeout",
              "chief_timeout")

USER_COMMAND = ["part2-narrow", "--workers", "2", "--chief-timeout", "123",
                "--worker-timeout", "9", "--max-trials", "4", "--epochs", "3",
                "--seed", "11", "--data", "/data/my mnist.npz", "--train-limit", "500",
                "--experiment", "nightly sweep", "--directory", "state dir",
                "--overwrite", "-vv", "--mixed-precision", "--threads", "5",
                "--no-register", "--pack", "3"]


@pytest.fixture(autouse=True)
def no_option_envvars(monkeypatch):
    """Options with an envvar fallback read only the command line here."""
    monkeypatch.delenv("MNIST_SWEEPS_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def parse(argv):
    """`sweep`'s parameters for `argv`, parsed by click as the real command does."""
    with sweep.make_context("sweep", list(argv)) as ctx:
        return dict(ctx.params)


def sweep_args_of(params):
    """The arguments `sweep --workers N` hands on, built exactly as `sweep` does."""
    options = {k: v for k, v in params.items() if k not in SWEEP_ONLY}
    return _sweep_args(params["spec"], options, params["worker_timeout"],
                       params["chief_timeout"])


def parse_command(command):
    prefix = [sys.executable, "-m", "pipeline", "sweep"]
    assert command[:len(prefix)] == prefix
    return parse(command[len(prefix):])


def test_every_process_gets_the_users_options_and_its_role():
    user = parse(USER_COMMAND)
    assert (user["chief_timeout"], user["worker_timeout"], user["verbose"]) == (123, 9, 2)
    chief_cmd, worker_cmds = local_cluster.commands(sweep_args_of(user), 2, 45678, 1)
    assert len(worker_cmds) == 2

    chief = parse_command(chief_cmd)
    workers = [parse_command(cmd) for cmd in worker_cmds]
    for params in [chief, *workers]:
        assert {k: params[k] for k in FORWARDED} == {k: user[k] for k in FORWARDED}
        assert params["oracle"] == "127.0.0.1:45678"
        assert params["workers"] == 0  # `sweep` refuses --workers with --role.
    assert chief["role"] == "chief"
    assert [w["role"] for w in workers] == ["worker", "worker"]
    ids = [w["worker_id"] for w in workers]
    assert len(set(ids)) == 2 and None not in ids
    assert [w["threads"] for w in workers] == [1, 1]  # The machine's cores, shared.


def test_defaults_are_forwarded_too():
    user = parse(["part2-narrow", "--workers", "3"])
    chief_cmd, worker_cmds = local_cluster.commands(sweep_args_of(user), 3, 5000, 2)
    for params in map(parse_command, [chief_cmd, *worker_cmds]):
        assert {k: params[k] for k in FORWARDED} == {k: user[k] for k in FORWARDED}
    assert user["chief_timeout"] == 600 and not user["overwrite"] and user["verbose"] == 0
    assert len({parse_command(cmd)["worker_id"] for cmd in worker_cmds}) == 3


def test_free_port_can_be_bound_on_localhost():
    port = local_cluster.free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert sock.getsockname() == ("127.0.0.1", port)
