"""The model of one configuration: its layers, its training rules, when XLA pays."""

import keras
import keras_tuner
import numpy as np
import pytest

from pipeline import space
from pipeline.space import TrialConfig
from pipeline.spec import load as specfile
from pipeline.training.model import (
    XLA_MIN_KERNEL,
    CompileOptions,
    MnistHyperModel,
    build_model,
    xla_pays,
)


def config(units, **kwargs):
    values = dict(activation="sigmoid", learning_rate=0.05, momentum=0.9, batch_size=32,
                  epochs=10)
    return TrialConfig(units=tuple(units), **{**values, **kwargs})


def test_model_follows_the_exercises_rules():
    model = build_model(config([30, 20], activation="tanh"))
    assert model.input_shape == (None, 784)
    assert [layer.units for layer in model.layers] == [30, 20, 10]
    assert [layer.activation.__name__ for layer in model.layers] == ["tanh", "tanh", "softmax"]
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    assert model.loss == "categorical_crossentropy"


@pytest.mark.parametrize("units, pays", [([25], False), ([378], True), ([9] * 10, False)])
def test_xla_only_where_a_kernel_is_large(units, pays):
    assert xla_pays(config(units)) is pays
    assert (max(784 * units[0], units[-1] * 10) >= XLA_MIN_KERNEL) is pays


def test_compile_options_reach_keras():
    model = build_model(config([25]), CompileOptions(steps_per_execution=7, jit_compile=False))
    assert model.steps_per_execution == 7
    assert model.jit_compile is False


def test_hypermodel_builds_what_the_space_samples():
    spec = specfile.load("part2-narrow")
    hypermodel = MnistHyperModel(space.build(spec))
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    hp.values.update({"hidden_layers": 11, **{f"units_{i}": 3 for i in range(12)}})
    model = hypermodel.build(hp)
    assert [layer.units for layer in model.layers] == [3] * 11 + [10]


@pytest.mark.parametrize("seed", [None, 5])
def test_seeded_weights_do_not_depend_on_other_draws(seed):
    """Another thread drawing from Python's or Keras' global generators between the
    trial's seeding and its build (the previous trial's logging) changes nothing."""
    import random

    keras.utils.set_random_seed(5)
    first = build_model(config([9, 9]), seed=seed).get_weights()
    keras.utils.set_random_seed(5)
    random.random()
    keras.random.uniform((1,))
    second = build_model(config([9, 9]), seed=seed).get_weights()
    same = all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert same is (seed is not None)
