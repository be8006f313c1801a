"""Many of the exercise's networks trained as one: one compiled step for a pack of K.

A sweep is dozens of tiny networks, and a tiny network spends most of each step in
per-step overhead, not arithmetic. `PackedNetworks` stacks K configurations of the
same batch size and epochs into one set of batched weights ("horizontal fusion"):
every hidden layer is padded to the pack's widest, padded units are masked to zero,
and a network shallower than the pack's deepest passes its activations through
the extra layers unchanged. On a CPU the pack is split into chains, one per core:
each chain's members are padded together and its operations depend on no other
chain's, so TensorFlow runs the chains side by side. Each member still trains
exactly as it would alone:

- its initial weights are those Keras gives it alone (built from its own seed);
- it sees its own batch order: the permutation Keras' own data adapter makes for
  it under its seed (`keras_batch_order`; Keras reuses it every epoch);
- it applies its own learning rate and momentum, with Keras' SGD update, and its
  loss is Keras' categorical cross-entropy on the softmax's logits.

Padded weights get zero gradients, so they never change. The per-epoch metrics are
Keras' (`loss` and `accuracy` as running means over the epoch's batches, then
`val_loss` and `val_accuracy` at the end of the epoch); they equal the member's
alone run up to float rounding.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pipeline.model import EVAL_BATCH_SIZE
from pipeline.space import INPUTS, OUTPUTS

ACTIVATIONS = {"sigmoid": tf.nn.sigmoid, "tanh": tf.nn.tanh, "relu": tf.nn.relu,
               "elu": tf.nn.elu, "selu": tf.nn.selu, "gelu": tf.nn.gelu,
               "softplus": tf.nn.softplus, "swish": tf.nn.silu}


# Activations that are exactly 0, with a zero gradient, far below zero. A padded unit
# of these gets the bias PAD_BIAS: it stays silent, so every padded weight's gradient
# is exactly 0 and updates need no mask. Others (tanh, elu, selu) mask the updates.
SILENT_PADDING = {"sigmoid", "relu", "softplus", "swish", "gelu"}
PAD_BIAS = -1e4


def keras_batch_order(num_samples):
    """The order in which Keras' `fit(shuffle=True)` visits the training images.

    Keras' array data adapter draws one permutation with `tf.random.shuffle` under
    the global seed, and visits the images in that order every epoch. Call it right
    after `keras.utils.set_random_seed(seed)` and building the model, as the alone
    trial's `fit` does.
    """
    from keras.src.trainers import data_adapters

    adapter = data_adapters.get_data_adapter(x=np.arange(num_samples), batch_size=num_samples,
                                             shuffle=True)
    (order,) = [batch.numpy() for batch in adapter.get_tf_dataset()]
    return order


@tf.custom_gradient
def _input_layer(x, kernel, bias):
    """x (K, B, 784) times kernel (K, 784, W), plus bias (K, 1, W). The kernel's
    gradient is computed as (dz^T x)^T, several times faster on a CPU for these
    shapes than TensorFlow's own x^T dz; none is computed for x, the images."""
    def gradient(dz):
        return (None, tf.transpose(tf.matmul(dz, x, transpose_a=True), [0, 2, 1]),
                tf.reduce_sum(dz, axis=1, keepdims=True))
    return tf.matmul(x, kernel) + bias, gradient


class _Chain:
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
        shapes = [(INPUTS, w)] + [(w, w)] * (self.depth - 1) + [(w, OUTPUTS)]
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
            out = units[layer + 1] if layer < self.depth else np.ones((self.size, OUTPUTS))
            if layer == 0:
                into = np.ones((self.size, INPUTS), np.float32)
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
        widths = [INPUTS, *config.units, OUTPUTS]
        weights = []
        for layer in range(config.hidden_layers):
            weights.append(self.kernels[layer][index, :widths[layer], :widths[layer + 1]])
            weights.append(self.biases[layer][index, 0, :widths[layer + 1]])
        weights.append(self.kernels[-1][index, :widths[-2], :])
        weights.append(self.biases[-1][index, 0])
        return [w.numpy() for w in weights]

class PackedNetworks:
    """K dense networks with one activation, batch size and epoch count, as one.

    Args:
        configs: the members' `TrialConfig`s (same activation and batch size).
        models: for each member, the `keras.Sequential` it would train alone, with
            its initial weights.
        orders: for each member, its batch order (`keras_batch_order`).
        chains: how many independent chains the members are split into (`chains`).
    """

    def __init__(self, configs, models, orders, chains=None):
        if not packable(configs):
            raise ValueError("a pack needs one activation, batch size and epoch count")
        self.configs = list(configs)
        self.size = len(self.configs)
        self.batch_size = self.configs[0].batch_size
        groups = _split(self.configs, chains or default_chains(self.size))
        self.chains = [_Chain([configs[i] for i in group], [models[i] for i in group],
                              [orders[i] for i in group]) for group in groups]
        self._where = {member: (c, position) for c, group in enumerate(groups)
                       for position, member in enumerate(group)}
        # Chain outputs are concatenated in chain order; this puts them in member order.
        self._member_order = np.argsort(np.concatenate(groups))
        self._epoch = None

    # -- training ------------------------------------------------------------------

    def train_epoch(self, x_train, y_train):
        """One epoch for every member; returns per-member `loss` and `accuracy`."""
        if self._epoch is None:
            # Not XLA: on the CPU its loop over batched small matrices is far slower.
            self._epoch = tf.function(self._train_epoch, jit_compile=False)
        loss, accuracy = self._epoch(x_train, y_train)
        return self._in_order(loss.numpy()), self._in_order(accuracy.numpy())

    def _train_epoch(self, x_train, y_train):
        n = self.chains[0].orders.shape[1]
        b = self.batch_size
        loss_sum = tf.zeros(self.size)
        correct_sum = tf.zeros(self.size)
        # One loop for every batch, the last one short (n % b) included: the step
        # is traced once.
        for step in tf.range((n + b - 1) // b):
            start = step * b
            end = tf.minimum(start + b, n)
            loss, correct = self._steps(x_train, y_train, start, end)
            loss_sum += loss * tf.cast(end - start, tf.float32)
            correct_sum += correct
        return loss_sum / n, correct_sum / n

    def _steps(self, x_train, y_train, start, end):
        """One step of every chain; no chain's operations wait for another's."""
        results = [chain.step(x_train, y_train, chain.orders[:, start:end])
                   for chain in self.chains]
        return tuple(tf.concat(parts, 0) for parts in zip(*results, strict=True))

    def evaluate(self, x, y, batch_size=EVAL_BATCH_SIZE):
        """Per-member mean loss and accuracy on (x, y), shared by all members."""
        loss_sum = np.zeros(self.size)
        correct_sum = np.zeros(self.size)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            loss, correct = self._evaluate_batch(xb, yb)
            loss_sum += self._in_order(loss.numpy()) * len(xb)
            correct_sum += self._in_order(correct.numpy())
        return loss_sum / len(x), correct_sum / len(x)

    # Any batch size: the last, shorter batch does not trace it again.
    @tf.function(input_signature=[tf.TensorSpec((None, INPUTS), tf.float32),
                                  tf.TensorSpec((None, OUTPUTS), tf.float32)])
    def _evaluate_batch(self, x, y):
        results = [chain.losses(x, y) for chain in self.chains]
        return tuple(tf.concat(parts, 0) for parts in zip(*results, strict=True))

    def gradient_sizes(self, x, y):
        """Each member's mean absolute kernel gradients on a batch (x, y) shared by
        all, over its real weights, as the alone probe measures them (output last)."""
        sizes = [s.numpy() for s in self._gradient_sizes(x, y)]
        result = []
        for member, config in enumerate(self.configs):
            c, position = self._where[member]
            row = sizes[c][position]
            result.append([float(v) for v in row[:config.hidden_layers]] + [float(row[-1])])
        return result

    @tf.function
    def _gradient_sizes(self, x, y):
        return [chain.gradient_sizes(x, y) for chain in self.chains]

    def _in_order(self, values):
        return values[self._member_order]

    # -- members -------------------------------------------------------------------

    def member_weights(self, index):
        """Member `index`'s weights, unpadded, in `keras.Sequential.get_weights()` order."""
        c, position = self._where[index]
        return self.chains[c].member_weights(position)

    def member_model(self, index, model):
        """`model` (the member's own `keras.Sequential`) with the member's trained weights."""
        model.set_weights(self.member_weights(index))
        return model


def default_chains(size):
    """Chains for a pack of `size`: one per CPU core (TensorFlow runs independent
    operations on its inter-op threads side by side), one on a GPU, where a single
    batched chain already fills the device."""
    if tf.config.list_physical_devices("GPU"):
        return 1
    threads = tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count() or 1
    return max(1, min(size, threads))


def _split(configs, chains):
    """Member indices in `chains` groups of near-equal size, members of similar depth
    and width together, so that each chain pads as little as it can."""
    ranked = sorted(range(len(configs)),
                    key=lambda i: (configs[i].hidden_layers, max(configs[i].units)))
    chains = max(1, min(chains, len(configs)))
    bounds = np.linspace(0, len(ranked), chains + 1).round().astype(int)
    return [ranked[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def packable(configs):
    """Whether these configurations can train in one pack (same activation, batch size
    and epochs; SGD with a constant rate: no schedule, warm-up, weight decay or
    Nesterov, which train alone)."""
    return len({(c.activation, c.batch_size, c.epochs, c.initial_epoch)
                for c in configs}) == 1 and all(c.activation in ACTIVATIONS and c.plain_sgd
                                                for c in configs)

