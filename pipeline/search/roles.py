"""Which part a process plays in a distributed sweep, and the ids workers may have.

Light on purpose (no gRPC, no Keras Tuner), so the command line checks a role and a
worker's id before anything heavy is imported. Keras Tuner reads three variables:
`KERASTUNER_TUNER_ID` ("chief" or a worker's id), `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT`; `--role`, `--oracle` and `--worker-id` set them, and a
scheduler that sets them itself gets the same checks (`from_environment`).
"""

from __future__ import annotations

import os
import re

from pipeline.errors import BadWorkerId, InputError

ENV_ID = "KERASTUNER_TUNER_ID"
ENV_IP = "KERASTUNER_ORACLE_IP"
ENV_PORT = "KERASTUNER_ORACLE_PORT"
# A worker's id (by default worker-<host>-<pid>): its packs ask under `<id>/<n>`, so
# no "/" (nor anything a log or a tag could mangle); "chief" is Keras Tuner's name for
# the chief itself.
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED_IDS = ("chief",)


def check_worker_id(worker_id, source=BadWorkerId.param):
    """Raises `BadWorkerId` (naming `source`) unless `worker_id` can be a worker's id."""
    if not WORKER_ID.fullmatch(worker_id) or worker_id in RESERVED_IDS:
        error = BadWorkerId(f"{worker_id!r} cannot be a worker's id: use 1-128 letters, "
                            "digits, '.', '_' or '-', starting with a letter or digit "
                            f"(not {', '.join(RESERVED_IDS)})")
        error.param = source
        raise error


def from_environment(environ=os.environ):
    """(role, oracle address, worker id) from Keras Tuner's own variables, when a
    scheduler set them instead of passing `--role`; None when they are unset.

    Raises:
        InputError: some of the three variables are set and some are not.
    """
    values = {name: environ.get(name) for name in (ENV_ID, ENV_IP, ENV_PORT)}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        error = InputError(f"Keras Tuner's distributed mode needs {ENV_ID}, {ENV_IP} and "
                           f"{ENV_PORT} together ({', '.join(missing)} unset), or use "
                           "--role and --oracle")
        error.param = missing[0]
        raise error
    tuner = values[ENV_ID]
    host = values[ENV_IP]
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return ("chief" if tuner == "chief" else "worker", f"{host}:{values[ENV_PORT]}",
            None if tuner == "chief" else tuner)
