"""MLflow runs in, `Sweep`s of `Trial`s out: the latest parent of each exercise sweep.

Nothing is cached on the side: runs come from `mlflow.search_runs`, per-epoch values
from `MlflowClient.get_metric_history`, read when first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.spec.schema import EXERCISE
from pipeline.tracking import names

FINISHED = "FINISHED"  # MLflow's run status of a trial that completed.


@dataclass
class Trial:
    """One finished trial run, with lazily read per-epoch histories."""

    run: object
    client: MlflowClient = field(repr=False)
    _history: dict = field(default_factory=dict, repr=False)

    @property
    def run_id(self):
        return self.run.info.run_id

    @property
    def sweep(self):
        return self.run.data.tags[names.SWEEP]

    @property
    def trial_id(self):
        return self.run.data.tags[names.TRIAL_ID]

    @property
    def params(self):
        return self.run.data.params

    @property
    def metrics(self):
        """The run's metrics. A trial under early stopping kept its best epoch's model:
        its per-epoch metrics here are that epoch's, as its test metrics are."""
        metrics = self.run.data.metrics
        kept = metrics.get(names.BEST_EPOCH)
        if names.STOPPED_EARLY not in self.run.data.tags or kept is None:
            return metrics
        if "kept" not in self._history:
            self._history["kept"] = {**metrics, **{
                k: v for k in names.EPOCH_METRICS
                if (v := self.at_step(k, int(kept))) is not None}}
        return self._history["kept"]

    @property
    def epochs_trained(self):
        """Epochs this trial trained for (fewer than its `epochs` if it stopped early)."""
        return max((s for s, _ in self.history(names.VAL_ACCURACY)), default=0)

    @property
    def hidden_layers(self):
        return int(self.params[names.HIDDEN_LAYERS])

    @property
    def label(self):
        units = self.params[names.UNITS].split(",")
        shape = f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(units)
        return f"{shape} {self.params[names.ACTIVATION]}"

    def history(self, key):
        """[(step, value)] of a per-epoch metric, in step order."""
        if key not in self._history:
            points = self.client.get_metric_history(self.run_id, key)
            self._history[key] = sorted((m.step, m.value) for m in points)
        return self._history[key]

    def curves(self):
        """(epochs, {metric: [value per epoch]}) of accuracy and loss, training and
        validation, as `plots.best_model_curves` takes them."""
        keys = (names.ACCURACY, names.VAL_ACCURACY, names.LOSS, names.VAL_LOSS)
        histories = {k: self.history(k) for k in keys}
        return [s for s, _ in histories[names.ACCURACY]], {
            k: [v for _, v in h] for k, h in histories.items()}

    def at_step(self, key, step):
        return next((v for s, v in self.history(key) if s == step), None)

    def best_epoch(self, key=names.VAL_ACCURACY):
        """The first epoch at which `key` reached its best value."""
        history = self.history(key)
        best = max(v for _, v in history)
        return next(s for s, v in history if v == best)

    def gradients(self, step):
        """Mean |gradient| of each Dense kernel at `step`, first hidden layer first."""
        values = []
        while (v := self.at_step(names.gradient(len(values)), step)) is not None:
            values.append(v)
        return values


@dataclass
class Sweep:
    name: str
    parent_run_id: str
    trials: list

    @property
    def best(self):
        return max(self.trials, key=lambda t: t.metrics[names.VAL_ACCURACY], default=None)


def load_sweeps(experiment):
    """Finds the latest parent run of each exercise sweep and its finished trials.

    Returns:
        A dict from sweep name to `Sweep`, for the sweeps that have a finished trial.
    """
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id],
                              filter_string=f"tags.{names.SWEEP} != ''", output_format="list")
    sweeps = {}
    for name in EXERCISE:
        parents = [r for r in runs if r.data.tags.get(names.SWEEP) == name
                   and names.TRIAL_ID not in r.data.tags]
        for parent in sorted(parents, key=lambda r: r.info.start_time, reverse=True):
            trials = [Trial(r, client) for r in runs
                      if r.data.tags.get(names.PARENT_RUN) == parent.info.run_id
                      and names.TRIAL_ID in r.data.tags and r.info.status == FINISHED
                      and names.VAL_ACCURACY in r.data.metrics]
            if trials:
                sweeps[name] = Sweep(name, parent.info.run_id, trials)
                break
    return sweeps
