"""The sweep's champion: its best trial's model in MLflow's Model Registry.

At the end of a sweep the best trial's logged model is registered under
`<experiment>.<spec>` (e.g. `mnist-sweeps.part1-narrow`) with the alias `champion`,
so that `mlflow models serve -m models:/mnist-sweeps.part1-narrow@champion` serves
it without anyone copying a run id. A resumed or extended sweep whose best trial
changed registers the new one and moves the alias; one whose best did not change
leaves the registry as it is.
"""

from __future__ import annotations

import contextlib
import io

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking import runs
from pipeline.tracking.server import retry

ALIAS = "champion"


def model_name(experiment, sweep_name):
    return f"{experiment}.{sweep_name}"


def register_champion(experiment, sweep_name, run_id):
    """Makes the model of trial run `run_id` the champion of its sweep.

    Returns:
        (registered model name, version), or None if the run has no logged model.
    """
    name = model_name(experiment, sweep_name)
    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # No registered model, or no champion yet.
        current = None
    if current is not None and current.run_id == run_id:
        return name, str(current.version)
    uri = runs.model_uri(run_id)
    if uri is None:
        return None
    # MLflow prints "Successfully registered ..." itself; the sweep says it in its line.
    with contextlib.redirect_stderr(io.StringIO()):
        version = str(retry(lambda: mlflow.register_model(uri, name)).version)
    retry(lambda: client.set_registered_model_alias(name, ALIAS, version))
    return name, version
