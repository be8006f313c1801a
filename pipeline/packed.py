"""Many of the exercise's networks trained as one: one compiled step for a pack of K.

A sweep is dozens of tiny networks, and a tiny network spends most of each step in
per-step overhead, not arithmetic. `PackedNetworks` stacks K configurations of the
same batch size and epochs into one set of batched weights ("horizontal fusion"):
every hidden layer is padded to the pack's widest, padded units are masked to zero,
and a network shallower than the pack's deepest passes its activations through
the extra layers unchanged. Each member still trains exactly as it would alone:

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

import numpy as np
import tensorflow as tf

from pipeline.model import EVAL_BATCH_SIZE
from pipeline.space import INPUTS, OUTPUTS

ACTIVATIONS = {"sigmoid": tf.nn.sigmoid, "tanh": tf.nn.tanh, "relu": tf.nn.relu,
               "elu": tf.nn.elu, "selu": tf.nn.selu, "gelu": tf.nn.gelu,
               "softplus": tf.nn.softplus, "swish": tf.nn.silu}


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


class PackedNetworks:
    """K dense networks with one activation, batch size and epoch count, as one.

    Args:
        configs: the members' `TrialConfig`s (same activation and batch size).
        models: for each member, the `keras.Sequential` it would train alone, with
            its initial weights.
        orders: for each member, its batch order (`keras_batch_order`).
    """

    def __init__(self, configs, models, orders):
        if not packable(configs):
            raise ValueError("a pack needs one activation, batch size and epoch count")
        self.configs = list(configs)
        self.size = len(self.configs)
        self.depth = max(c.hidden_layers for c in self.configs)
        self.width = max(max(c.units) for c in self.configs)
        self.activation = ACTIVATIONS[self.configs[0].activation]
        self.batch_size = self.configs[0].batch_size
        self.orders = tf.constant(np.stack(orders).astype(np.int32))
        self._stack(models)
        k = self.size
        self.momentum = tf.reshape(
            tf.constant([c.momentum for c in self.configs], tf.float32), (k, 1, 1))
        momenta = {c.momentum for c in self.configs}
        self.shared_momentum = float(momenta.pop()) if len(momenta) == 1 else None
        self.velocities = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self._epoch = None

    def _stack(self, models):
        k, w = self.size, self.width
        shapes = [(INPUTS, w)] + [(w, w)] * (self.depth - 1) + [(w, OUTPUTS)]
        kernels = [np.zeros((k, *shape), np.float32) for shape in shapes]
        biases = [np.zeros((k, shape[1]), np.float32) for shape in shapes]
        units = np.zeros((self.depth + 1, k, w), np.float32)  # 1: a member's real unit.
        active = np.zeros((self.depth, k), bool)
        for i, (config, model) in enumerate(zip(self.configs, models, strict=True)):
            weights = model.get_weights()
            layers = config.hidden_layers
            for layer in range(layers):
                kernel, bias = weights[2 * layer], weights[2 * layer + 1]
                kernels[layer][i, :kernel.shape[0], :kernel.shape[1]] = kernel
                biases[layer][i, :bias.shape[0]] = bias
                units[layer + 1, i, :bias.shape[0]] = 1.0
                active[layer, i] = True
            kernel, bias = weights[-2], weights[-1]
            kernels[-1][i, :kernel.shape[0]] = kernel
            biases[-1][i] = bias
        self.kernels = [tf.Variable(v) for v in kernels]
        self.biases = [tf.Variable(v) for v in biases]
        self.variables = self.kernels + self.biases
        self.shallowest = min(c.hidden_layers for c in self.configs)
        self.active = tf.constant(active[:, :, None, None])
        self.rates = self._update_rates(units, kernels, biases)

    def _update_rates(self, units, kernels, biases):
        """Each variable's learning rate, entry by entry: the member's own on its real
        weights, 0 on padding, so padded weights keep their zeros and padded units
        (act(0) times a zero weight) never reach a real one. Also keeps the kernels'
        masks of real weights (`real`)."""
        lr = np.array([c.learning_rate for c in self.configs], np.float32)
        last = [units[c.hidden_layers, i] for i, c in enumerate(self.configs)]
        rates, self.real = [], []
        for layer in range(len(kernels)):
            out = units[layer + 1] if layer < self.depth else np.ones((self.size, OUTPUTS))
            if layer == 0:
                into = np.ones((self.size, INPUTS), np.float32)
            else:
                into = units[layer] if layer < self.depth else np.stack(last)
            real = into[:, :, None] * out[:, None, :]
            self.real.append(tf.constant(real.astype(np.float32)))
            rates.append(lr[:, None, None] * real)
        for layer, bias in enumerate(biases):
            out = units[layer + 1] if layer < self.depth else np.ones((self.size, OUTPUTS))
            rates.append(lr[:, None] * out[:, :bias.shape[1]])
        return [tf.constant(r.astype(np.float32)) for r in rates]

    # -- the network ---------------------------------------------------------------

    def logits(self, x):
        """The members' logits: x is (K, B, 784), or (B, 784) shared by all."""
        equation = "bi,kio->kbo" if x.shape.rank == 2 else "kbi,kio->kbo"
        h = self.activation(tf.einsum(equation, x, self.kernels[0])
                            + self.biases[0][:, None, :])
        for layer in range(1, self.depth):
            a = self.activation(tf.matmul(h, self.kernels[layer])
                                + self.biases[layer][:, None, :])
            # A member shallower than this layer passes its activations through.
            h = a if layer < self.shallowest else tf.where(self.active[layer], a, h)
        return tf.matmul(h, self.kernels[-1]) + self.biases[-1][:, None, :]

    def _losses(self, x, y):
        """Per member: the mean cross-entropy of the batch and the correct predictions."""
        logits = self.logits(x)
        labels = y if y.shape.rank == 3 else tf.broadcast_to(y, tf.shape(logits))
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, logits), axis=1)
        correct = tf.reduce_sum(tf.cast(
            tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32), axis=1)
        return loss, correct

    def _step(self, x_train, y_train, indices):
        x = tf.gather(x_train, indices)
        y = tf.gather(y_train, indices)
        with tf.GradientTape() as tape:
            loss, correct = self._losses(x, y)
            total = tf.reduce_sum(loss)
        gradients = tape.gradient(total, self.variables)
        for variable, velocity, gradient, rate in zip(self.variables, self.velocities,
                                                      gradients, self.rates, strict=True):
            self._apply(variable, velocity, gradient, rate)
        return loss, correct

    def _apply(self, variable, velocity, gradient, rate):
        """Keras' SGD update, each member at its own learning rate and momentum."""
        scaled = gradient * rate  # Keras' `gradient * learning_rate`, member by member.
        if self.shared_momentum == 0.0:  # var -= g * lr, as Keras does without momentum.
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=1.0,
                                                    delta=scaled)
        elif self.shared_momentum is not None:  # m = m * momentum - g * lr; var += m
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.handle, accum=velocity.handle, lr=1.0, grad=scaled,
                momentum=self.shared_momentum)
        else:
            momentum = self.momentum if variable.shape.rank == 3 else self.momentum[:, :, 0]
            velocity.assign(velocity * momentum - scaled)
            variable.assign_add(velocity)

    # -- training ------------------------------------------------------------------

    def train_epoch(self, x_train, y_train):
        """One epoch for every member; returns per-member `loss` and `accuracy`."""
        if self._epoch is None:
            # Not XLA: on the CPU its loop over batched small matrices is far slower.
            self._epoch = tf.function(self._train_epoch, jit_compile=False)
        loss, accuracy = self._epoch(x_train, y_train)
        return loss.numpy(), accuracy.numpy()

    def _train_epoch(self, x_train, y_train):
        n = self.orders.shape[1]
        b = self.batch_size
        full = n // b
        loss_sum = tf.zeros(self.size)
        correct_sum = tf.zeros(self.size)
        for step in tf.range(full):
            loss, correct = self._step(x_train, y_train, self.orders[:, step * b:(step + 1) * b])
            loss_sum += loss * b
            correct_sum += correct
        if n % b:
            loss, correct = self._step(x_train, y_train, self.orders[:, full * b:])
            loss_sum += loss * (n % b)
            correct_sum += correct
        return loss_sum / n, correct_sum / n

    def evaluate(self, x, y, batch_size=EVAL_BATCH_SIZE):
        """Per-member mean loss and accuracy on (x, y), shared by all members."""
        loss_sum = np.zeros(self.size)
        correct_sum = np.zeros(self.size)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            loss, correct = self._evaluate_batch(xb, yb)
            loss_sum += loss.numpy() * len(xb)
            correct_sum += correct.numpy()
        return loss_sum / len(x), correct_sum / len(x)

    @tf.function
    def _evaluate_batch(self, x, y):
        return self._losses(x, y)

    @tf.function
    def gradient_sizes(self, x, y):
        """Each kernel's mean absolute gradient on a batch (x, y) shared by all members,
        over the member's real weights: a (K, depth + 1) tensor, output layer last."""
        with tf.GradientTape() as tape:
            loss, _ = self._losses(x, y)
            total = tf.reduce_sum(loss)
        gradients = tape.gradient(total, self.kernels)
        return tf.stack([tf.reduce_sum(tf.abs(g) * real, axis=[1, 2])
                         / tf.reduce_sum(real, axis=[1, 2])
                         for g, real in zip(gradients, self.real, strict=True)], axis=1)

    def member_gradients(self, sizes, index):
        """Member `index`'s gradient sizes from `gradient_sizes`, as the alone probe's."""
        layers = self.configs[index].hidden_layers
        return [float(v) for v in sizes[index, :layers]] + [float(sizes[index, -1])]

    # -- members -------------------------------------------------------------------

    def member_weights(self, index):
        """Member `index`'s weights, unpadded, in `keras.Sequential.get_weights()` order."""
        config = self.configs[index]
        widths = [INPUTS, *config.units, OUTPUTS]
        weights = []
        for layer in range(config.hidden_layers):
            weights.append(self.kernels[layer][index, :widths[layer], :widths[layer + 1]])
            weights.append(self.biases[layer][index, :widths[layer + 1]])
        weights.append(self.kernels[-1][index, :widths[-2], :])
        weights.append(self.biases[-1][index])
        return [w.numpy() for w in weights]

    def member_model(self, index, model):
        """`model` (the member's own `keras.Sequential`) with the member's trained weights."""
        model.set_weights(self.member_weights(index))
        return model


def packable(configs):
    """Whether these configurations can train in one pack (same activation, batch size
    and epochs; SGD with a constant rate: no schedule, warm-up, weight decay or
    Nesterov, which train alone)."""
    return len({(c.activation, c.batch_size, c.epochs, c.initial_epoch)
                for c in configs}) == 1 and all(c.activation in ACTIVATIONS and c.plain_sgd
                                                for c in configs)

