"""The MCP server (stdio): `search_code` and `ask_codebase` for IDE agents.

Stdio has no request headers, so the token travels the way MCP clients pass secrets: in the
server's environment, `CIA_TOKEN`. It is checked against the current cia.yaml on every tool
call, so a revoked or narrowed token takes effect without restarting the agent. Example
client configuration (Claude Desktop, Continue, Cursor use this shape):

    {"mcpServers": {"cia": {
        "command": "/path/to/checkout/.venv/bin/cia",
        "args": ["mcp", "--config", "/path/to/checkout/cia.yaml"],
        "env": {"CIA_TOKEN": "<a token from chat.tokens>"}}}}

stdout is the protocol: logs go to stderr only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV_VAR = "CIA_TOKEN"
MAX_TEXT_CHARS = 4000


def build_server(config_path: Path) -> Any:
    import anyio
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from cia_assets.chat.service import AssistantService
    from cia_assets.config import CiaConfig, ConfigError, load_config
    from cia_assets.lib.access import AccessDenied, Grant, authorize
    from cia_assets.lib.answering import AnswerError, AskRequest
    from cia_assets.lib.search import SearchError, search_code

    server: Any = MCPServer(
        name="cia",
        instructions=(
            "CIA answers questions about this organisation's code, citing files and line ranges. "
            "Use search_code to find where something is implemented, ask_codebase for an explained "
            "answer with verified citations."
        ),
    )
    services: dict[int, AssistantService] = {}

    def caller() -> tuple[CiaConfig, Grant]:
        try:
            config = load_config(config_path)
            return config, authorize(config, os.environ.get(TOKEN_ENV_VAR))
        except (AccessDenied, ConfigError) as error:
            raise ToolError(f"{error} (the MCP server reads its token from ${TOKEN_ENV_VAR})") from error

    def service_for(config: CiaConfig) -> AssistantService:
        if id(config) not in services:
            for old in services.values():
                old.close()
            services.clear()
            services[id(config)] = AssistantService(config)
        return services[id(config)]

    @server.tool(name="search_code")
    async def search_code_tool(query: str, repo: str | None = None, k: int = 10) -> str:
        """Hybrid (semantic + identifier) search over the indexed code this token may read.

        Returns a JSON list of the top `k` chunks (whole functions, classes, sections): repo,
        path, line_start, line_end, symbol, language, score, url (a link to those lines at the
        indexed commit) and the chunk's text. `repo` limits the search to one repository."""
        config, grant = caller()

        def run() -> list[dict[str, Any]]:
            repos = grant.select([repo] if repo else None)
            if not repos:
                raise AccessDenied(f"token {grant.name!r} may not read any configured repo")
            hits = search_code(config, query, repos=repos, k=max(1, min(k, 50)))
            results = []
            for hit in hits:
                data = hit.to_json(with_text=True)
                data.pop("kind", None)
                data["text"] = data["text"][:MAX_TEXT_CHARS]
                results.append(data)
            return results

        try:
            return json.dumps(await anyio.to_thread.run_sync(run), indent=1)
        except (AccessDenied, SearchError, KeyError) as error:
            raise ToolError(str(error.args[0] if isinstance(error, KeyError) else error)) from error

    @server.tool()
    async def ask_codebase(question: str, repo: str | None = None) -> str:
        """Answer a question about the code in a few sentences, citing the exact files and
        line ranges used. Every citation is verified (it names code that was retrieved, at
        lines that exist at the indexed commit); without one the answer says it was not
        found. Returns JSON: answer, citations [{n, repo, path, line_start, line_end, url}],
        model, trace_id."""
        config, grant = caller()
        service = service_for(config)

        def run() -> dict[str, Any]:
            answer = service.answerer.ask(
                AskRequest(question=question, grant=grant, repos=[repo] if repo else None, interface="mcp")
            )
            service.flush()
            return answer.to_json()

        try:
            return json.dumps(await anyio.to_thread.run_sync(run), indent=1)
        except (AccessDenied, AnswerError, SearchError, KeyError) as error:
            raise ToolError(str(error.args[0] if isinstance(error, KeyError) else error)) from error

    return server


def run_stdio(config_path: Path) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    build_server(config_path).run("stdio")
