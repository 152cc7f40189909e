"""What a question gets back: the sources first, deltas of the explanation, then the verified
`Answer`; and the texts of a "not found" answer and of an answer's closing lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cia_assets.lib.answering.citations import Citation, ContextBlock, SourcePreview, render_sources
from cia_assets.lib.core.access import Grant

# What the model writes when the sources do not answer the question (the prompt asks for it).
NOT_FOUND_MARKER = "NOT FOUND"


class AnswerError(RuntimeError):
    """The question cannot be answered as asked (bad input, endpoint down); says why."""


@dataclass
class AskRequest:
    question: str
    grant: Grant
    repos: Sequence[str] | None = None
    interface: str = "cli"
    history: Sequence[dict[str, str]] = ()


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
    trace_id: str  # "" when the answer could not be recorded (no feedback can name it)
    not_found: bool
    invalid_citations: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int | None] = field(default_factory=dict)
    # The sources as the model was shown them, one block each (evaluation: the judge reads them
    # with their files and numbers, and a judge off this machine gets them redacted as files).
    contexts: list[str] = field(default_factory=list)
    # Backticked identifiers and quoted code lines checked, and those no block contains.
    grounding_checked: int = 0
    ungrounded: list[str] = field(default_factory=list)
    grounding_note: str = ""  # what the answer says about its ungrounded names, "" when none
    # The model wrote no valid marker; the citations are the blocks its names come from.
    inferred_citations: bool = False
    # Why a "not found" answer is one: "no code", "only tests", "model odds"
    # (decided before generation), "model said not found", "no citation", "ungrounded".
    not_found_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.to_json() for c in self.citations],
            "model": self.model,
            "trace_id": self.trace_id or None,
            "not_found": self.not_found,
            # Which step said "not found" (the API, the page and MCP clients show why).
            "not_found_reason": self.not_found_reason or None,
            "ungrounded": self.ungrounded,
        }


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of the answer's text as it streams (citation markers already checked)."""

    text: str


AnswerEvent = AnswerSources | AnswerDelta | Answer


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
        lines.extend(f"- {b.label}" for b in blocks)
    else:
        lines.append("The search returned no code for this question.")
    return "\n".join(lines)


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
