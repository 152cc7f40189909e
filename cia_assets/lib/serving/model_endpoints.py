"""The learning loop's model endpoints (teacher, judge), resolved to something callable.

Unset `base_url` means the live served endpoint (the packaged model in the embedded default),
started on demand like any question would start it. Every call goes through the `openai`
client, so a hosted API, vLLM, Ollama or llama.cpp plug in by configuration.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cia_assets.config import CiaConfig, ModelEndpointConfig, RerankerConfig

if TYPE_CHECKING:
    from cia_assets.lib.retrieval.rerank import LlmReranker
    from cia_assets.lib.serving.endpoint import EndpointRecord


def is_loopback_url(url: str) -> bool:
    """The endpoint is on this machine (localhost or a loopback address): what is sent there
    does not leave it. Any other host, private ranges included, counts as leaving."""
    host = (urlparse(url).hostname or "").lower()
    # Only the name itself: `*.localhost` is not pinned to loopback by every resolver (a pod's
    # search domains send it to the cluster's DNS).
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reranker_of(config: CiaConfig) -> LlmReranker | None:
    """The configured file re-ranker (`retrieval.reranker`), None when it is off."""
    settings: RerankerConfig = config.retrieval.reranker
    if not settings.base_url or not settings.model:
        return None
    from cia_assets.lib.retrieval.rerank import LlmReranker

    endpoint = ResolvedEndpoint(
        settings.base_url, settings.model, settings.api_key, "openai", settings.request_timeout_s, 1
    )
    return LlmReranker(endpoint.client(), settings.model, weight=settings.weight)


@dataclass(frozen=True)
class ResolvedEndpoint:
    base_url: str
    model: str
    api_key: str | None
    engine: str  # llama_cpp for the local server, else openai-compatible
    timeout_s: float
    max_tokens: int

    @property
    def label(self) -> str:
        return f"{self.model}@{self.base_url}"

    def client(self) -> Any:
        from cia_assets.lib.serving.egress import openai_client

        return openai_client(self.base_url, api_key=self.api_key, timeout_s=self.timeout_s, max_retries=2)

    def complete_json(self, messages: list[dict[str, str]], schema: dict[str, Any] | None = None) -> str:
        """The reply's text, asked for as JSON. llama.cpp is held to `schema` by a grammar;
        other servers get JSON mode, which every OpenAI-compatible server accepts."""
        response_format: dict[str, Any] = {"type": "json_object"}
        if self.engine == "llama_cpp" and schema is not None:
            response_format["schema"] = schema
        response = self.client().chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=0.0,
            response_format=response_format,
        )
        return response.choices[0].message.content or ""


def resolve_endpoint(config: CiaConfig, settings: ModelEndpointConfig) -> ResolvedEndpoint:
    if settings.base_url:
        return ResolvedEndpoint(
            base_url=settings.base_url.rstrip("/"),
            model=settings.model or "",  # the config requires it with base_url
            api_key=settings.api_key,
            engine="openai",
            timeout_s=settings.request_timeout_s,
            max_tokens=settings.max_tokens,
        )
    from cia_assets.lib.serving.endpoint import ensure_endpoint

    record = ensure_endpoint(config)
    return ResolvedEndpoint(
        base_url=record.base_url,
        model=settings.model or record.request_model,
        api_key=None if record.is_local else config.llm.api_key,
        engine=record.engine,
        timeout_s=settings.request_timeout_s,
        max_tokens=settings.max_tokens,
    )


def remote_endpoint_record(
    config: CiaConfig, settings: ModelEndpointConfig, *, origin: str
) -> EndpointRecord:
    """An `EndpointRecord` for the remote endpoint at `settings.base_url`, so the answering path
    can ask it questions (evaluation answers with the teacher this way). It is never made live,
    and nothing is started or health-checked; unset `model` means `llm.model`."""
    from cia_assets.lib.core.records import utc_now
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

    assert settings.base_url
    model = settings.model or config.llm.model
    spec = EndpointSpec(engine="openai", model=model, base_url=settings.base_url.rstrip("/"))
    return EndpointRecord(
        version=0, spec=spec, base_url=spec.base_url or "", started_at=utc_now(), origin=origin
    )


def describe(endpoint: ResolvedEndpoint) -> str:
    return json.dumps({"model": endpoint.model, "base_url": endpoint.base_url, "engine": endpoint.engine})
