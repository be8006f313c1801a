"""Where trials run: GPU selection, memory growth and mixed precision, once per process.

Select GPUs the usual way, with `CUDA_VISIBLE_DEVICES` (e.g. one per worker
process). Memory growth is switched on so that several trial processes can share
one GPU instead of the first one taking all its memory.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def configure(mixed_precision=False):
    """Prepares TensorFlow's devices; call before any model or tensor is made.

    Args:
        mixed_precision: compute in float16 on the GPU (variables stay float32,
            the softmax output layer computes in float32). Changes results slightly.

    Returns:
        A short description of the devices, e.g. "CPU" or "1 GPU (GPU:0)".
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # Already initialised in this process: keep its setting.
            pass
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if not gpus:
        return "CPU" + (" (mixed precision)" if mixed_precision else "")
    names = ", ".join(g.name.replace("/physical_device:", "") for g in gpus)
    precision = ", mixed precision" if mixed_precision else ""
    return f"{len(gpus)} GPU ({names}{precision})"
