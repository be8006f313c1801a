"""Keras Tuner's private internals: every one this project relies on, in one place.

Checked against keras-tuner 1.4.8 (`CHECKED_VERSION`). `tests/test_internals.py`
fails when the installed version differs or when a listed name is gone, so an
upgrade is a deliberate act: re-read each use below against the new source, then
move `CHECKED_VERSION` (and the pin in pyproject.toml and conda.yaml).

Relied on (`MODULE_NAMES`, `CLASS_NAMES`, `ORACLE_STATE`):

- `keras_tuner.src.protos`: `get_service()`, `get_service_grpc()`: the oracle's
  gRPC messages, stub and servicer base; the heartbeat and the chief's server.
- `keras_tuner.src.distribute.oracle_chief`: `OracleServicer` (subclassed to note
  each worker's last call and to answer IDLE), `exit_chief(oracle)`.
- `keras_tuner.src.distribute.oracle_client`: `TIMEOUT`, the seconds every call
  of a worker's client waits (an hour by default; `--chief-timeout` sets it);
  `OracleClient.stub`, replaced by a stub whose calls carry the sweep's token, and
  called directly for a trial's per-epoch report (`report_epoch`): 1.4.8's
  `OracleClient.update_trial` drops the chief's answer in multi-worker mode.
- `keras_tuner.src.distribute.utils`: `has_chief_oracle()`, `is_chief_oracle()`.
- `Oracle` methods overridden or called: `_duplicate(values)` (flags infeasible
  draws), `_random_values()` (a fresh feasible draw), `_check_consecutive_failures()`
  (turned into `SweepStopped`), `_save_trial(trial)`;
  `GridSearchOracle._get_next_combination(values)` (steps over infeasible points).
- `keras_tuner.src.engine.oracle`: `LOCKS`, `THREADS` (each oracle's lock and the
  name of the thread holding it): `synchronized` below takes the same lock as Keras
  Tuner's `synchronized`, which never releases it when the call raises (a chief
  whose oracle raised once would hang every later call, and its exit).
- `keras_tuner.src.engine.conditions.Parent.to_proto`: prints its first value
  (a debug `print` left in 1.4.8), so every trial or space sent over gRPC put lines
  such as `11` and `12` (a deep spec's conditions) in a distributed sweep's output;
  replaced by the same method without the print (`quiet_condition_protos`).
- `keras_tuner.src.utils.save_json(path, obj)`: every state file Keras Tuner writes
  goes through it (looked up at call time); replaced by one that writes a
  temporary file and renames it, so a crash never leaves half a file.
- `keras_tuner.src.config.DEBUG`: whether `BaseTuner._try_run_and_update_trial`
  prints the traceback of every trial that raised, expected failures too (a NaN
  loss, the divergence guard); off unless `-v`: `on_trial_end` prints a real bug's.
- `BaseTuner._try_run_and_update_trial(trial, *args)`: runs one trial and records its
  outcome on the trial, as `BaseTuner.search` does (packed searches call it for a
  trial that trains alone).
- `Oracle` state: `_retry_queue` (trial ids to hand out again), `end_order`,
  `_max_collisions` (draws rejected before the space counts as spent),
  `tuner_ids`, `ongoing_trials` (tuner id -> trial), `trials`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading

import keras_tuner
from keras_tuner.src import config as kt_config
from keras_tuner.src import protos
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.distribute import oracle_chief, oracle_client
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import conditions as kt_conditions
from keras_tuner.src.engine import oracle as kt_oracle

CHECKED_VERSION = "1.4.8"

MODULE_NAMES = {
    "keras_tuner.src.protos": ("get_service", "get_service_grpc"),
    "keras_tuner.src.distribute.oracle_chief": ("OracleServicer", "exit_chief"),
    "keras_tuner.src.distribute.oracle_client": ("TIMEOUT",),
    "keras_tuner.src.distribute.utils": ("has_chief_oracle", "is_chief_oracle"),
    "keras_tuner.src.utils": ("save_json",),
    "keras_tuner.src.config": ("DEBUG",),
    "keras_tuner.src.engine.oracle": ("LOCKS", "THREADS"),
}
CLASS_NAMES = {
    keras_tuner.Oracle: ("_duplicate", "_random_values", "_check_consecutive_failures",
                         "_save_trial"),
    keras_tuner.oracles.GridSearchOracle: ("_get_next_combination",),
    oracle_chief.OracleServicer: ("GetSpace", "CreateTrial"),
    keras_tuner.Tuner: ("_try_run_and_update_trial",),
    kt_conditions.Parent: ("to_proto",),
}
ORACLE_STATE = ("_retry_queue", "end_order", "_max_collisions", "tuner_ids",
                "ongoing_trials", "trials")

OracleServicer = oracle_chief.OracleServicer


def missing_names(oracle=None):
    """The listed names that this keras-tuner lacks (empty when all are there).

    Args:
        oracle: an oracle instance, to check its state attributes too.
    """
    missing = []
    for module_name, attributes in MODULE_NAMES.items():
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{a}" for a in attributes if not hasattr(module, a)]
    for cls, attributes in CLASS_NAMES.items():
        missing += [f"{cls.__name__}.{a}" for a in attributes if not hasattr(cls, a)]
    if oracle is not None:
        missing += [f"oracle.{a}" for a in ORACLE_STATE if not hasattr(oracle, a)]
    return missing


# -- gRPC -----------------------------------------------------------------------

def service():
    """The oracle service's message classes (`GetSpaceRequest`, ...)."""
    return protos.get_service()


def service_grpc():
    """The oracle service's stub and servicer registration."""
    return protos.get_service_grpc()


def set_client_timeout(seconds):
    """How long a worker's calls to the chief wait before they fail."""
    oracle_client.TIMEOUT = seconds


def set_client_stub(oracle_client_, stub):
    """Makes a worker's `OracleClient` call the chief through `stub`."""
    if not isinstance(oracle_client_, oracle_client.OracleClient):
        raise TypeError(f"not a Keras Tuner OracleClient: {type(oracle_client_).__name__}")
    oracle_client_.stub = stub


def client_stub(oracle_client_):
    return oracle_client_.stub


def report_epoch(oracle, trial_id, metrics, step):
    """Reports a trial's epoch `step` to the oracle (`update_trial`); returns the
    trial's status as the oracle answers it (STOPPED: pruned). A worker's
    `OracleClient.update_trial` drops the chief's answer in multi-worker mode, so
    its stub is called directly."""
    if isinstance(oracle, oracle_client.OracleClient):
        response = client_stub(oracle).UpdateTrial(
            service().UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step),
            wait_for_ready=True, timeout=client_timeout())
        return keras_tuner.engine.trial.Trial.from_proto(response.trial).status
    return oracle.update_trial(trial_id, metrics, step=step).status


def client_timeout():
    return oracle_client.TIMEOUT


def has_chief():
    return dist_utils.has_chief_oracle()


def is_chief():
    return dist_utils.is_chief_oracle()


def chief_may_exit(oracle):
    """Keras Tuner's rule: no trial running and no worker left."""
    return oracle_chief.exit_chief(oracle)


def print_trial_tracebacks(on):
    """Whether Keras Tuner prints the traceback of every trial that raised."""
    kt_config.DEBUG = bool(on)


def run_and_update_trial(tuner, trial, *fit_args):
    """Runs one trial as Keras Tuner's own search loop does, outcome on `trial`."""
    tuner._try_run_and_update_trial(trial, *fit_args)


# -- The oracle's lock -------------------------------------------------------------

# The oracle methods that take its lock (Keras Tuner's entry points, called by the
# chief's servicer and by a tuner in this process).
LOCKED_METHODS = ("create_trial", "update_trial", "end_trial", "get_space", "update_space",
                  "get_trial", "get_best_trials")


def synchronized(func):
    """Keras Tuner's `synchronized` (one call at a time per oracle, re-entrant within a
    thread), releasing the oracle's lock however `func` ends.

    Keras Tuner's own decorator releases the lock only when the call returns: once
    a call raised (the failure limit, a trial ended without its objective), every
    later call of every thread would wait for good. Taken first by the outermost
    call, this lock makes Keras Tuner's inner ones re-entrant, so they never hold it.
    """

    @functools.wraps(func)
    def locked(oracle, *args, **kwargs):
        name = threading.current_thread().name
        outermost = kt_oracle.THREADS[oracle] != name
        if outermost:
            kt_oracle.LOCKS[oracle].acquire()
            kt_oracle.THREADS[oracle] = name
        try:
            return func(oracle, *args, **kwargs)
        finally:
            if outermost:
                kt_oracle.THREADS[oracle] = None
                kt_oracle.LOCKS[oracle].release()

    return locked


def lock_released_on_errors(cls):
    """Class decorator: `cls`'s `LOCKED_METHODS` wrapped in `synchronized`."""
    for method in LOCKED_METHODS:
        inherited = getattr(cls, method)
        setattr(cls, method, synchronized(inherited))
    return cls


def holds_lock(oracle):
    """Whether some thread holds the oracle's lock (for tests and checks)."""
    return kt_oracle.LOCKS[oracle].locked()


# -- Oracle state ----------------------------------------------------------------

def write_state_atomically():
    """Makes Keras Tuner write each state file whole or not at all (temp + rename)."""
    if getattr(kt_utils.save_json, "atomic", False):
        return
    in_place = kt_utils.save_json

    def save_json(path, obj):
        if "://" in str(path):  # A remote file system: Keras Tuner's own way.
            return in_place(path, obj)
        text = json.dumps(obj)
        temporary = f"{path}.tmp-{os.getpid()}"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return text

    save_json.atomic = True
    kt_utils.save_json = save_json


def quiet_condition_protos():
    """Makes `Parent.to_proto` build the same message without printing."""
    if getattr(kt_conditions.Parent.to_proto, "quiet", False):
        return

    def to_proto(self):
        proto, first = protos.get_proto(), self.values[0]
        kind = ("string_value" if isinstance(first, str) else
                "boolean_value" if isinstance(first, bool) else
                "int_value" if isinstance(first, int) else "float_value")
        return proto.Condition(parent=proto.Condition.Parent(
            name=self.name, values=[proto.Value(**{kind: v}) for v in self.values]))

    to_proto.quiet = True
    to_proto.original = kt_conditions.Parent.to_proto
    kt_conditions.Parent.to_proto = to_proto


def set_max_collisions(oracle, count):
    oracle._max_collisions = count


def retry_queue(oracle):
    """The trial ids the oracle hands out again before drawing new ones (a list)."""
    return oracle._retry_queue


def save_trial(oracle, trial):
    oracle._save_trial(trial)
