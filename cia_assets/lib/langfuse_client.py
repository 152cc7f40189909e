"""Langfuse: traces and feedback forwarded from the local store, prompts fetched by label.

Forwarding uses the SDK's generated REST client (`LangfuseAPI`) rather than its OpenTelemetry
tracer: the tracer exports in the background and drops what a dead server refuses, while a
REST call tells us whether Langfuse accepted each batch, so rows are marked forwarded only
then (at-least-once delivery; span and score ids are derived from our ids, so a re-send
overwrites instead of duplicating). Traces go to the OTLP endpoint
(`/api/public/otel/v1/traces`) as one root span per question with a `retrieval` span and a
`generation` (model, usage, time to first token); feedback goes to `/api/public/scores` as a
`user-feedback` score on that trace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cia_assets.config import LangfuseConfig
from cia_assets.lib.traces import TraceStore

log = logging.getLogger(__name__)

SCORE_NAME = "user-feedback"
PROMPT_CACHE_S = 60.0
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class ForwardReport:
    traces: int = 0
    feedback: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _api(settings: LangfuseConfig) -> Any:
    from langfuse import __version__
    from langfuse.api.client import LangfuseAPI

    assert settings.host and settings.public_key and settings.secret_key
    return LangfuseAPI(
        base_url=settings.host.rstrip("/"),
        username=settings.public_key,
        password=settings.secret_key,
        x_langfuse_public_key=settings.public_key,
        x_langfuse_sdk_name="cia",
        x_langfuse_sdk_version=__version__,
        # Langfuse asks direct OTLP exporters to say which ingestion version they speak.
        headers={"x-langfuse-ingestion-version": "4"},
        timeout=settings.timeout_s,
    )


class LangfuseForwarder:
    """Sends pending traces and feedback from the store; a background thread retries with
    exponential backoff while Langfuse is down."""

    def __init__(self, settings: LangfuseConfig, store: TraceStore, batch_size: int = 50) -> None:
        self.settings = settings
        self.store = store
        self.batch_size = batch_size
        self._api = _api(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def forward_pending(self) -> ForwardReport:
        """Send everything pending, batch by batch; stops at the first refusal."""
        sent_traces = sent_feedback = 0
        with self._lock:
            while True:
                traces, feedback = self.store.pending(self.batch_size)
                if not traces and not feedback:
                    return ForwardReport(sent_traces, sent_feedback)
                if traces:
                    ids = [t["trace_id"] for t in traces]
                    try:
                        self._api.opentelemetry.export_traces(resource_spans=[_resource_spans(traces)])
                    except Exception as error:
                        failure = _describe(error, self.settings)
                        self.store.mark_failed(ids, [], failure)
                        return ForwardReport(sent_traces, sent_feedback, failure)
                    self.store.mark_forwarded(ids, [])
                    sent_traces += len(ids)
                if feedback:
                    accepted, message = self._send_scores(feedback)
                    rejected = [f["feedback_id"] for f in feedback if f["feedback_id"] not in accepted]
                    self.store.mark_forwarded([], sorted(accepted))
                    sent_feedback += len(accepted)
                    if rejected:
                        self.store.mark_failed([], rejected, message or "rejected by Langfuse")
                        return ForwardReport(sent_traces, sent_feedback, message or "rejected by Langfuse")

    def _send_scores(self, feedback: list[dict[str, Any]]) -> tuple[set[str], str | None]:
        from langfuse.api.scores.types.create_score_request import CreateScoreRequest

        request = [
            CreateScoreRequest(
                id=row["feedback_id"],
                trace_id=row["trace_id"],
                name=SCORE_NAME,
                value=float(row["value"]),
                comment=row["comment"],
                metadata={"source": row["source"]},
            )
            for row in feedback
        ]
        try:
            response = self._api.scores.create(request=request)
        except Exception as error:
            return set(), _describe(error, self.settings)
        rejected = getattr(response, "rejected", 0) or 0
        if rejected:
            # 207: some were refused. Score ids are our feedback ids, so re-sending the batch
            # later overwrites the accepted ones instead of doubling them.
            errors = [getattr(e, "message", str(e)) for e in getattr(response, "errors", []) or []]
            return set(), f"Langfuse at {self.settings.host}: {rejected} score(s) rejected: {errors}"
        return {row["feedback_id"] for row in feedback}, None

    # -- background ---------------------------------------------------------------------------

    def start(self, interval_s: float = 5.0) -> None:
        if self._thread is not None:
            return

        def loop() -> None:
            delay = interval_s
            while not self._stop.wait(delay):
                try:
                    report = self.forward_pending()
                except Exception:  # never let the thread die: the rows stay pending
                    log.exception("forwarding to Langfuse failed")
                    report = ForwardReport(error="unexpected error")
                if report.ok:
                    delay = interval_s
                else:
                    delay = min(MAX_BACKOFF_S, delay * 2)
                    log.warning(
                        "Langfuse did not take pending traces (%s); retry in %.0f s", report.error, delay
                    )

        self._thread = threading.Thread(target=loop, name="cia-langfuse-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 1)
            self._thread = None


def _describe(error: Exception, settings: LangfuseConfig) -> str:
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    detail = f"HTTP {status}: {body}" if status else f"{type(error).__name__}: {error}"
    return f"Langfuse at {settings.host}: {detail}"[:2000]


# ---------------------------------------------------------------------------------------------
# Traces as OTLP spans with Langfuse's attributes
# ---------------------------------------------------------------------------------------------


def _span_id(trace_id: str, name: str) -> str:
    return hashlib.sha256(f"{trace_id}:{name}".encode()).hexdigest()[:16]


def _nanos(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1_000_000_000))


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
        else:
            wrapped = OtelAttributeValue(string_value=json.dumps(value, default=str))
        attributes.append(OtelAttribute(key=key, value=wrapped))
    return attributes


def _resource_spans(rows: list[dict[str, Any]]) -> Any:
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
        end = row["created_at"]
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        retrieval_ms = float(row["retrieval_ms"] or 0.0)
        generation_ms = float(row["generation_ms"] or 0.0)
        start = end - timedelta(milliseconds=retrieval_ms + generation_ms)
        retrieved = start + timedelta(milliseconds=retrieval_ms)
        root_id = _span_id(trace_id, "answer")
        spans.append(
            OtelSpan(
                trace_id=trace_id,
                span_id=root_id,
                name="cia-answer",
                kind=1,
                start_time_unix_nano=_nanos(start),
                end_time_unix_nano=_nanos(end),
                attributes=_attributes(
                    {
                        "langfuse.trace.name": "cia-answer",
                        "langfuse.trace.input": row["question"],
                        "langfuse.trace.output": row["answer"],
                        "langfuse.trace.tags": [row["interface"]],
                        "user.id": row["token_name"],
                        "langfuse.trace.metadata.repos": row["repos"],
                        "langfuse.trace.metadata.not_found": row["not_found"],
                        "langfuse.trace.metadata.citations": row["citations"],
                        "langfuse.trace.metadata.invalid_citations": row["invalid_citations"],
                        "langfuse.observation.type": "span",
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
                    }
                ),
            )
        )
        first_token = row.get("first_token_ms")
        usage = {
            key: value
            for key, value in (("input", row["prompt_tokens"]), ("output", row["completion_tokens"]))
            if value is not None
        }
        spans.append(
            OtelSpan(
                trace_id=trace_id,
                span_id=_span_id(trace_id, "generation"),
                parent_span_id=root_id,
                name="generation",
                kind=1,
                start_time_unix_nano=_nanos(retrieved),
                end_time_unix_nano=_nanos(end),
                attributes=_attributes(
                    {
                        "langfuse.observation.type": "generation",
                        "langfuse.observation.model.name": row["model"],
                        "langfuse.observation.input": row["question"],
                        "langfuse.observation.output": row["answer"],
                        "langfuse.observation.usage_details": {
                            k: v for k, v in usage.items() if v is not None
                        },
                        "langfuse.observation.completion_start_time": (
                            (start + timedelta(milliseconds=float(first_token))).isoformat()
                            if first_token is not None
                            else None
                        ),
                        "langfuse.observation.prompt.name": row["prompt_name"],
                        "langfuse.observation.prompt.version": row["prompt_version"],
                        "langfuse.observation.metadata.endpoint": row["endpoint"],
                    }
                ),
            )
        )
    return OtelResourceSpan(
        resource=OtelResource(attributes=_attributes({"service.name": "cia"})),
        scope_spans=[OtelScopeSpan(scope=OtelScope(name="cia", version="1"), spans=spans)],
    )


# ---------------------------------------------------------------------------------------------
# Prompt management
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedPrompt:
    messages: list[tuple[str, str]]  # (role, content) with {{sources}} and {{question}}
    version: str  # "langfuse:<version>"


_PROMPTS: dict[tuple[str, str, str], tuple[float, ManagedPrompt]] = {}


def fetch_prompt(settings: LangfuseConfig, name: str, label: str) -> ManagedPrompt | None:
    """The prompt `name` at `label` from Langfuse, cached for a minute; None when Langfuse is
    not configured or does not answer (the caller falls back to the packaged prompt)."""
    if not settings.enabled:
        return None
    key = (str(settings.host), name, label)
    cached = _PROMPTS.get(key)
    if cached and time.monotonic() - cached[0] < PROMPT_CACHE_S:
        return cached[1]
    try:
        prompt = _api(settings).prompts.get(name, label=label)
    except Exception as error:
        log.warning("could not fetch prompt %s@%s: %s", name, label, _describe(error, settings))
        return None
    if isinstance(prompt.prompt, str):
        messages = [("user", prompt.prompt)]
    else:
        messages = [
            (str(m.role), str(m.content)) for m in prompt.prompt if getattr(m, "content", None) is not None
        ]
    managed = ManagedPrompt(messages=messages, version=f"langfuse:{prompt.version}")
    _PROMPTS[key] = (time.monotonic(), managed)
    return managed
