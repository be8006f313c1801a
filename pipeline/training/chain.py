"""One chain of a pack: members padded to one depth and width, trained by one chain
of batched operations (`PackedNetworks` splits a pack into chains).

Every hidden layer is padded to the chain's widest, and a member shallower than the
chain's deepest passes its activations through the extra layers. Padded weights get
zero gradients, so they never change: padded units of activations that are 0 far
below zero are silenced by a large negative bias (`SILENT_PADDING`), the others'
updates are masked.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.data import NUM_CLASSES, NUM_PIXELS

ACTIVATIONS = {"sigmoid": tf.nn.sigmoid, "tanh": tf.nn.tanh, "relu": tf.nn.relu,
               "elu": tf.nn.elu, "selu": tf.nn.selu, "gelu": tf.nn.gelu,
               "softplus": tf.nn.softplus, "swish": tf.nn.silu}


# Activations that are exactly 0, with a zero gradient, far below zero. A padded unit
# of these gets the bias PAD_BIAS: it stays silent, so every padded weight's gradient
# is exactly 0 and updates need no mask. Others (tanh, elu, selu) mask the updates.
SILENT_PADDING = {"sigmoid", "relu", "softplus", "swish", "gelu"}
PAD_BIAS = -1e4


@tf.custom_gradient
def _input_layer(x, kernel, bias):
    """x (K, B, 784) times kernel (K, 784, W), plus bias (K, 1, W). The kernel's
    gradient is computed as (dz^T x)^T, several times faster on a CPU for these
    shapes than TensorFlow's own x^T dz; none is computed for x, the images."""
    def gradient(dz):
        return (None, tf.transpose(tf.matmul(dz, x, transpose_a=True), [0, 2, 1]),
                tf.reduce_sum(dz, axis=1, keepdims=True))
    return tf.matmul(x, kernel) + bias, gradient


class Chain:
    """Members padded to one depth and width: one chain of batched operations."""

    def __init__(self, configs, models, orders):
        self.configs = list(configs)
        self.size = len(self.configs)
        self.depth = max(c.hidden_layers for c in self.configs)
        self.width = max(max(c.units) for c in self.configs)
        self.activation = ACTIVATIONS[self.configs[0].activation]
        self.silent = self.configs[0].activation in SILENT_PADDING
        self.batch_size = self.configs[0].batch_size
        self.orders = tf.constant(np.stack(orders).astype(np.int32))
        self._stack(models)
        momenta = [c.momentum for c in self.configs]
        self.momentum = tf.reshape(tf.constant(momenta, tf.float32), (self.size, 1, 1))
        self.shared_momentum = float(momenta[0]) if len(set(momenta)) == 1 else None
        self.velocities = [tf.Variable(tf.zeros_like(v)) for v in self.variables]

    def _stack(self, models):
        k, w = self.size, self.width
        shapes = [(NUM_PIXELS, w)] + [(w, w)] * (self.depth - 1) + [(w, NUM_CLASSES)]
        kernels = [np.zeros((k, *shape), np.float32) for shape in shapes]
        # Biases are (K, 1, units): they broadcast over the batch as they are.
        pad = PAD_BIAS if self.silent else 0.0
        biases = [np.full((k, 1, shape[1]), pad, np.float32) for shape in shapes]
        units = np.zeros((self.depth + 1, k, w), np.float32)  # 1: a member's real unit.
        active = np.zeros((self.depth, k), bool)
        for i, (config, model) in enumerate(zip(self.configs, models, strict=True)):
            weights = model.get_weights()
            layers = config.hidden_layers
            for layer in range(layers):
                kernel, bias = weights[2 * layer], weights[2 * layer + 1]
                kernels[layer][i, :kernel.shape[0], :kernel.shape[1]] = kernel
                biases[layer][i, 0, :bias.shape[0]] = bias
                units[layer + 1, i, :bias.shape[0]] = 1.0
                active[layer, i] = True
            kernel, bias = weights[-2], weights[-1]
            kernels[-1][i, :kernel.shape[0]] = kernel
            biases[-1][i, 0] = bias
        self.kernels = [tf.Variable(v) for v in kernels]
        self.biases = [tf.Variable(v) for v in biases]
        self.variables = self.kernels + self.biases
        self.shallowest = min(c.hidden_layers for c in self.configs)
        self.active = tf.constant(active[:, :, None, None])
        self._update_rates(units, kernels)

    def _update_rates(self, units, kernels):
        """How each variable's gradient becomes its update: `alpha` times the gradient
        times `factors` (None: no factor). A member's own learning rate on its real
        weights, 0 on padding unless the padding is silent (`SILENT_PADDING`), so
        padded weights keep their zeros and padded units never reach a real one.
        Also keeps the kernels' masks of real weights (`real`)."""
        lr = np.array([c.learning_rate for c in self.configs], np.float32)
        last = [units[c.hidden_layers, i] for i, c in enumerate(self.configs)]
        real, outs = [], []
        for layer in range(len(kernels)):
            out = units[layer + 1] if layer < self.depth else np.ones((self.size, NUM_CLASSES))
            if layer == 0:
                into = np.ones((self.size, NUM_PIXELS), np.float32)
            else:
                into = units[layer] if layer < self.depth else np.stack(last)
            real.append(into[:, :, None] * out[:, None, :])
            outs.append(out[:, None, :])
        self.real = [tf.constant(r.astype(np.float32)) for r in real]
        self.alpha = 1.0
        if self.silent and len(set(lr)) == 1:  # One scalar rate for the whole pack.
            self.alpha, self.factors = float(lr[0]), [None] * len(self.variables)
        elif self.silent:
            self.factors = [tf.constant(lr[:, None, None])] * len(self.variables)
        else:
            self.factors = [tf.constant((lr[:, None, None] * m).astype(np.float32))
                            for m in real + outs]

    # -- the network ---------------------------------------------------------------

    def logits(self, x):
        """The members' logits: x is (K, B, 784), or (B, 784) shared by all."""
        if x.shape.rank == 2:  # Shared by every member: evaluation, gradient sizes.
            h = self.activation(tf.einsum("bi,kio->kbo", x, self.kernels[0]) + self.biases[0])
        else:
            h = self.activation(_input_layer(x, self.kernels[0], self.biases[0]))
        for layer in range(1, self.depth):
            a = self.activation(tf.matmul(h, self.kernels[layer]) + self.biases[layer])
            # A member shallower than this layer passes its activations through.
            h = a if layer < self.shallowest else tf.where(self.active[layer], a, h)
        return tf.matmul(h, self.kernels[-1]) + self.biases[-1]

    def losses(self, x, y):
        """Per member: the mean cross-entropy of the batch and the correct predictions."""
        logits = self.logits(x)
        labels = y if y.shape.rank == 3 else tf.broadcast_to(y, tf.shape(logits))
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits), axis=1)
        correct = tf.reduce_sum(tf.cast(
            tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32), axis=1)
        return loss, correct

    def step(self, x_train, y_train, indices):
        x = tf.gather(x_train, indices)
        y = tf.gather(y_train, indices)
        with tf.GradientTape() as tape:
            loss, correct = self.losses(x, y)
            total = tf.reduce_sum(loss)
        gradients = tape.gradient(total, self.variables)
        for variable, velocity, gradient, factor in zip(self.variables, self.velocities,
                                                        gradients, self.factors, strict=True):
            self._apply(variable, velocity, gradient if factor is None else gradient * factor)
        return loss, correct

    def _apply(self, variable, velocity, gradient):
        """Keras' SGD update, each member at its own learning rate and momentum."""
        if self.shared_momentum == 0.0:  # var -= g * lr, as Keras does without momentum.
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=self.alpha,
                                                    delta=gradient)
        elif self.shared_momentum is not None:  # m = m * momentum - g * lr; var += m
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.handle, accum=velocity.handle, lr=self.alpha, grad=gradient,
                momentum=self.shared_momentum)
        else:
            velocity.assign(velocity * self.momentum - gradient * self.alpha)
            variable.assign_add(velocity)

    def gradient_sizes(self, x, y):
        """Each kernel's mean absolute gradient on a batch (x, y) shared by all members,
        over the member's real weights: a (K, depth + 1) tensor, output layer last."""
        with tf.GradientTape() as tape:
            loss, _ = self.losses(x, y)
            total = tf.reduce_sum(loss)
        gradients = tape.gradient(total, self.kernels)
        return tf.stack([tf.reduce_sum(tf.abs(g) * real, axis=[1, 2])
                         / tf.reduce_sum(real, axis=[1, 2])
                         for g, real in zip(gradients, self.real, strict=True)], axis=1)

    # -- members -------------------------------------------------------------------

    def member_weights(self, index):
        """Member `index`'s weights, unpadded, in `keras.Sequential.get_weights()` order."""
        config = self.configs[index]
        widths = [NUM_PIXELS, *config.units, NUM_CLASSES]
        weights = []
        for layer in range(config.hidden_layers):
            weights.append(self.kernels[layer][index, :widths[layer], :widths[layer + 1]])
            weights.append(self.biases[layer][index, 0, :widths[layer + 1]])
        weights.append(self.kernels[-1][index, :widths[-2], :])
        weights.append(self.biases[-1][index, 0])
        return [w.numpy() for w in weights]
