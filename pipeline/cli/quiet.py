"""Other libraries' log noise kept out of a sweep's output, unless `-v`.

TensorFlow's C++ side writes its absl lines (oneDNN, CUDA probing) straight to file
descriptor 2 while it is imported, before any Python logging applies, and
`TF_CPP_MIN_LOG_LEVEL` no longer silences them (TensorFlow 2.21). They are caught
at the descriptor during the import (wherever it happens first) and shown only if
the import fails or `-v` was asked for. MLflow's INFO lines (system metrics,
temporary directories, model registration) are cut to warnings the same way, and the
Bayesian oracle's Gaussian process (scikit-learn) keeps its fitting warnings to itself.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

VERBOSE = re.compile(r"-v+|--verbose")


def verbose(argv):
    """Whether the command line asks for `-v` (before its own parsing)."""
    return any(VERBOSE.fullmatch(arg) for arg in argv)


@contextlib.contextmanager
def native_stderr(show):
    """Holds back what native code writes to file descriptor 2 inside the block;
    writes it out after all if `show` or the block raises."""
    if show:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                caught.seek(0)
                os.write(2, caught.read())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, then runs its import inside `native_stderr`."""

    def __init__(self, show):
        self.show = show

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # Once: the real finders do the finding.
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load, show = spec.loader.exec_module, self.show

        def exec_module(module):
            with native_stderr(show):
                load(module)

        spec.loader.exec_module = exec_module
        return spec


def hush_tensorflow(argv):
    """Holds back TensorFlow's start-up lines, whenever it is first imported, unless
    `-v`; a command that never imports it (bad input, `list`) pays nothing."""
    sys.meta_path.insert(0, _QuietImport(verbose(argv)))


def libraries(verbose_level):
    """MLflow's own INFO lines only with `-v`; a level the user set stays, unless it
    is the quiet one and `-v` asks for more."""
    current = os.environ.get("MLFLOW_LOGGING_LEVEL", "").upper()
    if verbose_level and current in ("", "WARNING"):
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"  # Read when MLflow is imported.
    elif not current:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    if not verbose_level:  # A length scale at its bound, every few trials: not the user's.
        warnings.filterwarnings("ignore", module=r"sklearn\.gaussian_process")
