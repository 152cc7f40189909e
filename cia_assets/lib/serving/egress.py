"""The one way out to a model endpoint: every `openai` client CIA makes (answering, the
teacher, the judge, the re-ranker, evaluation) is made here, and its HTTP transport redacts
the text of each request bound for a host off this machine, like a DLP filter at an egress
proxy. Nothing needs to remember to redact before calling a remote model.

The decision is per request, by the host the request goes to (a redirect to another host is
judged again); `localhost` and loopback addresses are this machine, anything else is not
(`model_endpoints.is_loopback_url`). The text redacted is what a model reads: the messages'
content, `prompt` and `input`. A context block in the answering prompt's format
(`citations.format_sources`) is scanned as the file it shows, so detect-secrets reads a
YAML or .env file's bare values; other text is scanned as text of unknown origin
(`redaction.redact_texts`). A body that is not JSON is refused for such a host: it cannot be read,
so it cannot be checked.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import httpx

from cia_assets.lib.learning.redaction import redact_texts
from cia_assets.lib.serving.model_endpoints import is_loopback_url

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)


class EgressRefused(RuntimeError):
    """A request to a host off this machine whose body could not be checked for secrets."""


def openai_client(base_url: str, *, api_key: str | None, timeout_s: float, max_retries: int) -> openai.OpenAI:
    import openai

    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "unused",  # the client refuses a missing key; local servers ignore it
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=openai.DefaultHttpxClient(transport=_RedactingTransport()),
    )


def async_openai_client(
    base_url: str, *, api_key: str | None, timeout_s: float, max_retries: int
) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "unused",
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=openai.DefaultAsyncHttpxClient(transport=_AsyncRedactingTransport()),
    )


def redact_request_body(body: bytes, host: str) -> tuple[bytes, int]:
    """The JSON body with the text a model reads redacted (see the module docstring)."""
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise EgressRefused(
            f"refusing to send {host} a body that is not JSON: it cannot be checked"
        ) from error
    if not isinstance(payload, dict):
        return body, 0
    # Where a model's text sits: (container, key) pairs, read and written back together.
    slots: list[tuple[Any, Any]] = []
    for message in payload.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            slots.append((message, "content"))
        elif isinstance(content, list):  # parts: {"type": "text", "text": ...}
            slots += [
                (part, "text")
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
    for key in ("prompt", "input"):
        value = payload.get(key)
        if isinstance(value, str):
            slots.append((payload, key))
        elif isinstance(value, list):
            slots += [(value, n) for n, item in enumerate(value) if isinstance(item, str)]
    texts, found = redact_texts([container[key] for container, key in slots])
    if not found:
        return body, 0
    for (container, key), text in zip(slots, texts, strict=True):
        container[key] = text
    return json.dumps(payload).encode(), found


def _outbound(request: httpx.Request, body: bytes) -> httpx.Request:
    if not body or is_loopback_url(str(request.url)):
        return request
    cleaned, found = redact_request_body(body, request.url.host)
    if not found:
        return request
    log.info("redacted %d secret(s) from a request to %s", found, request.url.host)
    headers = httpx.Headers(request.headers)
    headers["Content-Length"] = str(len(cleaned))
    return httpx.Request(
        request.method, request.url, headers=headers, content=cleaned, extensions=request.extensions
    )


class _RedactingTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(_outbound(request, request.read()))

    def close(self) -> None:
        self._inner.close()


class _AsyncRedactingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(_outbound(request, await request.aread()))

    async def aclose(self) -> None:
        await self._inner.aclose()
