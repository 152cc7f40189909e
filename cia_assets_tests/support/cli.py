"""The `cia` console script of this virtualenv, run as people and our scripts run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CIA = str(Path(sys.executable).with_name("cia"))


def cia(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CIA_CONFIG",)}
    return subprocess.run([CIA, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


# What `cia ask --json` prints for an answer: the API's `final` event and MCP's `ask_codebase`
# (which adds its `sources`) carry the same fields.
ANSWER_JSON_KEYS = frozenset(
    {"answer", "citations", "model", "trace_id", "not_found", "not_found_reason", "ungrounded"}
)
