"""Keras Tuner sweeps over MLP depth, width and activation on MNIST, tracked in MLflow."""

__version__ = "0.1.0"
