"""The oracle's shared token: every gRPC call between chief and workers carries it.

Keras Tuner's oracle server trusts whoever reaches its port: a stranger could claim
trials, report a fake best trial, or end the sweep. Here every call carries gRPC
metadata `authorization: Bearer <token>`, and the chief answers a call without the
right token `UNAUTHENTICATED` before it reaches the oracle.

The token comes from `MNIST_SWEEPS_ORACLE_TOKEN`, or from a file named by
`--oracle-token-file` (or `MNIST_SWEEPS_ORACLE_TOKEN_FILE`); it never appears on a
command line or in a log. `--workers N` makes a random one for its processes.

TLS is optional: a chief given `MNIST_SWEEPS_ORACLE_TLS_CERT` and `..._TLS_KEY` (PEM
files) serves over TLS, and workers given `MNIST_SWEEPS_ORACLE_TLS_CA` (the PEM that
signed the chief's certificate) verify it, so neither the token nor the trials cross
the network in the clear.
"""

from __future__ import annotations

import collections
import hmac
import os
import secrets
from pathlib import Path

import grpc

from pipeline.errors import BadToken, InputError, TokenMissing

ENV_TOKEN = "MNIST_SWEEPS_ORACLE_TOKEN"
ENV_TOKEN_FILE = "MNIST_SWEEPS_ORACLE_TOKEN_FILE"
TOKEN_KEY = "authorization"
WORKER_KEY = "tuner-id"  # The calling worker's id, for requests that do not carry it.
MIN_TOKEN_LENGTH = 16
ENV_TLS_CERT = "MNIST_SWEEPS_ORACLE_TLS_CERT"
ENV_TLS_KEY = "MNIST_SWEEPS_ORACLE_TLS_KEY"
ENV_TLS_CA = "MNIST_SWEEPS_ORACLE_TLS_CA"


def new_token():
    return secrets.token_urlsafe(32)


def load_token(token_file=None, environ=os.environ):
    """The token from `token_file`, else `$MNIST_SWEEPS_ORACLE_TOKEN` (None if neither).

    Raises:
        InputError: the file cannot be read, or the token is too short to guess-proof.
    """
    token, source = environ.get(ENV_TOKEN), ENV_TOKEN
    if token_file:
        source = BadToken.param
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise BadToken(f"cannot read {token_file}: "
                           f"{getattr(e, 'strerror', None) or 'not UTF-8 text'}") from None
    if token is None:
        return None
    if len(token.strip()) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token.strip()):
        error = BadToken(f"the oracle token must be at least {MIN_TOKEN_LENGTH} characters "
                         "with no spaces (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
        error.param = source
        raise error
    return token.strip()


def require(token, role):
    if not token:
        raise TokenMissing(
            f"--role {role} needs the oracle's shared token: set it or pass "
            f"--oracle-token-file (every chief and worker of the sweep uses the same one)")
    return token


def _pem(variable, environ):
    path = environ.get(variable)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        error = InputError(f"cannot read {path}: {e.strerror}")
        error.param = variable
        raise error from None


def server_credentials(environ=os.environ):
    """The chief's TLS credentials, or None to serve without TLS."""
    cert, key = _pem(ENV_TLS_CERT, environ), _pem(ENV_TLS_KEY, environ)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        error = InputError(f"TLS needs both {ENV_TLS_CERT} and {ENV_TLS_KEY}")
        error.param = ENV_TLS_CERT if cert is None else ENV_TLS_KEY
        raise error
    return grpc.ssl_server_credentials([(key, cert)])


def check_tls(role, environ=os.environ):
    """Reads this role's TLS files now, so a bad path stops before anything is written."""
    if role == "chief":
        server_credentials(environ)
    else:
        _pem(ENV_TLS_CA, environ)


# -- the chief -------------------------------------------------------------------

def _refuse(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong oracle token")


class TokenCheck(grpc.ServerInterceptor):
    """Answers `UNAUTHENTICATED` to any call without `authorization: Bearer <token>`."""

    def __init__(self, token):
        self._expected = f"Bearer {token}".encode()
        self._refusal = grpc.unary_unary_rpc_method_handler(_refuse)

    def intercept_service(self, continuation, handler_call_details):
        sent = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_KEY, "")
        if isinstance(sent, str):
            sent = sent.encode()
        if hmac.compare_digest(sent, self._expected):
            return continuation(handler_call_details)
        return self._refusal


def caller(context):
    """The calling worker's id, as its client sent it (None if absent)."""
    return dict(context.invocation_metadata()).get(WORKER_KEY)


# -- a worker --------------------------------------------------------------------

class _Credentials(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token, worker_id):
        self._metadata = ((TOKEN_KEY, f"Bearer {token}"), (WORKER_KEY, worker_id))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        d = client_call_details
        details = CallDetails(d.method, d.timeout, tuple(d.metadata or ()) + self._metadata,
                               d.credentials, d.wait_for_ready, d.compression)
        return continuation(details, request)


class CallDetails(collections.namedtuple("CallDetails", (
        "method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    """A call's details with the credentials' metadata added."""


# gRPC waits up to 120 s between attempts to reach a chief that went away, longer
# than the chief's worker timeout: a worker would come back after the restarted chief
# had given its trial away. Retry every second, at most 5 s apart.
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 1000),
                     ("grpc.min_reconnect_backoff_ms", 1000),
                     ("grpc.max_reconnect_backoff_ms", 5000))


def channel(address, token, worker_id, environ=os.environ, interceptors=()):
    """A channel to the chief whose every call carries the token and the worker's id
    (over TLS, verified against `MNIST_SWEEPS_ORACLE_TLS_CA`, when that is set), then
    goes through `interceptors`."""
    ca = _pem(ENV_TLS_CA, environ)
    base = (grpc.secure_channel(address, grpc.ssl_channel_credentials(ca),
                                options=RECONNECT_OPTIONS) if ca
            else grpc.insecure_channel(address, options=RECONNECT_OPTIONS))
    return grpc.intercept_channel(base, *interceptors, _Credentials(token, worker_id))
