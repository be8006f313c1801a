"""Where trials run: GPU selection, memory growth and mixed precision, once per process.

Select GPUs the usual way, with `CUDA_VISIBLE_DEVICES` (e.g. one per worker
process). Memory growth is switched on so that several trial processes can share
one GPU instead of the first one taking all its memory.
"""

from __future__ import annotations

import functools
import os

import keras
import tensorflow as tf


def configure(mixed_precision=False, threads=0, compute_bound=False):
    """Prepares TensorFlow's devices; call before any model or tensor is made.

    Args:
        mixed_precision: compute in float16 on the GPU (variables stay float32,
            the softmax output layer computes in float32). Changes results slightly.
        threads: CPU threads for TensorFlow's operations. 0: on a GPU machine
            TensorFlow's default; on the CPU, all cores for `compute_bound` sweeps
            (wide layers: the matrix products use every core), else all cores but
            one, which is left to the input pipeline and the logging thread (on 2
            cores here, narrow networks' epochs are both faster and steadier).
            Several trial processes share the cores.
        compute_bound: the sweeps' widest layers are wide enough that their matrix
            products dominate a step (`model.compute_bound`).

    Returns:
        A short description of the devices, e.g. "CPU" or "1 GPU (GPU:0)".
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not threads and not gpus:
        threads = cpu_threads(compute_bound)
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process.
            pass
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


def cpu_threads(compute_bound):
    """The threads `configure` gives TensorFlow's operations on a CPU by default."""
    return max(1, (os.cpu_count() or 1) - (not compute_bound))


@functools.lru_cache(maxsize=2)
def device_arrays(dataset):
    """The dataset as tensors, placed on the device once per process."""
    splits = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    return {split: tf.convert_to_tensor(getattr(dataset, split)) for split in splits}
