"""The real MLflow UI, in a real headless Chromium, shows a sweep as users browse it.

Needs Debian's `chromium` (apt) and PyPI's `playwright` (its sync API drives the
system browser; `playwright install` is never needed). Missing either fails.
"""

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from servers import wait_for

from pipeline.cli.commands import cli
from pipeline.tracking import names
from pipeline.tracking import ui as ui_module
from pipeline.tracking.datasets import CONTEXTS

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
DATASET_COLUMN = "attributes.`Dataset`"


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
        ui_module.stop(process)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url, process, log_path):
    """Waits until `url/health` answers; fails with the server's output if it never does."""

    def healthy():
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(healthy, SERVER_START_S, f"mlflow server (log: {log_path})")


def run_link(page, name):
    return page.get_by_role("link", name=name, exact=True)


def table_cell(page, run, column):
    """The runs table's cell of `column` (a col-id) in the row of `run`."""
    return page.locator(f'[row-id="{run.info.run_id}"] [col-id="{column}"]')


def metric_column(metric):
    return f"metrics.`{metric}`"


def assert_shows(text, value, metric, places=None):
    """`text` shows `value`; rounded to `places` decimals when given (the compare page's)."""
    shown = float(text.replace(",", ""))
    tolerance = None if places is None else 0.5 * 10 ** -places * (1 + 1e-9)
    assert shown == pytest.approx(value, abs=tolerance), (
        f"{metric}: UI shows {text!r}, MLflow has {value}")


def logged_datasets(run):
    """`run`'s inputs as the runs table names them, `name (digest)`, with their contexts."""
    return {(f"{put.dataset.name} ({put.dataset.digest})",
             {tag.key: tag.value for tag in put.tags}.get(MLFLOW_DATASET_CONTEXT))
            for put in run.inputs.dataset_inputs}


def open_training_runs(page, server, experiment_id):
    """The experiment's runs page, without `?workflowType=machine_learning`.

    MLflow 3.17's UI opens the bare experiment URL (`#/experiments/ID`) on its GenAI
    overview whatever the experiment's `mlflow.experimentKind` tag says (it follows
    its own GenAI/Model training switch, GenAI by default); `/runs` is the runs table.
    """
    url = f"{server}/#/experiments/{experiment_id}/runs"
    page.goto(url)
    expect(run_link(page, SPEC)).to_be_visible()
    # Not sent on to the GenAI overview or traces: still the runs page.
    expect(page).to_have_url(re.compile(rf"{re.escape(url)}(\?|$)"))
    expect(page.get_by_text("Detect Issues")).to_have_count(0)  # The GenAI overview's.
    page.get_by_role("button", name="Close", exact=True).click()  # The assistant panel.


def check_nesting(page):
    """Trials are nested: the parent row alone has a toggle, which shows and hides them."""
    parent = run_link(page, SPEC)
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


def check_metric_columns(page, runs):
    """The trials' metrics, as columns of the runs table."""
    page.get_by_role("button", name="Columns").click()
    for metric in METRICS:
        page.get_by_title(metric, exact=True).click()
    page.keyboard.press("Escape")
    for name in TRIALS:
        for metric in METRICS:
            cell = table_cell(page, runs[name], metric_column(metric))
            expect(cell).to_have_text(re.compile(r"\d"))
            assert_shows(cell.inner_text(), runs[name].data.metrics[metric], metric)


def check_dataset_column(page, runs):
    """Each trial's Dataset cell names its three MNIST splits and their contexts."""
    expand = page.get_by_role("button", name="Expand rows", exact=True)
    expand.click()  # A cell shows its first dataset only, and `+2`, until expanded.
    expect(expand).to_have_attribute("aria-pressed", "true")
    for name in TRIALS:
        logged = logged_datasets(runs[name])
        assert {context for _, context in logged} == set(CONTEXTS), (name, logged)
        assert all(label.startswith("mnist-") for label, _ in logged), (name, logged)
        cell = table_cell(page, runs[name], DATASET_COLUMN)
        datasets = cell.get_by_test_id("open-dataset-drawer")  # A dataset's name, a button.
        contexts = cell.get_by_role("status")  # Its context, a tag beside it.
        expect(datasets, f"{name}: Dataset column").to_have_count(len(CONTEXTS))
        expect(contexts, f"{name}: dataset contexts").to_have_count(len(CONTEXTS))
        for shown in (*datasets.all(), *contexts.all()):
            expect(shown).to_be_visible()
        shown = set(zip(datasets.all_text_contents(), contexts.all_text_contents(), strict=True))
        assert shown == logged, f"{name}: UI shows {shown}, MLflow has {logged}"


def compare_values(page, metric):
    """The compare page's values of `metric`, left to right, one per run column.

    Its Metrics section is two virtualized grids side by side, the names' and the
    values': a value is on its metric's line. Lines are read from the layout, not
    the screen: MLflow 3.17's names grid lags one scroll event behind the values'.
    """
    name = page.get_by_role("link", name=metric, exact=True)
    labels = page.get_by_role("grid").filter(has=name)
    expect(labels).to_have_count(1)
    values = labels.locator("xpath=following::*[@role='grid'][1]")
    line = name.locator("..").evaluate("cell => cell.offsetTop")
    cells = values.get_by_role("rowgroup").locator("> *").evaluate_all(
        "cells => cells.map(c => [c.offsetTop, c.offsetLeft, c.innerText])")
    return [text for top, _, text in sorted(cells, key=lambda cell: cell[1]) if top == line]


def check_compare(page, runs, tmp_path):
    """Two trials ticked and compared: their names, and their metrics side by side."""
    for name in TRIALS:
        box = page.locator(f'[row-id="{runs[name].info.run_id}"]').get_by_role("checkbox")
        box.check()
        expect(box).to_be_checked()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_role("heading", name="Comparing 2 Runs from 1 Experiment")).to_be_visible()
    run_names = page.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="Run Name:", exact=True)).get_by_role("cell")
    expect(run_names).to_have_count(len(TRIALS))
    for name in TRIALS:
        expect(run_names.filter(has_text=re.compile(f"^{name}$"))).to_be_visible()
    shown_names = run_names.all_inner_texts()
    values = compare_values(page, names.VAL_ACCURACY)
    assert len(values) == len(shown_names), f"{names.VAL_ACCURACY}: UI shows {values}"
    for name, text in zip(shown_names, values, strict=True):
        assert_shows(text, runs[name].data.metrics[names.VAL_ACCURACY], names.VAL_ACCURACY,
                     places=3)
    page.screenshot(path=tmp_path / "compare-runs.png", full_page=True)
    page.get_by_role("link", name=names.VAL_ACCURACY, exact=True).locator(
        "xpath=ancestor::*[@role='grid'][1]").scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "compare-metrics.png", full_page=True)


def check_trial_page(page, runs, tmp_path):
    """A trial's own page: its parent run and its metrics."""
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


def test_runs_page_shows_the_sweep_its_trials_and_their_comparison(
        browser_page, server, finished_sweep, tmp_path):
    page = browser_page
    experiment_id, runs = finished_sweep
    assert sorted(runs) == sorted([SPEC, *TRIALS])

    open_training_runs(page, server, experiment_id)
    check_nesting(page)
    check_metric_columns(page, runs)
    check_dataset_column(page, runs)
    page.screenshot(path=tmp_path / "runs-table.png", full_page=True)

    check_compare(page, runs, tmp_path)
    page.go_back()  # The runs table again, as it was left.
    check_trial_page(page, runs, tmp_path)


# -- The link a sweep prints: its trials, ready to compare -----------------------

LINK = re.compile(r"compare the trials: (\S+)")
SEARCHING = "activation"  # Searches two hyperparameters: units and activation.
SEARCHED = (names.UNITS, names.ACTIVATION)
COLUMNS = ([f"params.`{name}`" for name in SEARCHED]
           + [metric_column(m) for m in (names.TRAINABLE_PARAMS, names.VAL_ACCURACY,
                                         names.TEST_ACCURACY, names.BEST_EPOCH)])


def shown_rows(page):
    """The runs table's rows, top to bottom, as run ids (each once)."""
    found = page.locator("[row-id][row-index]").evaluate_all(
        "rows => rows.map(r => [Number(r.getAttribute('row-index')), r.getAttribute('row-id')])")
    return [run_id for _, run_id in sorted(set(map(tuple, found)))]


def test_the_link_a_sweep_prints_opens_its_trials_ready_to_compare(
        browser_page, tracking_server, runner, client, mnist_path, tmp_path):
    page = browser_page
    result = runner.invoke(cli, ["sweep", SEARCHING, "--data", mnist_path, "--train-limit",
                                 "500", "--epochs", "2", "--max-trials", "3"])
    assert result.exit_code == 0, result.output
    (link,) = LINK.findall(result.output)
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    assert link.startswith(f"{tracking_server.url}/#/experiments/{experiment.experiment_id}"
                           "/runs?"), link
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.{names.SWEEP_KEY} != ''")
    trials = {run.info.run_id: run for run in client.search_runs(
        [experiment.experiment_id], f"tags.`{names.PARENT_RUN}` = '{parent.info.run_id}'")}
    assert len(trials) == 3

    # The runs view: the trials as rows (no collapsed parent), best val_accuracy first.
    page.goto(link)
    for run_id in trials:
        expect(page.locator(f'[row-id="{run_id}"]').first).to_be_visible()
    expect(page.get_by_text("Detect Issues")).to_have_count(0)  # Not the GenAI overview.
    page.get_by_role("button", name="Close", exact=True).click()  # The assistant panel.
    rows = shown_rows(page)
    assert sorted(rows) == sorted(trials), (rows, list(trials))
    accuracy = [trials[run_id].data.metrics[names.VAL_ACCURACY] for run_id in rows]
    assert accuracy == sorted(accuracy, reverse=True), accuracy
    # The searched hyperparameters and the metrics to compare, as columns.
    for column in COLUMNS:
        expect(page.locator(f'[role="columnheader"][col-id="{column}"]')).to_be_visible()
    best = trials[rows[0]]
    for name in SEARCHED:
        expect(table_cell(page, best, f"params.`{name}`")).to_have_text(best.data.params[name])
    for metric in (names.VAL_ACCURACY, names.TRAINABLE_PARAMS):
        cell = table_cell(page, best, metric_column(metric))
        expect(cell).to_have_text(re.compile(r"\d"))
        assert_shows(cell.inner_text(), best.data.metrics[metric], metric)
    page.screenshot(path=tmp_path / "comparison-table.png")

    # The chart view: parallel coordinates of the searched hyperparameters against
    # val_accuracy, then the per-epoch validation curves.
    page.locator("label", has=page.locator('input[value="CHART"]')).click()
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(cards.first).to_contain_text("Parallel Coordinates")
    axes = cards.first.locator("g.axis text.label")  # Each axis's name.
    expect(axes).to_have_count(len(SEARCHED) + 1)
    assert axes.all_text_contents() == [*SEARCHED, names.VAL_ACCURACY]
    expect(cards.nth(1)).to_contain_text(names.VAL_ACCURACY)
    page.screenshot(path=tmp_path / "comparison-charts.png")
