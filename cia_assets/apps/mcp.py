"""The MCP server (stdio): `search_code` and `ask_codebase` for IDE agents.

Run by an MCP client as `cia mcp --config cia.yaml`; stdout is the protocol, so every log
line goes to stderr (clients keep it in their MCP log).

The token. Stdio has no request headers, so the token travels the way MCP clients pass
secrets to a server: in its environment, `CIA_TOKEN`. It is deliberately not a tool
argument: arguments are written by the model, so a token there would sit in the agent's
context and transcripts and could be swapped for another one by a prompt injection. The
server takes the variable out of its environment before cia.yaml is first read, so what the
client presents can never define what is accepted (a `${CIA_TOKEN}` in chat.tokens reads as
unset, its default applies) and no value of it, empty, short or wrong, can keep the server
from starting. It then checks the token against the *current* cia.yaml on every tool call
(the file is re-read when it changes), so a revoked or narrowed token takes effect on the
next call, without restarting the agent. A missing or unknown token makes every tool call
fail with a message saying so, and returns no data. Tools are listed without a token (a
listing holds no code).

Example client configuration (Claude Desktop's `claude_desktop_config.json`; Cursor,
Continue and VS Code take the same `command`/`args`/`env` entry):

    {
      "mcpServers": {
        "cia": {
          "command": "/path/to/checkout/.venv/bin/cia",
          "args": ["mcp", "--config", "/path/to/checkout/cia.yaml"],
          "env": {"CIA_TOKEN": "<a token from chat.tokens in cia.yaml>"}
        }
      }
    }

Both tools see only the repos the token's `chat.tokens` entry names: retrieval opens no
other repo's collection, so a chunk of another repo can reach neither a search hit, nor an
answer's context, nor a citation; naming such a repo is an error that names it (the same
error for a repo that does not exist, so a token cannot probe for repo names).
`ask_codebase` records a trace (interface "mcp", the token's name) like every answer.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

# At module level: the tool's `ctx: Context` annotation is resolved from this module's globals.
from mcp.server.mcpserver import Context
from pydantic import Field
from typing_extensions import TypedDict

from cia_assets.lib.core.records import SourceSpanJson

if TYPE_CHECKING:
    from cia_assets.config import CiaConfig
    from cia_assets.lib.answering.answer import AnswerSources, AskRequest
    from cia_assets.lib.answering.service import AssistantService
    from cia_assets.lib.core.access import Grant
    from cia_assets.lib.core.project import Project

log = logging.getLogger(__name__)

TOKEN_ENV_VAR = "CIA_TOKEN"
# Chunks are at most chunking.max_lines (120) lines; this bounds a minified one.
MAX_TEXT_CHARS = 6000
MAX_K = 50

INSTRUCTIONS = (
    "CIA searches and explains this organisation's indexed git repositories. Use search_code to "
    "find where something is defined or used (it returns the code with repo, path and line "
    "numbers); use ask_codebase for a short explained answer whose every citation is verified. "
    "Both see only the repositories your token may read."
)


class CodeHitResult(SourceSpanJson):
    symbol: str | None
    language: str
    score: float
    url: str | None
    commit_sha: str
    text: str
    truncated: bool


class SearchResult(TypedDict):
    repos: list[str]
    hits: list[CodeHitResult]


class CitationResult(SourceSpanJson):
    n: int
    url: str | None


class SourceResult(SourceSpanJson):
    n: int
    symbol: str | None
    language: str
    url: str | None
    preview: str


class AskResult(TypedDict):
    answer: str
    citations: list[CitationResult]
    sources: list[SourceResult]
    not_found: bool
    not_found_reason: str | None  # which step said "not found" (README, "How an answer is made")
    ungrounded: list[str]
    model: str
    trace_id: str | None  # None when the answer could not be recorded


Query = Annotated[
    str,
    Field(
        min_length=1,
        description="What to look for: identifiers (authorize_refund, TokenValidator), "
        "or a description of the behaviour (where refunds are authorized).",
    ),
]
Question = Annotated[
    str,
    Field(min_length=1, max_length=8000, description="A question about the indexed code, in plain language."),
]
Repo = Annotated[
    str | None,
    Field(
        description="Limit to this repository id (as in cia.yaml); default: every repo the token may read."
    ),
]
TopK = Annotated[int, Field(ge=1, le=MAX_K, description="How many chunks to return (best first).")]


class _State:
    """The token, and the answering service of the current config (rebuilt when cia.yaml changes)."""

    def __init__(self, config_path: Path, token: str | None) -> None:
        from cia_assets.config import LiveConfig

        # Re-read when cia.yaml changes; an edit that breaks it keeps the last valid config.
        self.live = LiveConfig(config_path)
        self.token = (token or "").strip() or None
        self._service: AssistantService | None = None
        self._ask_lock = threading.Lock()
        # The store and embedding model of the current config, shared by both tools.
        self._project: Project | None = None
        self._project_lock = threading.Lock()

    def caller(self) -> tuple[CiaConfig, Grant]:
        """The current config and this token's grant in it; a ToolError with no data otherwise."""
        from mcp.server.mcpserver.exceptions import ToolError

        from cia_assets.config import ConfigError
        from cia_assets.lib.core.access import AccessDenied, authorize

        try:
            config = self.live.current()
        except ConfigError as error:
            raise ToolError(f"the CIA server's configuration cannot be read: {error}") from error
        if self.token is None:
            raise ToolError(
                f"no token: set {TOKEN_ENV_VAR} in this MCP server's environment (the `env` of its "
                "entry in the MCP client's configuration) to a token from chat.tokens in cia.yaml (with none "
                "listed there: the one in <data_dir>/chat-token)"
            )
        try:
            return config, authorize(config, self.token)
        except AccessDenied as error:
            raise ToolError(
                f"unknown token: the {TOKEN_ENV_VAR} given to this MCP server is not in chat.tokens of "
                f"{config.config_path} (revoked, or mistyped); ask for a valid one"
            ) from error

    def ask(
        self,
        config: CiaConfig,
        request: AskRequest,
        on_sources: Callable[[AnswerSources], None],
        stop_if_cancelled: Callable[[], None],
    ) -> dict[str, Any]:
        """The answer's JSON with its sources; `on_sources` gets the sources as soon as they
        are retrieved, before generation starts. `stop_if_cancelled` raises once the client
        has cancelled the call: it is asked between two pieces of the answer."""
        from cia_assets.lib.answering.answer import Answer, AnswerSources

        # One question at a time: the local model answers one at a time anyway, and the
        # service is swapped here when the config changes.
        with self._ask_lock:
            stop_if_cancelled()  # cancelled while an earlier answer held the lock
            service = self._service_for(config)
            sources: dict[str, Any] = {"sources": []}
            events = service.answerer.stream(request)
            try:
                for event in events:
                    # A call the client cancels (MCP clients also cancel a call that passes
                    # their timeout, 60 s by default) must stop generating: the next question
                    # waits for the model otherwise, for an answer nobody reads.
                    stop_if_cancelled()
                    if isinstance(event, AnswerSources):
                        sources = event.to_json()
                        on_sources(event)
                    elif isinstance(event, Answer):
                        return {**event.to_json(), **sources}
                raise AssertionError("the answer stream ended without an answer")
            finally:
                # Closes the request to the model server, which then stops generating.
                events.close()
                service.flush()

    def project_for(self, config: CiaConfig) -> Project:
        from cia_assets.lib.core.project import Project

        # load_config returns the same object until cia.yaml changes.
        with self._project_lock:
            if self._project is None or self._project.config is not config:
                if self._project is not None:
                    self._project.close()
                self._project = Project(config)
            return self._project

    def _service_for(self, config: CiaConfig) -> AssistantService:
        from cia_assets.lib.answering.service import AssistantService

        if self._service is None or self._service.config is not config:
            if self._service is not None:
                self._service.close()
            self._service = AssistantService(config, project=self.project_for(config))
        return self._service

    def close(self) -> None:
        with self._ask_lock:
            if self._service is not None:
                self._service.close()
                self._service = None
        with self._project_lock:
            if self._project is not None:
                self._project.close()
                self._project = None


def _as_tool_error(error: Exception) -> Exception | None:
    """A failure the caller can act on, as a ToolError with its message; None for others,
    whose text MCP keeps on the server (stderr) and replaces by "Error executing tool"."""
    from mcp.server.mcpserver.exceptions import ToolError

    from cia_assets.lib.answering.answer import AnswerError
    from cia_assets.lib.core.access import AccessDenied
    from cia_assets.lib.indexing.embeddings import EmbeddingModelError
    from cia_assets.lib.retrieval.search import SearchError
    from cia_assets.lib.serving.endpoint import EndpointError
    from cia_assets.lib.serving.llm_server import LlmServerError

    expected = (AccessDenied, AnswerError, SearchError, EndpointError, LlmServerError, EmbeddingModelError)
    if isinstance(error, expected):
        return ToolError(str(error))
    return None


def take_client_token() -> str | None:
    """The client's token, removed from this process's environment: call it before cia.yaml is
    read, so that no `${CIA_TOKEN}` in the config (nor a child process) sees the credential."""
    return os.environ.pop(TOKEN_ENV_VAR, None)


def build_server(config_path: Path, token: str | None) -> Any:
    """The MCP server for `config_path`, answering tool calls for the client's `token`."""
    import anyio
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    from cia_assets.lib.answering.answer import AskRequest
    from cia_assets.lib.core.access import AccessDenied
    from cia_assets.lib.retrieval.search import search_code

    state = _State(Path(config_path), token)

    @asynccontextmanager
    async def lifespan(_server: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            state.close()

    server: Any = MCPServer(name="cia", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="INFO")
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)

    @server.tool(name="search_code", title="Search the code", annotations=read_only)
    async def search_code_tool(query: Query, repo: Repo = None, k: TopK = 10) -> SearchResult:
        """Search the indexed repositories for code: hybrid semantic + identifier search over
        whole functions, classes and document sections, at each repo's indexed commit.

        Use it to find where something is defined, implemented or used. Returns the repos
        searched and up to `k` hits, best first, each with repo, path, line_start and line_end
        (1-based, inclusive), symbol (e.g. `Ledger.transfer`, or null), language, score, url (a
        link to those lines at the indexed commit: on the repo's web UI, or the chat app's),
        commit_sha and the chunk's text (cut after 6000 characters; then `truncated` is true).
        Only repositories this server's token may read are searched; `repo` narrows to one."""
        config, grant = state.caller()

        def run() -> SearchResult:
            started = time.perf_counter()
            repos = grant.select([repo] if repo else None)
            if not repos:
                raise AccessDenied(f"token {grant.name!r} may not read any configured repo")
            hits = search_code(state.project_for(config), query, repos=repos, k=k)
            results: list[CodeHitResult] = []
            for hit in hits:
                text = hit.text
                results.append(
                    CodeHitResult(
                        repo=hit.repo, path=hit.path, line_start=hit.line_start, line_end=hit.line_end,
                        symbol=hit.symbol, language=hit.language, score=hit.score, url=hit.url,
                        commit_sha=hit.commit_sha, text=text[:MAX_TEXT_CHARS],
                        truncated=len(text) > MAX_TEXT_CHARS,
                    )
                )  # fmt: skip
            log.info(
                "search_code token=%s repos=%s k=%d: %d hits in %.0f ms",
                grant.name, ",".join(repos), k, len(results), (time.perf_counter() - started) * 1000,
            )  # fmt: skip
            return SearchResult(repos=repos, hits=results)

        try:
            return await anyio.to_thread.run_sync(run)
        except Exception as error:
            if (tool_error := _as_tool_error(error)) is not None:
                raise tool_error from error
            raise

    @server.tool(name="ask_codebase", title="Ask about the code", annotations=read_only)
    async def ask_codebase(question: Question, ctx: Context, repo: Repo = None) -> AskResult:
        """Answer a question about the indexed code in a few sentences, citing the files and
        line ranges it used, e.g. "When is a refund authorized?".

        Every citation is verified: it names code that was retrieved for this question, at
        lines that exist at the indexed commit, and every backticked identifier in the answer
        is looked up in that code (those not found are listed in `ungrounded` and marked in the
        text). When no retrieved code answers the question, the answer starts with "Not found
        in the indexed code" and lists what was read, rather than guessing (`not_found`).
        Returns answer (Markdown with [n] markers and a Sources list), citations
        [{n, repo, path, line_start, line_end, url}], sources (every block the model read, with
        symbol and a preview of its first lines; also sent as a progress notification before
        the explanation is generated), not_found (and not_found_reason: which step said so),
        ungrounded, model and trace_id. Slower than
        search_code (a language model generates the answer); prefer search_code to locate
        code. Only repositories this server's token may read are used; `repo` narrows to one."""
        config, grant = state.caller()
        request = AskRequest(question=question, grant=grant, repos=[repo] if repo else None, interface="mcp")

        def send_sources(sources: AnswerSources) -> None:
            # From the worker thread to the session's loop: a client sees where to look while
            # the explanation is still being written.
            lines = [f"[{source.n}] {source.label}" for source in sources.sources]
            anyio.from_thread.run(ctx.report_progress, 0.1, 1.0, "Sources:\n" + "\n".join(lines))

        def run() -> AskResult:
            started = time.perf_counter()
            # The session cancels this tool call's scope on the client's notifications/cancelled;
            # the worker thread sees that through anyio's check.
            answer = state.ask(config, request, send_sources, anyio.from_thread.check_cancelled)
            log.info(
                "ask_codebase token=%s trace=%s: %d citations in %.0f ms",
                grant.name, answer["trace_id"], len(answer["citations"]),
                (time.perf_counter() - started) * 1000,
            )  # fmt: skip
            return AskResult(
                answer=answer["answer"], citations=answer["citations"], sources=answer["sources"],
                not_found=answer["not_found"], not_found_reason=answer["not_found_reason"],
                ungrounded=answer["ungrounded"], model=answer["model"], trace_id=answer["trace_id"],
            )  # fmt: skip

        try:
            return await anyio.to_thread.run_sync(run)
        except Exception as error:
            if (tool_error := _as_tool_error(error)) is not None:
                raise tool_error from error
            raise

    return server


def run_stdio(config_path: Path, token: str | None) -> None:
    """Serve on stdin/stdout until the client closes the pipe; `token` from take_client_token."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per model request otherwise
    if not (token or "").strip():
        log.warning("%s is not set: every tool call will be refused", TOKEN_ENV_VAR)
    build_server(config_path, token).run("stdio")
