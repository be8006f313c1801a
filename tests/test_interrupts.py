"""SIGTERM and Ctrl-C raised where the sweep can stop (`pipeline.search.interrupts`), with real
signals sent to this process."""

import os
import signal
import time

import keras
import numpy as np
import pytest

from pipeline.errors import Interrupted
from pipeline.search import interrupts


@pytest.fixture(autouse=True)
def handlers_restored():
    """`catch()` leaves a stopping process deaf to signals: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_inside_a_finalizer_is_raised_at_the_next_check_not_lost():
    # Raised inside `__del__`, Python would print "Exception ignored" and go on
    # deaf to the signal: a packed worker trained its last trials through a SIGTERM.
    finalized = []

    class SendsOnDelete:
        def __del__(self):
            sigterm()
            for _ in range(1000):  # Bytecodes, where Python runs signal handlers.
                pass
            finalized.append(True)

    with pytest.raises(Interrupted), interrupts.catch():
        SendsOnDelete()
        assert finalized == [True]
        interrupts.check()
    assert finalized == [True]


def test_fit_stops_at_the_batch_after_the_signal():
    batches = []

    class SendsAtBatch3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)
            if batch == 3:
                sigterm()

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((640, 4), "float32"), np.zeros((640, 2), "float32")
    with pytest.raises(Interrupted), interrupts.catch():
        model.fit(x, y, batch_size=8, epochs=5, verbose=0,
                  callbacks=[SendsAtBatch3(), interrupts.StopOnSignal()])
    assert batches == [0, 1, 2, 3]


def test_a_wait_for_something_outside_is_interrupted_at_once():
    start = time.monotonic()
    with pytest.raises(Interrupted), interrupts.catch():
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # SIGALRM's handler sends SIGTERM.
        previous = signal.signal(signal.SIGALRM, lambda *_: sigterm())
        try:
            with interrupts.interruptible():
                time.sleep(30)
        finally:
            signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 10


def test_a_signal_after_the_last_check_still_stops_and_a_second_is_ignored():
    with pytest.raises(Interrupted), interrupts.catch():
        sigterm()
        for _ in range(1000):
            pass
    sigterm()  # The clean-up the first began is not broken off (nor is pytest).
    for _ in range(1000):
        pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    interrupts.check()  # Nothing left to raise.


def test_ctrl_c_raises_keyboard_interrupt_and_handlers_come_back_when_none_arrived():
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.catch():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(KeyboardInterrupt), interrupts.catch():
        os.kill(os.getpid(), signal.SIGINT)
        interrupts.check()
