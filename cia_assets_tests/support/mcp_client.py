"""`cia mcp` started over real stdio by the official `mcp` client, as an agent starts it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


@dataclass(frozen=True)
class CancelledCall:
    """A tool call the client cancels as soon as its first progress notification arrives, as
    an agent's user stops it (or its timeout passes): the session sends notifications/cancelled.
    Its result is `(None, "cancelled", None)`."""

    name: str
    arguments: dict[str, Any]


Call = tuple[str, dict[str, Any]] | CancelledCall | Callable[[], object]


def run_client(config_path: Path, token: str | None, calls: list[Call]) -> dict[str, Any]:
    """Start `cia mcp` the way an MCP client does (token in its env), list the tools and make
    the calls in one session; a callable in `calls` runs between two tool calls."""

    async def session_run() -> dict[str, Any]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("CIA_TOKEN", "CIA_SERVER_TOKEN", "CIA_CONFIG")
        }
        if token is not None:
            env["CIA_TOKEN"] = token
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "cia_assets.apps.cli", "mcp", "--config", str(config_path)],
            env=env,
        )
        out: dict[str, Any] = {"results": [], "progress": []}
        with open(config_path.parent / "mcp-server.log", "a") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                out["tools"] = {tool.name: tool for tool in (await session.list_tools()).tools}
                for call in calls:
                    if isinstance(call, CancelledCall):
                        await _call(session, call.name, call.arguments, out, cancel_on_progress=True)
                    elif callable(call):
                        call()
                    else:
                        await _call(session, *call, out)
        return out

    return anyio.run(session_run)


async def _call(
    session: ClientSession,
    name: str,
    arguments: dict[str, Any],
    out: dict[str, Any],
    *,
    cancel_on_progress: bool = False,
) -> None:
    """One tool call, its result and when each progress notification and the result arrived;
    with `cancel_on_progress`, cancelled at its first notification (result "cancelled")."""
    index = len(out["results"])
    progressed = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        # When each notification arrived, beside which call it belongs to.
        out["progress"].append((index, time.monotonic(), message))
        progressed.set()

    if cancel_on_progress:
        async with anyio.create_task_group() as calls:
            calls.start_soon(partial(session.call_tool, name, arguments, progress_callback=on_progress))
            await progressed.wait()
            calls.cancel_scope.cancel()  # the session sends notifications/cancelled for it
        out["results"].append((None, "cancelled", None))
    else:
        result = await session.call_tool(name, arguments, progress_callback=on_progress)
        text = "".join(getattr(part, "text", "") for part in result.content)
        out["results"].append((result.is_error, text, result.structured_content))
    out.setdefault("returned_at", []).append(time.monotonic())
