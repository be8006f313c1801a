"""Learning-rate schedules, warm-up, Nesterov and weight decay: from the spec to the
optimizer Keras trains with, and to the params a trial logs."""

import keras
import keras_tuner
import numpy as np
import pytest

from pipeline import space
from pipeline.errors import SpecError
from pipeline.space import TrialConfig
from pipeline.spec import load as specfile
from pipeline.tracking import names
from pipeline.tracking.trial_run import trial_params
from pipeline.training import schedule
from pipeline.training.model import build_model

STEPS = 100  # Per epoch.


def config(**kwargs):
    values = dict(units=(8, 8, 8), activation="sigmoid", learning_rate=0.2, momentum=0.9,
                  batch_size=64, epochs=10)
    return TrialConfig(**{**values, **kwargs})


def rates(cfg, steps):
    rate = schedule.learning_rate(cfg, STEPS)
    return [float(rate(step)) for step in steps]


def test_constant_without_warmup_is_a_plain_rate():
    assert schedule.learning_rate(config(), None) == 0.2


def test_cosine_warms_up_then_falls_to_zero():
    cfg = config(schedule="cosine", warmup_epochs=2)
    start, mid_warmup, top, middle, end = rates(cfg, [0, 100, 200, 600, 1000])
    assert (start, end) == (0.0, pytest.approx(0.0, abs=1e-7))
    assert mid_warmup == pytest.approx(0.1) and top == pytest.approx(0.2)
    assert middle == pytest.approx(0.1, rel=1e-4)  # Half way down the half cosine.


def test_constant_with_warmup_stays_at_the_rate_after_it():
    assert rates(config(warmup_epochs=1), [50, 100, 500, 999]) == pytest.approx(
        [0.1, 0.2, 0.2, 0.2])


def test_step_drops_tenfold_at_half_and_three_quarters():
    assert rates(config(schedule="step"), [0, 499, 501, 751, 999]) == pytest.approx(
        [0.2, 0.2, 0.02, 0.002, 0.002])


def test_a_schedule_needs_the_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        schedule.learning_rate(config(schedule="cosine"), None)


def test_the_model_trains_with_the_optimizer_and_reloads_with_plain_keras(tmp_path):
    cfg = config(schedule="cosine", warmup_epochs=1, weight_decay=1e-3, nesterov=True)
    model = build_model(cfg, steps_per_epoch=STEPS)
    optimizer = model.optimizer
    assert (optimizer.nesterov, optimizer.weight_decay, optimizer.momentum) == (
        True, pytest.approx(1e-3), pytest.approx(0.9))
    x = np.random.default_rng(0).random((640, 784), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(640) % 10, 10)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert int(optimizer.iterations) == 10
    assert float(optimizer.learning_rate) == pytest.approx(0.2 * 10 / STEPS)  # Warming up.
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert float(again.optimizer.learning_rate) == pytest.approx(0.02)


def test_sgds_further_params_are_logged_once_any_is_in_use():
    plain = trial_params(config())
    assert not {names.SCHEDULE, names.WARMUP_EPOCHS, names.WEIGHT_DECAY,
                names.NESTEROV} & set(plain)
    tuned = trial_params(config(schedule="cosine", warmup_epochs=2, weight_decay=5e-4,
                                nesterov=True))
    assert {k: tuned[k] for k in (names.SCHEDULE, names.WARMUP_EPOCHS, names.WEIGHT_DECAY,
                                  names.NESTEROV)} == {
        names.SCHEDULE: "cosine", names.WARMUP_EPOCHS: 2, names.WEIGHT_DECAY: 5e-4,
        names.NESTEROV: True}
    # Once one is in use all are logged: a searched `nesterov: false` is a value.
    partly = trial_params(config(schedule="cosine", weight_decay=5e-4))
    assert (partly[names.NESTEROV], partly[names.WARMUP_EPOCHS]) == (False, 0)


SPEC = """\
name: sched
description: schedules searched
search_space:
  hidden_layers: 3
  units: 32
  schedule: [step, cosine]
  warmup_epochs: [0, 2]
  weight_decay: [0.0, 0.0005]
  nesterov: [false, true]
training: {epochs: 10}
tuner: {algorithm: grid, max_trials: 20}
"""


def load(tmp_path, text):
    (tmp_path / "sched.yaml").write_text(text)
    return specfile.load(tmp_path / "sched.yaml")


def test_searched_warmup_is_active_only_for_schedules_that_have_one(tmp_path):
    constrained = space.build(load(tmp_path, SPEC))
    hp = keras_tuner.HyperParameters()
    constrained.sample(hp)
    for chosen, warmup in (("step", 0), ("cosine", 2)):
        hp.values.update({"schedule": chosen, "warmup_epochs": 2, "nesterov": True,
                          "weight_decay": 0.0005})
        cfg = constrained.sample(hp)
        assert (cfg.schedule, cfg.warmup_epochs, cfg.nesterov, cfg.weight_decay) == (
            chosen, warmup, True, 0.0005)
        assert hp.is_active("warmup_epochs") == (chosen == "cosine")


@pytest.mark.parametrize("change, message", [
    (("epochs: 10}", "epochs: 10, schedule: linear}"),
     "training.schedule: 'linear' is not one of constant, step, cosine"),
    (("schedule: [step, cosine]\n  warmup_epochs: [0, 2]\n", "warmup_epochs: 1\n"),
     None),
    (("  schedule: [step, cosine]\n", ""), None),
    (("schedule: [step, cosine]", "schedule: step"),
     "search_space.warmup_epochs: a step schedule starts at its full rate"),
    (("  schedule: [step, cosine]\n  warmup_epochs: [0, 2]\n  weight_decay: [0.0, 0.0005]\n"
      "  nesterov: [false, true]\ntraining: {epochs: 10}",
      "training: {epochs: 10, schedule: step, warmup_epochs: 1}"),
     "training.warmup_epochs: a step schedule starts at its full rate"),
    (("epochs: 10}", "epochs: 10, schedule: step, warmup_epochs: 1}"), None),
    (("warmup_epochs: [0, 2]", "warmup_epochs: [0, 10]"),
     "search_space.warmup_epochs: expected fewer warm-up epochs than training.epochs (10)"),
    (("nesterov: [false, true]", "nesterov: [1]"),
     "search_space.nesterov: 1 is not one of false, true"),
    (("weight_decay: [0.0, 0.0005]", "weight_decay: -1"),
     "search_space.weight_decay: must be >= 0"),
    (("weight_decay: [0.0, 0.0005]", "weight_decay: {min: 0.0001, max: 0.001}"),
     "search_space.weight_decay: the grid algorithm needs a list"),
    (("epochs: 10}", "epochs: 10, early_stopping: {patience: 0}}"),
     "training.early_stopping.patience: must be >= 1"),
    (("epochs: 10}", "epochs: 10, divergence_guard: {epochs: 2, below: 2}}"),
     "training.divergence_guard.below: must be < 1.0"),
    (("epochs: 10}", "epochs: 10, early_stopping: {after: 2}}"),
     "training.early_stopping: unknown field 'after'"),
])
def test_bad_schedule_settings_name_the_field(tmp_path, change, message):
    text = SPEC.replace(*change)
    assert text != SPEC
    if message is None:  # Allowed: warm-up searched or fixed beside a fixed schedule.
        assert load(tmp_path, text).name == "sched"
        return
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, text)
