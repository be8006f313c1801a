"""SIGTERM and Ctrl-C: noted when they arrive, raised where the sweep can stop.

A Python signal handler that raises does so between any two bytecodes of the main
thread: inside a weakref callback or a `__del__` (Python prints "Exception ignored",
and the process goes on, now deaf to the signal), or between a lock's acquire and its
release (and the process hangs at exit). So inside `catch()` a signal is only noted,
and `check()` raises it where the sweep's own loops can stop: every training batch
(`StopOnSignal`), every epoch of a pack, every trial asked for, every poll of the
chief's server. Waits on something outside the process (a call to the chief, a
sleep between polls) run in `interruptible()`, where the signal raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import keras

from pipeline.errors import Interrupted

_noted = []  # Signals received inside `catch()` and not yet raised.
_raise_at_once = []  # Depth of `interruptible()` regions on the main thread.


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _exception(signum):
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Interrupted("SIGTERM: stopped by the scheduler")


def check():
    """Raises `Interrupted` (SIGTERM) or `KeyboardInterrupt` (Ctrl-C) if one arrived
    inside `catch()` and was not raised yet; on other threads, nothing."""
    if _noted and _main_thread():
        raise _exception(_noted.pop())


@contextlib.contextmanager
def interruptible():
    """A wait on something outside this process: a signal raises at once inside it."""
    if not _main_thread():
        yield
        return
    check()
    _raise_at_once.append(True)
    try:
        yield
    finally:
        _raise_at_once.pop()


@contextlib.contextmanager
def catch(on_signal=None):
    """SIGTERM raises `Interrupted`, Ctrl-C `KeyboardInterrupt`, at the next `check()`
    (at once inside `interruptible()`), each once: later signals are ignored, so they
    cannot break off the clean-up (runs closed KILLED) that the first began.

    Args:
        on_signal: called when a signal arrives (from the handler: keep it short).
    """
    received = []

    def note(signum, frame):
        received.append(signum)
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)
        if on_signal:
            on_signal()
        _noted.append(signum)
        if _raise_at_once:
            check()

    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Not ignored.
        handled.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, note) for sig in handled}
    try:
        yield
        check()  # One that arrived after the last check still stops the process.
    finally:
        _noted.clear()
        if not received:  # Stopping: stay deaf to signals until the process exits.
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class StopOnSignal(keras.callbacks.Callback):
    """Stops Keras' `fit` at the next batch once a signal arrived (`check()`)."""

    def on_train_batch_end(self, batch, logs=None):
        check()

    def on_test_batch_end(self, batch, logs=None):
        check()
