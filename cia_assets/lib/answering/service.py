"""What the chat app, `cia ask` and the MCP server share: one Answerer per config, traces
recorded in the local store first and forwarded to Langfuse when it is configured."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.answer import Answer, AskRequest
from cia_assets.lib.answering.answerer import Answerer
from cia_assets.lib.core.project import Project
from cia_assets.lib.observability.metrics import AnswerMetrics
from cia_assets.lib.observability.traces import TraceRecord, TraceStore, TraceStoreError

log = logging.getLogger(__name__)


class AssistantService:
    """The answering service with its trace store and (optional) Langfuse forwarder."""

    def __init__(
        self,
        config: CiaConfig,
        *,
        forward_in_background: bool = False,
        metrics: AnswerMetrics | None = None,
        project: Project | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = TraceStore(config.layout.traces)
        # Checked at start, then kept current by each answer's recording: /healthz and
        # `cia ask` say when answers are not being recorded (and so carry no trace id).
        self.trace_problem: str | None = self.store.problem()
        if self.trace_problem:
            log.error("%s", self.trace_problem)
        self.forwarder: Any = None
        if config.langfuse.enabled:
            from cia_assets.lib.observability.langfuse import LangfuseForwarder

            self.forwarder = LangfuseForwarder(config.langfuse, self.store)
            if forward_in_background:
                self.forwarder.start()
        self.answerer = Answerer(config, trace_sink=self._record, project=project)
        self._lock = threading.Lock()
        self.warmed = threading.Event()  # set once `warm_up` has run

    def warm_up(self) -> None:
        """The answerer's `warm_up`, with a failure only logged: the first question will say
        what is wrong, to the person who asked."""
        try:
            self.answerer.warm_up()
        except Exception as error:
            log.warning("warming up the search failed: %s", error)
        finally:
            self.warmed.set()

    def _record(self, request: AskRequest, answer: Answer, details: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.observe(request.interface, answer)
        timings = answer.timings_ms
        try:
            self._add_trace(request, answer, details, timings)
        except TraceStoreError as error:
            self.trace_problem = str(error)
            raise
        self.trace_problem = None

    def _add_trace(
        self, request: AskRequest, answer: Answer, details: dict[str, Any], timings: dict[str, float]
    ) -> None:
        self.store.add_trace(
            TraceRecord(
                trace_id=answer.trace_id,
                created_at=datetime.now(UTC),
                interface=request.interface,
                token_name=request.grant.name,
                question=request.question,
                repos=list(details.get("repos", [])),
                answer=answer.answer,
                not_found=answer.not_found,
                model=answer.model,
                endpoint=str(details.get("endpoint", "")),
                prompt_name=str(details.get("prompt_name", "")),
                prompt_version=str(details.get("prompt_version", "")),
                hits=[
                    {k: hit[k] for k in ("repo", "path", "line_start", "line_end", "symbol", "score")}
                    for hit in details.get("hits", [])
                ],
                citations=[c.to_json() for c in answer.citations],
                invalid_citations=list(answer.invalid_citations),
                retrieval_ms=float(timings.get("retrieval_ms", 0.0)),
                generation_ms=float(timings.get("generation_ms", 0.0)),
                first_token_ms=timings.get("first_token_ms"),
                prompt_tokens=answer.usage.get("prompt_tokens"),
                completion_tokens=answer.usage.get("completion_tokens"),
                error=None,
                grounding_checked=answer.grounding_checked,
                ungrounded=list(answer.ungrounded),
                abstained=details.get("abstained"),
                sources_ms=timings.get("sources_ms"),
            )
        )

    def flush(self) -> None:
        """Forward what is pending now, bounded by Langfuse's timeout (CLI exits); what
        Langfuse does not take stays in the store for the next forwarder."""
        if self.forwarder is not None:
            report = self.forwarder.flush()
            if not report.ok:
                log.warning("traces stay in %s for later: %s", self.store.path, report.error)

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self.answerer.close()
