"""The local trace and feedback store: a DuckDB file in the data dir.

Every answer and every feedback event is written here first, so nothing is lost while
Langfuse is down or not configured (like a local WAL before replication); the forwarder
then sends pending rows to Langfuse and marks them. The analytics models (dbt on DuckDB)
and the feedback sensor read these tables directly: columns are flat, lists are JSON.

DuckDB lets one process at a time open a file for writing, and the chat app, `cia ask` and
Dagster runs all write: each operation opens, writes and closes, retrying briefly while
another process holds the file.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

SCHEMA_VERSION = 1
LOCK_WAIT_S = 10.0
# A row Langfuse refused this many times stays in the store but is no longer retried.
MAX_FORWARD_ATTEMPTS = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS traces (
    trace_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    interface VARCHAR NOT NULL,
    token_name VARCHAR,
    question VARCHAR NOT NULL,
    repos JSON,
    answer VARCHAR,
    not_found BOOLEAN NOT NULL,
    model VARCHAR,
    endpoint VARCHAR,
    prompt_name VARCHAR,
    prompt_version VARCHAR,
    hits JSON,
    citations JSON,
    invalid_citations JSON,
    retrieval_ms DOUBLE,
    generation_ms DOUBLE,
    first_token_ms DOUBLE,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    error VARCHAR,
    forwarded_at TIMESTAMPTZ,
    forward_attempts INTEGER NOT NULL DEFAULT 0,
    forward_error VARCHAR
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id VARCHAR PRIMARY KEY,
    trace_id VARCHAR NOT NULL,
    value INTEGER NOT NULL,
    comment VARCHAR,
    source VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    forwarded_at TIMESTAMPTZ,
    forward_attempts INTEGER NOT NULL DEFAULT 0,
    forward_error VARCHAR
);
"""
_JSON_COLUMNS = ("repos", "hits", "citations", "invalid_citations")
# DuckDB refuses to open one file twice in a process ("already attached"): operations of
# one process on one file take turns (other processes are waited for by retrying).
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


class UnknownTrace(KeyError):
    """Feedback names a trace id the store does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown trace"


class TraceStoreBusy(RuntimeError):
    """Another process held the store for longer than LOCK_WAIT_S."""


def new_trace_id() -> str:
    """32 lowercase hex digits: a valid OpenTelemetry / Langfuse trace id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TraceRecord:
    trace_id: str
    created_at: datetime
    interface: str  # cli | http | openai | mcp | check
    token_name: str | None
    question: str
    repos: list[str]
    answer: str
    not_found: bool
    model: str
    endpoint: str
    prompt_name: str
    prompt_version: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)
    invalid_citations: list[str] = field(default_factory=list)
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    feedback_id: str
    trace_id: str
    value: int
    comment: str | None
    source: str
    created_at: datetime


def parse_feedback_value(value: int | str) -> int:
    mapping: dict[int | str, int] = {"up": 1, "down": -1, 1: 1, -1: -1, "1": 1, "-1": -1}
    if value not in mapping:
        raise ValueError(f"feedback value must be up, down, 1 or -1; got {value!r}")
    return mapping[value]


class TraceStore:
    """Traces and feedback in one DuckDB file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with _file_lock(self.path), self._open() as connection:
            yield connection

    @contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                connection = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise TraceStoreBusy(f"{self.path}: could not open the trace store: {error}") from error
                time.sleep(0.05)
        try:
            if not self._ready:
                connection.execute(_SCHEMA)
                if connection.execute("SELECT count(*) FROM schema_version").fetchone() == (0,):
                    connection.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
                self._ready = True
            yield connection
        finally:
            connection.close()

    def _ensure_parent(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- writing ----------------------------------------------------------------------------

    def add_trace(self, trace: TraceRecord) -> None:
        self._ensure_parent()
        row = asdict(trace)
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column])
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._connect() as connection:
            connection.execute(f"INSERT INTO traces ({columns}) VALUES ({marks})", list(row.values()))

    def add_feedback(
        self, trace_id: str, value: int | str, comment: str | None = None, source: str = "http"
    ) -> FeedbackRecord:
        score = parse_feedback_value(value)
        record = FeedbackRecord(
            feedback_id=uuid.uuid4().hex,
            trace_id=trace_id,
            value=score,
            comment=comment,
            source=source,
            created_at=datetime.now(UTC),
        )
        self._ensure_parent()
        with self._connect() as connection:
            known = connection.execute("SELECT 1 FROM traces WHERE trace_id = ?", [trace_id]).fetchone()
            if known is None:
                raise UnknownTrace(f"unknown trace id {trace_id!r}")
            connection.execute(
                "INSERT INTO feedback (feedback_id, trace_id, value, comment, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [record.feedback_id, trace_id, score, comment, source, record.created_at],
            )
        return record

    # -- reading ----------------------------------------------------------------------------

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        with self._connect() as connection:
            rows = _dicts(connection.execute("SELECT * FROM traces WHERE trace_id = ?", [trace_id]))
        return rows[0] if rows else None

    def feedback_for(self, trace_id: str) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self._connect() as connection:
            return _dicts(
                connection.execute(
                    "SELECT * FROM feedback WHERE trace_id = ? ORDER BY created_at", [trace_id]
                )
            )

    def stats(self) -> dict[str, int]:
        if not self.path.exists():
            return {"traces": 0, "feedback": 0, "pending_traces": 0, "pending_feedback": 0}
        with self._connect() as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM feedback), "
                "(SELECT count(*) FROM traces WHERE forwarded_at IS NULL), "
                "(SELECT count(*) FROM feedback WHERE forwarded_at IS NULL)"
            ).fetchone()
        assert row is not None
        return dict(
            zip(("traces", "feedback", "pending_traces", "pending_feedback"), map(int, row), strict=True)
        )

    # -- forwarding state ---------------------------------------------------------------------

    def pending(self, limit: int = 100) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Traces and feedback not yet accepted by Langfuse, oldest first."""
        if not self.path.exists():
            return [], []
        with self._connect() as connection:
            traces = _dicts(
                connection.execute(
                    "SELECT * FROM traces WHERE forwarded_at IS NULL AND forward_attempts < ? "
                    "ORDER BY created_at LIMIT ?",
                    [MAX_FORWARD_ATTEMPTS, limit],
                )
            )
            feedback = _dicts(
                connection.execute(
                    "SELECT * FROM feedback WHERE forwarded_at IS NULL AND forward_attempts < ? "
                    "ORDER BY created_at LIMIT ?",
                    [MAX_FORWARD_ATTEMPTS, limit],
                )
            )
        return traces, feedback

    def mark_forwarded(self, trace_ids: list[str], feedback_ids: list[str]) -> None:
        now = datetime.now(UTC)
        with self._connect() as connection:
            for table, key, ids in (
                ("traces", "trace_id", trace_ids),
                ("feedback", "feedback_id", feedback_ids),
            ):
                if ids:
                    marks = ", ".join("?" for _ in ids)
                    connection.execute(
                        f"UPDATE {table} SET forwarded_at = ?, forward_error = NULL, "
                        f"forward_attempts = forward_attempts + 1 WHERE {key} IN ({marks})",
                        [now, *ids],
                    )

    def mark_failed(self, trace_ids: list[str], feedback_ids: list[str], error: str) -> None:
        with self._connect() as connection:
            for table, key, ids in (
                ("traces", "trace_id", trace_ids),
                ("feedback", "feedback_id", feedback_ids),
            ):
                if ids:
                    connection.execute(
                        f"UPDATE {table} SET forward_error = ?, forward_attempts = forward_attempts + 1 "
                        f"WHERE {key} IN ({', '.join('?' for _ in ids)})",
                        [error[:2000], *ids],
                    )


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or []]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        for column in _JSON_COLUMNS:
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
    return rows
