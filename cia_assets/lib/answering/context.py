"""What the model is shown: the conversation it continues, the query a follow-up searches for,
and the context blocks, in the order an explanation wants them, within a token budget."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from cia_assets.lib.answering.citations import ContextBlock
from cia_assets.lib.indexing.file_roles import file_role, wanted_roles
from cia_assets.lib.retrieval.query_plan import defines, defines_in, first_definition
from cia_assets.lib.retrieval.search import CodeHit

log = logging.getLogger(__name__)

# Code tokenizes densely: ~3 characters per token for SmolLM2's and Llama-style tokenizers,
# ~3.8 for Qwen2.5's (measured on this repo's Python); overestimating keeps the prompt inside
# the context.
CHARS_PER_TOKEN = 3.0
# Blocks of one file closer than this many lines are merged into one.
MERGE_GAP_LINES = 2
MIN_BLOCK_LINES = 8
# An earlier question of a conversation is cut to this many characters where a follow-up uses it.
PREVIOUS_QUESTION_CHARS = 1200


def assemble_context(
    hits: Sequence[CodeHit],
    read_lines: Callable[[str, str, str], list[str] | None],
    *,
    max_blocks_per_file: int,
    budget_tokens: int,
    focus_names: AbstractSet[str] = frozenset(),
    max_block_tokens: int | None = None,
    mask: Callable[[str, str], str] | None = None,
) -> list[ContextBlock]:
    """Blocks in rank order: touching hits of one file merged, at most `max_blocks_per_file`
    per file, the whole within `budget_tokens`. `read_lines(repo, sha, path)` gives the
    file's lines at that sha (None when it is not there): block text comes from it, so a
    stale index entry whose lines no longer exist never reaches the model. A block longer
    than `max_block_tokens` or than what is left keeps its head, or, when it defines one of
    `focus_names` further down (a method of a class chunked whole), the lines from that
    definition on. `mask(text, path)` replaces what must not be shown (secrets) in each
    block's text: the model, the sources and the citations' previews all read it."""
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
        symbol = hit.symbol if (hit.line_start, hit.line_end) == (start, end) else None
        cost = header_tokens + estimate_tokens("\n".join(body))
        allowance = remaining if max_block_tokens is None else min(remaining, max_block_tokens)
        if cost > allowance:
            # Keep the head of a long block (its signature and docstring) when enough fits,
            # or the named definition inside it.
            skip, defined = _named_definition(body, focus_names) if focus_names else (0, None)
            # Keep at least a readable block: a definition in the last lines starts it earlier.
            skip = min(skip, max(0, len(body) - MIN_BLOCK_LINES))
            kept: list[str] = []
            used = header_tokens
            for line in body[skip:]:
                line_cost = estimate_tokens(line) + 1
                if used + line_cost > allowance:
                    break
                kept.append(line)
                used += line_cost
            if len(kept) < MIN_BLOCK_LINES:
                continue
            start += skip
            body, end, cost = kept, start + len(kept) - 1, used
            # A block cut to its head shows part of the hit's definition: no symbol. One cut
            # to a method of a class chunked whole says whose it is
            # (`ResolvedGrouper.__post_init__`), as the class line it no longer shows did.
            symbol = None
            if skip and defined:
                symbol = f"{hit.symbol}.{defined}" if hit.symbol and hit.symbol != defined else defined
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
                symbol=symbol,
                text=mask("\n".join(body), hit.path) if mask else "\n".join(body),
                chat_url=hit.chat_url,
            )
        )
    return blocks


def _about_named(hit: CodeHit, named: AbstractSet[str]) -> bool:
    """The hit defines a named name, or is part of a named class (`DaskIndexingAdapter.__getitem__`
    when the question names `DaskIndexingAdapter`)."""
    if defines(hit.symbol, named) or defines_in(hit.text, named):
        return True
    return any(part in named for part in (hit.symbol or "").lower().split(".")[:-1])


def _named_definition(body: Sequence[str], names: AbstractSet[str]) -> tuple[int, str | None]:
    """The index of the first line of `body` that defines one of `names` and the name it
    defines, else (0, None). A method a dotted name names (`ResolvedGrouper.__post_init__`) is
    preferred to its class's own line; its qualifier may be anywhere in the body (the class
    line above it)."""
    whole = "\n".join(body)
    dotted = {name for name in names if "." in name}
    found = (dotted and first_definition(whole, dotted)) or first_definition(whole, names)
    if found is None:
        return 0, None
    offset, defined = found
    return whole.count("\n", 0, offset), defined


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def previous_question(history: Sequence[dict[str, str]], limit: int) -> str | None:
    """The conversation's last user question among its last `limit` messages (None without
    one: the question stands alone). A follow-up ("and where is it tested?") names its subject
    only there."""
    turns = [
        message
        for message in history
        if message.get("role") in ("user", "assistant") and str(message.get("content") or "").strip()
    ]
    recent = turns[-limit:] if limit else []
    asked = [str(turn["content"]).strip() for turn in recent if turn["role"] == "user"]
    return asked[-1][:PREVIOUS_QUESTION_CHARS] if asked else None


def retrieval_query(question: str, previous: str | None) -> str:
    """What a follow-up searches for: the question plus the previous question, which names
    what "it" and "that" refer to."""
    return f"{question}\n{previous}" if previous else question


def condensed_question(question: str, previous: str | None) -> str:
    """A follow-up as the model reads it: one question, the previous one then this one, as a
    person would ask both at once. Earlier turns given to the 0.5B as chat messages (its
    earlier answers without their markers) taught it to answer without citing: on 12
    follow-ups about this repository 4 cited a reference file and 5 were "not found", against
    6 and 2 this way (`answer_sets/cia_followups_qa.jsonl`; README, "Follow-up questions")."""
    return f"{previous} {question}" if previous else question


def only_tests_or_vendored(blocks: Sequence[ContextBlock], question: str) -> bool:
    """Every block is a test or vendored code, and the question does not ask about tests."""
    if "test" in wanted_roles(question):
        return False
    return all(file_role(block.path) in ("test", "vendored") for block in blocks)


def explanation_order(
    hits: Sequence[CodeHit], question: str, named: AbstractSet[str], *, by_role: bool = True
) -> list[CodeHit]:
    """The definitions of what the question names first, whatever file they are in (a
    question about a test helper wants that test file), then hits of the roles the question
    wants (source files, plus tests or docs when it asks about those), each group in rank
    order: tests and callers that mention a name would otherwise crowd its definition out of
    the context. `by_role=False` (`answering.prefer_source_files: false`) keeps only the first
    rule."""
    wanted = wanted_roles(question)

    def group(hit: CodeHit) -> int:
        if named and _about_named(hit, named):
            return 0
        return 1 if not by_role or file_role(hit.path) in wanted else 2

    return sorted(hits, key=group)
