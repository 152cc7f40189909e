"""The trace store (real DuckDB files, real processes and threads) and forwarding to Langfuse
(the real `langfuse` SDK against a local server speaking Langfuse's HTTP API): nothing is lost
or duplicated while Langfuse is down, silent, refuses the keys or refuses a payload."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from cia_assets.config import AnsweringConfig, CiaConfig, LangfuseConfig
from cia_assets.lib.answering.prompts import PACKAGED_PROMPT, load_prompt
from cia_assets.lib.observability import langfuse as langfuse_client
from cia_assets.lib.observability import traces
from cia_assets.lib.observability.langfuse import (
    SCORE_NAME,
    ForwardReport,
    LangfuseForwarder,
    PromptCache,
)
from cia_assets.lib.observability.langfuse import prompts as langfuse_prompts
from cia_assets.lib.observability.traces import (
    TraceStore,
    TraceStoreBusy,
    TraceStoreError,
    UnknownTrace,
)
from cia_assets_tests.support.fake_langfuse import (
    PUBLIC_KEY,
    SECRET_KEY,
    FakeLangfuse,
    attributes,
    start_fake_langfuse,
)
from cia_assets_tests.support.traces import trace

OTLP = "POST /api/public/otel/v1/traces"
PROMPTS = "GET /api/public/v2/prompts/"


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore(tmp_path / "data" / "traces.duckdb")


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    server = start_fake_langfuse()
    yield server
    server.close()


@pytest.fixture
def prompts() -> PromptCache:
    return PromptCache()


def settings(server: FakeLangfuse, secret: str = SECRET_KEY, timeout_s: float = 3) -> LangfuseConfig:
    return LangfuseConfig(host=server.url, public_key=PUBLIC_KEY, secret_key=secret, timeout_s=timeout_s)


# -- the store --------------------------------------------------------------------------------


def test_store_round_trip_and_feedback_validation(store: TraceStore) -> None:
    record = trace()
    store.add_trace(record)
    stored = store.get_trace(record.trace_id)
    assert stored is not None
    assert stored["question"] == record.question and stored["repos"] == ["payments"]
    assert stored["hits"][0]["path"] == "a.py" and stored["invalid_citations"] == ["[4]"]
    assert stored["created_at"] == record.created_at and stored["created_at"].utcoffset().total_seconds() == 0
    assert (stored["prompt_tokens"], stored["first_token_ms"], stored["error"]) == (420, 400.0, None)
    assert stored["forwarded_at"] is None and stored["forward_attempts"] == 0

    feedback = store.add_feedback(record.trace_id, "down", voter="alice", comment="missed the ledger")
    assert feedback.value == -1 and not feedback.replaced
    assert store.add_feedback(record.trace_id, 1, voter="bob").value == 1
    with pytest.raises(UnknownTrace, match="unknown trace id 'nope'"):
        store.add_feedback("nope", "up", voter="alice")
    # A vote is up or down: nothing that merely equals 1 or -1 (JSON true, 1.0, "1").
    for bad in ("meh", 0, 2, True, False, 1.0, -1.0, "1", "+1", None):
        with pytest.raises(ValueError, match="up, down, 1 or -1"):
            store.add_feedback(record.trace_id, bad, voter="alice")
    with pytest.raises(ValueError, match="needs a voter"):
        store.add_feedback(record.trace_id, "up", voter=" ")
    with pytest.raises(ValueError, match="32 lowercase hex"):
        store.add_trace(trace(trace_id="not-a-trace-id"))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.add_trace(trace(created_at=datetime.now()))
    assert store.stats() == {
        "traces": 1,
        "feedback": 2,  # the refused votes stored nothing
        "pending_traces": 1,
        "pending_feedback": 2,
        "rejected_traces": 0,
        "rejected_feedback": 0,
    }
    # The sensor's cursor: commit order, nothing skipped, nothing repeated.
    first, second = store.feedback_after(0)
    assert second["seq"] > first["seq"] and store.feedback_after(first["seq"]) == [second]
    assert [(f["voter"], f["value"], f["comment"]) for f in store.feedback_for(record.trace_id)] == [
        ("alice", -1, "missed the ledger"),
        ("bob", 1, None),
    ]


def test_one_vote_per_voter_and_trace_the_last_one_counts(store: TraceStore) -> None:
    record = trace()
    store.add_trace(record)
    first = store.add_feedback(record.trace_id, "up", voter="alice")
    before = store.feedback_after(0)
    store.mark_forwarded([], [first.feedback_id])
    for value in ("up", "up", "up", "down"):  # four more votes of one token on one trace
        again = store.add_feedback(record.trace_id, value, voter="alice", comment=f"vote {value}")
    assert again.replaced and again.feedback_id == first.feedback_id
    assert again.created_at == first.created_at and again.updated_at > first.updated_at
    (row,) = store.feedback_for(record.trace_id)
    assert (row["value"], row["comment"], row["voter"]) == (-1, "vote down", "alice")
    # The change is new to a cursor, and pending for Langfuse again under the same score id.
    assert row["seq"] > before[0]["seq"] and store.feedback_after(before[0]["seq"]) == [row]
    assert row["forwarded_at"] is None and store.stats()["pending_feedback"] == 1
    assert store.stats()["feedback"] == 1


def test_votes_stored_before_voters_were_recorded_take_the_traces_token(store: TraceStore) -> None:
    """A store of schema 3 (no voter column) opens with each vote's voter set to its trace's
    token, and the repeated votes of that time are still stored (nothing is lost)."""
    record = trace()
    store.add_trace(record)
    with duckdb.connect(str(store.path)) as connection:
        connection.execute("ALTER TABLE feedback DROP COLUMN voter")
        connection.execute("ALTER TABLE feedback DROP COLUMN updated_at")
        connection.execute("DELETE FROM schema_version WHERE version = 4")
        for n, value in enumerate((1, 1, -1)):
            connection.execute(
                "INSERT INTO feedback (feedback_id, trace_id, value, source, created_at) "
                "VALUES (?, ?, ?, 'http', now())",
                [f"old{n}", record.trace_id, value],
            )
    reopened = TraceStore(store.path)
    rows = reopened.feedback_for(record.trace_id)
    assert [(r["voter"], r["value"]) for r in rows] == [("alice", 1), ("alice", 1), ("alice", -1)]
    assert all(r["updated_at"] == r["created_at"] for r in rows)
    # A new vote of that token replaces its latest one.
    assert reopened.add_feedback(record.trace_id, "up", voter="alice").feedback_id == "old2"
    assert TraceStore(store.path.parent / "absent.duckdb").stats()["traces"] == 0


def test_a_store_from_an_older_version_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "traces.duckdb"
    old = duckdb.connect(str(path))  # a version-1 store, as the first release wrote it
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute(traces._MIGRATIONS[1])
    old.execute("INSERT INTO schema_version VALUES (1)")
    old.execute(
        "INSERT INTO traces (trace_id, created_at, interface, question, not_found) "
        "VALUES (?, now(), 'cli', 'old question', false)",
        ["a" * 32],
    )
    old.close()

    store = TraceStore(path)
    record = trace()
    store.add_trace(record)
    pending, _ = store.pending()
    assert [row["question"] for row in pending] == ["old question", record.question]
    assert pending[0]["seq"] < pending[1]["seq"] and pending[0]["forward_rejected_at"] is None
    with duckdb.connect(str(path)) as connection:
        versions = connection.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
        assert versions == [(1,), (2,), (3,), (4,)]
        connection.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(TraceStoreError, match="schema version 99, newer"):
        TraceStore(path).stats()


def test_two_processes_writing_at_once_both_land(store: TraceStore) -> None:
    store.add_trace(trace())  # creates the file and schema
    writer = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cia_assets.lib.observability.traces import TraceStore\n"
        "from cia_assets_tests.support.traces import trace\n"
        "store = TraceStore(Path(sys.argv[1]))\n"
        "for i in range(25):\n"
        "    record = trace(f'question {i} from ' + sys.argv[2])\n"
        "    store.add_trace(record)\n"
        "    store.add_feedback(record.trace_id, 'up', voter='alice')\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", writer, str(store.path), name]) for name in ("one", "two")
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    stats = store.stats()
    assert (stats["traces"], stats["feedback"]) == (51, 50)
    seqs = [row["seq"] for row in store.feedback_after(0)]
    assert seqs == sorted(set(seqs)) and len(seqs) == 50


def test_threads_of_one_process_share_the_store_without_conflicts(store: TraceStore) -> None:
    # The chat app answers on several threads while its forwarder reads and marks rows:
    # DuckDB refuses a second open of one file in a process, so they must take turns.
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for i in range(10):
                record = trace(f"{name} {i}")
                TraceStore(store.path).add_trace(record)  # another instance, the same file
                store.stats()
                pending, _ = store.pending(5)
                store.mark_failed([row["trace_id"] for row in pending], [], "down")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert store.stats()["traces"] == 40


def test_a_store_held_by_another_process_waits_then_fails_naming_the_file(
    store: TraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_trace(trace())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            "connection = duckdb.connect(sys.argv[1])\n"
            "print('held', flush=True)\n"
            "time.sleep(1.5)\n",
            str(store.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(traces, "LOCK_WAIT_S", 0.3)
        with pytest.raises(TraceStoreBusy, match=f"{store.path}: another process has held"):
            store.add_trace(trace())
        monkeypatch.setattr(traces, "LOCK_WAIT_S", 10.0)
        store.add_trace(trace())  # waits until the other process lets go
    finally:
        holder.wait(timeout=30)
    assert store.stats()["traces"] == 2


def test_a_snapshot_is_a_consistent_copy_readers_can_hold(store: TraceStore, tmp_path: Path) -> None:
    record = trace()
    store.add_trace(record)
    store.add_feedback(record.trace_id, "up", voter="alice")
    copy = store.snapshot(tmp_path / "analytics" / "traces.duckdb")
    with duckdb.connect(str(copy), read_only=True) as reader:
        store.add_trace(trace())  # the live store stays writable while the copy is open
        assert reader.execute("SELECT trace_id FROM traces").fetchall() == [(record.trace_id,)]
        assert reader.execute("SELECT value FROM feedback").fetchall() == [(1,)]
        hits = reader.execute('SELECT unnest(from_json(hits, \'[{"path": "VARCHAR"}]\')).path FROM traces')
        assert hits.fetchall() == [("a.py",)]
    assert store.snapshot(copy) == copy  # replaced in place


# -- forwarding -------------------------------------------------------------------------------


def test_a_trace_and_its_feedback_reach_langfuse(store: TraceStore, langfuse: FakeLangfuse) -> None:
    record = trace(prompt_version="langfuse:7")
    packaged = trace("Where is the ledger?", prompt_version="packaged:3", error="model timed out")
    store.add_trace(record)
    store.add_trace(packaged)
    feedback = store.add_feedback(record.trace_id, "up", voter="alice", comment="spot on")
    forwarder = LangfuseForwarder(settings(langfuse), store)
    assert forwarder.forward_pending() == ForwardReport(traces=2, feedback=1)
    forwarder.close()

    spans = {span["name"]: span for span in langfuse.traces()[record.trace_id]}
    assert set(spans) == {"cia-answer", "retrieval", "generation"}
    root = spans["cia-answer"]
    assert spans["retrieval"]["parentSpanId"] == root["spanId"] == spans["generation"]["parentSpanId"]
    trace_attributes = attributes(root)
    assert trace_attributes["langfuse.trace.input"] == record.question
    assert trace_attributes["langfuse.trace.output"] == record.answer
    assert trace_attributes["user.id"] == "alice"
    assert json.loads(trace_attributes["langfuse.trace.tags"]) == ["http"]
    retrieval = attributes(spans["retrieval"])
    assert retrieval["langfuse.observation.input"] == record.question
    assert json.loads(retrieval["langfuse.observation.output"]) == record.hits
    generation = attributes(spans["generation"])
    assert generation["langfuse.observation.type"] == "generation"
    assert generation["langfuse.observation.model.name"] == "SmolLM2-135M-Instruct"
    assert json.loads(generation["langfuse.observation.usage_details"]) == {"input": 420, "output": 31}
    assert generation["langfuse.observation.output"] == record.answer
    # Linked to the managed prompt by name and integer version, as Langfuse requires.
    assert generation["langfuse.observation.prompt.name"] == "rag-code-assistant"
    assert int(generation["langfuse.observation.prompt.version"]) == 7
    # Latency: the spans end when the answer was recorded and add up to its timings.
    end_ns = int(record.created_at.timestamp() * 1e6) * 1000
    assert int(spans["generation"]["endTimeUnixNano"]) == int(root["endTimeUnixNano"]) == end_ns
    assert int(root["endTimeUnixNano"]) - int(root["startTimeUnixNano"]) == pytest.approx(812.5e6, abs=2e3)
    assert int(spans["retrieval"]["endTimeUnixNano"]) - int(spans["retrieval"]["startTimeUnixNano"]) == (
        pytest.approx(12.5e6, abs=2e3)
    )
    first_token = datetime.fromisoformat(generation["langfuse.observation.completion_start_time"])
    assert (first_token - record.created_at).total_seconds() == pytest.approx(-0.4125, abs=1e-3)

    other = {span["name"]: attributes(span) for span in langfuse.traces()[packaged.trace_id]}
    assert "langfuse.observation.prompt.version" not in other["generation"]  # Langfuse knows no such prompt
    assert other["generation"]["langfuse.observation.metadata.prompt_version"] == "packaged:3"
    assert other["generation"]["langfuse.observation.level"] == "ERROR"
    assert other["cia-answer"]["langfuse.observation.status_message"] == "model timed out"

    [score] = langfuse.scores
    assert (score["id"], score["traceId"], score["name"], score["value"], score["comment"]) == (
        feedback.feedback_id,
        record.trace_id,
        SCORE_NAME,
        1.0,
        "spot on",
    )
    assert (
        score["dataType"] == "NUMERIC" and datetime.fromisoformat(score["timestamp"]) == feedback.created_at
    )
    assert langfuse.headers[langfuse.requests.index(OTLP)]["x-langfuse-ingestion-version"] == "4"
    stats = store.stats()
    assert stats["pending_traces"] == stats["pending_feedback"] == 0
    assert store.get_trace(record.trace_id)["forwarded_at"] is not None  # type: ignore[index]
    assert score["metadata"] == {"source": "http", "voter": "alice"}

    # A changed vote is sent again as that score (same id and timestamp): Langfuse overwrites it.
    store.add_feedback(record.trace_id, "down", voter="alice")
    forwarder = LangfuseForwarder(settings(langfuse), store)
    assert forwarder.forward_pending() == ForwardReport(traces=0, feedback=1)
    forwarder.close()
    resent = langfuse.scores[-1]
    assert (resent["id"], resent["timestamp"], resent["value"]) == (score["id"], score["timestamp"], -1.0)


def test_an_outage_loses_nothing_and_duplicates_nothing(store: TraceStore, langfuse: FakeLangfuse) -> None:
    forwarder = LangfuseForwarder(settings(langfuse), store)
    langfuse.down = True
    records = [trace(f"question {i}") for i in range(5)]
    for record in records:
        store.add_trace(record)
    votes = [
        store.add_feedback(records[0].trace_id, "up", voter="alice"),
        store.add_feedback(records[3].trace_id, "down", voter="alice", comment="no"),
    ]
    started = time.monotonic()
    report = forwarder.forward_pending()
    assert report.error is not None and "503" in report.error and langfuse.url in report.error
    assert time.monotonic() - started < 1.0 and len(langfuse.requests) == 1  # no client-side retry storm
    stats = store.stats()
    assert (stats["pending_traces"], stats["pending_feedback"]) == (5, 2)
    assert all("503" in row["forward_error"] for row in store.pending()[0])
    assert langfuse.spans == [] and langfuse.scores == []

    langfuse.down = False
    assert forwarder.forward_pending() == ForwardReport(traces=5, feedback=2)
    assert set(langfuse.traces()) == {r.trace_id for r in records}
    assert len(langfuse.spans) == 15 and len({s["spanId"] for s in langfuse.spans}) == 15
    assert sorted(s["id"] for s in langfuse.scores) == sorted(v.feedback_id for v in votes)
    requests = len(langfuse.requests)
    assert forwarder.forward_pending() == ForwardReport()  # nothing left, nothing re-sent
    assert len(langfuse.requests) == requests and len(langfuse.spans) == 15 and len(langfuse.scores) == 2
    assert store.get_trace(records[1].trace_id)["forward_attempts"] == 2  # type: ignore[index]
    forwarder.close()


def test_a_dead_or_silent_langfuse_never_holds_up_a_cli_exit(
    store: TraceStore, langfuse: FakeLangfuse
) -> None:
    record = trace()
    store.add_trace(record)
    forwarder = LangfuseForwarder(settings(langfuse, timeout_s=1), store)

    langfuse.stop()  # nothing listens: connection refused
    started = time.monotonic()
    report = forwarder.flush()
    assert time.monotonic() - started < 1.0
    assert report.error is not None and "ConnectError" in report.error

    langfuse.restart()
    langfuse.hang = True  # accepts the connection, never answers
    started = time.monotonic()
    report = forwarder.flush()
    assert time.monotonic() - started < 2.5  # the bound (1 s) plus at most one request's timeout
    assert report.error is not None and "Timeout" in report.error
    assert store.stats()["pending_traces"] == 1

    langfuse.stop()  # drops the hung request unanswered
    langfuse.restart()
    assert forwarder.flush(timeout_s=5) == ForwardReport(traces=1)
    assert len({s["spanId"] for s in langfuse.traces()[record.trace_id]}) == 3
    forwarder.close()


def test_the_background_forwarder_retries_until_langfuse_is_back(
    store: TraceStore, langfuse: FakeLangfuse, caplog: pytest.LogCaptureFixture
) -> None:
    langfuse.down = True
    record = trace()
    store.add_trace(record)
    forwarder = LangfuseForwarder(settings(langfuse), store)
    with caplog.at_level(logging.INFO, logger=langfuse_client.__name__):
        forwarder.start(interval_s=0.1)
        try:
            time.sleep(0.5)
            assert store.stats()["pending_traces"] == 1
            langfuse.down = False
            store.add_feedback(record.trace_id, "up", voter="alice")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                store.stats()["pending_traces"] or store.stats()["pending_feedback"]
            ):
                time.sleep(0.1)
        finally:
            forwarder.close()
    assert store.stats()["pending_traces"] == store.stats()["pending_feedback"] == 0
    assert record.trace_id in langfuse.traces() and len(langfuse.scores) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "503" in warnings[0].getMessage()  # once per outage, not per retry
    assert "takes traces again" in caplog.text


def test_wrong_keys_keep_everything_pending_with_the_reason(
    store: TraceStore, langfuse: FakeLangfuse
) -> None:
    record = trace()
    store.add_trace(record)
    store.add_feedback(record.trace_id, "up", voter="alice")
    report = LangfuseForwarder(settings(langfuse, secret="sk-wrong"), store).forward_pending()
    assert report.error is not None and "401" in report.error and langfuse.url in report.error
    assert "check langfuse.public_key and secret_key" in report.error
    pending, feedback = store.pending()
    assert len(pending) == 1 and "401" in pending[0]["forward_error"] and len(feedback) == 1
    assert langfuse.spans == []
    assert LangfuseForwarder(settings(langfuse), store).forward_pending() == ForwardReport(
        traces=1, feedback=1
    )


def test_a_payload_langfuse_refuses_is_set_aside_without_blocking_the_rest(
    store: TraceStore, langfuse: FakeLangfuse
) -> None:
    records = [trace(f"question {i}") for i in range(4)]
    for record in records:
        store.add_trace(record)
    first_vote = store.add_feedback(records[0].trace_id, "up", voter="alice")
    store.add_feedback(records[2].trace_id, "down", voter="alice")
    langfuse.refuse_trace_ids = {records[1].trace_id}  # 400 for any batch holding it
    langfuse.refuse_score_trace_ids = {records[2].trace_id}  # 207 for a batch holding it

    report = LangfuseForwarder(settings(langfuse), store).forward_pending()
    assert report == ForwardReport(traces=3, feedback=1, rejected=2)
    assert set(langfuse.traces()) == {records[i].trace_id for i in (0, 2, 3)}
    # The score accepted in the 207 batch went again while the refused one was isolated:
    # the same id and timestamp, which Langfuse stores as one score.
    assert {(s["id"], s["timestamp"], s["traceId"]) for s in langfuse.scores} == {
        (first_vote.feedback_id, langfuse.scores[0]["timestamp"], records[0].trace_id)
    }
    stats = store.stats()
    assert (stats["pending_traces"], stats["pending_feedback"]) == (0, 0)
    assert (stats["rejected_traces"], stats["rejected_feedback"]) == (1, 1)
    refused = store.get_trace(records[1].trace_id)
    assert refused is not None and refused["forward_rejected_at"] is not None
    assert (
        f"refused trace {records[1].trace_id}" in refused["forward_error"]
        and "400" in refused["forward_error"]
    )

    langfuse.refuse_trace_ids = langfuse.refuse_score_trace_ids = set()
    assert store.requeue_rejected() == 2
    report = LangfuseForwarder(settings(langfuse), store).forward_pending()
    assert report == ForwardReport(traces=1, feedback=1)
    assert len({s["spanId"] for s in langfuse.spans}) == len(langfuse.spans) == 12


# -- managed prompts --------------------------------------------------------------------------


def test_prompt_comes_from_langfuse_by_label_else_the_packaged_one(
    langfuse: FakeLangfuse,
    prompts: PromptCache,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = [
        {"role": "system", "content": "Answer from the code only; cite like [1]."},
        {"role": "user", "content": "Code:\n{{sources}}\nQ: {{question}}"},
    ]
    langfuse.add_prompt("rag-code-assistant", "production", 7, messages)
    langfuse.add_text_prompt("team/rag", "canary", 2, "Sources: {{sources}}\nQuestion: {{question}}")
    managed = prompts.fetch(settings(langfuse), "rag-code-assistant", "production")
    assert managed is not None and (managed.version, managed.prompt_type) == ("langfuse:7", "chat")
    assert managed.messages == [(m["role"], m["content"]) for m in messages]
    text = prompts.fetch(settings(langfuse), "team/rag", "canary")  # a prompt in a folder
    assert text is not None and text.version == "langfuse:2" and text.messages[0][0] == "user"
    asked = langfuse.count(PROMPTS)
    assert prompts.fetch(settings(langfuse), "rag-code-assistant", "production") == managed
    assert langfuse.count(PROMPTS) == asked  # cached

    with caplog.at_level(logging.WARNING):
        assert prompts.fetch(settings(langfuse), "rag-code-assistant", "staging") is None
    assert f"could not fetch prompt rag-code-assistant@staging from Langfuse at {langfuse.url}" in caplog.text
    assert prompts.fetch(LangfuseConfig(), "rag-code-assistant", "production") is None

    config = CiaConfig(
        config_path=tmp_path / "cia.yaml",
        data_dir=tmp_path / "data",
        codebases=(),
        langfuse=settings(langfuse),
    )
    prompt = load_prompt(config, prompts)
    assert prompt.version == "langfuse:7"
    assert prompt.render("SRC", "Q?")[1]["content"] == "Code:\nSRC\nQ: Q?"

    # Langfuse goes away: the prompt fetched before is kept, and nobody waits on Langfuse
    # again for PROMPT_RETRY_S; a label never fetched falls back to the packaged prompt.
    monkeypatch.setattr(langfuse_prompts, "PROMPT_TTL_S", 0.0)
    langfuse.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        assert prompts.fetch(settings(langfuse), "rag-code-assistant", "production") == managed
        assert prompts.fetch(settings(langfuse), "rag-code-assistant", "production") == managed
        canary = config.model_copy(update={"answering": AnsweringConfig(prompt_label="canary")})
        assert load_prompt(canary, prompts) == PACKAGED_PROMPT
        assert time.monotonic() - started < 1.0
    assert "keeping langfuse:7 fetched before" in caplog.text and "ConnectError" in caplog.text
    assert caplog.text.count("could not fetch prompt rag-code-assistant@production") == 1
