"""MNIST's three splits as MLflow datasets, logged as the inputs of every run.

Each trial run and the sweep's parent log the training, validation and test sets
(MLflow's `mlflow.data.context` `training`/`validation`/`test`), so the MLflow UI's
Dataset column says what a run learned from. A split's digest is the source file's
digest with the split sizes (`--train-limit` applied), so two sweeps over the same
data show the same datasets.
"""

from __future__ import annotations

import functools
import json

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.tracking.server import retry

CONTEXTS = ("training", "validation", "test")


@functools.lru_cache(maxsize=4)
def inputs(dataset):
    """The `DatasetInput`s of a `data.Dataset` (made once per dataset)."""
    splits = {"training": (dataset.x_train, dataset.y_train),
              "validation": (dataset.x_val, dataset.y_val),
              "test": (dataset.x_test, dataset.y_test)}
    made = []
    for context in CONTEXTS:
        x, y = splits[context]
        entity = Dataset(
            name=f"mnist-{context}", digest=f"{dataset.fingerprint}-{len(x)}",
            source_type="local" if "://" not in dataset.source else "http",
            source=json.dumps({"uri": dataset.source}),
            schema=json.dumps({"features": {"dtype": str(x.dtype), "shape": [-1, *x.shape[1:]]},
                               "targets": {"dtype": str(y.dtype), "shape": [-1, *y.shape[1:]]}}),
            profile=json.dumps({"num_rows": len(x)}))
        made.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return tuple(made)


def log(run_id, dataset):
    """Logs the three splits as the inputs of run `run_id`."""
    retry(lambda: MlflowClient().log_inputs(run_id, datasets=list(inputs(dataset))))
