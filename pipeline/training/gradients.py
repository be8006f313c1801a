"""Evidence for the vanishing-gradient question: gradient size per layer.

After each epoch, the mean absolute gradient of the loss with respect to each
Dense layer's kernel is measured on one fixed batch of training images, so the
numbers are comparable across epochs, layers and trials. Layer 0 is the first
hidden layer; the last index is the softmax output layer.
"""

from __future__ import annotations

import keras
import tensorflow as tf

PROBE_SIZE = 256


class GradientProbe:
    """Measures each Dense kernel's mean absolute gradient on a fixed batch.

    `snapshot()` copies a model's weights at an epoch's end, on the training
    thread (about a millisecond); `measure()` computes the gradients on a twin of
    the model built from its config, so it can run on another thread while
    training goes on.
    """

    def __init__(self, model, x, y, size=PROBE_SIZE):
        self.config = model.get_config()
        self.x = tf.convert_to_tensor(x[:size])
        self.y = tf.convert_to_tensor(y[:size])
        self._twin = None
        self._gradients = None

    @staticmethod
    def snapshot(model):
        return model.get_weights()

    def measure(self, weights):
        """The gradient sizes for `weights` (from `snapshot`), first hidden layer first."""
        if self._twin is None:
            self._twin = keras.Sequential.from_config(self.config)
            kernels = [layer.kernel for layer in self._twin.layers
                       if isinstance(layer, keras.layers.Dense)]
            self._gradients = tf.function(lambda: self._kernel_gradients(kernels))
        self._twin.set_weights(weights)
        return [float(g) for g in self._gradients()]

    def _kernel_gradients(self, kernels):
        with tf.GradientTape() as tape:
            predictions = self._twin(self.x, training=True)
            loss = keras.ops.mean(keras.losses.categorical_crossentropy(self.y, predictions))
        grads = tape.gradient(loss, [k.value for k in kernels])
        return [tf.reduce_mean(tf.abs(g)) for g in grads]
