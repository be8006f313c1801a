"""The tracking URI: credentials out of it, redaction, the fail-fast check, retries."""

import http.server
import json
import threading
import time

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED
from servers import free_port

from pipeline.errors import TrackingUnavailable
from pipeline.tracking import server as server_module
from pipeline.tracking.server import check_reachable, redact, retry, secure_tracking_uri

USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
URI = "MLFLOW_TRACKING_URI"


def closed_port():
    """A port on 127.0.0.1 that nothing listens on."""
    return free_port()


@pytest.fixture
def health_server():
    """A real HTTP server on 127.0.0.1 whose /health answers with `status_code`."""

    class Health(http.server.BaseHTTPRequestHandler):
        status_code = 200
        api_status = 200  # Of MLflow's REST API: 401 when credentials are refused.
        paths = []

        def do_GET(self):  # noqa: N802 - the name http.server calls
            Health.paths.append(self.path.split("?")[0])
            if self.path == "/health":
                self.send_response(Health.status_code)
                self.end_headers()
                self.wfile.write(b"OK")
                return
            self.send_response(Health.api_status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            body = ({"experiments": []} if Health.api_status == 200 else
                    {"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."})
            self.wfile.write(json.dumps(body).encode())

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    server.handler = Health
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -- secure_tracking_uri ------------------------------------------------------

def test_credentials_move_out_of_an_http_uri_url_decoded():
    environ = {URI: "https://al%40ice:p%3As%2Fs@mlflow.example.com:8443/base?x=1"}
    secure_tracking_uri(environ)
    assert environ[USERNAME] == "al@ice"
    assert environ[PASSWORD] == "p:s/s"
    assert environ[URI] == "https://mlflow.example.com:8443/base?x=1"
    assert environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_credentials_move_out_of_a_uri_without_a_port():
    environ = {URI: "http://bob:pw@tracking.internal/"}
    secure_tracking_uri(environ)
    assert (environ[URI], environ[USERNAME], environ[PASSWORD]) == (
        "http://tracking.internal/", "bob", "pw")


def test_credentials_already_set_are_kept_but_the_uri_is_still_cleaned():
    environ = {URI: "http://bob:from-uri@host:5000", USERNAME: "alice", PASSWORD: "from-env"}
    secure_tracking_uri(environ)
    assert environ[USERNAME] == "alice"
    assert environ[PASSWORD] == "from-env"
    assert environ[URI] == "http://host:5000"


@pytest.mark.parametrize("uri", [
    "sqlite:///tmp/mlflow.db",
    "file:///tmp/mlruns",
    "postgresql://user:secret@db:5432/mlflow",  # not a tracking server: no basic auth
    "http://host:5000",
    "",
])
def test_uris_without_http_credentials_are_left_alone(uri):
    environ = {URI: uri} if uri else {}
    secure_tracking_uri(environ)
    assert environ.get(URI, "") == uri
    assert USERNAME not in environ and PASSWORD not in environ


def test_suppressing_printed_urls_respects_an_explicit_setting():
    environ = {URI: "sqlite:///x.db", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "false"}
    secure_tracking_uri(environ)
    assert environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "false"


def test_credentials_move_out_of_an_ipv6_uri():
    environ = {URI: "http://bob:pw@[::1]:5000/"}
    secure_tracking_uri(environ)
    assert environ[URI] == "http://[::1]:5000/"
    assert redact("http://bob:pw@[::1]:5000/x") == "http://***@[::1]:5000/x"


# -- redact -------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "shown"), [
    ("https://alice:s3cret@host:8443/base", "https://***@host:8443/base"),
    ("http://alice@host/", "http://***@host/"),
    ("http://:s3cret@host", "http://***@host"),
    ("http://host:5000", "http://host:5000"),
    ("sqlite:///tmp/mlflow.db", "sqlite:///tmp/mlflow.db"),
])
def test_redact(uri, shown):
    assert redact(uri) == shown
    assert "s3cret" not in redact(uri) and "alice" not in redact(uri)


# -- check_reachable ----------------------------------------------------------

def test_check_reachable_returns_at_once_for_the_sqlite_store(workdir):
    assert mlflow.get_tracking_uri().startswith("sqlite:")
    start = time.monotonic()
    check_reachable(seconds=30)
    assert time.monotonic() - start < 1
    assert not (workdir / "mlflow.db").exists()  # not even opened


def test_check_reachable_returns_when_health_and_an_authenticated_call_answer(
        health_server):
    mlflow.set_tracking_uri(health_server.url + "/")
    check_reachable(seconds=0)
    assert health_server.handler.paths == ["/health", "/api/2.0/mlflow/experiments/search"]


def test_check_reachable_raises_when_the_credentials_are_refused(health_server, monkeypatch):
    health_server.handler.api_status = 401
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    mlflow.set_tracking_uri(health_server.url)
    with pytest.raises(TrackingUnavailable, match="refused a request .* check "
                                                  "MLFLOW_TRACKING_USERNAME") as error:
        check_reachable(seconds=0)
    assert "s3cret" not in str(error.value) and "\n" not in str(error.value)


def test_check_reachable_raises_when_health_is_not_ok(health_server):
    health_server.handler.status_code = 503
    mlflow.set_tracking_uri(health_server.url)
    with pytest.raises(TrackingUnavailable, match="Service Unavailable"):
        check_reachable(seconds=0)


def test_check_reachable_raises_for_a_closed_port_without_showing_the_password():
    port = closed_port()
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.raises(TrackingUnavailable) as error:
            check_reachable(seconds=0)
    finally:
        mlflow.set_tracking_uri(previous)
    message = str(error.value)
    assert redact(uri) in message
    assert "s3cret" not in message and "alice" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert error.value.exit_code == 1


def test_check_reachable_names_the_uri_of_a_closed_port():
    uri = f"http://127.0.0.1:{closed_port()}"
    mlflow.set_tracking_uri(uri)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="Connection refused") as error:
        check_reachable(seconds=0)
    assert time.monotonic() - start < 2  # no retry once `seconds` have passed
    assert uri in str(error.value)


# -- retry --------------------------------------------------------------------

def flaky(failures, result="done"):
    """A call that raises `failures` times, then returns `result`."""
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError(f"busy {len(calls)}")
        return result

    return call, calls


def test_retry_returns_after_transient_failures():
    call, calls = flaky(3)
    assert retry(call, seconds=5, delay=0) == "done"
    assert len(calls) == 4


def test_retry_reraises_the_last_error_once_its_time_is_up():
    call, calls = flaky(10**6)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="busy"):
        retry(call, seconds=0.5, delay=0.1)
    assert 0.3 < time.monotonic() - start < 1.5  # Bounded in time, not in attempts.
    assert 2 <= len(calls) <= 6  # Delays of 0.1, 0.2, 0.4 s...


def test_retry_raises_at_once_what_no_retry_can_fix():
    calls = []

    def refused():
        calls.append(1)
        raise MlflowException("no", error_code=PERMISSION_DENIED)

    with pytest.raises(MlflowException):
        retry(refused, seconds=60, delay=0)
    assert len(calls) == 1


def test_retry_calls_once_when_the_call_succeeds():
    call, calls = flaky(0, result=None)
    assert retry(call, seconds=5, delay=0) is None
    assert len(calls) == 1


def test_retry_gives_up_soon_once_the_process_is_stopping(monkeypatch):
    monkeypatch.setattr(server_module, "STOP_RETRY_SECONDS", 0.3)
    monkeypatch.setattr(server_module, "_stopping_at", None)
    call, calls = flaky(10**6)
    server_module.stop_retrying()  # SIGTERM arrived: 0.3 s more, not 120.
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        retry(call, seconds=120, delay=0.05)
    assert time.monotonic() - start < 1.5


def test_once_stopping_every_call_together_ends_within_the_stop_budget(monkeypatch):
    # A store that hangs: each call would wait far longer than the grace period.
    monkeypatch.setattr(server_module, "STOP_CALLS_SECONDS", 1.0)
    monkeypatch.setattr(server_module, "_stopping_at", None)
    hung = threading.Event()
    server_module.stop_retrying()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="stopping"):
        retry(lambda: hung.wait(60), seconds=120, delay=0.05)
    server_module.stop_retrying()  # The interrupt reaches the sweep's outer frames:
    for _ in range(2):  # the budget still counts from the signal: none is left.
        with pytest.raises(TrackingUnavailable, match="stopping"):
            retry(lambda: hung.wait(60), seconds=120, delay=0.05)
    assert time.monotonic() - start < 2.0
    assert [t for t in threading.enumerate() if t.name == "store-call"][0].daemon
    hung.set()


def test_each_mlflow_call_is_bounded_unless_the_user_chose_otherwise(monkeypatch):
    import mlflow.environment_variables as variables

    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    server_module.bound_requests(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # The user's own setting wins.
    environ = {}
    server_module.bound_requests(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    read = {name: getattr(variables, name).get() for name in environ}  # MLflow parses them.
    attempts = read["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] + 1
    # One call, all attempts and back-off included, within a SIGTERM's 10 s of retrying
    # plus this, under a scheduler's 30 s grace period.
    worst = attempts * read["MLFLOW_HTTP_REQUEST_TIMEOUT"] + read[
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] * 2 ** attempts + read[
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] * attempts
    assert server_module.STOP_RETRY_SECONDS + worst < 30
