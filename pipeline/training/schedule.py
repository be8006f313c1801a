"""SGD and its learning-rate schedule for a trial, from Keras' own schedules.

- `constant`: the rate stays `learning_rate` (after the warm-up, if any);
- `step`: the rate drops tenfold at half and at three quarters of the epochs (the
  trial's whole budget, `TrialConfig.schedule_epochs`, as for the others)
  (Keras' `PiecewiseConstantDecay`; no warm-up);
- `cosine`: the rate falls from `learning_rate` to 0 along a half cosine over the
  epochs after the warm-up (Keras' `CosineDecay`).

A warm-up rises linearly from 0 to `learning_rate` over `warmup_epochs` epochs
(`CosineDecay`'s warm-up; a constant rate is a cosine decay with `alpha=1`). Every
schedule advances per training step, inside the compiled step, and is saved with
the model: a logged model reloads with plain Keras.
"""

from __future__ import annotations

import keras

STEP_DROPS = (0.5, 0.75)  # Where a step schedule divides the rate by STEP_FACTOR.
STEP_FACTOR = 10


def optimizer(config, steps_per_epoch):
    """Keras' SGD for a `TrialConfig`: its schedule, momentum, Nesterov, weight decay.

    Args:
        config: the `TrialConfig`.
        steps_per_epoch: training batches per epoch; None for a constant rate
            without warm-up (the schedules need it).
    """
    return keras.optimizers.SGD(
        learning_rate=learning_rate(config, steps_per_epoch),
        momentum=config.momentum,
        nesterov=config.nesterov,
        # Keras' decoupled decay: each step, weights -= rate * weight_decay * weights.
        weight_decay=config.weight_decay or None,
    )


def learning_rate(config, steps_per_epoch):
    """The rate, or the `LearningRateSchedule`, of a `TrialConfig`."""
    rate = config.learning_rate
    if config.schedule == "constant" and not config.warmup_epochs:
        return rate
    if not steps_per_epoch:
        raise ValueError(f"the {config.schedule} schedule needs steps_per_epoch")
    # Over the trial's whole budget: a Hyperband rung that stops early, then goes on
    # from its saved model (whose optimizer counts its steps), resumes the schedule.
    total = steps_per_epoch * max(1, config.schedule_epochs)
    if config.schedule == "step":
        boundaries = [max(1, int(total * f)) for f in STEP_DROPS]
        values = [rate / STEP_FACTOR**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    warmup = min(steps_per_epoch * config.warmup_epochs, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else rate,
        decay_steps=max(1, total - warmup),
        alpha=1.0 if config.schedule == "constant" else 0.0,
        warmup_target=rate if warmup else None,
        warmup_steps=warmup,
    )
