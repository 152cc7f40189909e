"""The served endpoint's smoke test: a question about a definition only one chunk holds, which a
working endpoint answers with a valid citation."""

from __future__ import annotations

from dataclasses import dataclass

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.answer import Answer, AnswerError, AskRequest
from cia_assets.lib.answering.answerer import Answerer
from cia_assets.lib.core.access import Grant
from cia_assets.lib.core.records import SourceSpan


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    question: str
    repo: str
    expected: SourceSpan  # the chunk the question is about
    answer: Answer

    @property
    def cited_expected(self) -> bool:
        return any(citation.overlaps(self.expected) for citation in self.answer.citations)


def smoke_test(config: CiaConfig, answerer: Answerer) -> SmokeResult:
    """Ask about a definition whose name occurs in exactly one indexed chunk: the live
    endpoint passes when its answer keeps at least one valid citation (every citation that
    survives is a chunk of the context whose lines exist at its sha)."""
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
        return SmokeResult(
            passed=bool(answer.citations), question=question, repo=repo, expected=chunk.span, answer=answer
        )
    raise AnswerError("no indexed repo has a definition to ask about; index a repo first (`cia index`)")
