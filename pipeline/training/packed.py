"""Many of the exercise's networks trained as one: one compiled step for a pack of K.

A sweep is dozens of tiny networks, and a tiny network spends most of each step in
per-step overhead, not arithmetic. `PackedNetworks` stacks K configurations of the
same batch size and epochs into one set of batched weights ("horizontal fusion"):
on a CPU split into chains, one per core (`pipeline.chain`): each chain's members
are padded to its widest layer and deepest network, and its operations depend on no
other chain's, so TensorFlow runs the chains side by side. Each member still trains
exactly as it would alone:

- its initial weights are those Keras gives it alone (built from its own seed);
- it sees its own batch order: the permutation Keras' own data adapter makes for
  it under its seed (`keras_batch_order`; Keras reuses it every epoch);
- it applies its own learning rate and momentum, with Keras' SGD update, and its
  loss is Keras' categorical cross-entropy on the softmax's logits.

The per-epoch metrics are
Keras' (`loss` and `accuracy` as running means over the epoch's batches, then
`val_loss` and `val_accuracy` at the end of the epoch); they equal the member's
alone run up to float rounding.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pipeline.data import NUM_CLASSES, NUM_PIXELS
from pipeline.training.chain import ACTIVATIONS, Chain
from pipeline.training.model import EVAL_BATCH_SIZE


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
        chains: how many independent chains the members are split into (`chains`).
    """

    def __init__(self, configs, models, orders, chains=None):
        if not packable(configs):
            raise ValueError("a pack needs one activation, batch size and epoch count")
        self.configs = list(configs)
        self.size = len(self.configs)
        self.batch_size = self.configs[0].batch_size
        groups = _split(self.configs, chains or default_chains(self.size))
        self.chains = [Chain([configs[i] for i in group], [models[i] for i in group],
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
    @tf.function(input_signature=[tf.TensorSpec((None, NUM_PIXELS), tf.float32),
                                  tf.TensorSpec((None, NUM_CLASSES), tf.float32)])
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

    def member_model(self, index, model, weights=None):
        """`model` (the member's own `keras.Sequential`) with the member's trained weights,
        or `weights` (those it keeps: its best epoch's)."""
        model.set_weights(self.member_weights(index) if weights is None else weights)
        return model

    def member_view(self, index):
        """A `MemberView` of member `index`, for callbacks written for a Keras model."""
        return MemberView(self, index)


class MemberView:
    """What Keras' `EarlyStopping` and the divergence guard need of a model, for one
    member of a pack: its current weights, the weights it keeps, and `stop_training`."""

    def __init__(self, network, index):
        self.network, self.index = network, index
        self.kept = None  # Set when a callback restores its best weights.
        self.stop_training = False

    def get_weights(self):
        return self.network.member_weights(self.index)

    def set_weights(self, weights):
        self.kept = [np.array(w) for w in weights]


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

