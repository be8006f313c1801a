"""Where trials run: GPU selection, memory growth and mixed precision, once per process.

Select GPUs the usual way, with `CUDA_VISIBLE_DEVICES` (e.g. one per worker
process). Memory growth is switched on so that several trial processes can share
one GPU instead of the first one taking all its memory.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def configure(mixed_precision=False, threads=0):
    """Prepares TensorFlow's devices; call before any model or tensor is made.

    Args:
        mixed_precision: compute in float16 on the GPU (variables stay float32,
            the softmax output layer computes in float32). Changes results slightly.
        threads: CPU threads for TensorFlow's operations (0: TensorFlow's default,
            all cores); several trial processes on one machine share the cores.

    Returns:
        A short description of the devices, e.g. "CPU" or "1 GPU (GPU:0)".
    """
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process.
            pass
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # Already initialised in this process: keep its setting.
            pass
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if not gpus:
        cores = f"{threads} thread{'s' * (threads > 1)}" if threads else "all cores"
        return f"CPU ({cores}{', mixed precision' if mixed_precision else ''})"
    names = ", ".join(g.name.replace("/physical_device:", "") for g in gpus)
    precision = ", mixed precision" if mixed_precision else ""
    return f"{len(gpus)} GPU ({names}{precision})"
