"""MNIST in, arrays out: from Keras' download or from a local Keras-layout `.npz`.

GPU nodes are often air-gapped, so a local file can be given with `--data PATH` or
the `MNIST_NPZ` environment variable. Whatever the source, the arrays are checked
(keys, shapes, dtypes, label range) and any problem stops with one `DataError` line
that says what went wrong and how to pass a local file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

NUM_CLASSES = 10
NUM_PIXELS = 28 * 28
ENV_VAR = "MNIST_NPZ"
HOW_TO_FIX = f"pass a local Keras-layout mnist.npz with --data PATH or {ENV_VAR}=PATH"
KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Flattened, scaled MNIST with one-hot labels, split three ways.

    The validation images are the last `validation_split` of the 60,000 training
    images; the test images are never used to choose anything.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    fingerprint: str

    def describe(self):
        return (f"{len(self.x_train):,} train / {len(self.x_val):,} validation / "
                f"{len(self.x_test):,} test images from {self.source}")


def load(path=None, validation_split=10_000, train_limit=None):
    """Loads MNIST and splits off the validation set.

    Args:
        path: a Keras-layout `.npz`; if None, `$MNIST_NPZ`, else Keras' download.
        validation_split: how many of the last training images to validate on.
        train_limit: if set, train on only the first N remaining training images.

    Returns:
        A `Dataset`.

    Raises:
        DataError: the file is missing, corrupt or of the wrong layout, or the
            download failed.
    """
    path = path or os.environ.get(ENV_VAR) or None
    raw, source = _read(str(path)) if path else _download()
    return _prepare(raw, source, int(validation_split), train_limit and int(train_limit))


@functools.lru_cache(maxsize=4)
def _read(path):
    file = Path(path)
    if file.is_dir():
        raise DataError(f"{file} is a directory, not an MNIST file; {HOW_TO_FIX}")
    if not file.is_file():
        raise DataError(f"MNIST file not found: {file}; {HOW_TO_FIX}")
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # A .npy: one array.
            raise DataError(f"{file} is a single .npy array, not a .npz archive of "
                            f"{', '.join(KEYS)}; {HOW_TO_FIX}")
        with loaded as npz:
            raw = _arrays(npz, file)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, MemoryError, zipfile.BadZipFile,
            zlib.error) as e:
        raise DataError(f"{file} could not be read as .npz ({_reason(e)}); {HOW_TO_FIX}") from None
    _check(raw, str(file))
    return raw, str(file)


def _arrays(npz, file):
    """The four arrays of an open `.npz`, read without unpickling anything."""
    missing = [k for k in KEYS if k not in npz.files]
    if missing:
        raise DataError(f"{file} is not a Keras-layout MNIST file (no {missing[0]!r} "
                        f"array; expected {', '.join(KEYS)}); {HOW_TO_FIX}")
    raw = {}
    for key in KEYS:
        try:
            raw[key] = npz[key]
        except ValueError as e:  # Object arrays among them: no unpickling.
            raise DataError(f"{file}: {key} could not be read ({_reason(e)}); "
                            f"{HOW_TO_FIX}") from None
    return raw


def _reason(error):
    """An exception's first line (some span several), or its class name."""
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]


def _download():
    import keras  # Heavy import; only needed when no local file is given.

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any failure here means "no data".
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(f"could not download MNIST ({reason}); {HOW_TO_FIX}") from e
    raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    _check(raw, "keras.datasets.mnist")
    return raw, "keras.datasets.mnist"


def _check(raw, where):
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or not len(x):
            raise DataError(f"{where}: x_{split} must be uint8 of shape (N, 28, 28), N >= 1, "
                            f"got {x.dtype} {x.shape}; {HOW_TO_FIX}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{split} must be {len(x)} integer labels, got "
                            f"{y.dtype} {y.shape}; {HOW_TO_FIX}")
        if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{where}: y_{split} labels must be in 0..9, got "
                            f"{y.min()}..{y.max()}; {HOW_TO_FIX}")


def _prepare(raw, source, validation_split, train_limit):
    x_all, y_all = raw["x_train"], raw["y_train"]
    if not 0 < validation_split < len(x_all):
        raise DataError(f"validation_split {validation_split} must be between 1 and "
                        f"{len(x_all) - 1} for {len(x_all)} training images")
    if train_limit is not None and train_limit < 1:
        raise DataError(f"train_limit must be >= 1, got {train_limit}")
    n_train = len(x_all) - validation_split
    if train_limit:
        n_train = min(n_train, train_limit)
    digest = hashlib.sha256()
    for key in KEYS:
        digest.update(raw[key].tobytes())
    digest.update(f"{validation_split}/{n_train}".encode())
    return Dataset(
        x_train=_pixels(x_all[:n_train]),
        y_train=_one_hot(y_all[:n_train]),
        x_val=_pixels(x_all[-validation_split:]),
        y_val=_one_hot(y_all[-validation_split:]),
        x_test=_pixels(raw["x_test"]),
        y_test=_one_hot(raw["y_test"]),
        source=source,
        fingerprint=digest.hexdigest()[:10],
    )


def _pixels(images):
    # Flatten to 784 and scale to [0, 1].
    return images.reshape(len(images), NUM_PIXELS).astype("float32") / 255.0


def _one_hot(labels):
    return np.eye(NUM_CLASSES, dtype="float32")[labels.astype(np.int64)]
