"""`python -m pipeline ui`: MLflow's UI on the sweeps' store, on 127.0.0.1 only,
opened on a sweep's comparison view; Ctrl-C or SIGTERM stops it and its workers."""

import json
import signal
import socket
import urllib.request

import psutil
import pytest
from servers import SweepProcess, free_port, wait_for

from pipeline.cli.commands import cli
from pipeline.tracking import names, views

pytestmark = pytest.mark.slow

SPEC = "part1-narrow"


def listening(port):
    """The addresses something listens on at `port`."""
    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def refused(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_serves_the_store_on_localhost_prints_the_sweeps_link_and_stops(
        runner, client, mnist_path, workdir, stop):
    result = runner.invoke(cli, ["sweep", SPEC, "--data", mnist_path, "--train-limit", "500",
                                 "--epochs", "1", "--max-trials", "2"])
    assert result.exit_code == 0, result.output
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.{names.SWEEP_KEY} != ''")

    port = free_port()
    ui = SweepProcess(["--port", str(port)], workdir, command="ui")
    wait_for(lambda: "Ctrl-C stops it" in ui.text or ui.process.poll() is not None, 180,
             "the UI's link")
    address = f"http://127.0.0.1:{port}"
    assert f"{SPEC}: {views.sweep_link(address, experiment.experiment_id, parent.info.run_id)}" \
        in ui.text, ui.text
    assert listening(port) == {"127.0.0.1"}
    # It serves this store: the experiment, with the sweep's saved view.
    url = f"{address}/api/2.0/mlflow/experiments/get?experiment_id={experiment.experiment_id}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        tags = {t["key"]: t["value"] for t in json.load(reply)["experiment"]["tags"]}
    state = json.loads(tags[views.SHARED_VIEW_TAG + views.view_key(parent.info.run_id)])
    assert parent.info.run_id in state["searchFilter"]

    ui.process.send_signal(stop)  # To the command alone, as a terminal's Ctrl-C would.
    assert ui.wait(60) == 0, ui.text
    assert "stopped MLflow's UI" in ui.text and "Traceback" not in ui.text, ui.text
    wait_for(lambda: refused(port), 30, "the UI's port to close")


def test_ui_without_the_asked_sweep_says_so_in_one_line(runner, mnist_path):
    result = runner.invoke(cli, ["sweep", SPEC, "--data", mnist_path, "--train-limit", "500",
                                 "--epochs", "1", "--max-trials", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["ui", "--spec", "part3"])
    assert result.exit_code == 1
    assert result.output == (f"Error: no sweep of spec 'part3' in experiment "
                             f"'{names.DEFAULT_EXPERIMENT}' yet: run one first, e.g. python "
                             "-m pipeline sweep part3\n")


def test_ui_refuses_a_port_out_of_range():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["ui", "--port", "70000"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "'--port'" in result.output, result.output
