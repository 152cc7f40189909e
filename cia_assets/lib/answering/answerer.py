"""Answers that explain the code, with verified citations: retrieve, assemble, generate, verify.

The flow, the same for the CLI, the chat app, the OpenAI-compatible API and MCP:
1. hybrid search over the repos the caller's token may see, with the conversation's previous
   question folded into the query of a follow-up;
2. context assembly: source files before tests, docs and vendored code (unless the question
   asks about those), hits of one file that touch merged, at most a few blocks per file, each
   block re-read from the git mirror at the indexed sha (so what the model sees is exactly what
   a citation will point at), within a token budget sized for first-token time;
3. the sources go to the caller at once (`AnswerSources`), before any generation; when they do
   not mention the question's subject (`grounding.evidence`) the answer is "not found" without
   asking the model;
4. generation through the `openai` client against the live served endpoint, streamed;
5. every `[n]` marker is checked as it streams: it must name a block of this context.
   Markers that do not are removed and reported; an answer left with no valid citation
   becomes an explicit "not found in the indexed code" that lists what was searched;
6. after generation, every backticked identifier and quoted code line must occur in the
   cited blocks or the context (`grounding.check_grounding`); those that do not are marked.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.grounding import (
    Evidence,
    Grounding,
    attribute,
    check_grounding,
    evidence,
    mark_ungrounded,
    mostly_ungrounded,
)
from cia_assets.lib.answering.prompts import PromptTemplate, load_prompt
from cia_assets.lib.core.access import AccessDenied, Grant
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.records import source_url
from cia_assets.lib.indexing import chunking
from cia_assets.lib.indexing.file_roles import file_role, wanted_roles
from cia_assets.lib.retrieval.search import CodeHit, search_code
from cia_assets.lib.serving.endpoint import EndpointRecord
from cia_assets.lib.sources.git_sync import RepoMirror

log = logging.getLogger(__name__)

NOT_FOUND_MARKER = "NOT FOUND"
# Code tokenizes densely: ~3 characters per token for SmolLM2's and Llama-style tokenizers,
# ~3.8 for Qwen2.5's (measured on this repo's Python); overestimating keeps the prompt inside
# the context.
CHARS_PER_TOKEN = 3.0
# Blocks of one file closer than this many lines are merged into one.
MERGE_GAP_LINES = 2
MIN_BLOCK_LINES = 8
_MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
# The longest prefix of a marker worth holding back while streaming ("[12, 3" ...).
_MAX_PENDING_MARKER = 16
PREVIEW_LINES = 8
# An earlier answer given back to the model in a conversation is cut to this many characters.
HISTORY_MESSAGE_CHARS = 1200


class AnswerError(RuntimeError):
    """The question cannot be answered as asked (bad input, endpoint down); says why."""


@dataclass(frozen=True)
class ContextBlock:
    """Lines of one file at one commit, shown to the model as source `n`. Its link is on the
    repo's `web_url`, else on the chat app at `chat_url` (see `records.source_url`)."""

    n: int
    repo: str
    path: str
    line_start: int
    line_end: int
    commit_sha: str
    web_url: str | None
    language: str
    symbol: str | None
    text: str
    chat_url: str | None = None

    @property
    def url(self) -> str | None:
        return source_url(
            self.web_url,
            self.commit_sha,
            self.path,
            self.line_start,
            self.line_end,
            repo=self.repo,
            chat_url=self.chat_url,
        )

    @property
    def location(self) -> str:
        return f"{self.repo}:{self.path}#L{self.line_start}-L{self.line_end}"

    def preview(self) -> SourcePreview:
        return SourcePreview(
            n=self.n,
            repo=self.repo,
            path=self.path,
            line_start=self.line_start,
            line_end=self.line_end,
            symbol=self.symbol,
            language=self.language,
            url=self.url,
            commit_sha=self.commit_sha,
            preview="\n".join(self.text.splitlines()[:PREVIEW_LINES]),
        )

    def citation(self) -> Citation:
        return Citation(
            n=self.n,
            repo=self.repo,
            path=self.path,
            line_start=self.line_start,
            line_end=self.line_end,
            url=self.url,
            commit_sha=self.commit_sha,
        )


@dataclass(frozen=True)
class Citation:
    n: int
    repo: str
    path: str
    line_start: int
    line_end: int
    url: str | None
    commit_sha: str

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "repo": self.repo,
            "path": self.path,
            "line_start": self.line_start,
            "line_end": self.line_end,
            "url": self.url,
        }

    @property
    def link(self) -> str:
        return self.url or f"{self.repo}:{self.path}#L{self.line_start}-L{self.line_end}"


@dataclass(frozen=True)
class SourcePreview:
    """A block of the context as the caller sees it before the explanation: where it is, and
    its first lines."""

    n: int
    repo: str
    path: str
    line_start: int
    line_end: int
    symbol: str | None
    language: str
    url: str | None
    commit_sha: str
    preview: str

    @property
    def location(self) -> str:
        return f"{self.repo}:{self.path}#L{self.line_start}-L{self.line_end}"

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "repo": self.repo,
            "path": self.path,
            "line_start": self.line_start,
            "line_end": self.line_end,
            "symbol": self.symbol,
            "language": self.language,
            "url": self.url,
            "preview": self.preview,
        }


@dataclass(frozen=True)
class AnswerSources:
    """The retrieved sources, sent before generation starts: a user sees where to look at once."""

    sources: list[SourcePreview]

    def to_json(self) -> dict[str, Any]:
        return {"sources": [source.to_json() for source in self.sources]}


@dataclass(frozen=True)
class Answer:
    answer: str
    citations: list[Citation]
    model: str
    trace_id: str
    not_found: bool
    invalid_citations: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int | None] = field(default_factory=dict)
    contexts: list[str] = field(default_factory=list)  # the code the model was shown (evaluation)
    # Backticked identifiers and quoted code lines checked, and those no block contains.
    grounding_checked: int = 0
    ungrounded: list[str] = field(default_factory=list)
    grounding_note: str = ""  # what the answer says about its ungrounded names, "" when none
    # The model wrote no valid marker; the citations are the blocks its names come from.
    inferred_citations: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.to_json() for c in self.citations],
            "model": self.model,
            "trace_id": self.trace_id,
            "not_found": self.not_found,
            "ungrounded": self.ungrounded,
        }


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of the answer's text as it streams (citation markers already checked)."""

    text: str


AnswerEvent = AnswerSources | AnswerDelta | Answer


# ---------------------------------------------------------------------------------------------
# Context assembly
# ---------------------------------------------------------------------------------------------


def assemble_context(
    hits: Sequence[CodeHit],
    read_lines: Callable[[str, str, str], list[str] | None],
    *,
    max_blocks_per_file: int,
    budget_tokens: int,
) -> list[ContextBlock]:
    """Blocks in rank order: touching hits of one file merged, at most `max_blocks_per_file`
    per file, the whole within `budget_tokens`. `read_lines(repo, sha, path)` gives the
    file's lines at that sha (None when it is not there): block text comes from it, so a
    stale index entry whose lines no longer exist never reaches the model."""
    # Group by file in the order each file first ranks, keeping each file's hits in rank order.
    files: dict[tuple[str, str, str], list[CodeHit]] = {}
    for hit in hits:
        files.setdefault((hit.repo, hit.commit_sha, hit.path), []).append(hit)

    ranked_spans: list[tuple[int, tuple[str, str, str], int, int, CodeHit]] = []
    for key, file_hits in files.items():
        spans: list[list[Any]] = []  # [start, end, best_rank, first_hit]
        for hit in file_hits:
            rank = hits.index(hit)
            for span in spans:
                if hit.line_start <= span[1] + MERGE_GAP_LINES and hit.line_end >= span[0] - MERGE_GAP_LINES:
                    span[0], span[1] = min(span[0], hit.line_start), max(span[1], hit.line_end)
                    span[2] = min(span[2], rank)
                    break
            else:
                spans.append([hit.line_start, hit.line_end, rank, hit])
        spans.sort(key=lambda s: s[2])
        for start, end, rank, first in spans[:max_blocks_per_file]:
            ranked_spans.append((rank, key, start, end, first))
    ranked_spans.sort(key=lambda s: s[0])

    blocks: list[ContextBlock] = []
    remaining = budget_tokens
    file_cache: dict[tuple[str, str, str], list[str] | None] = {}
    for _, key, start, end, hit in ranked_spans:
        if key not in file_cache:
            file_cache[key] = read_lines(*key)
        lines = file_cache[key]
        if lines is None or start < 1 or end > len(lines):
            log.warning("skipping %s:%s#L%d-L%d: not at %s", key[0], key[2], start, end, key[1][:12])
            continue
        header_tokens = 20
        body = lines[start - 1 : end]
        cost = header_tokens + _estimate_tokens("\n".join(body))
        if cost > remaining:
            # Keep the head of a long block (its signature and docstring) when enough fits.
            kept: list[str] = []
            used = header_tokens
            for line in body:
                line_cost = _estimate_tokens(line) + 1
                if used + line_cost > remaining:
                    break
                kept.append(line)
                used += line_cost
            if len(kept) < MIN_BLOCK_LINES:
                continue
            body, end, cost = kept, start + len(kept) - 1, used
        remaining -= cost
        blocks.append(
            ContextBlock(
                n=len(blocks) + 1,
                repo=hit.repo,
                path=hit.path,
                line_start=start,
                line_end=end,
                commit_sha=hit.commit_sha,
                web_url=hit.web_url,
                language=hit.language,
                symbol=hit.symbol if (hit.line_start, hit.line_end) == (start, end) else None,
                text="\n".join(body),
                chat_url=hit.chat_url,
            )
        )
    return blocks


def _estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def format_sources(blocks: Sequence[ContextBlock]) -> str:
    """The sources as the model reads them. Each is fenced; a fence inside the code is
    lengthened past, so code cannot close its block and pose as the prompt."""
    parts: list[str] = []
    for block in blocks:
        fence = "```"
        while fence in block.text:
            fence += "`"
        what = f" ({block.symbol})" if block.symbol else ""
        parts.append(
            f"[{block.n}] {block.path} lines {block.line_start}-{block.line_end}{what}\n"
            f"{fence}{block.language}\n{block.text}\n{fence}"
        )
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Citation checking (streaming-safe)
# ---------------------------------------------------------------------------------------------


class CitationFilter:
    """Checks `[n]` markers in streamed text against the context's block numbers.

    Text is passed through as it comes, except a possible marker's prefix, which is held
    back until it is complete (at most a few characters). Valid numbers are kept; invalid
    ones are removed and remembered.
    """

    def __init__(self, valid_numbers: set[int]) -> None:
        self.valid_numbers = valid_numbers
        self.cited: list[int] = []
        self.invalid: list[str] = []
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        out: list[str] = []
        while self._pending:
            bracket = self._pending.find("[")
            if bracket < 0:
                out.append(self._pending)
                self._pending = ""
                break
            out.append(self._pending[:bracket])
            rest = self._pending[bracket:]
            match = _MARKER.match(rest)
            if match:
                out.append(self._check(match.group(1)))
                self._pending = rest[match.end() :]
                continue
            if len(rest) < _MAX_PENDING_MARKER and re.fullmatch(r"\[\s*[\d\s,;]*", rest):
                self._pending = rest  # maybe a marker still arriving
                break
            out.append("[")
            self._pending = rest[1:]
        return "".join(out)

    def finish(self) -> str:
        tail, self._pending = self._pending, ""
        return tail

    def _check(self, numbers_text: str) -> str:
        kept: list[int] = []
        for raw in re.split(r"[,;]", numbers_text):
            number = int(raw.strip())
            if number in self.valid_numbers:
                kept.append(number)
                if number not in self.cited:
                    self.cited.append(number)
            else:
                self.invalid.append(f"[{number}]")
        return "".join(f"[{n}]" for n in kept)


def tidy_answer(text: str) -> str:
    """Whitespace left where removed markers stood."""
    text = re.sub(r"[ \t]+([.,;:])", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


def not_found_answer(
    question: str,
    repos: Sequence[str],
    blocks: Sequence[ContextBlock],
    missing: Sequence[str] = (),
    only_tests: bool = False,
) -> str:
    looked = ", ".join(repos) or "no repo"
    lines = [f"Not found in the indexed code: no source answering “{question.strip()}” in {looked}."]
    if missing:
        lines.append("The code found does not mention: " + ", ".join(missing) + ".")
    if only_tests:
        lines.append("Only tests or vendored code mention it, not the code itself.")
    if blocks:
        lines.append("Searched and read:")
        lines.extend(f"- {b.location}" for b in blocks)
    else:
        lines.append("The search returned no code for this question.")
    return "\n".join(lines)


def render_sources(citations: Sequence[Citation]) -> str:
    return "Sources:\n" + "\n".join(f"[{c.n}] {c.link}" for c in citations)


def closing_text(answer: Answer, streamed: bool) -> str:
    """What to show after the streamed deltas, so that the reader has the whole final answer
    and nothing twice: the Sources list (the deltas were the answer's text), or, when the
    final answer replaced what streamed (no valid citation left: "Not found ..."), a
    separator and the final text. With nothing streamed, the whole answer."""
    if not streamed:
        return answer.answer
    if answer.not_found:
        return "\n\n---\n" + answer.answer
    # The marks inside the text are in the final answer only; the note says what they were.
    note = f"\n\n{answer.grounding_note}" if answer.grounding_note else ""
    return note + "\n\n" + render_sources(answer.citations)


# ---------------------------------------------------------------------------------------------
# Conversation and context order
# ---------------------------------------------------------------------------------------------


def conversation(history: Sequence[dict[str, str]], limit: int) -> list[dict[str, str]]:
    """The last `limit` messages of a conversation as the model reads them: user and assistant
    turns only, an earlier answer without its Sources list and citation markers (its numbers
    name another question's sources), each cut to HISTORY_MESSAGE_CHARS."""
    turns: list[dict[str, str]] = []
    for message in history:
        role = message.get("role")
        content = str(message.get("content") or "").strip()
        if role not in ("user", "assistant") or not content:
            continue
        if role == "assistant":
            content = content.split("\n\nSources:\n", 1)[0]
            content = tidy_answer(_MARKER.sub("", content))
        turns.append({"role": role, "content": content[:HISTORY_MESSAGE_CHARS]})
    return turns[-limit:] if limit else []


def retrieval_query(question: str, history: Sequence[dict[str, str]]) -> str:
    """What a follow-up searches for: the question plus the conversation's previous question,
    which names what "it" and "that" refer to ("and where is it tested?")."""
    previous = [turn["content"] for turn in history if turn["role"] == "user"]
    return f"{question}\n{previous[-1]}" if previous else question


def only_tests_or_vendored(blocks: Sequence[ContextBlock], question: str) -> bool:
    """Every block is a test or vendored code, and the question does not ask about tests."""
    if "test" in wanted_roles(question):
        return False
    return all(file_role(block.path) in ("test", "vendored") for block in blocks)


def explanation_order(hits: Sequence[CodeHit], question: str) -> list[CodeHit]:
    """Hits of the roles the question wants first (source files, plus tests or docs when it asks
    about those), each group in rank order: tests that mention a name would otherwise crowd
    its definition out of the context."""
    wanted = wanted_roles(question)
    return sorted(hits, key=lambda hit: file_role(hit.path) not in wanted)


# ---------------------------------------------------------------------------------------------
# The answering service
# ---------------------------------------------------------------------------------------------


@dataclass
class AskRequest:
    question: str
    grant: Grant
    repos: Sequence[str] | None = None
    interface: str = "cli"
    history: Sequence[dict[str, str]] = ()


class Answerer:
    """Answers questions from the indexed code with the live served endpoint.

    `trace_sink` receives every finished answer with its retrieval and generation details
    (the trace store); it is called even for "not found" answers. `endpoint` pins one model
    endpoint instead of the live one (evaluation compares models on the same questions).
    """

    def __init__(
        self,
        config: CiaConfig,
        *,
        trace_sink: Callable[[AskRequest, Answer, dict[str, Any]], None] | None = None,
        endpoint: EndpointRecord | None = None,
    ) -> None:
        self.config = config
        self.trace_sink = trace_sink
        self.endpoint = endpoint
        self._mirrors: dict[str, RepoMirror] = {}
        # One `git cat-file --batch` per mirror, shared by the app's request threads.
        self._mirrors_lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    def ask(self, request: AskRequest) -> Answer:
        final: Answer | None = None
        for event in self.stream(request):
            if isinstance(event, Answer):
                final = event
        assert final is not None
        return final

    def stream(self, request: AskRequest) -> Iterator[AnswerEvent]:
        """The sources, then deltas of the answer text as it is generated, then the verified
        `Answer`."""
        from cia_assets.lib.observability.traces import new_trace_id

        question = request.question.strip()
        if not question:
            raise AnswerError("the question is empty")
        if len(question) > 8000:
            raise AnswerError(f"the question is too long ({len(question)} characters, at most 8000)")
        repos = request.grant.select(request.repos)
        if not repos:
            raise AccessDenied(f"token {request.grant.name!r} may not read any configured repo")
        trace_id = new_trace_id()
        started = time.perf_counter()
        settings = self.config.answering

        history = conversation(request.history, settings.history_messages)
        query = retrieval_query(question, history)
        hits = search_code(self.config, query, repos=repos, k=settings.top_k)
        if settings.prefer_source_files:
            hits = explanation_order(hits, question)
        prompt = load_prompt(self.config)
        blocks = assemble_context(
            hits,
            self.read_lines,
            max_blocks_per_file=settings.max_chunks_per_file,
            budget_tokens=self._code_budget(prompt, question, history),
        )
        # A follow-up's subject is partly in the question before it: judged on the same query.
        found = evidence(query, [(b.path, b.text) for b in blocks])
        retrieved = time.perf_counter()
        timings: dict[str, float] = {"retrieval_ms": round((retrieved - started) * 1000, 1)}
        yield AnswerSources([block.preview() for block in blocks])
        timings["sources_ms"] = round((time.perf_counter() - started) * 1000, 1)
        details: dict[str, Any] = {
            "query": query,
            "hits": [h.to_json() for h in hits],
            "blocks": [b.location for b in blocks],
            "evidence": found.to_json(),
            "prompt_name": prompt.name,
            "prompt_version": prompt.version,
            "repos": repos,
            "history_messages": len(history),
        }

        from cia_assets.lib.serving.endpoint import chat_client, choose_endpoint

        endpoint = self.endpoint or choose_endpoint(self.config)
        details["endpoint"] = endpoint.base_url
        model_name = endpoint.model if not endpoint.adapter else f"{endpoint.model}+{endpoint.adapter}"
        usage: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None}

        only_tests = bool(blocks) and only_tests_or_vendored(blocks, question)
        if not blocks or found.coverage < settings.abstain_min_coverage or only_tests:
            # Nothing retrieved talks about the question's subject, or only tests and vendored
            # code do (a fixture is not the implementation asked about): say so, without asking
            # a model that would explain whatever it was shown.
            details["abstained"] = "no code" if not blocks else "only tests" if only_tests else "evidence"
            answer = self._finish(
                request, trace_id, model_name, blocks, repos, "", CitationFilter(set()), timings, usage,
                found, only_tests=only_tests,
            )  # fmt: skip
            details["timings_ms"] = timings
            self._emit_trace(request, answer, details)
            yield answer
            return

        messages = prompt.render(format_sources(blocks), question, history)
        checker = CitationFilter({b.n for b in blocks})
        raw_parts: list[str] = []
        released = 0  # characters of the (left-stripped) raw answer fed to the checker
        streamed_chunks = 0
        first_token_at: float | None = None
        client = chat_client(endpoint, self.config)
        try:
            stream = client.chat.completions.create(
                model=endpoint.request_model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=self.config.llm.max_answer_tokens,
                temperature=self.config.llm.temperature,
                stream=True,
                # vLLM and hosted APIs report usage at the end of a stream when asked.
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.usage is not None:
                    usage = {
                        "prompt_tokens": chunk.usage.prompt_tokens,
                        "completion_tokens": chunk.usage.completion_tokens,
                    }
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content or ""
                if not piece:
                    continue
                streamed_chunks += 1
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                raw_parts.append(piece)
                raw = "".join(raw_parts).lstrip()
                if NOT_FOUND_MARKER.startswith(raw) or raw.startswith(NOT_FOUND_MARKER):
                    continue  # the model's "not found" reply is replaced, never streamed
                visible = checker.feed(raw[released:])
                released = len(raw)
                if visible:
                    yield AnswerDelta(visible)
        except Exception as error:
            import openai

            if isinstance(error, openai.OpenAIError):
                raise AnswerError(f"the model endpoint {endpoint.base_url} failed: {error}") from error
            raise
        finished = time.perf_counter()
        if usage["completion_tokens"] is None:
            # llama.cpp's server sends no usage when streaming; it streams one token per chunk.
            usage = {
                "prompt_tokens": self._count_prompt_tokens(endpoint, messages),
                "completion_tokens": streamed_chunks,
            }
        tail = checker.finish()
        if tail:
            yield AnswerDelta(tail)
        timings["generation_ms"] = round((finished - retrieved) * 1000, 1)
        if first_token_at is not None:
            timings["first_token_ms"] = round((first_token_at - started) * 1000, 1)
        answer = self._finish(
            request, trace_id, model_name, blocks, repos, "".join(raw_parts), checker, timings, usage, found
        )
        details["timings_ms"] = timings
        details["raw_answer"] = "".join(raw_parts)
        details["grounding"] = {"checked": answer.grounding_checked, "ungrounded": answer.ungrounded}
        self._emit_trace(request, answer, details)
        yield answer

    # -- internals ------------------------------------------------------------------------

    def _finish(
        self,
        request: AskRequest,
        trace_id: str,
        model: str,
        blocks: list[ContextBlock],
        repos: list[str],
        raw: str,
        checker: CitationFilter,
        timings: dict[str, float],
        usage: dict[str, int | None],
        found: Evidence,
        *,
        only_tests: bool = False,
    ) -> Answer:
        # Re-run the check over the whole text: the streamed pieces and the final answer
        # must agree, whatever the chunking of the stream was.
        final_checker = CitationFilter({b.n for b in blocks})
        text = tidy_answer(final_checker.feed(raw) + final_checker.finish())
        by_number = {b.n: b for b in blocks}
        cited_blocks = [by_number[n] for n in sorted(final_checker.cited)]
        declined = raw.lstrip().startswith(NOT_FOUND_MARKER)
        inferred = False
        if not cited_blocks and text and not declined:
            # A small model often explains without writing markers: cite the blocks its
            # backticked names and quoted lines come from, and say so in the trace.
            cited_blocks = [blocks[i] for i in attribute(text, [b.text for b in blocks])]
            inferred = bool(cited_blocks)
        citations = [block.citation() for block in cited_blocks]
        not_found = not citations or declined
        grounding = Grounding(checked=0)
        note = ""
        if not_found:
            missing = found.missing if found.coverage < self.config.answering.abstain_min_coverage else []
            text = not_found_answer(request.question, repos, blocks, missing, only_tests)
            citations = []
        else:
            grounding = check_grounding(
                text, [b.text for b in cited_blocks], [b.text for b in blocks], [b.path for b in blocks]
            )
        if not not_found and mostly_ungrounded(grounding):
            # An explanation of code that is not in the sources (an example repeated, an
            # invented API) is not an answer: say what was read instead.
            not_found = True
            citations = []
            text = not_found_answer(request.question, repos, blocks)
            text += "\nThe model's explanation named code the sources do not contain: " + ", ".join(
                grounding.ungrounded[:5]
            )
        elif not not_found:
            text, note = mark_ungrounded(text, grounding)
            text = "\n\n".join(part for part in (text, note, render_sources(citations)) if part)
        return Answer(
            answer=text,
            citations=citations,
            model=model,
            trace_id=trace_id,
            not_found=not_found,
            invalid_citations=final_checker.invalid,
            searched=[b.location for b in blocks],
            timings_ms=timings,
            usage=usage,
            contexts=[b.text for b in blocks],
            grounding_checked=grounding.checked,
            ungrounded=grounding.ungrounded,
            grounding_note=note,
            inferred_citations=inferred and not not_found,
        )

    def _code_budget(self, prompt: PromptTemplate, question: str, history: Sequence[dict[str, str]]) -> int:
        llm = self.config.llm
        fixed = sum(_estimate_tokens(content) for _, content in prompt.messages) + _estimate_tokens(question)
        fixed += sum(_estimate_tokens(turn["content"]) + 4 for turn in history)
        room = llm.context_tokens - llm.max_answer_tokens - fixed - 32  # chat-template overhead
        share = int(llm.context_tokens * self.config.answering.context_share)
        return max(0, min(room, share, self.config.answering.code_tokens))

    def _count_prompt_tokens(self, endpoint: Any, messages: list[dict[str, str]]) -> int | None:
        if endpoint.engine != "llama_cpp":
            return None
        import httpx

        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        try:
            server = endpoint.base_url.removesuffix("/v1")
            response = httpx.post(f"{server}/extras/tokenize/count", json={"input": text}, timeout=5)
            response.raise_for_status()
            return int(response.json()["count"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def read_lines(self, repo: str, commit_sha: str, path: str) -> list[str] | None:
        """The lines of `path` at `commit_sha` in the repo's local git mirror, as chunking
        decodes them (what citations number); None when the file is not there. The chat
        app's source page shows cited files through this too."""
        with self._mirrors_lock:
            mirror = self._mirrors.get(repo)
            if mirror is None:
                codebase = self.config.codebase(repo)
                mirror = RepoMirror(
                    DataLayout(self.config.data_dir).mirror(repo),
                    self.config.clone_url(codebase),
                    codebase.branch,
                )
                self._mirrors[repo] = mirror
            try:
                data = mirror.read_file(commit_sha, path)
            except Exception as error:  # a missing mirror: the block cannot be verified, so it is not used
                log.warning("cannot read %s:%s at %s: %s", repo, path, commit_sha[:12], error)
                return None
        if data is None:
            return None
        return chunking.split_lines(chunking.decode_source(data))

    def _emit_trace(self, request: AskRequest, answer: Answer, details: dict[str, Any]) -> None:
        if self.trace_sink is None:
            return
        try:
            self.trace_sink(request, answer, details)
        except Exception:  # tracing must never cost the user the answer
            log.exception("could not record trace %s", answer.trace_id)

    def close(self) -> None:
        with self._mirrors_lock:
            for mirror in self._mirrors.values():
                mirror.close()
            self._mirrors.clear()


# ---------------------------------------------------------------------------------------------
# The served endpoint's smoke test
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    question: str
    repo: str
    expected: str  # the chunk the question is about, repo:path#Lx-Ly
    answer: Answer

    @property
    def cited_expected(self) -> bool:
        repo, _, rest = self.expected.partition(":")
        path, _, lines = rest.partition("#L")
        start, _, end = lines.partition("-L")
        return any(
            c.repo == repo and c.path == path and c.line_start <= int(end) and c.line_end >= int(start)
            for c in self.answer.citations
        )


def smoke_test(config: CiaConfig, answerer: Answerer) -> SmokeResult:
    """Ask about a definition whose name occurs in exactly one indexed chunk: the live
    endpoint passes when its answer keeps at least one valid citation (every citation that
    survives is a chunk of the context whose lines exist at its sha)."""
    from cia_assets.lib.indexing.pipeline import pick_smoke_chunk, read_chunks

    layout = DataLayout(config.data_dir)
    for repo in config.repo_ids:
        chunk = pick_smoke_chunk(read_chunks(layout.chunks(repo)))
        if chunk is None or not chunk.symbol:
            continue
        name = chunk.symbol.rsplit(".", 1)[-1]
        question = f"What does {name} do?"
        answer = answerer.ask(
            AskRequest(
                question=question,
                grant=Grant(name="served-endpoint-check", repos=(repo,)),
                interface="check",
            )
        )
        expected = f"{repo}:{chunk.path}#L{chunk.line_start}-L{chunk.line_end}"
        return SmokeResult(
            passed=bool(answer.citations), question=question, repo=repo, expected=expected, answer=answer
        )
    raise AnswerError("no indexed repo has a definition to ask about; index a repo first (`cia index`)")
