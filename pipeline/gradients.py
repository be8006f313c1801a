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
    """Measures `grad_mean_abs_layer_<i>` for a model on a fixed batch."""

    def __init__(self, x, y, size=PROBE_SIZE):
        self.x = tf.convert_to_tensor(x[:size])
        self.y = tf.convert_to_tensor(y[:size])

    def __call__(self, model):
        kernels = [layer.kernel for layer in model.layers
                   if isinstance(layer, keras.layers.Dense)]
        with tf.GradientTape() as tape:
            predictions = model(self.x, training=True)
            loss = keras.ops.mean(keras.losses.categorical_crossentropy(self.y, predictions))
        grads = tape.gradient(loss, [k.value for k in kernels])
        return {f"grad_mean_abs_layer_{i}": float(tf.reduce_mean(tf.abs(g)))
                for i, g in enumerate(grads)}
