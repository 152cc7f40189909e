"""Trace rows of the local store as OTLP spans carrying Langfuse's attributes: one trace per
question, a root span `cia-answer` with a `retrieval` span (query in, hits out) and a
`generation` (model, usage, time to first token).

Span ids are derived from the trace id, so a trace sent twice (after a lost reply) overwrites
itself in Langfuse instead of duplicating. The span types are the SDK's generated models for
`POST /api/public/otel/v1/traces` (OTLP/HTTP, JSON encoding), imported when a batch is encoded.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

TRACE_NAME = "cia-answer"


def _span_id(trace_id: str, name: str) -> str:
    return hashlib.sha256(f"{trace_id}:{name}".encode()).hexdigest()[:16]


def _nanos(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1_000_000) * 1000)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _attributes(values: dict[str, Any]) -> list[Any]:
    from langfuse.api.opentelemetry.types import OtelAttribute, OtelAttributeValue

    attributes = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            wrapped = OtelAttributeValue(bool_value=value)
        elif isinstance(value, int):
            wrapped = OtelAttributeValue(int_value=value)
        elif isinstance(value, float):
            wrapped = OtelAttributeValue(double_value=value)
        elif isinstance(value, str):
            wrapped = OtelAttributeValue(string_value=value)
        else:  # Langfuse reads JSON strings for structured values, as the SDK sends them
            wrapped = OtelAttributeValue(string_value=json.dumps(value, default=str))
        attributes.append(OtelAttribute(key=key, value=wrapped))
    return attributes


def _managed_prompt_version(version: str | None) -> int | None:
    """7 for "langfuse:7"; None for the packaged prompt, which Langfuse does not know (it
    links a generation to a prompt by name and integer version, and drops other values)."""
    prefix, _, number = (version or "").partition(":")
    return int(number) if prefix == "langfuse" and number.isdigit() else None


def resource_spans(rows: list[dict[str, Any]]) -> Any:
    """The trace rows as one OTLP resource span: three spans per row, under service `cia`."""
    from langfuse.api.opentelemetry.types import (
        OtelResource,
        OtelResourceSpan,
        OtelScope,
        OtelScopeSpan,
        OtelSpan,
    )

    spans: list[Any] = []
    for row in rows:
        trace_id = row["trace_id"]
        end = row["created_at"]  # recorded when the answer was done
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        retrieval_ms = float(row["retrieval_ms"] or 0.0)
        generation_ms = float(row["generation_ms"] or 0.0)
        start = end - timedelta(milliseconds=retrieval_ms + generation_ms)
        retrieved = start + timedelta(milliseconds=retrieval_ms)
        first_token = row.get("first_token_ms")  # measured from the question's start
        error = row.get("error")
        status = {"code": 2, "message": error} if error else None
        level = "ERROR" if error else None
        root_id = _span_id(trace_id, "answer")
        metadata = {
            "interface": row["interface"],
            "repos": row["repos"],
            "not_found": row["not_found"],
            "citations": row["citations"],
            "invalid_citations": row["invalid_citations"],
            "prompt_name": row["prompt_name"],
            "prompt_version": row["prompt_version"],
        }
        usage = {
            key: value
            for key, value in (("input", row["prompt_tokens"]), ("output", row["completion_tokens"]))
            if value is not None
        }
        managed_version = _managed_prompt_version(row["prompt_version"])
        spans.append(
            OtelSpan(
                trace_id=trace_id,
                span_id=root_id,
                name=TRACE_NAME,
                kind=1,
                start_time_unix_nano=_nanos(start),
                end_time_unix_nano=_nanos(end),
                status=status,
                attributes=_attributes(
                    {
                        "langfuse.trace.name": TRACE_NAME,
                        "langfuse.trace.input": row["question"],
                        "langfuse.trace.output": row["answer"],
                        "langfuse.trace.tags": [
                            row["interface"],
                            *(["not-found"] if row["not_found"] else []),
                        ],
                        "user.id": row["token_name"],
                        **{f"langfuse.trace.metadata.{k}": v for k, v in metadata.items()},
                        "langfuse.observation.type": "span",
                        "langfuse.observation.level": level,
                        "langfuse.observation.status_message": error,
                    }
                ),
            )
        )
        spans.append(
            OtelSpan(
                trace_id=trace_id,
                span_id=_span_id(trace_id, "retrieval"),
                parent_span_id=root_id,
                name="retrieval",
                kind=1,
                start_time_unix_nano=_nanos(start),
                end_time_unix_nano=_nanos(retrieved),
                attributes=_attributes(
                    {
                        "langfuse.observation.type": "span",
                        "langfuse.observation.input": row["question"],
                        "langfuse.observation.output": row["hits"],
                        "langfuse.observation.metadata.repos": row["repos"],
                        "langfuse.observation.metadata.hit_count": len(row["hits"] or []),
                    }
                ),
            )
        )
        spans.append(
            OtelSpan(
                trace_id=trace_id,
                span_id=_span_id(trace_id, "generation"),
                parent_span_id=root_id,
                name="generation",
                kind=1,
                start_time_unix_nano=_nanos(retrieved),
                end_time_unix_nano=_nanos(end),
                status=status,
                attributes=_attributes(
                    {
                        "langfuse.observation.type": "generation",
                        "langfuse.observation.model.name": row["model"],
                        "langfuse.observation.input": row["question"],
                        "langfuse.observation.output": row["answer"],
                        "langfuse.observation.usage_details": usage or None,
                        "langfuse.observation.completion_start_time": (
                            _iso(start + timedelta(milliseconds=float(first_token)))
                            if first_token is not None
                            else None
                        ),
                        "langfuse.observation.prompt.name": row["prompt_name"] if managed_version else None,
                        "langfuse.observation.prompt.version": managed_version,
                        "langfuse.observation.metadata.prompt_version": row["prompt_version"],
                        "langfuse.observation.metadata.endpoint": row["endpoint"],
                        "langfuse.observation.level": level,
                        "langfuse.observation.status_message": error,
                    }
                ),
            )
        )
    return OtelResourceSpan(
        resource=OtelResource(attributes=_attributes({"service.name": "cia"})),
        scope_spans=[OtelScopeSpan(scope=OtelScope(name="cia", version="1"), spans=spans)],
    )
