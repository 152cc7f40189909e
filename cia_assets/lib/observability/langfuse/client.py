"""The Langfuse REST client every Langfuse call here goes through: its construction from the
settings, per-request options, and error descriptions that name the host and the likely fix.

The SDK's generated client (`langfuse.api.client.LangfuseAPI`) is imported when a client is
made, not with this module, so configuring nothing costs nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cia_assets.config import LangfuseConfig

if TYPE_CHECKING:
    import httpx
    from langfuse.api.client import LangfuseAPI
    from langfuse.api.core.request_options import RequestOptions


def http_client(settings: LangfuseConfig) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=settings.timeout_s, follow_redirects=True)


def api_client(settings: LangfuseConfig, http: httpx.Client) -> LangfuseAPI:
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


def request_options(timeout_s: float) -> RequestOptions:
    # No client-side retries: the forwarder's backoff retries, and a question never waits on them.
    return {"max_retries": 0, "timeout_in_seconds": max(1, math.ceil(timeout_s))}


def error_detail(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    if not status:
        return f"{type(error).__name__}: {error}"
    hint = {
        401: " (check langfuse.public_key and secret_key)",
        403: " (check langfuse.public_key and secret_key)",
        404: " (is langfuse.host a Langfuse 3+ server?)",
    }.get(status, "")
    return f"HTTP {status}: {getattr(error, 'body', None)}{hint}"


def describe_error(error: BaseException, settings: LangfuseConfig) -> str:
    return f"Langfuse at {settings.host}: {error_detail(error)}"[:2000]
