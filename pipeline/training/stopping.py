"""When a trial stops before its last epoch: early stopping and the divergence guard.

Early stopping is Keras' `EarlyStopping` on the sweep's objective, with
`restore_best_weights`: the model a trial ends with, and logs, is the one of its
best epoch. The divergence guard ends a trial still below a validation accuracy
(near chance) after a set number of epochs: it fails, with the reason, instead of
training every remaining epoch at chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import keras_tuner

from pipeline.spec.schema import OBJECTIVES, EarlyStopping


@dataclass(frozen=True)
class Outcome:
    """How a trial's training ended: its best epoch (1-based) and whether it stopped
    before its last epoch."""

    best_epoch: int
    stopped_early: bool


class DivergenceCallback(keras.callbacks.Callback):
    """Stops training if `val_accuracy` is below `below` after `epochs` epochs."""

    def __init__(self, epochs, below):
        super().__init__()
        self.epochs, self.below = epochs, below
        self.reason = None

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("val_accuracy")
        if epoch + 1 == self.epochs and accuracy is not None and accuracy < self.below:
            self.reason = (f"val_accuracy {accuracy:.4f} < {self.below:g} after {epoch + 1} "
                           "epochs: still at chance (divergence guard)")
            self.model.stop_training = True


class PruneCallback(keras.callbacks.Callback):
    """Reports each epoch's objective to the oracle (`report(epoch, value)`, 1-based,
    returning the trial's status) and stops training when it answers STOPPED: the
    trial was pruned at that rung (`rung`)."""

    def __init__(self, report, objective):
        super().__init__()
        self.report, self.objective = report, objective
        self.rung = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None or self.rung is not None:
            return
        if self.report(epoch + 1, float(value)) == keras_tuner.engine.trial.TrialStatus.STOPPED:
            self.rung = epoch + 1
            self.model.stop_training = True


class Stopping:
    """The callbacks of a spec's `training.early_stopping` and `divergence_guard`, and of
    pruning across trials (`report`: see `PruneCallback`), for a trial trained by `fit`
    or, one per member, for a pack (`end_epoch`)."""

    def __init__(self, training, objective, report=None):
        self.early = None
        self.guard = None
        self.prune = None
        if training.early_stopping is not None or report is not None:
            # Under pruning alone, an EarlyStopping that never stops keeps the best epoch.
            early = training.early_stopping or EarlyStopping(patience=training.epochs + 1)
            self.early = keras.callbacks.EarlyStopping(
                monitor=objective, mode=OBJECTIVES[objective], patience=early.patience,
                min_delta=early.min_delta, restore_best_weights=True)
        if training.divergence_guard is not None:
            guard = training.divergence_guard
            self.guard = DivergenceCallback(guard.epochs, guard.below)
        if report is not None:
            self.prune = PruneCallback(report, objective)
        self._watched = None  # The model `end_epoch` drives the callbacks for.
        self._ended = False

    @property
    def pruned_at(self):
        """The rung (epoch) at which the trial was pruned, or None."""
        return self.prune.rung if self.prune is not None else None

    def callbacks(self):
        """The Keras callbacks, for `fit` (pruning last: it sees the epoch kept)."""
        return [c for c in (self.early, self.guard, self.prune) if c is not None]

    def end_epoch(self, model, epoch, logs):
        """Drives the callbacks by hand for a model trained outside `fit` (a pack's
        member: `model` is any object with `get_weights`, `set_weights` and
        `stop_training`), after its epoch `epoch` (1-based) with metrics `logs`.
        Returns whether it stops now; its kept weights are then set on `model`."""
        callbacks = self.callbacks()
        if self._watched is not model:
            self._watched = model
            model.stop_training = False
            for callback in callbacks:
                callback.set_model(model)
                callback.on_train_begin()
        for callback in callbacks:
            callback.on_epoch_end(epoch - 1, logs)
        if model.stop_training:
            self.end_training()
        return model.stop_training

    def end_training(self):
        """Ends training driven by `end_epoch` (once): the best weights are restored."""
        if self._watched is not None and not self._ended:
            self._ended = True
            for callback in self.callbacks():
                callback.on_train_end()

    def check(self):
        """After `fit`: raises `FailedTrialError` if the divergence guard stopped it."""
        if self.guard is not None and self.guard.reason:
            raise keras_tuner.errors.FailedTrialError(self.guard.reason)

    def outcome(self, epochs_run, last_epoch):
        """The `Outcome` after `fit` (`epochs_run`: the 1-based epochs it trained)."""
        if self.early is None or self.early.best is None:
            return Outcome(best_epoch=last_epoch, stopped_early=False)
        return Outcome(best_epoch=self.early.best_epoch + 1,
                       stopped_early=bool(epochs_run) and epochs_run[-1] < last_epoch)
