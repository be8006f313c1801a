"""The real MLflow UI, in a real headless Chromium, shows a sweep as users browse it.

Needs Debian's `chromium` (apt) and PyPI's `playwright` (its sync API drives the
system browser; `playwright install` is never needed). Missing either fails.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.cli import cli
from pipeline.tracking import names

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # Fail in the fixture below, never skip: CI installs it.
    expect = sync_playwright = None

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SERVER_START_S = 90
WAIT_MS = 30_000
SPEC = "part1-narrow"
TRIALS = [f"{SPEC}-trial-0", f"{SPEC}-trial-1"]
METRICS = (names.VAL_ACCURACY, names.TRAINABLE_PARAMS)


@pytest.fixture
def browser_page(tmp_path):
    """A page of the system Chromium, driven by Playwright."""
    if sync_playwright is None:
        pytest.fail("playwright is not installed: pip install playwright")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture
def finished_sweep(runner, client, mnist_path):
    """A small finished sweep, run through the CLI; returns its experiment and runs."""
    result = runner.invoke(cli, ["sweep", SPEC, "--data", mnist_path, "--train-limit",
                                 "500", "--epochs", "1", "--max-trials", "2"])
    assert result.exit_code == 0, result.output
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.{names.SWEEP} = '{SPEC}'")
    return experiment.experiment_id, {run.info.run_name: run for run in runs}


@pytest.fixture
def server(finished_sweep, tmp_path):
    """A real `mlflow server` on the test's store, on 127.0.0.1 only; yields its URL."""
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"],
               "--default-artifact-root", str(tmp_path / "mlruns"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # The job runner serves GenAI jobs only, and would add ~10 s to the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process, log_path)
        yield url
    finally:
        stop(process)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url, process, log_path):
    """Waits until `url/health` answers; fails with the server's output if it never does."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited {process.returncode}:\n"
                        f"{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_S}s:\n"
                f"{log_path.read_text()}")


def stop(process):
    """Stops the server and the workers it started (its whole process group)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass


def run_link(page, name):
    return page.get_by_role("link", name=name, exact=True)


def table_cell(page, run, metric):
    """The runs table's cell of `metric` in the row of `run`."""
    return page.locator(f'[row-id="{run.info.run_id}"] [col-id="metrics.`{metric}`"]')


def assert_shows(text, value, metric):
    shown = float(text.replace(",", ""))
    assert shown == pytest.approx(value), f"{metric}: UI shows {text!r}, MLflow has {value}"


def test_runs_page_nests_trials_under_the_sweep_with_their_metrics(
        browser_page, server, finished_sweep, tmp_path):
    page = browser_page
    experiment_id, runs = finished_sweep
    assert sorted(runs) == sorted([SPEC, *TRIALS])

    # The experiment's training runs (without workflowType the UI opens GenAI views).
    page.goto(f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    parent = run_link(page, SPEC)
    expect(parent).to_be_visible()
    page.get_by_role("button", name="Close", exact=True).click()  # The assistant panel.

    # Trials are nested: the parent row alone has a toggle, which shows and hides them.
    toggle = page.locator('[role="row"]', has=parent).locator(
        '[col-id="attributes.`Run Name`"] button')
    expect(toggle, "the parent row has no expand toggle: trials not nested").to_have_count(1)
    if not run_link(page, TRIALS[0]).is_visible():
        toggle.click()
    for name in TRIALS:
        expect(run_link(page, name)).to_be_visible()
    toggle.click()
    for name in TRIALS:
        expect(run_link(page, name)).to_be_hidden()
    expect(parent).to_be_visible()
    toggle.click()
    for name in TRIALS:
        expect(run_link(page, name)).to_be_visible()

    # The trials' metrics, as columns of the runs table.
    page.get_by_role("button", name="Columns").click()
    for metric in METRICS:
        page.get_by_title(metric, exact=True).click()
    page.keyboard.press("Escape")
    for name in TRIALS:
        for metric in METRICS:
            cell = table_cell(page, runs[name], metric)
            expect(cell).to_have_text(re.compile(r"\d"))
            assert_shows(cell.inner_text(), runs[name].data.metrics[metric], metric)
    page.screenshot(path=tmp_path / "runs-table.png", full_page=True)

    # A trial's own page: its parent run and its metrics.
    trial = runs[TRIALS[0]]
    run_link(page, TRIALS[0]).click()
    expect(page.get_by_role("heading", name=TRIALS[0], exact=True)).to_be_visible()
    expect(page.get_by_test_id("key-value-Parent run").get_by_role("link")).to_have_text(SPEC)
    for metric in METRICS:
        row = page.get_by_role("row").filter(has=run_link(page, metric))
        value = row.get_by_role("cell").nth(1)
        expect(value).to_have_text(re.compile(r"\d"))
        assert_shows(value.inner_text(), trial.data.metrics[metric], metric)
    page.screenshot(path=tmp_path / "trial-run.png", full_page=True)
