"""The exercise's model: a dense network on flattened MNIST, trained with SGD."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import keras_tuner

from pipeline.data import NUM_CLASSES, NUM_PIXELS
from pipeline.space import LOSS
from pipeline.training import schedule


@dataclass(frozen=True)
class CompileOptions:
    """How Keras runs the training step; none of these change the results.

    Attributes:
        steps_per_execution: batches per call into the compiled step. Fewer
            round trips from Python make small networks several times faster.
        jit_compile: XLA-compile the step; None decides by size (`xla_pays`).
    """

    steps_per_execution: int = 512
    jit_compile: bool | None = None


# Validation and test batches: larger than training's, for speed; no effect on results.
EVAL_BATCH_SIZE = 1024

# XLA compiles each new model once, ~1-3 s in the first epoch here. It pays back on
# wide layers, where an epoch of 784-378-10 takes ~15% less; on narrow ones an epoch
# takes as long or longer, so a 10-epoch trial only loses the compile time.
XLA_MIN_KERNEL = 200_000


def xla_pays(config):
    """Whether XLA-compiling this configuration's training step is worth its compile."""
    widths = [NUM_PIXELS, *config.units, NUM_CLASSES]
    return max(a * b for a, b in zip(widths, widths[1:], strict=False)) >= XLA_MIN_KERNEL


def compute_bound(space):
    """Whether a search space's widest network is XLA-sized (`xla_pays`): its matrix
    products, not Python or TensorFlow's per-step work, take most of a step."""
    return xla_pays(space.widest())


def kernel_initializer(seed, layer):
    """Keras' default Glorot uniform initializer, seeded for one layer of one trial.

    With a seed of its own, a model's initial weights depend on nothing else that
    happens in the process (another thread drawing from Keras' global generator).
    """
    if seed is None:
        return "glorot_uniform"
    return keras.initializers.GlorotUniform(seed=(seed * 100 + layer) % 2**31)


def build_model(config, options=CompileOptions(), seed=None, steps_per_epoch=None):
    """Builds and compiles the network for a `TrialConfig`.

    Args:
        config: the `TrialConfig`.
        options: `CompileOptions`.
        seed: seeds the initial weights (`kernel_initializer`); None: Keras' global
            seed generator.
        steps_per_epoch: training batches per epoch, for a learning-rate schedule.

    Returns:
        A compiled `keras.Sequential`: 784 inputs, `config.units` hidden units with
        `config.activation`, a 10-way softmax, categorical cross-entropy and SGD
        (`schedule.optimizer`).
    """
    model = keras.Sequential(
        [keras.Input(shape=(NUM_PIXELS,), name="pixels")]
        + [
            keras.layers.Dense(units, activation=config.activation, name=f"hidden_{i}",
                               kernel_initializer=kernel_initializer(seed, i))
            for i, units in enumerate(config.units)
        ]
        # The softmax stays float32 under a mixed-precision policy, for stable losses.
        + [keras.layers.Dense(NUM_CLASSES, activation="softmax", name="digits", dtype="float32",
                              kernel_initializer=kernel_initializer(seed, len(config.units)))]
    )
    model.compile(
        optimizer=schedule.optimizer(config, steps_per_epoch),
        loss=LOSS,
        metrics=["accuracy"],
        steps_per_execution=options.steps_per_execution,
        jit_compile=xla_pays(config) if options.jit_compile is None else options.jit_compile,
    )
    return model


class MnistHyperModel(keras_tuner.HyperModel):
    """Keras Tuner's view of a `ConstrainedSpace`: hyperparameters in, model out."""

    def __init__(self, space, options=CompileOptions()):
        super().__init__(name=space.spec.name)
        self.space = space
        self.options = options

    def declare_hyperparameters(self, hp):
        self.space.sample(hp)

    def build(self, hp):
        # Keras Tuner builds models here only to discover the space (conditional
        # hyperparameters); trials build theirs with the real steps per epoch.
        return build_model(self.space.sample(hp), self.options, steps_per_epoch=1)
