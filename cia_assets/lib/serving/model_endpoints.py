"""The learning loop's model endpoints (teacher, judge), resolved to something callable.

`base_url` names any OpenAI-compatible endpoint. Without it, `model` names a packaged model
(the teacher's default: Qwen2.5-Coder-1.5B-Instruct, larger than the 0.5B that answers), run
on a local llama.cpp server of its own for the length of the job; with neither, or `model`
being the served model, it is the live served endpoint, started on demand like any question
would start it. Every call goes through the `openai` client (`serving.egress`), so a hosted
API, vLLM, Ollama or llama.cpp plug in by configuration.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def model_endpoint(
    config: CiaConfig, settings: ModelEndpointConfig, *, role: str
) -> Iterator[ResolvedEndpoint]:
    """The endpoint `settings` (the `role`'s: teacher, judge) names, for the length of a job
    (see the module docstring). A packaged model's own server is stopped on exit."""
    from cia_assets.lib.serving.llm_server import local_model_names

    name = own_server_model(config, settings)
    if name is None:
        yield resolve_endpoint(config, settings)
        return
    if name not in local_model_names():
        known = ", ".join(local_model_names())
        raise ValueError(
            f"{config.config_path}: {role}.model: {name!r} is not a packaged model ({known}); "
            f"set {role}.base_url to serve another model"
        )
    from cia_assets.lib.serving.endpoint import EndpointSpec, temporary_endpoint

    own = packaged_model_config(config, name)
    with temporary_endpoint(own, EndpointSpec.from_config(own), note=f"{role}: {name}") as record:
        yield ResolvedEndpoint(
            base_url=record.base_url,
            model=record.request_model,
            api_key=None,
            engine=record.spec.engine,
            timeout_s=settings.request_timeout_s,
            max_tokens=settings.max_tokens,
        )


def own_server_model(config: CiaConfig, settings: ModelEndpointConfig) -> str | None:
    """The packaged model `settings` runs on a local server of its own, None when it is the
    served endpoint or one at `base_url`."""
    if settings.base_url or not settings.model or config.llm.engine != "llama_cpp":
        return None
    if settings.model == config.llm.model and config.llm.model_path is None:
        return None
    return settings.model


def packaged_model_config(config: CiaConfig, name: str) -> CiaConfig:
    """`config` with the packaged model `name` as its llama.cpp model, with no adapter, in its
    4-bit weights as shipped: a teacher or judge writes long replies, which the 4-bit file
    writes faster than a bf16 copy (and needs no conversion)."""
    llm = config.llm.model_copy(
        update={
            "model": name,
            "model_path": None,
            "adapter": None,
            "adapter_version": None,
            "precision": "packaged",
        }
    )
    return config.model_copy(update={"llm": llm})


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
