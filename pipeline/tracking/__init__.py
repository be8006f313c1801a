"""What goes to MLflow, and under which names. The names are a contract (`names`).

One parent run per sweep (run name = spec name; tags `sweep`, `part`, `best_trial`;
metric `best_val_accuracy`; the spec file as an artifact) and one nested child
run per trial (tags `sweep`, `trial_id`, `worker`: the Keras Tuner id of the
process that ran it) holding:

- params: the trial's active hyperparameters;
- metrics: `trainable_params`, `weights`, `biases`; per epoch, with step = epoch
  number (1 = after the first epoch): `loss`, `accuracy`, `val_loss`,
  `val_accuracy`, `epoch_seconds` and `grad_mean_abs_layer_<i>`; at the end
  `test_loss`, `test_accuracy`, `fit_seconds` and `trial_seconds` (the trial's
  wall time up to its last log call);
- the trained model through MLflow's Keras flavor, with an input signature, and
  `curves.png`, training vs validation accuracy and loss per epoch.

A run never stays RUNNING: a trial that fails ends FAILED with the reason in the
tag `failure_reason`; one that is interrupted ends KILLED.

Modules: `names` (the contract), `server` (the tracking URI, credentials and
reachability), `runs` (the parent run's life, queries, clean-up of left-over
runs), `trial_run` (one trial's run, written by a background thread), `views` (the
sweep's saved comparison view in MLflow's UI and the links that open it), `ui`
(`python -m pipeline ui`).
"""
