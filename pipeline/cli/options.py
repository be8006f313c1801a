"""The command line's options: their types, their limits and the checks on them.

`sweep_options` are the options `sweep` and `exercise` share (MLproject's parameters);
the numbers they take are capped like the spec fields they override (`spec.MAX_*`).
"""

from __future__ import annotations

import math
import os

import click

from pipeline import data as data_module
from pipeline.errors import InputError
from pipeline.spec.schema import MAX_EPOCHS, MAX_PACK, MAX_SEED, MAX_TRIALS
from pipeline.tracking import names

# More processes or threads than these only compete for one machine's cores and memory.
MAX_WORKERS = 64
MAX_THREADS = 1024
MAX_TIMEOUT = 7 * 24 * 3600  # Seconds: a week.


def from_spec(most=None):
    """A whole number from 0 to `most` (None: no limit). Zero or empty means "from the
    spec" (or "all"), so that MLproject parameters can default."""
    return click.IntRange(min=0, max=most)


class Seconds(click.FloatRange):
    """A number of seconds from 1 to `MAX_TIMEOUT`; not NaN, which passes any range."""

    def __init__(self):
        super().__init__(min=1, max=MAX_TIMEOUT)

    def convert(self, value, param, ctx):
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds from 1 to {MAX_TIMEOUT}.",
                      param, ctx)
        return seconds


def experiment_name(ctx, param, value):
    """An MLflow experiment name: 1 to 500 characters, printable, not only spaces.

    Not given (nor `$MLFLOW_EXPERIMENT_NAME`): the experiment `mlflow run
    --experiment-name` chose (`$MLFLOW_EXPERIMENT_ID`), unless that is MLflow's
    Default experiment; else `mnist-sweeps`.
    """
    chosen = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
    source = ctx.get_parameter_source(param.name)
    if source == click.core.ParameterSource.DEFAULT and chosen not in ("", "0"):
        value = _experiment_of(chosen)
    if not value.strip() or len(value) > 500 or not value.isprintable():
        error = InputError(f"expected an experiment name of 1 to 500 printable characters, "
                           f"not only spaces, got {value[:40]!r}")
        error.param = "'--experiment'"
        raise error  # `SweepCli` prints it as one line naming '--experiment'.
    return value


def _experiment_of(experiment_id):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_experiment(experiment_id).name
    except MlflowException:
        error = InputError(f"no experiment {experiment_id!r} in the tracking store")
        error.param = "MLFLOW_EXPERIMENT_ID"
        raise error from None


def sweep_options(func):
    """The options shared by `sweep` and `exercise`, as in MLproject."""
    options = [
        click.option("--max-trials", type=from_spec(MAX_TRIALS), default=0,
                     show_default=True, help="Trials to run; 0 = the spec's tuner.max_trials."),
        click.option("--epochs", type=from_spec(MAX_EPOCHS), default=0, show_default=True,
                     help="Epochs per trial; 0 = the spec's training.epochs."),
        click.option("--seed", type=from_spec(MAX_SEED), default=0, show_default=True,
                     help="Oracle and training seed; 0 = the spec's tuner.seed."),
        click.option("--data", "data_path", default="", metavar="PATH",
                     help=f"Keras-layout mnist.npz; empty = ${data_module.ENV_VAR}, "
                          "else Keras' download."),
        click.option("--train-limit", type=from_spec(), default=0, show_default=True,
                     help="Train on only the first N training images (smoke runs); "
                          "0 = all."),
        click.option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME",
                     default=names.DEFAULT_EXPERIMENT, show_default=True,
                     callback=experiment_name,
                     help="MLflow experiment (or $MLFLOW_EXPERIMENT_NAME)."),
        click.option("--directory", envvar="MNIST_SWEEPS_DIR", default="kt_sweeps",
                     show_default=True, type=click.Path(file_okay=False),
                     help="Where Keras Tuner keeps each sweep's state, for resuming "
                          "(or $MNIST_SWEEPS_DIR)."),
        click.option("--overwrite", is_flag=True,
                     help="Start the sweep afresh instead of resuming it."),
        click.option("--no-register", is_flag=True,
                     help="Do not register the best trial's model as the sweep's "
                          "`champion` in MLflow's Model Registry."),
        click.option("-v", "--verbose", count=True,
                     help="Show Keras' per-epoch progress bar."),
        click.option("--mixed-precision", is_flag=True,
                     help="Compute in float16 on GPUs (results change slightly)."),
        click.option("--threads", type=from_spec(MAX_THREADS), default=0, show_default=True,
                     help="CPU threads TensorFlow may use per process; 0 = all."),
        click.option("--pack", type=from_spec(MAX_PACK), default=0, show_default=True,
                     help="Trials trained together in one step (1 = one at a time); "
                          "0 = the spec's tuner.pack, else chosen by model size."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def oracle_address(ctx, param, value):
    """`--oracle`: HOST:PORT."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return value
