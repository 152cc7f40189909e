"""The served endpoint's smoke test: a question about a definition only one chunk holds, which a
working endpoint answers from that chunk: citing it, with nothing the grounding check could
not find in the context. An answer that cites some other chunk, or names code that is not
there, fails, however well-formed its citations are."""

from __future__ import annotations

from dataclasses import dataclass

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.answer import Answer, AnswerError, AskRequest
from cia_assets.lib.answering.answerer import Answerer
from cia_assets.lib.core.access import Grant
from cia_assets.lib.core.records import SourceSpan


@dataclass(frozen=True)
class SmokeResult:
    question: str
    repo: str
    expected: SourceSpan  # the chunk the question is about
    answer: Answer

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def cited_expected(self) -> bool:
        return any(citation.overlaps(self.expected) for citation in self.answer.citations)

    @property
    def failure(self) -> str | None:
        """Why the answer fails the smoke test, None when it passes."""
        if self.answer.not_found or not self.answer.citations:
            return "the answer kept no valid citation"
        if not self.cited_expected:
            cited = ", ".join(c.label for c in self.answer.citations)
            return f"the answer cites {cited}, not {self.expected.label}, the only chunk defining it"
        if self.answer.ungrounded:
            return f"the answer names what its sources do not hold: {', '.join(self.answer.ungrounded)}"
        return None


def smoke_test(config: CiaConfig, answerer: Answerer) -> SmokeResult:
    """Ask about a definition whose name occurs in exactly one indexed chunk: the live
    endpoint passes when its answer cites that chunk and everything it names or quotes is in
    its sources (`SmokeResult.failure`)."""
    from cia_assets.lib.indexing.pipeline import pick_smoke_chunk, read_chunks

    layout = config.layout
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
        return SmokeResult(question=question, repo=repo, expected=chunk.span, answer=answer)
    raise AnswerError("no indexed repo has a definition to ask about; index a repo first (`cia index`)")
