"""The trace store (real DuckDB) and forwarding to Langfuse (the real SDK against a local
server that speaks Langfuse's API): nothing is lost while Langfuse is down."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cia_assets.config import CiaConfig, LangfuseConfig
from cia_assets.lib.langfuse_client import SCORE_NAME, LangfuseForwarder, fetch_prompt
from cia_assets.lib.prompts import PACKAGED_PROMPT, load_prompt
from cia_assets.lib.traces import TraceRecord, TraceStore, UnknownTrace, new_trace_id
from cia_assets_tests.fixtures.fake_langfuse import (
    PUBLIC_KEY,
    SECRET_KEY,
    FakeLangfuse,
    attributes,
    start_fake_langfuse,
)


def trace(question: str = "How are refunds authorized?", **overrides: object) -> TraceRecord:
    values: dict[str, object] = {
        "trace_id": new_trace_id(),
        "created_at": datetime.now(UTC),
        "interface": "http",
        "token_name": "alice",
        "question": question,
        "repos": ["payments"],
        "answer": "According to [1], managers may refund.\n\nSources:\n[1] https://x/blob/s/a.py#L1-L5",
        "not_found": False,
        "model": "SmolLM2-135M-Instruct",
        "endpoint": "http://127.0.0.1:8601/v1",
        "prompt_name": "rag-code-assistant",
        "prompt_version": "packaged:3",
        "hits": [
            {"repo": "payments", "path": "a.py", "line_start": 1, "line_end": 5, "symbol": "f", "score": 0.5}
        ],
        "citations": [
            {"n": 1, "repo": "payments", "path": "a.py", "line_start": 1, "line_end": 5, "url": None}
        ],
        "invalid_citations": ["[4]"],
        "retrieval_ms": 12.5,
        "generation_ms": 800.0,
        "first_token_ms": 400.0,
        "prompt_tokens": 420,
        "completion_tokens": 31,
    }
    values.update(overrides)
    return TraceRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore(tmp_path / "data" / "traces.duckdb")


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    server = start_fake_langfuse()
    yield server
    server.close()


def settings(server: FakeLangfuse, secret: str = SECRET_KEY) -> LangfuseConfig:
    return LangfuseConfig(host=server.url, public_key=PUBLIC_KEY, secret_key=secret, timeout_s=3)


def test_store_round_trip_and_feedback_validation(store: TraceStore) -> None:
    record = trace()
    store.add_trace(record)
    stored = store.get_trace(record.trace_id)
    assert stored is not None
    assert stored["question"] == record.question and stored["repos"] == ["payments"]
    assert stored["hits"][0]["path"] == "a.py" and stored["invalid_citations"] == ["[4]"]
    assert stored["forwarded_at"] is None and stored["forward_attempts"] == 0

    feedback = store.add_feedback(record.trace_id, "down", "missed the ledger")
    assert feedback.value == -1
    assert [f["comment"] for f in store.feedback_for(record.trace_id)] == ["missed the ledger"]
    with pytest.raises(UnknownTrace, match="unknown trace id 'nope'"):
        store.add_feedback("nope", "up")
    with pytest.raises(ValueError, match="up, down, 1 or -1"):
        store.add_feedback(record.trace_id, "meh")
    assert store.stats() == {"traces": 1, "feedback": 1, "pending_traces": 1, "pending_feedback": 1}


def test_two_processes_writing_at_once_both_land(store: TraceStore) -> None:
    store.add_trace(trace())  # creates the file and schema
    writer = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cia_assets.lib.traces import TraceStore\n"
        "from cia_assets_tests.test_traces import trace\n"
        "store = TraceStore(Path(sys.argv[1]))\n"
        "for i in range(25):\n"
        "    store.add_trace(trace(f'question {i} from ' + sys.argv[2]))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", writer, str(store.path), name]) for name in ("one", "two")
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert store.stats()["traces"] == 51


def test_threads_of_one_process_share_the_store_without_conflicts(store: TraceStore) -> None:
    # The chat app answers on several threads while its forwarder reads and marks rows:
    # DuckDB refuses a second open of one file in a process, so they must take turns.
    import threading

    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for i in range(15):
                store.add_trace(trace(f"{name} {i}"))
                store.stats()
                store.pending(5)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert store.stats()["traces"] == 60


def test_a_trace_and_its_feedback_reach_langfuse(store: TraceStore, langfuse: FakeLangfuse) -> None:
    record = trace()
    store.add_trace(record)
    store.add_feedback(record.trace_id, "up", "spot on")
    report = LangfuseForwarder(settings(langfuse), store).forward_pending()
    assert (report.traces, report.feedback, report.error) == (1, 1, None)

    spans = {span["name"]: span for span in langfuse.traces()[record.trace_id]}
    assert set(spans) == {"cia-answer", "retrieval", "generation"}
    root = spans["cia-answer"]
    assert spans["retrieval"]["parentSpanId"] == root["spanId"] == spans["generation"]["parentSpanId"]
    root_attributes = attributes(root)
    assert root_attributes["langfuse.trace.input"] == record.question
    assert root_attributes["user.id"] == "alice"
    generation = attributes(spans["generation"])
    assert generation["langfuse.observation.type"] == "generation"
    assert generation["langfuse.observation.model.name"] == "SmolLM2-135M-Instruct"
    assert generation["langfuse.observation.usage_details"] == '{"input": 420, "output": 31}'
    assert "langfuse.observation.completion_start_time" in generation
    assert "a.py" in attributes(spans["retrieval"])["langfuse.observation.output"]
    assert int(spans["generation"]["endTimeUnixNano"]) - int(
        spans["retrieval"]["startTimeUnixNano"]
    ) == pytest.approx(812.5e6, rel=1e-3)
    [score] = langfuse.scores
    assert (score["traceId"], score["name"], score["value"], score["comment"]) == (
        record.trace_id,
        SCORE_NAME,
        1.0,
        "spot on",
    )
    assert store.stats()["pending_traces"] == store.stats()["pending_feedback"] == 0


def test_an_outage_loses_nothing_and_duplicates_nothing(store: TraceStore, langfuse: FakeLangfuse) -> None:
    forwarder = LangfuseForwarder(settings(langfuse), store)
    langfuse.down = True
    records = [trace(f"question {i}") for i in range(3)]
    for record in records:
        store.add_trace(record)
    store.add_feedback(records[0].trace_id, "up")
    store.add_feedback(records[2].trace_id, "down", "wrong file")
    report = forwarder.forward_pending()
    assert report.error is not None and "503" in report.error
    assert store.stats()["pending_traces"] == 3 and store.stats()["pending_feedback"] == 2
    assert langfuse.spans == [] and langfuse.scores == []

    langfuse.down = False
    report = forwarder.forward_pending()
    assert (report.traces, report.feedback, report.error) == (3, 2, None)
    assert set(langfuse.traces()) == {r.trace_id for r in records}
    assert len(langfuse.spans) == 9 and len({s["spanId"] for s in langfuse.spans}) == 9
    assert sorted(s["traceId"] for s in langfuse.scores) == sorted([records[0].trace_id, records[2].trace_id])
    assert forwarder.forward_pending() == type(report)()  # nothing left, nothing re-sent
    assert len(langfuse.spans) == 9 and len(langfuse.scores) == 2
    assert store.get_trace(records[1].trace_id)["forward_attempts"] == 2  # type: ignore[index]


def test_the_background_forwarder_retries_until_langfuse_is_back(
    store: TraceStore, langfuse: FakeLangfuse
) -> None:
    langfuse.down = True
    record = trace()
    store.add_trace(record)
    forwarder = LangfuseForwarder(settings(langfuse), store)
    forwarder.start(interval_s=0.1)
    try:
        time.sleep(0.5)
        assert store.stats()["pending_traces"] == 1
        langfuse.down = False
        deadline = time.monotonic() + 10
        while store.stats()["pending_traces"] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        forwarder.stop()
    assert store.stats()["pending_traces"] == 0
    assert record.trace_id in langfuse.traces()


def test_wrong_keys_keep_everything_pending_with_the_reason(
    store: TraceStore, langfuse: FakeLangfuse
) -> None:
    store.add_trace(trace())
    report = LangfuseForwarder(settings(langfuse, secret="sk-wrong"), store).forward_pending()
    assert report.error is not None and "401" in report.error and langfuse.url in report.error
    pending, _ = store.pending()
    assert len(pending) == 1 and "401" in pending[0]["forward_error"]


def test_prompt_comes_from_langfuse_by_label_else_the_packaged_one(
    langfuse: FakeLangfuse, write_config: Callable[..., CiaConfig], caplog: pytest.LogCaptureFixture
) -> None:
    messages = [
        {"role": "system", "content": "Answer from the code only; cite like [1]."},
        {"role": "user", "content": "Code:\n{{sources}}\nQ: {{question}}"},
    ]
    langfuse.add_prompt("rag-code-assistant", "production", 7, messages)
    managed = fetch_prompt(settings(langfuse), "rag-code-assistant", "production")
    assert managed is not None and managed.version == "langfuse:7"
    assert managed.messages == [(m["role"], m["content"]) for m in messages]
    assert fetch_prompt(settings(langfuse), "rag-code-assistant", "staging") is None
    assert fetch_prompt(LangfuseConfig(), "rag-code-assistant", "production") is None

    config = write_config(
        [], langfuse={"host": langfuse.url, "public_key": PUBLIC_KEY, "secret_key": SECRET_KEY}
    )
    prompt = load_prompt(config)
    assert prompt.version == "langfuse:7"
    assert prompt.render("SRC", "Q?")[1]["content"] == "Code:\nSRC\nQ: Q?"

    langfuse.down = True
    other = write_config(
        [],
        answering={"prompt_label": "canary"},
        langfuse={"host": langfuse.url, "public_key": PUBLIC_KEY, "secret_key": SECRET_KEY},
    )
    with caplog.at_level(logging.WARNING):
        assert load_prompt(other) == PACKAGED_PROMPT
    assert "could not fetch prompt rag-code-assistant@canary" in caplog.text
