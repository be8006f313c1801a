import numpy as np
import pytest

from pipeline import data
from pipeline.errors import DataError


def test_full_file_splits_scales_and_one_hots(mnist_path):
    ds = data.load(mnist_path)
    assert ds.x_train.shape == (50_000, 784) and ds.x_val.shape == (10_000, 784)
    assert ds.x_test.shape == (10_000, 784)
    assert ds.y_train.shape == (50_000, 10) and ds.y_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.all(ds.y_val.sum(axis=1) == 1)
    raw = np.load(mnist_path)
    # Validation is the last 10,000 training images, in order.
    assert np.array_equal(ds.y_val.argmax(1), raw["y_train"][-10_000:])
    assert np.allclose(ds.x_val[0], raw["x_train"][50_000].reshape(784) / 255)
    assert np.array_equal(ds.y_test.argmax(1), raw["y_test"])


def test_train_limit_and_validation_split_use_the_same_path(mnist_path):
    ds = data.load(mnist_path, validation_split=5_000, train_limit=1_000)
    assert len(ds.x_train) == 1_000 and len(ds.x_val) == 5_000
    full = data.load(mnist_path)
    assert np.array_equal(ds.x_train, full.x_train[:1_000])
    assert ds.fingerprint != full.fingerprint
    assert "1,000 train / 5,000 validation / 10,000 test" in ds.describe()


def test_environment_variable_is_the_default(mnist_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, mnist_path)
    assert data.load(train_limit=10).source == mnist_path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"MNIST file not found: .*nope.npz; pass a local "
                                        r"Keras-layout mnist.npz with --data PATH or MNIST_NPZ"):
        data.load(tmp_path / "nope.npz")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="could not be read as .npz"):
        data.load(bad)


def test_wrong_layout(tmp_path):
    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.zeros(20, np.uint8)
    path = tmp_path / "no_test.npz"
    np.savez(path, x_train=images, y_train=labels)
    with pytest.raises(DataError, match="no 'x_test' array"):
        data.load(path)
    path = tmp_path / "floats.npz"
    np.savez(path, x_train=images.astype("float32"), y_train=labels, x_test=images,
             y_test=labels)
    with pytest.raises(DataError, match=r"x_train must be uint8 of shape \(N, 28, 28\)"):
        data.load(path, validation_split=5)
    path = tmp_path / "labels.npz"
    np.savez(path, x_train=images, y_train=labels + 10, x_test=images, y_test=labels)
    with pytest.raises(DataError, match=r"labels must be in 0..9, got 10..10"):
        data.load(path, validation_split=5)


def test_validation_split_must_leave_training_images(mnist_path):
    with pytest.raises(DataError, match="validation_split 60000 must be between 1 and 59999"):
        data.load(mnist_path, validation_split=60_000)


def test_failed_download_says_how_to_pass_a_file(monkeypatch):
    import keras

    def offline():
        raise OSError("URL fetch failure: no network")

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match=r"could not download MNIST \(URL fetch failure: no "
                                        r"network\); pass a local Keras-layout mnist.npz"):
        data.load()
