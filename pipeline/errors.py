"""One root error for everything a user can cause or fix, carrying its exit status.

Code below the command line raises these; `cli.py` catches `PipelineError` once
and prints its message as one line, exiting with `exit_code`. Anything else that
escapes is a bug and keeps its traceback.

    exit 2  bad input (a spec, the data, an option): nothing was written
    exit 1  the sweep could not go on (tracking store away, too many failures, ...)
    exit 143  SIGTERM: runs were closed KILLED; the same command resumes
"""

from __future__ import annotations

import errno
import signal


class PipelineError(Exception):
    """An error the user can act on; the message is one line that says how."""

    exit_code = 1


class InputError(PipelineError, ValueError):
    """Bad input, caught before anything is written.

    Attributes:
        param: the option or argument the input came from (e.g. `'--data'`), if any.
    """

    exit_code = 2
    param = None


class SpecError(InputError):
    """A sweep spec that cannot be used, with the field and what is allowed."""

    param = "SPEC"


class DataError(InputError):
    """MNIST could not be loaded; the message says why and how to fix it."""

    param = "'--data'"


class TokenMissing(InputError):
    """A chief or worker was started without the oracle's token."""

    param = "MNIST_SWEEPS_ORACLE_TOKEN"


class BadToken(InputError):
    """The oracle's token (or its file) cannot be used."""

    param = "'--oracle-token-file'"


class BadWorkerId(InputError):
    """A worker id the chief could not tell apart from another worker or its own keys."""

    param = "'--worker-id'"


class BadTrackingUri(InputError):
    """`MLFLOW_TRACKING_URI` is not a URI a tracking server can have."""

    param = "MLFLOW_TRACKING_URI"


class TrackingUnavailable(PipelineError):
    """The tracking server does not answer; the message says where and what to do."""


class ParentNotFound(PipelineError):
    """A worker found no running parent run of its sweep (is the chief running?)."""


class LoggingFailed(PipelineError):
    """A trial's run could not be written whole to MLflow."""


class SweepStopped(PipelineError):
    """The sweep cannot go on: too many failed trials, or trials that were not logged."""


class SweepBusy(PipelineError):
    """Another process is running this sweep from the same state directory."""


class StateDamaged(PipelineError):
    """A sweep's state file is damaged; the message names it and the ways on."""


class DiskFull(PipelineError):
    """A write found no space left; the sweep stops, and the same command resumes it."""


def disk_full(error):
    """Whether `error`, or an error it came from, is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or (
                "database or disk is full" in str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


class NoSweep(PipelineError):
    """No sweep (of the spec asked for) in the experiment yet."""


class UiFailed(PipelineError):
    """`mlflow ui` exited or never answered."""


class OracleLost(PipelineError):
    """A worker lost its connection to the chief's oracle."""


class Superseded(Exception):
    """A worker's trial run that another worker's run of the same trial replaces (its
    trial was re-issued while this worker was taken for lost). Not a user error: the
    reason a run ends KILLED."""


class Interrupted(BaseException):
    """SIGTERM arrived (a scheduler pre-empting the job): stop after cleaning up.

    A `BaseException`, so that no `except Exception` on the way (Keras Tuner's
    trial loop, a logging retry) mistakes it for a failed trial.
    """

    exit_code = 128 + signal.SIGTERM
