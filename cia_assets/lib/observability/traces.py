"""The local trace and feedback store: a DuckDB file in the data dir (`DataLayout.traces`).

Every answer and every feedback event is written here first, so nothing is lost while
Langfuse is down or not configured (like a local write-ahead log before replication); the
forwarder (`observability.langfuse.LangfuseForwarder`) then sends pending rows and marks them. The
analytics models (dbt on DuckDB) and the feedback sensor read these tables:

- `traces`: one row per question. Scalars are plain columns; the list columns `repos`,
  `hits`, `citations` and `invalid_citations` are DuckDB `JSON`, read in SQL as
  `repos::VARCHAR[]`, `hits->>'$[0].path'` or, one row per hit,
  `unnest(from_json(hits, '[{"repo": "VARCHAR", "path": "VARCHAR", "line_start": "INTEGER",
  "line_end": "INTEGER", "symbol": "VARCHAR", "score": "DOUBLE"}]'))`. JSON rather than
  STRUCT lists so that a new key in a hit can never make an insert, and so a trace, fail.
- `feedback`: one row per (trace, voter), `value` +1 (up) or -1 (down), on a trace in
  `traces`; `voter` is the API token's name. A voter who votes again on the same trace
  changes that row (the last vote counts, `updated_at` says when), so one token cannot stuff
  a trace with votes; the row keeps its id and `created_at`, which Langfuse uses to overwrite
  the score it holds instead of adding one.
- Both tables carry `seq`, a number that grows in commit order (writers are serialized),
  so it is a cursor that never skips a row, unlike `created_at`; and the forwarding state:
  `forwarded_at` (when Langfuse accepted the row; NULL while pending), `forward_attempts`,
  `forward_error` (the last failure) and `forward_rejected_at` (Langfuse refused this row
  itself, e.g. as too large: it stays here and is not retried).
- `schema_version`: one row per applied migration.
Timestamps are `TIMESTAMPTZ`, written and read in UTC.

DuckDB lets one process at a time open a file, and the chat app, `cia ask` and Dagster runs
all write: every operation opens the file, runs one short transaction and closes it,
retrying for up to LOCK_WAIT_S while another process holds it. Within a process, operations
on one file take turns (DuckDB refuses a second open of a file being opened or closed, and
its optimistic concurrency would abort one of two threads updating the same rows). A
reader that keeps the file open for long (a dbt run) would block every writer, so such
readers read a `snapshot()`.
"""

from __future__ import annotations

import json
import os
import random
import re
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

SCHEMA_VERSION = 4
LOCK_WAIT_S = 10.0
TRACE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# The voter of a deployment without tokens (auth off: one user, the laptop's).
ANONYMOUS_VOTER = "anonymous"
_FORWARD_STATE = """
    forwarded_at TIMESTAMPTZ,
    forward_attempts INTEGER NOT NULL DEFAULT 0,
    forward_error VARCHAR
"""
# Migration n brings a store from version n-1 to n; a new store runs them all. Never edit
# one that has shipped: add the next.
_MIGRATIONS: dict[int, str] = {
    1: f"""
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
            {_FORWARD_STATE}
        );
        CREATE TABLE IF NOT EXISTS feedback (
            feedback_id VARCHAR PRIMARY KEY,
            trace_id VARCHAR NOT NULL,
            value INTEGER NOT NULL,
            comment VARCHAR,
            source VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            {_FORWARD_STATE}
        );
    """,
    2: """
        CREATE SEQUENCE IF NOT EXISTS traces_seq;
        CREATE SEQUENCE IF NOT EXISTS feedback_seq;
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS seq BIGINT DEFAULT nextval('traces_seq');
        ALTER TABLE feedback ADD COLUMN IF NOT EXISTS seq BIGINT DEFAULT nextval('feedback_seq');
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS forward_rejected_at TIMESTAMPTZ;
        ALTER TABLE feedback ADD COLUMN IF NOT EXISTS forward_rejected_at TIMESTAMPTZ;
    """,
    3: """
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS grounding_checked INTEGER DEFAULT 0;
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS ungrounded JSON;
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS abstained VARCHAR;
        ALTER TABLE traces ADD COLUMN IF NOT EXISTS sources_ms DOUBLE;
    """,
    # Votes stored before voters were recorded could only come from the trace's own token
    # (the API refuses a vote on another token's trace), so that is their voter. Repeated
    # votes of that time stay stored; readers count each voter's latest (stg_feedback).
    4: f"""
        ALTER TABLE feedback ADD COLUMN IF NOT EXISTS voter VARCHAR;
        ALTER TABLE feedback ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ;
        UPDATE feedback SET voter = coalesce(
            (SELECT t.token_name FROM traces AS t WHERE t.trace_id = feedback.trace_id), '{ANONYMOUS_VOTER}'
        ) WHERE voter IS NULL;
        UPDATE feedback SET updated_at = created_at WHERE updated_at IS NULL;
    """,
}
_JSON_COLUMNS = ("repos", "hits", "citations", "invalid_citations", "ungrounded")
_KEYS = {"traces": "trace_id", "feedback": "feedback_id"}
_PENDING = "forwarded_at IS NULL AND forward_rejected_at IS NULL"

# One operation at a time per file within a process (see the module docstring); they take
# milliseconds. Keyed by the resolved path, so two spellings of one file share a lock.
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(str(path.resolve()), threading.RLock())


class UnknownTrace(KeyError):
    """Feedback names a trace id the store does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown trace"


class TraceStoreError(RuntimeError):
    """The store cannot be used; the message names the file."""


class TraceStoreBusy(TraceStoreError):
    """Another process held the store for longer than LOCK_WAIT_S."""


def new_trace_id() -> str:
    """32 lowercase hex digits: a valid OpenTelemetry / Langfuse trace id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TraceRecord:
    """One answered (or failed) question, as the answering service saw it."""

    trace_id: str  # new_trace_id()
    created_at: datetime  # UTC, when the answer was recorded (its end)
    interface: str  # cli | http | openai | mcp | check
    token_name: str | None
    question: str
    repos: list[str]
    answer: str
    not_found: bool
    model: str
    endpoint: str  # the model server's base URL
    prompt_name: str
    prompt_version: str  # "packaged:3" or "langfuse:7"
    hits: list[dict[str, Any]] = field(
        default_factory=list
    )  # repo, path, line_start, line_end, symbol, score
    citations: list[dict[str, Any]] = field(default_factory=list)  # n, repo, path, line_start, line_end, url
    invalid_citations: list[str] = field(default_factory=list)
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    first_token_ms: float | None = None  # from the question's start
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    # Backticked identifiers / quoted code lines looked up in the sources, and those not found.
    grounding_checked: int = 0
    ungrounded: list[str] = field(default_factory=list)
    abstained: str | None = None  # why the answer is "not found" (Answer.not_found_reason)
    sources_ms: float | None = None  # from the question's start to the sources sent


@dataclass(frozen=True)
class FeedbackRecord:
    feedback_id: str
    trace_id: str
    value: int  # +1 or -1
    comment: str | None
    source: str  # where the vote came from: http, mcp, ...
    voter: str  # the API token's name (ANONYMOUS_VOTER without tokens)
    created_at: datetime  # the voter's first vote on this trace
    updated_at: datetime  # their last one, which is the value that counts
    replaced: bool = False  # this vote changed the voter's earlier one


_FEEDBACK_VALUES: dict[int | str, int] = {"up": 1, "down": -1, 1: 1, -1: -1}


def parse_feedback_value(value: object) -> int:
    """+1/-1 from "up", "down", or the integers 1 and -1; anything else (true, 1.0, "1", 2)
    is a ValueError: a vote is up or down, never a number that happens to equal one."""
    if type(value) not in (int, str) or value not in _FEEDBACK_VALUES:
        raise ValueError(f"feedback value must be up, down, 1 or -1; got {value!r}")
    return _FEEDBACK_VALUES[value]  # type: ignore[index]


class TraceStore:
    """Traces and feedback in one DuckDB file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = _file_lock(self.path)
        self._migrated = False

    # -- connections ----------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TraceStoreError(f"{self.path}: cannot create its folder: {error}") from error
            connection = self._open()
            try:
                connection.execute("SET TimeZone = 'UTC'")
                if not self._migrated:
                    _migrate(connection, self.path)
                    self._migrated = True
                yield connection
            except duckdb.Error as error:
                # A damaged file can open and fail on its first read: named, never a bare 500.
                raise TraceStoreError(f"{self.path}: the trace store cannot be used: {error}") from error
            finally:
                connection.close()

    def problem(self) -> str | None:
        """What keeps the store from recording traces now (damaged, read-only, unreadable),
        or None: the check made at start by every server and `cia ask`."""
        if self.path.exists() and not os.access(self.path, os.W_OK):
            return f"{self.path}: the trace store is read-only: answers cannot be recorded"
        try:
            with self._connect() as connection:
                connection.execute("SELECT count(*) FROM traces").fetchone()
        except TraceStoreError as error:
            return str(error)
        return None

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as error:
                if not isinstance(error, duckdb.IOException) or "lock" not in str(error).lower():
                    raise TraceStoreError(f"{self.path}: cannot open the trace store: {error}") from error
                if time.monotonic() > deadline:
                    raise TraceStoreBusy(
                        f"{self.path}: another process has held the trace store for more than "
                        f"{LOCK_WAIT_S:.0f} s ({error}). Long readers such as dbt should read a "
                        "TraceStore.snapshot() instead of the live file."
                    ) from error
                # Jitter, so two waiting processes do not retry in lockstep.
                time.sleep(random.uniform(0.02, 0.1))

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect() as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # -- writing ----------------------------------------------------------------------------

    def add_trace(self, trace: TraceRecord) -> None:
        if not TRACE_ID_PATTERN.match(trace.trace_id):
            raise ValueError(f"trace id must be 32 lowercase hex digits; got {trace.trace_id!r}")
        if trace.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        row = asdict(trace)
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column], default=str)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._connect() as connection:
            connection.execute(f"INSERT INTO traces ({columns}) VALUES ({marks})", list(row.values()))

    def add_feedback(
        self,
        trace_id: str,
        value: object,
        *,
        voter: str,
        comment: str | None = None,
        source: str = "http",
    ) -> FeedbackRecord:
        """Record `voter`'s vote on a stored trace; a second vote of theirs on it replaces the
        first (and is forwarded again). ValueError for a value other than up/down/1/-1 or an
        empty voter, UnknownTrace (nothing stored) for a trace id the store does not hold."""
        parsed = parse_feedback_value(value)
        if not voter.strip():
            raise ValueError("feedback needs a voter (the API token's name)")
        now = datetime.now(UTC)
        with self._transaction() as connection:
            known = connection.execute("SELECT 1 FROM traces WHERE trace_id = ?", [trace_id]).fetchone()
            if known is None:
                raise UnknownTrace(f"unknown trace id {trace_id!r}")
            earlier = connection.execute(
                "SELECT feedback_id, created_at FROM feedback WHERE trace_id = ? AND voter = ? "
                "ORDER BY seq DESC LIMIT 1",
                [trace_id, voter],
            ).fetchone()
            if earlier is None:
                record = FeedbackRecord(uuid.uuid4().hex, trace_id, parsed, comment, source, voter, now, now)
                connection.execute(
                    "INSERT INTO feedback (feedback_id, trace_id, value, comment, source, voter, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [record.feedback_id, trace_id, parsed, comment, source, voter, now, now],
                )
            else:
                record = FeedbackRecord(
                    earlier[0], trace_id, parsed, comment, source, voter, earlier[1], now, replaced=True
                )
                # A new seq: cursors (the feedback sensor) see the change; pending again: the
                # forwarder sends the new value under the same score id.
                connection.execute(
                    "UPDATE feedback SET value = ?, comment = ?, source = ?, updated_at = ?, "
                    "seq = nextval('feedback_seq'), forwarded_at = NULL, forward_attempts = 0, "
                    "forward_error = NULL, forward_rejected_at = NULL WHERE feedback_id = ?",
                    [parsed, comment, source, now, earlier[0]],
                )
        return record

    # -- reading ----------------------------------------------------------------------------

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        """The stored row (lists decoded, forwarding state included), or None."""
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
                connection.execute("SELECT * FROM feedback WHERE trace_id = ? ORDER BY seq", [trace_id])
            )

    def feedback_after(self, seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Feedback committed after cursor `seq`, in commit order (for a sensor's cursor)."""
        if not self.path.exists():
            return []
        with self._connect() as connection:
            return _dicts(
                connection.execute("SELECT * FROM feedback WHERE seq > ? ORDER BY seq LIMIT ?", [seq, limit])
            )

    def stats(self) -> dict[str, int]:
        """Row counts: traces, feedback, pending_* (not yet in Langfuse), rejected_*."""
        names = (
            "traces",
            "feedback",
            "pending_traces",
            "pending_feedback",
            "rejected_traces",
            "rejected_feedback",
        )
        if not self.path.exists():
            return dict.fromkeys(names, 0)
        with self._connect() as connection:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM traces), (SELECT count(*) FROM feedback), "
                f"(SELECT count(*) FROM traces WHERE {_PENDING}), "
                f"(SELECT count(*) FROM feedback WHERE {_PENDING}), "
                "(SELECT count(*) FROM traces WHERE forward_rejected_at IS NOT NULL), "
                "(SELECT count(*) FROM feedback WHERE forward_rejected_at IS NOT NULL)"
            ).fetchone()
        assert row is not None
        return dict(zip(names, map(int, row), strict=True))

    def snapshot(self, destination: Path) -> Path:
        """A consistent copy of the whole store at `destination`, replaced atomically, for
        readers that keep a file open for long (a dbt run, a notebook) and would otherwise
        block every writer."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        for leftover in (partial, partial.with_name(partial.name + ".wal")):
            leftover.unlink(missing_ok=True)
        with self._connect() as connection:
            row = connection.execute("SELECT current_database()").fetchone()
            assert row is not None
            source = str(row[0]).replace('"', '""')
            quoted_path = str(partial).replace("'", "''")
            connection.execute(f"ATTACH '{quoted_path}' AS cia_snapshot")
            try:
                connection.execute(f'COPY FROM DATABASE "{source}" TO cia_snapshot')
            finally:
                connection.execute("DETACH cia_snapshot")
        os.replace(partial, destination)
        return destination

    # -- forwarding state ---------------------------------------------------------------------

    def pending(self, limit: int = 100) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Traces and feedback not yet accepted by Langfuse, oldest first, at most `limit` each."""
        if not self.path.exists():
            return [], []
        with self._connect() as connection:
            traces = _dicts(
                connection.execute(f"SELECT * FROM traces WHERE {_PENDING} ORDER BY seq LIMIT ?", [limit])
            )
            feedback = _dicts(
                connection.execute(f"SELECT * FROM feedback WHERE {_PENDING} ORDER BY seq LIMIT ?", [limit])
            )
        return traces, feedback

    def mark_forwarded(self, trace_ids: list[str], feedback_ids: list[str]) -> None:
        """Langfuse accepted these rows."""
        self._mark(trace_ids, feedback_ids, "forwarded_at = ?, forward_error = NULL", [datetime.now(UTC)])

    def mark_failed(self, trace_ids: list[str], feedback_ids: list[str], error: str) -> None:
        """Langfuse did not take these rows (down, wrong keys...): they stay pending."""
        self._mark(trace_ids, feedback_ids, "forward_error = ?", [error[:2000]])

    def mark_rejected(self, trace_ids: list[str], feedback_ids: list[str], error: str) -> None:
        """Langfuse refused these rows themselves: kept, no longer retried (see requeue_rejected)."""
        self._mark(
            trace_ids,
            feedback_ids,
            "forward_rejected_at = ?, forward_error = ?",
            [datetime.now(UTC), error[:2000]],
        )

    def requeue_rejected(self) -> int:
        """Make rejected rows pending again (after fixing what Langfuse refused); returns how many."""
        if not self.path.exists():
            return 0
        count = 0
        with self._transaction() as connection:
            for table in _KEYS:
                row = connection.execute(
                    f"UPDATE {table} SET forward_rejected_at = NULL WHERE forward_rejected_at IS NOT NULL"
                ).fetchone()
                count += int(row[0]) if row else 0
        return count

    def _mark(
        self, trace_ids: list[str], feedback_ids: list[str], assignments: str, values: list[Any]
    ) -> None:
        if not trace_ids and not feedback_ids:
            return
        with self._transaction() as connection:
            for table, ids in (("traces", trace_ids), ("feedback", feedback_ids)):
                if ids:
                    connection.execute(
                        f"UPDATE {table} SET {assignments}, forward_attempts = forward_attempts + 1 "
                        f"WHERE {_KEYS[table]} IN ({', '.join('?' for _ in ids)})",
                        [*values, *ids],
                    )


def _migrate(connection: duckdb.DuckDBPyConnection, path: Path) -> None:
    connection.execute("BEGIN TRANSACTION")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise TraceStoreError(
                f"{path}: the trace store has schema version {current}, newer than this CIA "
                f"understands ({SCHEMA_VERSION}); upgrade CIA"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            connection.execute(_MIGRATIONS[version])
            connection.execute("INSERT INTO schema_version VALUES (?)", [version])
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or []]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        for column in _JSON_COLUMNS:
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
    return rows
