"""The forwarder: sends the trace store's pending traces and feedback to Langfuse, marking a
row forwarded only when Langfuse answered 2xx for it, and keeps doing so in the background.

- traces: `POST /api/public/otel/v1/traces` (encoded by `otlp`); a reply with
  `partialSuccess.rejectedSpans` counts as a refusal.
- feedback: `POST /api/public/scores`, a batch of `user-feedback` scores (+1/-1) on the
  trace; 202 = all accepted, 207 = some refused.

A batch refused as invalid (400/413/422, or a 207) is split until the refused row is found;
only that row is marked rejected, so it never blocks the rows behind it. Everything else
(401/403, 404, 5xx, timeouts, network errors) keeps the whole batch pending, and the
background loop backs off until Langfuse answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cia_assets.config import LangfuseConfig
from cia_assets.lib.observability.langfuse import otlp
from cia_assets.lib.observability.langfuse.client import (
    api_client,
    describe_error,
    error_detail,
    http_client,
    request_options,
)
from cia_assets.lib.observability.langfuse.scores import SCORE_NAME, VOTER_KEY

if TYPE_CHECKING:
    # Only for annotations: importing the package does not load the store (and DuckDB).
    from cia_assets.lib.observability.traces import TraceStore

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
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


class LangfuseForwarder:
    """Sends pending traces and feedback from the store to Langfuse (see the package docstring);
    `start()` keeps doing so in a daemon thread, backing off while Langfuse is down."""

    def __init__(self, settings: LangfuseConfig, store: TraceStore, batch_size: int = 50) -> None:
        self.settings = settings
        self.store = store
        self.batch_size = batch_size
        self._http = http_client(settings)
        self._api = api_client(settings, self._http)
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
            message = describe_error(error, self.settings)
            self.store.mark_failed(*marks(ids), message)
            return 0, 0, message
        self.store.mark_forwarded(*marks(ids))
        return len(ids), 0, None

    def _send_traces(self, rows: list[dict[str, Any]], timeout_s: float) -> None:
        try:
            response = self._api.opentelemetry.export_traces(
                resource_spans=[otlp.resource_spans(rows)], request_options=request_options(timeout_s)
            )
        except Exception as error:
            if getattr(error, "status_code", None) in _INVALID_STATUSES:
                raise _Refused(error_detail(error)) from error
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
                metadata={"source": row["source"], VOTER_KEY: row["voter"]},
            )
            for row in rows
        ]
        try:
            response = self._api.scores.create(request=request, request_options=request_options(timeout_s))
        except Exception as error:
            if getattr(error, "status_code", None) in _INVALID_STATUSES:
                raise _Refused(error_detail(error)) from error
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
