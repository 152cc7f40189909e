"""Answers that explain the code, with verified citations: retrieve, assemble, generate, verify.

The flow, the same for the CLI, the chat app, the OpenAI-compatible API and MCP:
1. hybrid search over the repos the caller's token may see, with the conversation's previous
   question folded into the query of a follow-up (a question that asks where something is
   tested, or how to use or set something up, ranks tests, or docs and config, beside the
   code: `QUESTION_ROLES_SEARCH`);
2. context assembly: source files before tests, docs and vendored code (unless the question
   asks about those), hits of one file that touch merged, at most a few blocks per file, each
   block re-read from the git mirror at the indexed sha (so what the model sees is exactly what
   a citation will point at), within a token budget sized for first-token time;
3. the sources go to the caller at once (`AnswerSources`), before any generation; when they do
   not mention the question's subject (`grounding.evidence`) the answer is "not found" without
   asking the model;
4. generation through the `openai` client against the live served endpoint, streamed;
5. a source header the model repeats ("[1] path lines 4-8") is restated as it streams, citing
   the block of that file and lines (`citations.SourceHeaderRestater`); every `[n]` marker is
   checked as it streams: it must name a block of this context.
   Markers that do not are removed and reported; an answer left with no valid citation
   becomes an explicit "not found in the indexed code" that lists what was searched;
6. after generation, every backticked identifier and quoted code line must occur in the
   cited blocks or the context (`grounding.check_blocks`); those that do not are marked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.answer import (
    NOT_FOUND_MARKER,
    Answer,
    AnswerError,
    AnswerEvent,
    AnswerSources,
    AskRequest,
    not_found_answer,
)
from cia_assets.lib.answering.citations import (
    CitationFilter,
    ContextBlock,
    SourceHeaderRestater,
    format_sources,
    render_sources,
    restate_source_headers,
    tidy_answer,
)
from cia_assets.lib.answering.context import (
    assemble_context,
    condensed_question,
    estimate_tokens,
    explanation_order,
    only_tests_or_vendored,
    previous_question,
    retrieval_query,
)
from cia_assets.lib.answering.generation import Generation, not_found_odds
from cia_assets.lib.answering.grounding import (
    Evidence,
    Grounding,
    attribute,
    check_blocks,
    evidence,
    mark_ungrounded,
    mostly_ungrounded,
)
from cia_assets.lib.answering.prompts import PromptTemplate, load_prompt
from cia_assets.lib.core.access import AccessDenied
from cia_assets.lib.core.project import Project
from cia_assets.lib.indexing.file_roles import asks_for_tests, asks_how_to
from cia_assets.lib.learning.redaction import mask_secrets
from cia_assets.lib.observability.langfuse.prompts import PromptCache
from cia_assets.lib.retrieval.query_plan import definition_names
from cia_assets.lib.retrieval.search import SearchOptions, rerank_code, search_code
from cia_assets.lib.serving.endpoint import EndpointRecord, HealthCache
from cia_assets.lib.sources.mirrors import MirrorPool

log = logging.getLogger(__name__)
# An explanation needs the definitions of the code a question names, even where the lists
# that rank files for a report do not reach them. The title list was measured on reports and
# commit subjects, not on answers: off here.
ANSWER_SEARCH = SearchOptions(fetch_definitions=True, shown=False, title_weight=0.0)
# A question that asks where something is tested, or how to use or set something up: the role
# prior follows the roles the question wants (`file_roles.wanted_roles`: tests; docs and
# config). The default prior (source files) ranked every test below the code it tests, so
# "where is the redaction tested?" was answered from the redaction itself, and "how do I add a
# repository?" from search code instead of the README and cia.yaml.
QUESTION_ROLES_SEARCH = dataclasses.replace(ANSWER_SEARCH, roles_from_question=True)


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
        project: Project | None = None,
    ) -> None:
        self.config = config
        # The store and embedding model this answerer searches with: the caller's when it
        # shares them (the MCP server's search tool), else its own, closed with it.
        self._owns_project = project is None
        self.project = project or Project(config)
        # When the live endpoint last answered a health check: not probed on every question.
        self.health = HealthCache()
        self.trace_sink = trace_sink
        self.endpoint = endpoint
        # Managed prompts from Langfuse, reused for their TTL across this answerer's questions.
        self._prompts = PromptCache()
        # One `git cat-file --batch` per mirror, shared by the app's request threads.
        self.mirrors = MirrorPool(config)

    # -- public ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load what a first question would otherwise wait for: the vector store and each
        index's embedding model (a fresh clone's first question had its sources after 0.5 s,
        the next ones after tens of milliseconds) and the model client's library (`openai`,
        ~0.4 s to import: SWE-QA xarray's first question waited 0.6 s more than the others
        between its sources and the model's first token), and the secret scanner that masks
        the sources (~0.17 s on its first use)."""
        import openai  # noqa: F401  (for its import time only)

        search_code(self.project, "warm up", k=1, options=ANSWER_SEARCH)
        if self.config.retrieval.mask_secrets:
            mask_secrets('password = "warm-up"', "warm_up.py")

    def ask(self, request: AskRequest) -> Answer:
        final: Answer | None = None
        for event in self.stream(request):
            if isinstance(event, Answer):
                final = event
        assert final is not None
        return final

    def stream(self, request: AskRequest) -> Generator[AnswerEvent]:
        """The sources, then deltas of the answer text as it is generated, then the verified
        `Answer`. Closing it before its end (its reader went away) closes the request to the
        model, which stops generating."""
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

        previous = previous_question(request.history, settings.history_messages)
        query = retrieval_query(question, previous)
        asked = condensed_question(question, previous)
        hits = rerank_code(
            self.project,
            query,
            search_code(
                self.project,
                query,
                repos=repos,
                k=settings.top_k,
                options=(
                    QUESTION_ROLES_SEARCH
                    if asks_for_tests(question) or asks_how_to(question)
                    else ANSWER_SEARCH
                ),
            ),
        )
        # The code the question names (`_getitem_with_mask`): its definitions go first and a
        # long block is cut around them.
        named = definition_names(question)
        hits = explanation_order(hits, question, named, by_role=settings.prefer_source_files)
        prompt = load_prompt(self.config, self._prompts)
        blocks = assemble_context(
            hits,
            self.read_lines,
            max_blocks_per_file=settings.max_chunks_per_file,
            budget_tokens=self._code_budget(prompt, asked),
            focus_names=named,
            # One long chunk (a 90-line method) would take the whole budget: several files
            # explain more than one.
            max_block_tokens=settings.block_tokens,
            mask=mask_secrets if self.config.retrieval.mask_secrets else None,
        )
        # A follow-up's subject is partly in the question before it: judged on the same query.
        found = evidence(query, [(b.path, b.read) for b in blocks])
        retrieved = time.perf_counter()
        timings: dict[str, float] = {"retrieval_ms": round((retrieved - started) * 1000, 1)}
        yield AnswerSources([block.preview() for block in blocks])
        timings["sources_ms"] = round((time.perf_counter() - started) * 1000, 1)
        details: dict[str, Any] = {
            "query": query,
            "hits": [h.to_json() for h in hits],
            "blocks": [b.label for b in blocks],
            "evidence": found.to_json(),
            "prompt_name": prompt.name,
            "prompt_version": prompt.version,
            "repos": repos,
            "follows": previous,
        }

        from cia_assets.lib.serving.endpoint import chat_client, choose_endpoint

        endpoint = self.endpoint or choose_endpoint(self.config, health=self.health)
        details["endpoint"] = endpoint.base_url
        model_name = endpoint.model if not endpoint.adapter else f"{endpoint.model}+{endpoint.adapter}"
        usage: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None}

        # Tests alone are no explanation, unless they hold the code the question names.
        only_tests = bool(blocks) and not found.named_found and only_tests_or_vendored(blocks, question)
        if not blocks or only_tests:
            # Nothing was retrieved, or only tests and vendored code were (a fixture is not the
            # implementation asked about): say so, without asking a model that would explain
            # whatever it was shown.
            abstained = "no code" if not blocks else "only tests"
            answer = self._finish(
                request, trace_id, model_name, blocks, repos, "", CitationFilter(set()), timings, usage,
                found, abstained=abstained,
            )  # fmt: skip
            details["abstained"] = abstained
            details["timings_ms"] = timings
            yield self._emit_trace(request, answer, details)
            return

        messages = prompt.render(format_sources(blocks), asked)
        client = chat_client(endpoint, self.config)
        # The code found may be near the subject without being it (an absent feature of a repo
        # whose main classes the question names): the model's own weight on NOT FOUND decides,
        # with a lower bar when the retrieved code does not support the question.
        supported = found.supports_answer(settings.support_min_coverage)
        details["supported"] = supported
        threshold = settings.abstain_not_found_odds if supported else settings.abstain_unsupported_odds
        if threshold > 0:
            probe_started = time.perf_counter()
            odds = not_found_odds(client, endpoint, messages)
            timings["model_probe_ms"] = round((time.perf_counter() - probe_started) * 1000, 1)
            details["not_found_odds"] = odds
            if odds is not None and odds >= threshold:
                answer = self._finish(
                    request, trace_id, model_name, blocks, repos, "", CitationFilter(set()), timings, usage,
                    found, abstained="model odds",
                )  # fmt: skip
                details["abstained"] = answer.not_found_reason
                details["timings_ms"] = timings
                yield self._emit_trace(request, answer, details)
                return
        checker = CitationFilter({b.n for b in blocks})
        generation = Generation()
        yield from generation.run(
            client,
            endpoint,
            messages,
            SourceHeaderRestater(blocks),
            checker,
            max_tokens=self.config.llm.max_answer_tokens,
            temperature=self.config.llm.temperature,
        )
        assert generation.finished_at is not None
        timings["generation_ms"] = round((generation.finished_at - retrieved) * 1000, 1)
        if generation.first_token_at is not None:
            timings["first_token_ms"] = round((generation.first_token_at - started) * 1000, 1)
        answer = self._finish(
            request,
            trace_id,
            model_name,
            blocks,
            repos,
            generation.raw,
            checker,
            timings,
            generation.usage,
            found,
        )
        details["timings_ms"] = timings
        details["abstained"] = answer.not_found_reason or None
        details["raw_answer"] = generation.raw
        details["grounding"] = {"checked": answer.grounding_checked, "ungrounded": answer.ungrounded}
        yield self._emit_trace(request, answer, details)

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
        abstained: str = "",
    ) -> Answer:
        """The verified answer; `abstained` says why it is "not found" without generation
        ("no code", "only tests", "model odds")."""
        # Re-run the check over the whole text: the streamed pieces and the final answer
        # must agree, whatever the chunking of the stream was.
        final_checker = CitationFilter({b.n for b in blocks})
        text = tidy_answer(final_checker.feed(restate_source_headers(raw, blocks)) + final_checker.finish())
        by_number = {b.n: b for b in blocks}
        cited_blocks = [by_number[n] for n in sorted(final_checker.cited)]
        declined = raw.lstrip().startswith(NOT_FOUND_MARKER)
        inferred = False
        if not cited_blocks and text and not declined:
            # A small model often explains without writing markers: cite the blocks its
            # backticked names and quoted lines come from, and say so in the trace.
            cited_blocks = [
                blocks[i] for i in attribute(text, [b.read for b in blocks], paths=[b.path for b in blocks])
            ]
            inferred = bool(cited_blocks)
        citations = [block.citation() for block in cited_blocks]
        not_found = not citations or declined
        grounding = Grounding(checked=0)
        note = ""
        reason = ""
        if not_found:
            missing = (
                [] if found.supports_answer(self.config.answering.support_min_coverage) else found.missing
            )
            text = not_found_answer(request.question, repos, blocks, missing, abstained == "only tests")
            reason = abstained or ("model said not found" if declined else "no citation")
            citations = []
        else:
            grounding = check_blocks(text, cited_blocks, blocks)
        if not not_found and mostly_ungrounded(grounding):
            # An explanation of code that is not in the sources (an example repeated, an
            # invented API) is not an answer: say what was read instead.
            not_found = True
            reason = "ungrounded"
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
            searched=[b.label for b in blocks],
            timings_ms=timings,
            usage=usage,
            contexts=[format_sources([b]) for b in blocks],
            grounding_checked=grounding.checked,
            ungrounded=grounding.ungrounded,
            grounding_note=note,
            inferred_citations=inferred and not not_found,
            not_found_reason=reason,
        )

    def _code_budget(self, prompt: PromptTemplate, question: str) -> int:
        llm = self.config.llm
        fixed = sum(estimate_tokens(content) for _, content in prompt.messages) + estimate_tokens(question)
        room = llm.context_tokens - llm.max_answer_tokens - fixed - 32  # chat-template overhead
        share = int(llm.context_tokens * self.config.answering.context_share)
        return max(0, min(room, share, self.config.answering.code_tokens))

    def read_lines(self, repo: str, commit_sha: str, path: str) -> list[str] | None:
        """The lines of `path` at `commit_sha` in the repo's local git mirror, as chunking
        numbers them (what citations point at); None when the file is not there. The chat
        app's source page shows cited files through this too."""
        return self.mirrors.read_lines(repo, commit_sha, path)

    def _emit_trace(self, request: AskRequest, answer: Answer, details: dict[str, Any]) -> Answer:
        """The answer as handed out: with its trace id once the sink stored it, without one
        when storing failed (an id that points at nothing would take feedback nowhere)."""
        if self.trace_sink is None:
            return answer
        try:
            self.trace_sink(request, answer, details)
        except Exception as error:  # tracing must never cost the user the answer
            log.error("answer not recorded, handed out without a trace id: %s", error)
            return dataclasses.replace(answer, trace_id="")
        return answer

    def close(self) -> None:
        self.mirrors.close()
        if self._owns_project:
            self.project.close()
