"""The baseline for a Part Three trial: plain Keras `fit` of the same model, with XLA.

    model.compile(SGD(CosineDecay(...), momentum=...), jit_compile=True)
    model.fit(X, y, batch_size=64, epochs=30, validation_data=...)

on a `keras.Sequential` of sigmoid layers, TensorFlow's default threads (every
core), nothing else. Prints one JSON line: `fit` seconds, the history, test accuracy.
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from pipeline import data  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--units", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--momentum", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-limit", type=int, default=None)
    args = parser.parse_args()

    ds = data.load(args.data, train_limit=args.train_limit)
    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential(
        [keras.Input(shape=(784,))]
        + [keras.layers.Dense(args.units, activation="sigmoid") for _ in range(args.layers)]
        + [keras.layers.Dense(10, activation="softmax")])
    steps = math.ceil(len(ds.x_train) / args.batch_size) * args.epochs
    rate = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(optimizer=keras.optimizers.SGD(rate, momentum=args.momentum),
                  loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=True)
    start = time.perf_counter()
    history = model.fit(ds.x_train, ds.y_train, batch_size=args.batch_size,
                        epochs=args.epochs, validation_data=(ds.x_val, ds.y_val), verbose=0)
    seconds = time.perf_counter() - start
    _, test_accuracy = model.evaluate(ds.x_test, ds.y_test, verbose=0)
    print(json.dumps({"fit_seconds": seconds, "history": history.history,
                      "test_accuracy": test_accuracy}))


if __name__ == "__main__":
    main()
