"""The baseline users know: the exercise's own Keras loop, one model, timed per epoch.

    model.fit(X, y, batch_size=32, epochs=10, validation_data=...)

on a compiled `keras.Sequential`, with nothing else. Prints one JSON line: the
seconds of each epoch and the per-epoch history.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from pipeline import data  # noqa: E402
from pipeline.training.model import kernel_initializer  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-limit", type=int, default=None)
    args = parser.parse_args()

    ds = data.load(args.data, train_limit=args.train_limit)
    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input(shape=(784,)),
        # Seeded as a pipeline trial seeds them (Keras' Glorot uniform).
        keras.layers.Dense(args.units, activation="sigmoid",
                           kernel_initializer=kernel_initializer(args.seed, 0)),
        keras.layers.Dense(10, activation="softmax",
                           kernel_initializer=kernel_initializer(args.seed, 1)),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    history = model.fit(ds.x_train, ds.y_train, batch_size=32, epochs=args.epochs,
                        validation_data=(ds.x_val, ds.y_val), callbacks=[timer], verbose=0)
    print(json.dumps({"epoch_seconds": timer.seconds, "history": history.history}))


if __name__ == "__main__":
    main()
