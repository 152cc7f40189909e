"""The chat app: a web page, an OpenAI-compatible API and feedback, over the answering service.

- `GET /` the web page; `GET /healthz` readiness: 200 while the live model endpoint answers,
  503 "degraded" (with the problems) while it does not; `GET /livez` liveness: the process
  answers, whatever the model server does; `GET /metrics` Prometheus metrics (question,
  retrieval and first-token latency, tokens, index size and freshness per repo).
- `GET /source/<repo>/<sha>/<path>#L10-L42` the page a citation links to when its repo has no
  web UI: the file at that commit, the cited lines highlighted. A browser navigating there
  sends no Authorization header, so the page is static and its script fetches the file from
  `GET /api/source/<repo>/<sha>/<path>` with the token the chat page keeps.
- `GET /v1/models`, `POST /v1/chat/completions` (streaming too): IDE tools such as Continue
  or Open WebUI use the assistant as a model. Model `cia` searches every repo the token may
  see; `cia/<repo>` one of them.
- `POST /api/ask` (server-sent events for the page), `POST /api/feedback`, `GET /api/repos`.

Every route but the pages (`/`, `/source/...`), `/healthz`, `/livez` and static files needs
`Authorization: Bearer <token>` with a token from cia.yaml's `chat.tokens` (`/metrics` and
`/openapi.json` too); the token decides which repos retrieval (and the source page) may open.
`RequestGate` checks it, and the body's size (`chat.max_request_bytes`), before any route
reads the body: an unauthenticated or oversized request costs no memory.

cia.yaml is re-read when it changes (`LiveConfig`); an edit that breaks it keeps the app on the
last valid config and shows the error on `/healthz` until it is fixed.

(No `from __future__ import annotations` here: FastAPI reads the dependency annotations at
run time, including the `Caller` alias local to `create_app`.)
"""

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, BeforeValidator, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cia_assets.config import CiaConfig, LiveConfig
from cia_assets.lib.answering.answer import (
    Answer,
    AnswerDelta,
    AnswerError,
    AnswerSources,
    AskRequest,
    closing_text,
)
from cia_assets.lib.answering.service import AssistantService
from cia_assets.lib.core.access import AccessDenied, Grant, authorize
from cia_assets.lib.observability.metrics import AnswerMetrics, IndexCollector
from cia_assets.lib.observability.traces import TraceStoreError, UnknownTrace, parse_feedback_value
from cia_assets.lib.retrieval.search import SearchError
from cia_assets.lib.serving.endpoint import HealthCache
from cia_assets.lib.sources.git_sync import path_selected

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MODEL_PREFIX = "cia"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request that matter here; the rest (temperature, tools...)
    are accepted and ignored, since the served endpoint's settings come from cia.yaml."""

    model: str = MODEL_PREFIX
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


class HistoryMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=20000)


class AskBody(BaseModel):
    question: str
    repos: list[str] | None = None
    # The conversation so far, oldest first (the page keeps it; the server keeps none).
    history: list[HistoryMessage] = Field(default_factory=list, max_length=40)


class FeedbackBody(BaseModel):
    trace_id: str = Field(min_length=1, max_length=64)
    # "up", "down", 1 or -1 exactly: true, 1.0 or "1" are refused (422), not read as a vote.
    value: Annotated[int, BeforeValidator(parse_feedback_value)]
    comment: str | None = Field(default=None, max_length=4000)


# What anyone may open: the pages (they hold no code; their scripts call the API with the
# token the page keeps), static files, and the probes.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/livez"})
PUBLIC_PREFIXES = ("/static/", "/source/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class RequestGate:
    """Before a route runs, and before its body is read: the bearer token of every route but
    the public ones (401, the grant put in the request's state for `Caller`), and the body's
    size (413 above `chat.max_request_bytes`, by its Content-Length or, when chunked, as it is
    read). The body is then handed to the route as read (at most the limit)."""

    def __init__(self, app: ASGIApp, live: LiveConfig) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        config = self.live.current()
        limit = config.chat.max_request_bytes
        too_large = f"the request body is larger than chat.max_request_bytes ({limit} bytes)"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(send, 413, too_large, "request_too_large")
            return
        if not is_public(scope["path"]):
            authorization = headers.get("authorization") or ""
            token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
            try:
                scope.setdefault("state", {})["grant"] = authorize(config, token)
            except AccessDenied as error:
                await _refuse(send, 401, str(error), "authentication_error")
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and not length:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _refuse(send, 413, too_large, "request_too_large")
                return
            if not message.get("more_body", False):
                break
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # the client going away, for a streaming response

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, message: str, kind: str) -> None:
    """An error in the API's shape (as `ApiError`), sent before anything of the request ran."""
    payload = json.dumps({"error": {"message": message, "type": kind}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def create_app(config_path: str | Path | None = None, *, forward_in_background: bool = True) -> FastAPI:
    """The app for one config file (re-read when it changes, so tokens can rotate live)."""
    # The OpenAPI document is served below, behind the token like every API route; no docs
    # pages (a browser opening them would send no token).
    app = FastAPI(
        title="CIA",
        summary="Answers about your code, with citations",
        version="1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    live = LiveConfig(config_path)
    app.add_middleware(RequestGate, live=live)
    services: dict[int, AssistantService] = {}
    registry = CollectorRegistry()
    app.state.metrics_registry = registry  # `cia serve` also exposes it on chat.metrics_listen
    metrics = AnswerMetrics(registry)
    registry.register(IndexCollector(live.current))
    # /healthz's memo of the endpoint's last good check (probes come every few seconds).
    endpoint_checks = HealthCache()

    def current_config() -> CiaConfig:
        return live.current()

    def service_for(config: CiaConfig) -> AssistantService:
        key = id(config)
        if key not in services:
            for old in services.values():
                old.close()
            services.clear()
            services[key] = AssistantService(
                config, forward_in_background=forward_in_background, metrics=metrics
            )
        return services[key]

    def grant(request: Request) -> Grant:
        # RequestGate authorized the token before the route (and its body) ran.
        granted: Grant = request.state.grant
        return granted

    Caller = Annotated[Grant, Depends(grant)]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": error.message, "type": error.kind}},
            status_code=error.status,
            headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None,
        )

    @app.on_event("startup")
    def _warm_up() -> None:
        # In the background: the app answers /livez at once, and a question asked meanwhile
        # waits only for what is still loading.
        service = service_for(current_config())
        app.state.warmed_service = service  # what a test or an operator can wait on
        threading.Thread(target=service.warm_up, name="warm-up", daemon=True).start()

    @app.on_event("shutdown")
    def _close() -> None:
        for service in services.values():
            service.close()

    # -- pages and health -------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/source/{repo}/{sha}/{path:path}", include_in_schema=False)
    def source_page(repo: str, sha: str, path: str) -> FileResponse:
        # The page holds no code: its script asks /api/source with the caller's token.
        return FileResponse(STATIC_DIR / "source.html", media_type="text/html")

    @app.get("/livez")
    def livez() -> dict[str, str]:
        # Liveness only: a dead model server must not get the chat app restarted.
        return {"status": "alive"}

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        from cia_assets.lib.serving.endpoint import endpoint_health

        health = endpoint_health(current_config(), endpoint_checks)
        record = health.record
        body: dict[str, Any] = {
            "status": "ok" if health.ok else "degraded",
            "endpoint": None
            if record is None
            else {"engine": record.engine, "model": record.model, "version": record.version},
        }
        problems = [health.problem] if health.problem else []
        if live.error:
            # Still answering, on the last valid config: degraded, but ready (a broken
            # ConfigMap must not take every replica out of the Service).
            body["status"] = "degraded"
            problems.append(f"configuration not applied: {live.error}")
        trace_problem = next((s.trace_problem for s in services.values() if s.trace_problem), None)
        if trace_problem:
            # Answers still come, without trace ids (so without feedback): degraded, ready.
            body["status"] = "degraded"
            problems.append(f"answers are not being recorded: {trace_problem}")
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=200 if health.ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        # Behind a token (RequestGate): repo names and sizes. A scraper without one reads
        # chat.metrics_listen, an address only it can reach.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- the web page's API ----------------------------------------------------------------

    @app.get("/api/repos")
    def repos(who: Caller) -> dict[str, Any]:
        return {"token": who.name, "repos": list(who.repos)}

    @app.get("/api/source/{repo}/{sha}/{path:path}")
    def source_file(repo: str, sha: str, path: str, who: Caller) -> dict[str, Any]:
        """The lines of one indexed file at one commit, read from the repo's git mirror."""
        if repo not in who.repos:  # an unknown repo and another token's answer alike
            raise ApiError(404, f"no repo {repo!r} for this token", "not_found_error")
        if not _COMMIT_SHA.fullmatch(sha):
            raise ApiError(400, "the commit must be a full 40-character hex sha")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ApiError(400, f"not a path inside the repo: {path!r}")
        config = current_config()
        codebase = config.codebase(repo)
        # Only files the index may cite: an excluded file (secrets, vendored code) stays unseen.
        lines = None
        if path_selected(path, codebase.include, codebase.exclude):
            lines = service_for(config).answerer.read_lines(repo, sha, path)
        if lines is None:
            raise ApiError(404, f"{repo}: no indexed file {path!r} at {sha[:12]}", "not_found_error")
        if config.retrieval.mask_secrets:
            from cia_assets.lib.learning.redaction import mask_secrets

            lines = mask_secrets("\n".join(lines), path).split("\n")  # the same line count
        return {"repo": repo, "commit_sha": sha, "path": path, "lines": lines}

    @app.post("/api/ask")
    def ask(body: AskBody, who: Caller) -> StreamingResponse:
        config = current_config()
        service = service_for(config)
        request = AskRequest(
            question=body.question,
            grant=who,
            repos=body.repos,
            interface="http",
            history=[message.model_dump() for message in body.history],
        )
        events = _checked(service.answerer.stream(request))

        def sse() -> Generator[str]:
            try:
                for event in events:
                    if isinstance(event, AnswerSources):
                        yield _sse("sources", event.to_json())
                    elif isinstance(event, AnswerDelta):
                        yield _sse("delta", {"text": event.text})
                    else:
                        yield _sse("final", event.to_json())
            except _answer_errors() as error:
                yield _sse("error", {"message": str(error)})

        return AnswerStream(sse(), events)

    @app.post("/api/feedback")
    def feedback(body: FeedbackBody, who: Caller) -> dict[str, Any]:
        service = service_for(current_config())
        try:
            return record_feedback(service, body, who)
        except TraceStoreError as error:
            service.trace_problem = str(error)
            raise ApiError(503, f"feedback cannot be recorded now: {error}", "service_unavailable") from error

    def record_feedback(service: AssistantService, body: FeedbackBody, who: Grant) -> dict[str, Any]:
        trace = service.store.get_trace(body.trace_id)
        # Another token's trace is answered like an unknown one: ids leak nothing.
        if trace is None or trace.get("token_name") != who.name:
            raise ApiError(404, f"unknown trace id {body.trace_id!r}", "not_found_error")
        try:
            record = service.store.add_feedback(
                body.trace_id, body.value, voter=who.name, comment=body.comment, source="http"
            )
        except UnknownTrace as error:
            raise ApiError(404, str(error), "not_found_error") from error
        return {
            "status": "replaced" if record.replaced else "recorded",
            "feedback_id": record.feedback_id,
            "trace_id": body.trace_id,
        }

    # -- OpenAI-compatible API ---------------------------------------------------------------

    @app.get("/v1/models")
    def models(who: Caller) -> dict[str, Any]:
        created = int(time.time())
        ids = [MODEL_PREFIX, *(f"{MODEL_PREFIX}/{repo}" for repo in who.repos)]
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": created, "owned_by": "cia"} for i in ids],
        }

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatCompletionRequest, who: Caller) -> dict[str, Any] | StreamingResponse:
        repos = _repos_of_model(body.model)
        question, history = _question_and_history(body.messages)
        service = service_for(current_config())
        request = AskRequest(question=question, grant=who, repos=repos, interface="openai", history=history)
        events = _checked(service.answerer.stream(request))
        created = int(time.time())
        if not body.stream:
            final: Answer | None = None
            try:
                for event in events:
                    if isinstance(event, Answer):
                        final = event
            except _answer_errors() as error:
                raise _as_api_error(error) from error
            assert final is not None
            return _completion(final, body.model, created)
        return AnswerStream(_completion_chunks(events, body.model, created), events)

    return app


# What can go wrong in answering a question, as the caller should hear it: a refused repo, a
# bad question, a model server that is down or fails (`EndpointError`, `LlmServerError`).
def _answer_errors() -> tuple[type[Exception], ...]:
    from cia_assets.lib.serving.endpoint import EndpointError
    from cia_assets.lib.serving.llm_server import LlmServerError

    return (AccessDenied, AnswerError, SearchError, EndpointError, LlmServerError)


def _as_api_error(error: Exception) -> ApiError:
    if isinstance(error, AccessDenied):
        return ApiError(403, str(error), "permission_error")
    if isinstance(error, (AnswerError, SearchError)) and "endpoint" not in str(error):
        return ApiError(400, str(error))
    return ApiError(503, str(error))


class AnswerStream(StreamingResponse):
    """An answer's server-sent events, whose generation stops when the response ends, however
    it ends. A client that goes away (the page's new conversation, a closed IDE) left its
    answer generating to the end: the local model server answers one question at a time, so
    the next question waited ~20 s for an answer nobody read. Closing the answer's generator
    closes its request to the model server, which then stops generating."""

    def __init__(self, pieces: Generator[str], events: Generator[Any]) -> None:
        super().__init__(pieces, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._generators = (pieces, events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Starlette cancels the response when the client disconnects, after the thread
            # reading the next piece has returned: no generator is running now. Shielded, or
            # the cancellation would skip the close.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        for generator in self._generators:  # outer first: the inner one is not running then
            generator.close()


def _checked(events: Iterator[Any]) -> Generator[Any]:
    """Run the answer up to its first event (the sources) now, so bad input and denied repos
    become HTTP errors (401/403/400) before a 200 stream has started. A model server that
    fails after that is an `error` event of the stream (a 503 without streaming)."""
    try:
        first = next(events)
    except _answer_errors() as error:
        raise _as_api_error(error) from error
    except StopIteration:  # pragma: no cover - a stream always ends with the Answer
        raise ApiError(500, "no answer was produced", "server_error") from None

    def chained() -> Generator[Any]:
        yield first
        yield from events

    return chained()


def _repos_of_model(model: str) -> list[str] | None:
    if model == MODEL_PREFIX or not model:
        return None
    prefix = f"{MODEL_PREFIX}/"
    if model.startswith(prefix) and len(model) > len(prefix):
        return [model[len(prefix) :]]
    raise ApiError(404, f"unknown model {model!r}: use 'cia' or 'cia/<repo>' (see GET /v1/models)")


def _text_of(message: ChatMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):
        return "\n".join(str(part.get("text", "")) for part in message.content if part.get("type") == "text")
    return ""


def _question_and_history(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; the user and assistant messages before it are
    the conversation (system prompts and tool messages are the client's own business)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user" and _text_of(messages[index]).strip():
            history = [
                {"role": m.role, "content": _text_of(m)}
                for m in messages[:index]
                if m.role in ("user", "assistant") and _text_of(m).strip()
            ]
            return _text_of(messages[index]), history
    raise ApiError(400, "messages: no user message with text content")


def _completion_id(answer: Answer) -> str:
    # The trace id when the answer was recorded (feedback names it); a fresh id otherwise.
    return f"chatcmpl-{answer.trace_id or uuid.uuid4().hex}"


def _completion(answer: Answer, model: str, created: int) -> dict[str, Any]:
    prompt_tokens = answer.usage.get("prompt_tokens") or 0
    completion_tokens = answer.usage.get("completion_tokens") or 0
    return {
        "id": _completion_id(answer),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        # Beside OpenAI's fields, so clients that know CIA get the structured citations.
        "cia": answer.to_json(),
    }


def _completion_chunks(events: Iterator[Any], model: str, created: int) -> Generator[str]:
    """OpenAI's chunk stream. The first chunk carries the retrieved sources in a `cia` field
    beside OpenAI's (clients ignore fields they do not know); the text streams as generated
    (markers already checked); the last content chunk carries the cited sources, or, when no
    valid citation was left, the explicit "not found" that replaces the answer for
    non-streaming clients."""
    chunk_id: str | None = None
    streamed = False

    def chunk(delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {
            "id": chunk_id or "chatcmpl-pending",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if extra:
            body.update(extra)
        return f"data: {json.dumps(body)}\n\n"

    try:
        for event in events:
            if isinstance(event, AnswerSources):
                yield chunk({"role": "assistant", "content": ""}, extra={"cia": event.to_json()})
                continue
            if isinstance(event, AnswerDelta):
                streamed = True
                yield chunk({"content": event.text})
                continue
            chunk_id = _completion_id(event)
            yield chunk(
                {"content": closing_text(event, streamed)},
                extra={"cia": event.to_json()},
            )
            yield chunk({}, finish="stop")
    except _answer_errors() as error:
        yield chunk({"content": f"\n\n[error: {error}]"}, finish="stop")
    yield "data: [DONE]\n\n"


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
