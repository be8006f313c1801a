"""A sweep as MLflow's UI shows it: a saved comparison view, and links that open it.

Every sweep saves one view of its trials in its experiment, the way the UI's own
**Share** button does: an experiment tag `mlflow.sharedViewState.<key>` holding the
runs page's state as JSON, opened by `?viewStateShareKey=<key>`. The view lists the
sweep's trials as rows (filtered on their parent, so none is collapsed under it),
best `val_accuracy` first, with the searched hyperparameters, `trainable_params`,
`val_accuracy`, `test_accuracy` and `best_epoch` as columns; its chart view holds a
parallel coordinates chart of the searched hyperparameters against `val_accuracy`,
then the per-epoch validation curves.

What the UI reads is not a documented API: the names below follow its source
(`ExperimentPageUIState`, `ExperimentPageSearchFacetsState`, `runs-charts.types`,
`useSharedExperimentViewState`, the `workflowType` and `compareRunsMode` URL
parameters) as served by MLflow 3.17.2 and 3.18.0 (`CHECKED_WITH`), and
`tests/test_ui.py` opens the printed link in a real browser on the pinned version.
"""

from __future__ import annotations

import json
import urllib.parse

from mlflow.tracking import MlflowClient

from pipeline.tracking import names
from pipeline.tracking.server import retry

CHECKED_WITH = ("3.17.2", "3.18.0")
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# Without `workflowType`, MLflow 3.17's UI opens an experiment on its GenAI overview.
WORKFLOW = ("workflowType", "machine_learning")
CHART_MODE = ("compareRunsMode", "CHART")
# `mlflow ui`'s address on the default store (README's "look at the results").
LOCAL_UI = "http://127.0.0.1:5000"
COLUMN_METRICS = (names.TRAINABLE_PARAMS, names.VAL_ACCURACY, names.TEST_ACCURACY,
                  names.BEST_EPOCH)
CURVES = (names.VAL_ACCURACY, names.VAL_LOSS)


def ui_address(tracking_uri):
    """The UI's address for a tracking URI: the server itself, or `mlflow ui`'s."""
    parts = urllib.parse.urlsplit(tracking_uri or "")
    if parts.scheme in ("http", "https"):  # Credentials stay out: the browser asks.
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return LOCAL_UI


def view_key(parent_run_id):
    """The share key of a sweep's view: one per parent run, stable across resumes."""
    return f"sweep-{parent_run_id}"


def view_state(parent_run_id, searched):
    """The runs page's state (search facets and UI state) showing one sweep's trials.

    Args:
        parent_run_id: the sweep's parent run.
        searched: the MLflow param names the sweep searches, in the space's order.
    """
    columns = [*(_column("params", name) for name in searched),
               *(_column("metrics", name) for name in COLUMN_METRICS)]
    parallel = {
        "uuid": "sweep-parallel", "type": "PARALLEL", "deleted": False,
        "isGenerated": False, "metricSectionId": "sweep-section", "runsCountToCompare": 100,
        "selectedParams": list(searched), "selectedMetrics": [names.VAL_ACCURACY],
        "showAllRuns": True,
    }
    curves = [{
        "uuid": f"sweep-curve-{metric}", "type": "LINE", "deleted": False,
        "isGenerated": False, "metricSectionId": "sweep-section", "runsCountToCompare": 100,
        "metricKey": metric, "selectedMetricKeys": [metric], "xAxisKey": "step",
        "xAxisScaleType": "linear", "scaleType": "linear", "lineSmoothness": 0,
        "useGlobalXaxisKey": False, "useGlobalLineSmoothing": False,
    } for metric in CURVES]
    return {
        # Search facets: the sweep's trials only, best first.
        "searchFilter": f"tags.`{names.PARENT_RUN}` = '{parent_run_id}'",
        "orderByKey": _column("metrics", names.VAL_ACCURACY),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state: the columns, every trial visible in the charts, the charts.
        "selectedColumns": columns,
        "runsExpanded": {parent_run_id: True},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "SHOW_ALL",
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "autoRefreshEnabled": True,
        "compareRunSections": [{"uuid": "sweep-section", "name": "Sweep", "display": True,
                                "isReordered": False, "deleted": False,
                                "isGenerated": False}],
        "compareRunCharts": [parallel, *curves],
    }


def save_view(experiment_id, parent_run_id, searched):
    """Saves the sweep's view in its experiment; returns its share key."""
    key = view_key(parent_run_id)
    value = json.dumps(view_state(parent_run_id, searched), separators=(",", ":"))
    client = MlflowClient()
    retry(lambda: client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, value))
    return key


def sweep_link(address, experiment_id, parent_run_id, chart=False):
    """The link that opens a sweep's saved view (its chart view with `chart`)."""
    query = [("viewStateShareKey", view_key(parent_run_id)), WORKFLOW]
    if chart:
        query.append(CHART_MODE)
    return (f"{address}/#/experiments/{experiment_id}/runs?"
            f"{urllib.parse.urlencode(query)}")


def run_link(address, experiment_id, run_id):
    """The link of one run's page, in the model training view."""
    return (f"{address}/#/experiments/{experiment_id}/runs/{run_id}?"
            f"{urllib.parse.urlencode([WORKFLOW])}")


def _column(kind, name):
    """The UI's canonical key of a column (`params.\\`units\\``)."""
    return f"{kind}.`{name}`"
