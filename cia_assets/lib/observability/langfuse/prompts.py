"""Managed prompts: the answering prompt fetched from Langfuse prompt management by name and
label (`GET /api/public/v2/prompts/{name}?label=`, the call `Langfuse.get_prompt` makes), and
the cache that keeps a down Langfuse from delaying each question.

We skip the SDK's `Langfuse` object: it is a singleton per public key (a second one for another
host silently reuses the first host), it starts tracer and consumer threads, and it retries a
dead host three times per question. The cache is an object its owner (an answerer, a dataset
run) holds, not a module-level one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cia_assets.config import LangfuseConfig
from cia_assets.lib.observability.langfuse.client import (
    api_client,
    describe_error,
    http_client,
    request_options,
)

log = logging.getLogger(__name__)

PROMPT_TTL_S = 60.0  # a fetched prompt is used this long before it is fetched again
PROMPT_RETRY_S = 30.0  # after a failed fetch, the next question does not wait on Langfuse again


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


class PromptCache:
    """Managed prompts fetched from Langfuse, per host, public key, name and label; safe to
    share between threads."""

    def __init__(self) -> None:
        self._prompts: dict[tuple[str, str, str, str], _Cached] = {}
        self._lock = threading.Lock()

    def fetch(self, settings: LangfuseConfig, name: str, label: str) -> ManagedPrompt | None:
        """The prompt `name` at `label` from Langfuse prompt management, or None when Langfuse is
        not configured or cannot give it (a warning names the host; the caller then uses the
        packaged prompt). A fetched prompt is reused for PROMPT_TTL_S; when a later fetch fails,
        the last one fetched is kept (as the SDK does), and Langfuse is not asked again for
        PROMPT_RETRY_S, so a down Langfuse never delays each question by a timeout."""
        if not settings.enabled:
            return None
        key = (str(settings.host), str(settings.public_key), name, label)
        now = time.monotonic()
        with self._lock:
            cached = self._prompts.setdefault(key, _Cached())
            if now - cached.fetched_at < PROMPT_TTL_S or now - cached.failed_at < PROMPT_RETRY_S:
                return cached.prompt
        try:
            with http_client(settings) as http:
                # As Langfuse.get_prompt does: quote "/" too, for prompts in folders.
                response = api_client(settings, http).prompts.get(
                    urllib.parse.quote(name, safe=""),
                    label=label,
                    request_options=request_options(settings.timeout_s),
                )
            prompt = _managed(response, name, label)
        except Exception as error:
            with self._lock:
                cached.failed_at = time.monotonic()
                kept = cached.prompt
            fallback = f"keeping {kept.version} fetched before" if kept else "no managed prompt"
            log.warning(
                "could not fetch prompt %s@%s from %s; %s",
                name,
                label,
                describe_error(error, settings),
                fallback,
            )
            return kept
        with self._lock:
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
