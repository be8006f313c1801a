"""Where the tracking store is: credentials kept out of the URI, a fail-fast check.

MLflow's own client retries a dead server for minutes and prints URIs with their
passwords; a sweep instead checks the server once before anything is trained, and
never shows a credential.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request

import mlflow

from pipeline.errors import TrackingUnavailable


def secure_tracking_uri(environ=os.environ):
    """Moves credentials out of `MLFLOW_TRACKING_URI` into MLflow's own variables.

    `http://user:password@host` works, but MLflow would print and log that URI
    (run links, request errors). MLflow sends `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD` as basic auth just the same, so the URI is kept
    without them and no message can show them. Processes started later inherit
    the cleaned environment. MLflow's run links are not printed either: the
    progress lines say which run is which.
    """
    environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not (parts.username or parts.password):
        return
    environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username or ""))
    environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password or ""))
    environ["MLFLOW_TRACKING_URI"] = urllib.parse.urlunsplit(
        parts._replace(netloc=_host_and_port(parts)))


def redact(uri):
    """A URI fit to print: any user and password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + _host_and_port(parts)))


def _host_and_port(parts):
    """A URI's host and port as written (an IPv6 host keeps its brackets)."""
    return parts.netloc.rpartition("@")[2]


def check_reachable(seconds=15):
    """Fails fast if the tracking store is a server that does not answer.

    Raises:
        TrackingUnavailable: if `/health` does not answer within `seconds`.
    """
    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError as e:
            error = getattr(e, "reason", e)
            if time.monotonic() > deadline:
                raise TrackingUnavailable(
                    f"cannot reach the MLflow tracking server at {redact(uri)} ({error}) "
                    f"after {seconds} s; start it, or point MLFLOW_TRACKING_URI at one "
                    "that runs (unset, ./mlflow.db is used)") from None
        time.sleep(2)


def retry(call, attempts=4, delay=1.0):
    """Calls `call`, retrying with a doubling delay if the store is busy or away."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2 ** attempt)
