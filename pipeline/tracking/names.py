"""The MLflow contract: every tag, param, metric and artifact name, defined once.

README's "What MLflow holds" describes these. Writers (`runs`, `trial_run`), the
report and the tests all take the names from here, so renaming one is one edit.

One parent run per sweep (run name = spec name) and one nested child run per
trial. Per-epoch metrics use step = epoch number (1 = after the first epoch).
"""

from __future__ import annotations

DEFAULT_EXPERIMENT = "mnist-sweeps"
# MLflow 3's experiment kind: its UI opens a training experiment on its runs.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"

# -- Tags ---------------------------------------------------------------------
PARENT_RUN = "mlflow.parentRunId"  # MLflow's own nesting tag.
SWEEP = "sweep"  # Parent and trials: the spec's name.
SWEEP_KEY = "sweep_key"  # Parent: the Keras Tuner project (spec + data + store).
PART = "part"
ALGORITHM = "algorithm"
OBJECTIVE = "objective"
MAX_TRIALS = "max_trials"
SEED = "seed"
BEST_TRIAL = "best_trial"  # Parent: the best trial's Keras Tuner id ...
BEST_RUN_ID = "best_run_id"  # ... and its run.
TRIAL_ID = "trial_id"  # Trial: Keras Tuner's trial id ("0", "1", ...).
WORKER = "worker"  # Trial: the Keras Tuner id of the process that trained it.
PACK_SIZE = "pack_size"  # Trial: how many trials trained in one step with it.
FAILURE_REASON = "failure_reason"  # A FAILED or KILLED run: why, in one line.
STOPPED_EARLY = "stopped_early"  # Trial under early stopping: "true" if it stopped it.
PRUNED = "pruned"  # Trial under pruning: "true" if stopped behind the others at a rung ...
PRUNED_AT = "pruned_at_epoch"  # ... and the rung (epoch) it stopped at.
SWEEP_RUN_ID = "sweep_run_id"  # The `mlflow run` run: where its sweep was logged.
REPORT = "report"  # The report's run.
REPORT_RUN_ID = "report_run_id"  # The `mlflow run` run: where the report was logged.

# -- Params of a trial (its active hyperparameters) ---------------------------
HIDDEN_LAYERS = "hidden_layers"
UNITS = "units"  # Comma-separated widths, input side first.
ACTIVATION = "activation"
OPTIMIZER = "optimizer"
LEARNING_RATE = "learning_rate"
MOMENTUM = "momentum"
BATCH_SIZE = "batch_size"
EPOCHS = "epochs"  # Also a parent tag: the sweep's epochs per trial.
LOSS_FUNCTION = "loss_function"
TRIAL_PARAMS = (HIDDEN_LAYERS, UNITS, ACTIVATION, OPTIMIZER, LEARNING_RATE, MOMENTUM,
                BATCH_SIZE, EPOCHS, LOSS_FUNCTION)
# Logged only when active (not the plain SGD default).
SCHEDULE = "lr_schedule"  # "step" or "cosine".
WARMUP_EPOCHS = "warmup_epochs"
WEIGHT_DECAY = "weight_decay"
NESTEROV = "nesterov"

# -- Metrics ------------------------------------------------------------------
# Keras' own history keys, logged per epoch under the same names.
LOSS = "loss"
ACCURACY = "accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
EPOCH_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY)
EPOCH_SECONDS = "epoch_seconds"
GRADIENT_PREFIX = "grad_mean_abs_layer_"
# Step 0, before training.
TRAINABLE_PARAMS = "trainable_params"
WEIGHTS = "weights"
BIASES = "biases"
# After training.
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
FIT_SECONDS = "fit_seconds"
BEST_EPOCH = "best_epoch"  # The epoch whose model was kept (the last, or early stopping's).
TRIAL_SECONDS = "trial_seconds"
# Parent.
BEST_VAL_ACCURACY = "best_val_accuracy"

# -- Artifacts and files ------------------------------------------------------
MODEL = "model"  # The trial's model, MLflow's Keras flavor.
CURVES = "curves.png"  # Training vs validation accuracy and loss per epoch.
PARENT_FILE = "mlflow_parent.json"  # Beside Keras Tuner's state: the parent's id.
REPORT_FILES = ("report.md", "report.html", "report.json")


def gradient(layer):
    """The metric of layer `layer`'s mean absolute kernel gradient (0 = first hidden)."""
    return f"{GRADIENT_PREFIX}{layer}"
