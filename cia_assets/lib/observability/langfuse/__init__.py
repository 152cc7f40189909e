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

The modules: `client` (the REST client, request options, error descriptions), `otlp` (trace
rows as OTLP spans), `forwarder` (`LangfuseForwarder`), `prompts` (`ManagedPrompt`,
`PromptCache`), `scores` (`SCORE_NAME`, `feedback_scores_since`). Importing this package
loads neither the SDK nor the trace store; each call imports what it needs.
"""

from __future__ import annotations

from cia_assets.lib.observability.langfuse.forwarder import ForwardReport, LangfuseForwarder
from cia_assets.lib.observability.langfuse.otlp import TRACE_NAME
from cia_assets.lib.observability.langfuse.prompts import ManagedPrompt, PromptCache
from cia_assets.lib.observability.langfuse.scores import SCORE_NAME, feedback_scores_since

__all__ = [
    "SCORE_NAME",
    "TRACE_NAME",
    "ForwardReport",
    "LangfuseForwarder",
    "ManagedPrompt",
    "PromptCache",
    "feedback_scores_since",
]
