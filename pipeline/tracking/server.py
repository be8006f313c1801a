"""Where the tracking store is: credentials kept out of the URI, a fail-fast check.

MLflow's own client retries a dead server for minutes and prints URIs with their
passwords; a sweep instead checks the URI's syntax at start, the server once before
anything is trained, and never shows a credential. MLflow itself is imported only
for the reachability check, so that bad input stops without its import time.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
import urllib.request

from pipeline.errors import BadTrackingUri, TrackingUnavailable, disk_full

HTTP = ("http", "https")


def secure_tracking_uri(environ=os.environ):
    """Moves credentials out of `MLFLOW_TRACKING_URI` into MLflow's own variables.

    `http://user:password@host` works, but MLflow would print and log that URI
    (run links, request errors). MLflow sends `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD` as basic auth just the same, so the URI is kept
    without them and no message can show them. Processes started later inherit
    the cleaned environment. MLflow's run links are not printed either: the
    progress lines say which run is which.

    Raises:
        BadTrackingUri: an http(s) URI whose host or port cannot be right.
    """
    environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    parts = check_uri(environ.get("MLFLOW_TRACKING_URI", ""))
    if parts is None or not (parts.username or parts.password):
        return
    environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username or ""))
    environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password or ""))
    environ["MLFLOW_TRACKING_URI"] = urllib.parse.urlunsplit(
        parts._replace(netloc=_host_and_port(parts)))


def check_uri(uri):
    """Splits an http(s) tracking URI, checking its host and port; None for others.

    The message names the problem but shows no part of the URI, which may hold a
    password (even where it is malformed, the password may be what broke it).

    Raises:
        BadTrackingUri: unbalanced IPv6 brackets, no host, a port not in 1..65535.
    """
    scheme = uri.partition(":")[0].lower()
    if scheme not in HTTP:
        return None
    expected = f"expected {scheme}://HOST[:PORT][/PATH], an IPv6 HOST in brackets ([::1])"
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        raise BadTrackingUri(f"the host is not a valid address; {expected}") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # None: no port, the scheme's default.
        raise BadTrackingUri(f"the port must be a number from 1 to 65535; {expected}")
    if not parts.hostname:
        raise BadTrackingUri(f"no host; {expected}")
    return parts


def redact(uri):
    """A URI fit to print: any user and password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + _host_and_port(parts)))


def _host_and_port(parts):
    """A URI's host and port as written (an IPv6 host keeps its brackets)."""
    return parts.netloc.rpartition("@")[2]


# MLflow's own HTTP client tries a request 8 times, waiting up to 120 s for each
# answer and backing off between them: one call to a server that hangs could outlast
# our retry window many times over, and a scheduler's grace period after SIGTERM.
# Here a call tries twice, 5 s each; `retry` below does the patient retrying.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def bound_requests(environ=os.environ):
    """Bounds each of MLflow's HTTP calls (`HTTP_LIMITS`), unless the user set them."""
    for name, value in HTTP_LIMITS.items():
        environ.setdefault(name, value)


# A write still failing after this long fails its trial (which then runs again).
RETRY_SECONDS = 120.0
MAX_RETRY_DELAY = 15.0
STOP_CALLS_SECONDS = 15.0  # After SIGTERM, every call to the store ends within this.
STOP_RETRY_SECONDS = 10.0
_stopping_at = None
_waiting = contextlib.nullcontext  # What each call runs in (`wait_interruptibly`).
# MLflow error codes that no retry can fix.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"}


def check_reachable(seconds=15):
    """Fails fast if the tracking store is a server that does not answer.

    Raises:
        TrackingUnavailable: if `/health` does not answer within `seconds`, or the
            server refuses an authenticated call (wrong or missing credentials).
    """
    import mlflow  # Seconds to import: only once the input has been checked.

    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlsplit(uri).scheme not in HTTP:
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as reply:
                if reply.status == 200:
                    return _check_credentials(uri)
        except OSError as e:
            error = getattr(e, "reason", e)
            if time.monotonic() > deadline:
                raise TrackingUnavailable(
                    f"cannot reach the MLflow tracking server at {redact(uri)} ({error}) "
                    f"after {seconds} s; start it, or point MLFLOW_TRACKING_URI at one "
                    "that runs (unset, ./mlflow.db is used)") from None
        time.sleep(2)


def _check_credentials(uri):
    """One authenticated call: `/health` answers anyone, so it proves nothing about the
    credentials every write of the sweep will need."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().search_experiments(max_results=1)
    except MlflowException as e:
        raise TrackingUnavailable(
            f"the MLflow tracking server at {redact(uri)} refused a request "
            f"({e.error_code}): check MLFLOW_TRACKING_USERNAME/PASSWORD or "
            "MLFLOW_TRACKING_TOKEN (or the user:password in the URI)") from None


def stop_retrying():
    """From now on, writes retry for `STOP_RETRY_SECONDS` at most (a SIGTERM must end
    the process within its grace period, whatever the store does). The budget counts
    from the first signal: a later call (the interrupt reaching the sweep's outer
    frames, a second signal) does not restart it."""
    global _stopping_at
    if _stopping_at is None:
        _stopping_at = time.monotonic()


def within_stop_budget(call):
    """Runs `call`; once stopping, only within what is left of `STOP_CALLS_SECONDS`
    after the SIGTERM, all calls together: a call still waiting on the store then is
    left to a daemon thread (which cannot hold the process up) and this raises.

    Raises:
        TrackingUnavailable: stopping, and the budget is spent.
    """
    if _stopping_at is None:
        return call()
    left = _stopping_at + STOP_CALLS_SECONDS - time.monotonic()
    if left <= 0:
        raise TrackingUnavailable("stopping: no further call to the tracking server")
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below.
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="store-call")
    thread.start()
    thread.join(left)
    if thread.is_alive():
        raise TrackingUnavailable(f"stopping: the tracking server did not answer within "
                                  f"{STOP_CALLS_SECONDS:.0f} s of the signal")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def wait_interruptibly(context):
    """Runs each call to the store, and each pause between retries, in `context()`:
    the sweep passes `interrupts.interruptible`, so that a SIGTERM cuts short a wait
    on a server that hangs."""
    global _waiting
    _waiting = context



def retry(call, seconds=RETRY_SECONDS, delay=0.5):
    """Calls `call`, retrying while the store is busy or away, for up to `seconds`.

    The delay doubles from `delay` up to `MAX_RETRY_DELAY`. An error that retrying
    cannot fix (a refused credential, a conflicting value) is raised at once; any
    other is raised once `seconds` have passed, and the trial it was writing ends
    FAILED and is run again.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            with _waiting():
                return within_stop_budget(call)
        except TrackingUnavailable:
            raise
        except Exception as e:
            if _stopping_at is not None:  # Shutting down: retry only briefly.
                deadline = min(deadline, _stopping_at + STOP_RETRY_SECONDS)
            if getattr(e, "error_code", None) in PERMANENT or disk_full(e) or (
                    time.monotonic() + delay > deadline):
                raise
            with _waiting():
                time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
