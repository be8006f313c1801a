"""The gradient probe measures each Dense kernel's gradient on a copy of the weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.space import TrialConfig
from pipeline.training.gradients import GradientProbe
from pipeline.training.model import build_model


def test_probe_equals_a_direct_gradient_and_ignores_later_training(small_mnist):
    config = TrialConfig(units=(16, 8), activation="sigmoid", learning_rate=0.5,
                         momentum=0.0, batch_size=32, epochs=1)
    model = build_model(config)
    x, y = small_mnist.x_train[:256], small_mnist.y_train[:256]
    probe = GradientProbe(model, small_mnist.x_train, small_mnist.y_train, size=256)
    weights = probe.snapshot(model)

    with tf.GradientTape() as tape:
        loss = keras.ops.mean(keras.losses.categorical_crossentropy(y, model(x, training=True)))
    kernels = [layer.kernel.value for layer in model.layers]
    expected = [float(tf.reduce_mean(tf.abs(g))) for g in tape.gradient(loss, kernels)]

    model.fit(x, y, epochs=1, verbose=0)  # Training goes on; the snapshot does not change.
    measured = probe.measure(weights)
    assert len(measured) == 3  # Two hidden layers and the output layer.
    assert measured == pytest.approx(expected, rel=1e-5)
    assert probe.measure(probe.snapshot(model)) != pytest.approx(expected, rel=1e-3)


def test_deep_sigmoid_gradients_vanish_towards_the_input(small_mnist):
    config = TrialConfig(units=(9,) * 10, activation="sigmoid", learning_rate=0.01,
                         momentum=0.0, batch_size=32, epochs=1)
    model = build_model(config)
    probe = GradientProbe(model, small_mnist.x_train, small_mnist.y_train)
    first, *_, output = probe.measure(probe.snapshot(model))
    assert np.isfinite(first) and first < output / 1000
