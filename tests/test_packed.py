"""Packed networks train each member exactly as Keras' `fit` trains it alone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.space import TrialConfig
from pipeline.training.chain import PAD_BIAS
from pipeline.training.model import build_model
from pipeline.training.packed import PackedNetworks, keras_batch_order, packable

EPOCHS = 2
N = 600


def config(units, learning_rate=0.05, momentum=0.0, activation="sigmoid"):
    return TrialConfig(units=tuple(units), activation=activation, learning_rate=learning_rate,
                       momentum=momentum, batch_size=32, epochs=EPOCHS)


CONFIGS = [config([9, 3, 7]), config([5, 8], learning_rate=0.3, momentum=0.9),
           config([2, 9, 9, 4], learning_rate=0.1, momentum=0.5)]


def alone(cfg, seed, data):
    keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    history = model.fit(data.x_train[:N], data.y_train[:N], batch_size=32, epochs=EPOCHS,
                        validation_data=(data.x_val, data.y_val), validation_batch_size=1024,
                        verbose=0)
    return history.history, model


def packed(configs, seeds, data, chains=None):
    models, orders = [], []
    for cfg, seed in zip(configs, seeds, strict=True):
        keras.utils.set_random_seed(seed)
        models.append(build_model(cfg))
        orders.append(keras_batch_order(N))
    network = PackedNetworks(configs, models, orders, chains=chains)
    x, y = tf.constant(data.x_train[:N]), tf.constant(data.y_train[:N])
    history = {k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    for _ in range(EPOCHS):
        for key, values in zip(("loss", "accuracy"), network.train_epoch(x, y), strict=True):
            history[key].append(values)
        for key, values in zip(("val_loss", "val_accuracy"),
                               network.evaluate(data.x_val, data.y_val), strict=True):
            history[key].append(values)
    return network, {k: np.array(v) for k, v in history.items()}


SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def trained(small_mnist):
    """One pack of CONFIGS, trained once for the tests of this module."""
    return packed(CONFIGS, SEEDS, small_mnist)


def assert_as_alone(configs, seeds, data, network, history):
    for index, (cfg, seed) in enumerate(zip(configs, seeds, strict=True)):
        expected, model = alone(cfg, seed, data)
        for key in ("loss", "val_loss"):
            assert history[key][:, index] == pytest.approx(expected[key], rel=1e-4), key
        for key in ("accuracy", "val_accuracy"):
            assert history[key][:, index] == pytest.approx(expected[key], abs=1e-3), key
        for got, want in zip(network.member_weights(index), model.get_weights(), strict=True):
            assert got.shape == want.shape
            assert got == pytest.approx(want, abs=1e-4)


def test_each_member_trains_as_it_would_alone(small_mnist, trained):
    # Own learning rates and momenta (sigmoid: silent padding, per-member rates).
    assert_as_alone(CONFIGS, SEEDS, small_mnist, *trained)


@pytest.mark.parametrize("activation, momentum", [("sigmoid", 0.0), ("tanh", 0.9)])
def test_members_sharing_a_rate_train_as_alone(small_mnist, activation, momentum):
    """One rate for the pack: sigmoid pads with silent units and applies the rate as
    a scalar; tanh (never silent) masks its updates instead."""
    configs = [config(units, 0.1, momentum, activation) for units in ([9, 3, 7], [5, 8], [4])]
    network, history = packed(configs, SEEDS, small_mnist)
    assert_as_alone(configs, SEEDS, small_mnist, network, history)


def test_chains_split_a_pack_without_changing_a_member(small_mnist, trained):
    """One chain, or one per member: the same training, member by member."""
    _, history = trained
    for chains in (1, len(CONFIGS)):
        network, split = packed(CONFIGS, SEEDS, small_mnist, chains=chains)
        assert len(network.chains) == chains
        for key, values in split.items():
            assert values == pytest.approx(history[key], rel=1e-5, abs=1e-6), (chains, key)


def test_padding_stays_silent_and_zero(small_mnist, trained):
    """Padded weights never move: a padded unit's bias stays PAD_BIAS, so the unit
    outputs exactly 0, and its weights keep their zeros."""
    network, _ = trained
    for chain in network.chains:
        for layer, (kernel, real) in enumerate(zip(chain.kernels, chain.real, strict=True)):
            assert np.all(kernel.numpy()[real.numpy() == 0] == 0), layer
        for layer in range(chain.depth):
            units = np.array([c.units[layer] if layer < c.hidden_layers else 0
                              for c in chain.configs])
            bias = chain.biases[layer].numpy()[:, 0, :]
            padded = np.arange(chain.width)[None, :] >= units[:, None]
            assert np.all(bias[padded] == PAD_BIAS), layer


def test_a_diverging_member_leaves_its_pack_mates_alone(small_mnist):
    configs = [config([16], learning_rate=1e30), config([16])]
    _, history = packed(configs, [1, 2], small_mnist)
    expected, _ = alone(configs[1], 2, small_mnist)
    assert not history["loss"][-1, 0] < 100  # Diverged: huge or NaN.
    assert history["loss"][:, 1] == pytest.approx(expected["loss"], rel=1e-4)


def test_member_model_predicts_with_its_trained_weights(small_mnist, trained):
    network, _ = trained
    model = network.member_model(1, build_model(CONFIGS[1]))
    x, y = tf.constant(small_mnist.x_test[:2048]), tf.constant(small_mnist.y_test[:2048])
    _, accuracy = network.evaluate(x, y)
    predicted = np.argmax(model(x), axis=1)
    assert np.mean(predicted == np.argmax(y, axis=1)) == pytest.approx(accuracy[1], abs=1e-6)


def test_packable_needs_one_activation_batch_size_and_epochs():
    assert packable([config([3]), config([9, 9], learning_rate=0.2, momentum=0.5)])
    assert not packable([config([3]), config([3], activation="tanh")])
    assert not packable([config([3]), TrialConfig((3,), "sigmoid", 0.01, 0.0, 64, EPOCHS)])


def test_gradient_sizes_equal_the_alone_probe_for_every_member(small_mnist, trained):
    from pipeline.training.gradients import PROBE_SIZE, GradientProbe

    network, _ = trained
    x, y = small_mnist.x_train[:PROBE_SIZE], small_mnist.y_train[:PROBE_SIZE]
    sizes = network.gradient_sizes(tf.constant(x), tf.constant(y))
    for index, cfg in enumerate(CONFIGS):
        model = network.member_model(index, build_model(cfg))
        probe = GradientProbe(model, small_mnist.x_train, small_mnist.y_train)
        expected = probe.measure(probe.snapshot(model))
        assert len(expected) == cfg.hidden_layers + 1
        assert sizes[index] == pytest.approx(expected, rel=1e-4)
