"""Device set-up: what the trials run on, in one line."""

import keras
import tensorflow as tf

from pipeline.training import device


def test_cpu_machine_is_described_with_its_threads():
    described = device.configure(threads=1)
    assert not tf.config.list_physical_devices("GPU")
    assert described == "CPU (1 thread)"
    assert device.configure(threads=3) == "CPU (3 threads)"


def test_mixed_precision_sets_keras_policy():
    try:
        assert device.configure(mixed_precision=True, threads=1).endswith(
            ", mixed precision)")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
