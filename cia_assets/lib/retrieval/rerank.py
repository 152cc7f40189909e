"""An LLM re-ranks the first files of a search: for each, the likelihood that it answers yes to
"is this the file the request is about?".

Pointwise yes/no scoring, as LLM re-rankers are commonly built: one completion of one token
per file, with the first token's log-probabilities (any OpenAI-compatible server that returns
`logprobs`: vLLM, llama.cpp's server, hosted APIs). The request comes first and the file last,
so a server that reuses prompt prefixes (llama.cpp's server keeps the last prompt's KV, vLLM's
prefix caching) reads the request once per question, not once per file. The LLM's order is
fused with the search's own by reciprocal rank: a weak judge nudges, it does not overrule.

Used by file searches (`search.search_files`) and by the answering context (`search.rerank_code`,
which orders an answer's chunks by their file's place). Off unless `retrieval.reranker.base_url`
is set: on 2 CPU cores the packaged 0.5B takes ~2.3 s a file and barely tells files apart
(README, "Measuring retrieval"); on a GPU endpoint it is a few tens of milliseconds a file.
Code sent to an endpoint off this machine is redacted on the way (`serving.egress`, which
makes the client).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import openai

from cia_assets.lib.serving.first_token import first_token_candidates

if TYPE_CHECKING:
    from cia_assets.lib.retrieval.search import FileHit

log = logging.getLogger(__name__)

SYSTEM = (
    "You judge whether a file of a code repository is the one a request is about: where its "
    "answer is, or what must change to fix it. Answer only yes or no."
)
# The request and each file are cut to these many characters: the judge sees the file's best
# chunks, as the answering context would.
REQUEST_CHARS = 2000
FILE_CHARS = 1500
RRF_K = 60


class RerankError(RuntimeError):
    """The re-ranking endpoint did not answer as needed; the message says why."""


@dataclass(frozen=True)
class Judgement:
    path: str
    yes: float  # P(yes | yes or no) of the first token


@dataclass(frozen=True)
class LlmReranker:
    """A yes/no judge behind an OpenAI-compatible endpoint (`client` is an `openai.OpenAI`
    from `serving.egress`)."""

    client: Any
    model: str
    weight: float = 1.0  # of the LLM's order against the search's own, in the fusion

    def judge(self, request: str, files: Sequence[FileHit]) -> list[Judgement]:
        return [self._judge_one(request, file) for file in files]

    def rerank(self, request: str, files: Sequence[FileHit], top: int) -> list[FileHit]:
        """The first `top` files in the fused order, the rest as they were. A judge that does
        not answer leaves the search's own order (and a warning): it refines, it is never
        what a search depends on."""
        head, tail = list(files[:top]), list(files[top:])
        if len(head) < 2:
            return list(files)
        try:
            judgements = self.judge(request, head)
        except (RerankError, openai.APIError) as error:
            log.warning("re-ranking skipped, the search's order kept: %s", error)
            return list(files)
        by_llm = sorted(range(len(head)), key=lambda i: (-judgements[i].yes, i))
        fused = [1.0 / (RRF_K + rank + 1) for rank in range(len(head))]
        for rank, index in enumerate(by_llm):
            fused[index] += self.weight / (RRF_K + rank + 1)
        order = sorted(range(len(head)), key=lambda i: (-fused[i], i))
        top_score = head[0].score
        # Scores keep the files' order readable: the fused order, below nothing that follows.
        return [replace(head[index], score=round(top_score + fused[index], 6)) for index in order] + tail

    def _judge_one(self, request: str, file: FileHit) -> Judgement:
        code = "\n...\n".join(chunk.text for chunk in file.chunks[:2])[:FILE_CHARS]
        prompt = (
            f"<request>\n{request[:REQUEST_CHARS]}\n</request>\n\n"
            f'<file path="{file.path}">\n{code}\n</file>\n\n'
            "Is this the file the request is about? Answer yes or no."
        )
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        candidates = first_token_candidates(self.client, self.model, messages, top=10)
        if candidates is None:
            raise RerankError(f"{self.model} returned no log-probabilities for its first token")
        return Judgement(file.path, yes_probability(candidates))


def yes_probability(candidates: Any) -> float:
    """P(yes) among the yes/no spellings of the first token's candidates; 0.5 when neither is
    among them (the judge said something else: no evidence either way)."""
    yes = no = 0.0
    for token, logprob in candidates:
        word = str(token).strip().lower()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    return yes / (yes + no) if yes + no > 0 else 0.5
