"""Trace records as the chat app writes them, for tests of the trace store and what reads it."""

from __future__ import annotations

from datetime import UTC, datetime

from cia_assets.lib.observability.traces import TraceRecord, new_trace_id


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
