"""Langfuse: traces and feedback forwarded from the local store, prompts fetched by label.

Why the SDK's REST client and not its tracer: Langfuse's Python SDK (5.x here) exports
traces through OpenTelemetry's batch processor in a background thread, and an export that a
down or misconfigured server refuses is logged and dropped: the caller never learns of it.
The same SDK ships a generated REST client (`langfuse.api.client.LangfuseAPI`, the object
behind `Langfuse().api`) whose calls return or raise per request, so a row of the local
store is marked forwarded only when Langfuse answered 2xx for it:

- traces: `POST /api/public/otel/v1/traces`, OTLP/HTTP with JSON encoding, the endpoint
  the SDK's own exporter posts to (with the same `x-langfuse-ingestion-version: 4` header).
  One trace per question: a root span `cia-answer` with a `retrieval` span (query in, hits
  out) and a `generation` (model, usage, time to first token). A reply with
  `partialSuccess.rejectedSpans` counts as a refusal.
- feedback: `POST /api/public/scores`, a batch of `user-feedback` scores (+1/-1) on the
  trace; 202 = all accepted, 207 = some refused.
- prompts: `GET /api/public/v2/prompts/{name}?label=`, the call `Langfuse.get_prompt`
  makes. We skip the `Langfuse` object: it is a singleton per public key (a second one for
  another host silently reuses the first host), it starts tracer and consumer threads, and
  it retries a dead host three times per question.

Delivery is at least once with stable ids (span ids derived from the trace id; score id =
feedback id, sent with its original timestamp), so a re-send after a lost reply overwrites
in Langfuse instead of duplicating. The client's own retries are off: a down Langfuse costs
one request per attempt, and the forwarder's backoff does the retrying. A batch refused as
invalid (400/413/422, or a 207) is split until the refused row is found; only that row is
marked rejected, so it never blocks the rows behind it. Everything else (401/403, 404, 5xx,
timeouts, network errors) keeps the whole batch pending.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cia_assets.config import LangfuseConfig
from cia_assets.lib.observability.traces import TraceStore

if TYPE_CHECKING:
    import httpx
    from langfuse.api.client import LangfuseAPI
    from langfuse.api.core.request_options import RequestOptions

log = logging.getLogger(__name__)

SCORE_NAME = "user-feedback"
TRACE_NAME = "cia-answer"
MAX_BACKOFF_S = 60.0
PROMPT_TTL_S = 60.0  # a fetched prompt is used this long before it is fetched again
PROMPT_RETRY_S = 30.0  # after a failed fetch, the next question does not wait on Langfuse again
# Statuses that mean "this payload is wrong", as opposed to "Langfuse cannot take it now".
_INVALID_STATUSES = {400, 413, 422}


@dataclass(frozen=True)
class ForwardReport:
    """What one forwarding pass did. `error`: why it stopped with rows still pending."""

    traces: int = 0
    feedback: int = 0
    rejected: int = 0
    error: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class _Refused(Exception):
    """Langfuse refused the payload itself: re-sending it unchanged cannot succeed."""


def _http(settings: LangfuseConfig) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=settings.timeout_s, follow_redirects=True)


def _client(settings: LangfuseConfig, http: httpx.Client) -> LangfuseAPI:
    from langfuse import __version__
    from langfuse.api.client import LangfuseAPI

    if not (settings.host and settings.public_key and settings.secret_key):
        raise ValueError("Langfuse is not configured: host, public_key and secret_key are needed")
    return LangfuseAPI(
        base_url=settings.host.rstrip("/"),
        username=settings.public_key,
        password=settings.secret_key,
        x_langfuse_public_key=settings.public_key,
        x_langfuse_sdk_name="cia",
        x_langfuse_sdk_version=__version__,
        # Langfuse asks direct OTLP exporters to say which ingestion version they speak.
        headers={"x-langfuse-ingestion-version": "4"},
        httpx_client=http,
        timeout=settings.timeout_s,
    )


def _options(timeout_s: float) -> RequestOptions:
    # No client-side retries: the forwarder's backoff retries, and a question never waits on them.
    return {"max_retries": 0, "timeout_in_seconds": max(1, math.ceil(timeout_s))}


def _detail(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    if not status:
        return f"{type(error).__name__}: {error}"
    hint = {
        401: " (check langfuse.public_key and secret_key)",
        403: " (check langfuse.public_key and secret_key)",
        404: " (is langfuse.host a Langfuse 3+ server?)",
    }.get(status, "")
    return f"HTTP {status}: {getattr(error, 'body', None)}{hint}"


def _describe(error: BaseException, settings: LangfuseConfig) -> str:
    return f"Langfuse at {settings.host}: {_detail(error)}"[:2000]


class LangfuseForwarder:
    """Sends pending traces and feedback from the store to Langfuse (see the module docstring);
    `start()` keeps doing so in a daemon thread, backing off while Langfuse is down."""

    def __init__(self, settings: LangfuseConfig, store: TraceStore, batch_size: int = 50) -> None:
        self.settings = settings
        self.store = store
        self.batch_size = batch_size
        self._http = _http(settings)
        self._api = _client(settings, self._http)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -----------------------------------------------------------------------------

    def forward_pending(self, *, deadline: float | None = None) -> ForwardReport:
        """Send everything pending, batch by batch, until done, until Langfuse fails (the rows
        stay pending with the error), or until `deadline` (time.monotonic())."""
        with self._lock:
            return self._forward(deadline)

    def flush(self, timeout_s: float | None = None) -> ForwardReport:
        """Forward what is pending, for a CLI about to exit: bounded by `timeout_s` (default
        `settings.timeout_s`) plus at most one request's timeout, never raising."""
        bound = self.settings.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + bound
        if not self._lock.acquire(timeout=bound):
            return ForwardReport(error="another forwarding pass is still running", timed_out=True)
        try:
            return self._forward(deadline)
        except Exception as error:  # the store is busy, say: the rows stay pending
            return ForwardReport(error=f"{type(error).__name__}: {error}")
        finally:
            self._lock.release()

    def _forward(self, deadline: float | None) -> ForwardReport:
        sent_traces = sent_feedback = rejected = 0

        def report(error: str | None = None, timed_out: bool = False) -> ForwardReport:
            return ForwardReport(sent_traces, sent_feedback, rejected, error, timed_out)

        while True:
            traces, feedback = self.store.pending(self.batch_size)
            if not traces and not feedback:
                return report()
            for rows, kind in ((traces, "traces"), (feedback, "feedback")):
                if not rows:
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    return report(timed_out=True)
                accepted, refused, error = self._deliver(rows, kind, deadline)
                rejected += refused
                if kind == "traces":
                    sent_traces += accepted
                else:
                    sent_feedback += accepted
                if error is not None:
                    return report(error)

    def _deliver(
        self, rows: list[dict[str, Any]], kind: str, deadline: float | None
    ) -> tuple[int, int, str | None]:
        """Send `rows`; returns (accepted, rejected, error that stopped it)."""
        key = "trace_id" if kind == "traces" else "feedback_id"
        ids = [row[key] for row in rows]
        marks: Callable[[list[str]], tuple[list[str], list[str]]] = (
            (lambda chosen: (chosen, [])) if kind == "traces" else (lambda chosen: ([], chosen))
        )
        timeout_s = self.settings.timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, max(0.0, deadline - time.monotonic()))
        try:
            if kind == "traces":
                self._send_traces(rows, timeout_s)
            else:
                self._send_scores(rows, timeout_s)
        except _Refused as refusal:
            if len(rows) > 1:  # find the row(s) Langfuse refuses; the others go through
                half = len(rows) // 2
                first = self._deliver(rows[:half], kind, deadline)
                if first[2] is not None:
                    return first
                second = self._deliver(rows[half:], kind, deadline)
                return first[0] + second[0], first[1] + second[1], second[2]
            noun = "trace" if kind == "traces" else "feedback"
            message = f"Langfuse at {self.settings.host} refused {noun} {ids[0]}: {refusal}"
            log.warning("%s; it stays in %s and is not retried", message, self.store.path)
            self.store.mark_rejected(*marks(ids), message)
            return 0, 1, None
        except Exception as error:
            message = _describe(error, self.settings)
            self.store.mark_failed(*marks(ids), message)
            return 0, 0, message
        self.store.mark_forwarded(*marks(ids))
        return len(ids), 0, None

    def _send_traces(self, rows: list[dict[str, Any]], timeout_s: float) -> None:
        try:
            response = self._api.opentelemetry.export_traces(
                resource_spans=[_resource_spans(rows)], request_options=_options(timeout_s)
            )
        except Exception as error:
            if getattr(error, "status_code", None) in _INVALID_STATUSES:
                raise _Refused(_detail(error)) from error
            raise
        # OTLP partial success: {"partialSuccess": {"rejectedSpans": n, "errorMessage": ...}}
        partial = (response.model_extra or {}).get("partialSuccess") or {}
        if int(partial.get("rejectedSpans") or 0):
            raise _Refused(f"{partial.get('rejectedSpans')} span(s) rejected: {partial.get('errorMessage')}")

    def _send_scores(self, rows: list[dict[str, Any]], timeout_s: float) -> None:
        from langfuse.api.commons.types.score_data_type import ScoreDataType
        from langfuse.api.scores.types.create_score_request import CreateScoreRequest

        request = [
            CreateScoreRequest(
                id=row["feedback_id"],
                # Langfuse overwrites a score re-sent with the same id and timestamp.
                timestamp=row["created_at"],
                trace_id=row["trace_id"],
                name=SCORE_NAME,
                value=float(row["value"]),
                data_type=ScoreDataType.NUMERIC,
                comment=row["comment"],
                metadata={"source": row["source"]},
            )
            for row in rows
        ]
        try:
            response = self._api.scores.create(request=request, request_options=_options(timeout_s))
        except Exception as error:
            if getattr(error, "status_code", None) in _INVALID_STATUSES:
                raise _Refused(_detail(error)) from error
            raise
        rejected = getattr(response, "rejected", 0)
        if rejected:  # 207; Langfuse does not say which ones
            errors = [getattr(e, "message", str(e)) for e in getattr(response, "errors", None) or []]
            raise _Refused(f"{rejected} score(s) rejected: {errors}")

    # -- in the background ------------------------------------------------------------------

    def start(self, interval_s: float = 5.0) -> None:
        """Forward in a daemon thread now and every `interval_s`; while Langfuse fails, wait
        twice as long each time, up to MAX_BACKOFF_S. Logs when Langfuse goes away and back."""
        if self._thread is not None and self._thread.is_alive():
            return
        stop = self._stop = threading.Event()

        def loop() -> None:
            delay = 0.0
            failing = False
            while not stop.wait(delay):
                try:
                    report = self.forward_pending()
                except Exception as error:  # e.g. the store is busy: the rows stay pending
                    report = ForwardReport(error=f"{type(error).__name__}: {error}")
                if report.ok:
                    if failing:
                        log.info("Langfuse at %s takes traces again", self.settings.host)
                    failing, delay = False, interval_s
                else:
                    delay = min(MAX_BACKOFF_S, max(interval_s, delay * 2))
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "traces stay in %s for now: %s; retrying in %.0f s",
                        self.store.path,
                        report.error,
                        delay,
                    )
                    failing = True

        self._thread = threading.Thread(target=loop, name="cia-langfuse-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 1)
            self._thread = None

    def close(self) -> None:
        """Stop the thread and close the HTTP connections."""
        self.stop()
        self._http.close()


# ---------------------------------------------------------------------------------------------
# Traces as OTLP spans with Langfuse's attributes
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Prompt management
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedPrompt:
    """A prompt from Langfuse: chat messages, or a text prompt as one user message, with
    `{{sources}}` and `{{question}}` placeholders."""

    messages: list[tuple[str, str]]  # (role, content)
    version: str  # "langfuse:<version>"
    name: str = ""
    label: str = ""
    prompt_type: str = "chat"  # chat | text


@dataclass
class _Cached:
    prompt: ManagedPrompt | None = None
    fetched_at: float = -math.inf
    failed_at: float = -math.inf


_PROMPTS: dict[tuple[str, str, str, str], _Cached] = {}
_PROMPTS_LOCK = threading.Lock()


def clear_prompt_cache() -> None:
    with _PROMPTS_LOCK:
        _PROMPTS.clear()


def fetch_prompt(settings: LangfuseConfig, name: str, label: str) -> ManagedPrompt | None:
    """The prompt `name` at `label` from Langfuse prompt management, or None when Langfuse is
    not configured or cannot give it (a warning names the host; the caller then uses the
    packaged prompt). A fetched prompt is reused for PROMPT_TTL_S; when a later fetch fails,
    the last one fetched is kept (as the SDK does), and Langfuse is not asked again for
    PROMPT_RETRY_S, so a down Langfuse never delays each question by a timeout."""
    if not settings.enabled:
        return None
    key = (str(settings.host), str(settings.public_key), name, label)
    now = time.monotonic()
    with _PROMPTS_LOCK:
        cached = _PROMPTS.setdefault(key, _Cached())
        if now - cached.fetched_at < PROMPT_TTL_S or now - cached.failed_at < PROMPT_RETRY_S:
            return cached.prompt
    try:
        with _http(settings) as http:
            # As Langfuse.get_prompt does: quote "/" too, for prompts in folders.
            response = _client(settings, http).prompts.get(
                urllib.parse.quote(name, safe=""), label=label, request_options=_options(settings.timeout_s)
            )
        prompt = _managed(response, name, label)
    except Exception as error:
        with _PROMPTS_LOCK:
            cached.failed_at = time.monotonic()
            kept = cached.prompt
        fallback = f"keeping {kept.version} fetched before" if kept else "no managed prompt"
        log.warning(
            "could not fetch prompt %s@%s from %s; %s", name, label, _describe(error, settings), fallback
        )
        return kept
    with _PROMPTS_LOCK:
        cached.prompt, cached.fetched_at, cached.failed_at = prompt, time.monotonic(), -math.inf
    return prompt


def _managed(response: Any, name: str, label: str) -> ManagedPrompt:
    if isinstance(response.prompt, str):  # a text prompt
        messages = [("user", response.prompt)]
        prompt_type = "text"
    else:  # chat; placeholder entries (no content) are for callers that insert messages
        messages = [
            (str(m.role), str(m.content)) for m in response.prompt if getattr(m, "content", None) is not None
        ]
        prompt_type = "chat"
    if not messages:
        raise ValueError(f"prompt {name}@{label} has no messages")
    return ManagedPrompt(
        messages=messages,
        version=f"langfuse:{response.version}",
        name=name,
        label=label,
        prompt_type=prompt_type,
    )


def feedback_scores_since(
    settings: LangfuseConfig, since: datetime | None, max_pages: int = 20
) -> list[datetime]:
    """Timestamps of user-feedback scores in Langfuse newer than `since`: votes from the chat
    app (forwarded) and annotations made in Langfuse's UI. Raises when Langfuse does not answer."""
    http = _http(settings)
    try:
        api = _client(settings, http)
        found: list[datetime] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = api.scores.get_many(
                name=SCORE_NAME,
                limit=100,
                cursor=cursor,
                from_timestamp=since,
                request_options=_options(settings.timeout_s),
            )
            found += [s.timestamp for s in page.data if since is None or s.timestamp > since]
            cursor = getattr(page.meta, "cursor", None)
            if not cursor:
                break
        return found
    finally:
        http.close()
