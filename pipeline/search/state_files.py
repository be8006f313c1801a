"""A sweep's state files (Keras Tuner's and ours): written whole, and checked on resume.

Keras Tuner writes its JSON state in place, so a crash or a full disk mid-write
leaves a truncated `oracle.json` or an empty `trial.json`, and the next run dies in
a traceback. Here every state file is written to a temporary file and renamed
(`internals.write_state_atomically`), and a resumed sweep checks its files first:
a damaged one stops the sweep with one line naming the file and the ways on.
Our own parent-run file is rebuilt from MLflow instead (`runs.existing_parent`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import StateDamaged
from pipeline.tracking import names


def check(project_dir):
    """Raises `StateDamaged` naming the first state file that is not whole JSON."""
    for path in sorted(Path(project_dir).rglob("*.json")):
        if path.name == names.PARENT_FILE:
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            what = "empty" if path.stat().st_size == 0 else f"not whole JSON ({_brief(e)})"
            raise StateDamaged(
                f"{path} is damaged ({what}); the finished trials are safe in MLflow: "
                "restore the file, or run again with --overwrite to start this sweep's "
                "search state afresh (its finished trial runs stay in MLflow)") from None


def _brief(error):
    return str(error).split(":")[0] if isinstance(error, ValueError) else type(error).__name__
