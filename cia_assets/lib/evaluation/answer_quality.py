"""Answer quality scored by ragas with an LLM judge on any OpenAI-compatible endpoint.

Four ragas metrics (the `ragas.metrics.collections` implementations, which take an
instructor-wrapped client and a modern embeddings object):

- faithfulness: share of the answer's statements the retrieved contexts support;
- answer_relevancy: cosine similarity between the question and questions the judge writes
  back from the answer (0 when the answer is noncommittal), embedded with CIA's own model;
- context_precision: ranked precision of the contexts that helped reach the reference answer;
- context_recall: share of the reference answer's statements the contexts support.

A judge that fails on one sample (invalid JSON after retries, a timeout) costs that sample's
score for that metric only: the score is None, the error text is kept, the failure is counted.
ragas is imported on first use: importing it takes about 4 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ragas.embeddings.base import BaseRagasEmbedding

METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
# ragas' own default; the config's chat-answer budget (384) truncates the NLI verdict lists
# the judge writes for long answers.
DEFAULT_JUDGE_MAX_TOKENS = 1024
_ERROR_CHARS = 600
_T = TypeVar("_T")


@dataclass(frozen=True)
class RagSample:
    """One answered question: what was asked, answered, retrieved, and the ideal answer."""

    question: str
    answer: str
    contexts: list[str]
    reference: str


LOCAL_JUDGE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class JudgeEndpoint:
    """A concrete OpenAI-compatible endpoint (the caller resolves "the served one")."""

    base_url: str
    model: str
    api_key: str | None
    timeout_s: float
    max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS
    # llama.cpp's server takes the reply's JSON schema in `response_format` and compiles it
    # into a grammar: a small local judge then writes an instance, not a copy of the schema.
    schema_grammar: bool = False

    @classmethod
    def at(
        cls, base_url: str, model: str, *, engine: str, api_key: str | None, timeout_s: float
    ) -> JudgeEndpoint:
        """The judge at an endpoint CIA started or resolved. A local llama.cpp server holds the
        replies to each step's schema with a grammar, and on 2 cores writes ragas' long JSON
        replies slowly (a 1,024-token reply of the 1.5B takes about 90 s): at least
        LOCAL_JUDGE_TIMEOUT_S a request."""
        local = engine == "llama_cpp"
        timeout = max(timeout_s, LOCAL_JUDGE_TIMEOUT_S) if local else timeout_s
        return cls(base_url, model, api_key, timeout, schema_grammar=local)

    @property
    def concurrency(self) -> int:
        """Requests in flight: one for llama.cpp's server (the one a grammar is sent to), which
        has one slot, so a queued request would spend its timeout waiting."""
        return 1 if self.schema_grammar else 2


@dataclass(frozen=True)
class QualityReport:
    """Scores per sample (input order; None where the judge failed, `errors[i][metric]` says
    why), means over the scored samples, and unscored samples per metric."""

    metrics: tuple[str, ...]
    scores: list[dict[str, float | None]]
    errors: list[dict[str, str]]
    means: dict[str, float | None]
    failures: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "means": self.means,
            "failures": self.failures,
            "samples": [{"scores": s, "errors": e} for s, e in zip(self.scores, self.errors, strict=True)],
        }


class TextEmbedder(Protocol):
    """What ragas needs of CIA's `Embedder`: texts in, one vector per text out."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def ragas_embeddings(embedder: TextEmbedder) -> BaseRagasEmbedding:
    """`embedder` behind ragas' modern embeddings interface (what AnswerRelevancy takes)."""
    return _embeddings_adapter_class()(embedder)


_ADAPTER_CLASS: Callable[[TextEmbedder], BaseRagasEmbedding] | None = None


def _embeddings_adapter_class() -> Callable[[TextEmbedder], BaseRagasEmbedding]:
    # Defined on first use so that importing this module does not import ragas.
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is not None:
        return _ADAPTER_CLASS
    from ragas.embeddings.base import BaseRagasEmbedding

    class EmbedderEmbeddings(BaseRagasEmbedding):
        def __init__(self, embedder: TextEmbedder) -> None:
            super().__init__(cache=None)
            self.embedder = embedder

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return [float(x) for x in self.embedder.embed([text])[0]]

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            # One batched call instead of ragas' default one-call-per-text.
            return [[float(x) for x in row] for row in self.embedder.embed(list(texts))]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            # ONNX inference blocks; a thread keeps the judge requests in flight meanwhile.
            return await asyncio.to_thread(self.embed_text, text)

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return await asyncio.to_thread(self.embed_texts, texts)

    _ADAPTER_CLASS = EmbedderEmbeddings
    return _ADAPTER_CLASS


def score_answers(
    samples: Sequence[RagSample],
    judge: JudgeEndpoint,
    embedder: TextEmbedder | BaseRagasEmbedding,
    *,
    metrics: Sequence[str] = METRICS,
    concurrency: int | None = None,
    retries: int = 1,
) -> QualityReport:
    """Score `samples` with ragas, `judge` as the LLM and `embedder` for answer relevancy.

    Synchronous for the caller (a Dagster asset): the metrics run in an event loop owned by
    this call. `concurrency` (default: the judge's) bounds the (sample, metric) pairs in
    flight, each of which makes one to a few judge requests in turn. `retries` is how often
    instructor asks the judge again, showing it the validation error, after an unparseable
    reply.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown ragas metrics {unknown}; known: {list(METRICS)}")
    concurrency = judge.concurrency if concurrency is None else concurrency
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not samples:
        return QualityReport(tuple(metrics), [], [], dict.fromkeys(metrics), dict.fromkeys(metrics, 0))
    # A self-hosted assistant does not report usage to ragas' analytics host (ragas reads
    # this once, on its first tracked call).
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    results = _run_in_own_loop(
        _score(_for_judge(samples, judge), judge, embedder, tuple(metrics), concurrency, retries)
    )
    return _report(tuple(metrics), results)


def _for_judge(samples: Sequence[RagSample], judge: JudgeEndpoint) -> list[RagSample]:
    """The samples as a judge may read them. ragas writes them into its prompts as JSON
    strings, where the egress client sees a context's lines escaped onto one: for a judge off
    this machine they are redacted here, each context block as the file it shows, and the
    egress client redacts the request again on the way."""
    from cia_assets.lib.learning.redaction import redact_texts
    from cia_assets.lib.serving.model_endpoints import is_loopback_url

    if is_loopback_url(judge.base_url):
        return list(samples)
    cleaned = []
    for sample in samples:
        (question, answer, reference, *contexts), _ = redact_texts(
            [sample.question, sample.answer, sample.reference, *sample.contexts]
        )
        cleaned.append(RagSample(question=question, answer=answer, contexts=contexts, reference=reference))
    return cleaned


def _run_in_own_loop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # Called from inside a running loop (a notebook, an async caller): asyncio.run cannot
    # nest there, so the loop gets a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


_Outcome = tuple[float | None, str | None]


async def _score(
    samples: list[RagSample],
    judge: JudgeEndpoint,
    embedder: TextEmbedder | BaseRagasEmbedding,
    metrics: tuple[str, ...],
    concurrency: int,
    retries: int,
) -> list[dict[str, _Outcome]]:
    from ragas.embeddings.base import BaseRagasEmbedding
    from ragas.llms import llm_factory
    from ragas.metrics.collections import (
        AnswerRelevancy,
        ContextPrecisionWithReference,
        ContextRecall,
        Faithfulness,
    )

    from cia_assets.lib.serving.egress import async_openai_client

    # Retries of invalid replies belong to instructor (it shows the judge its error); the
    # HTTP client retries only transport failures, once. A judge off this machine reads the
    # contexts redacted (the egress client).
    async with async_openai_client(
        judge.base_url, api_key=judge.api_key, timeout_s=judge.timeout_s, max_retries=1
    ) as client:
        llm = llm_factory(judge.model, client=client, max_tokens=judge.max_tokens, max_retries=retries)
        if judge.schema_grammar:
            llm = _with_schema_grammar(llm)
        scorers: dict[str, Any] = {}
        for name in metrics:
            if name == "faithfulness":
                scorers[name] = Faithfulness(llm=llm)
            elif name == "answer_relevancy":
                embeddings = (
                    embedder if isinstance(embedder, BaseRagasEmbedding) else ragas_embeddings(embedder)
                )
                scorers[name] = AnswerRelevancy(llm=llm, embeddings=embeddings)
            elif name == "context_precision":
                # The reference-based variant: CIA's eval set has ideal answers, and judging
                # contexts against the model's own answer would reward confident mistakes.
                scorers[name] = ContextPrecisionWithReference(llm=llm, name="context_precision")
            else:
                scorers[name] = ContextRecall(llm=llm)
        gate = asyncio.Semaphore(concurrency)

        async def one(sample: RagSample, name: str) -> _Outcome:
            async with gate:
                try:
                    result = await scorers[name].ascore(**_metric_inputs(name, sample))
                except Exception as error:  # any judge failure costs this score only
                    return None, _error_text(error)
            value = result.value
            if value is None or not isinstance(value, int | float) or math.isnan(value):
                # ragas' NaN: the judge's reply listed no statements or classifications.
                return None, f"no score: the judge's reply gave {name} nothing to score"
            return float(value), None

        pairs = [(index, name) for index in range(len(samples)) for name in metrics]
        outcomes = await asyncio.gather(*(one(samples[index], name) for index, name in pairs))
    results: list[dict[str, _Outcome]] = [{} for _ in samples]
    for (index, name), outcome in zip(pairs, outcomes, strict=True):
        results[index][name] = outcome
    return results


def _with_schema_grammar(llm: Any) -> Any:
    from ragas.llms.base import InstructorLLM

    class SchemaGrammarLLM(InstructorLLM):
        async def agenerate(self, prompt: str, response_model: Any) -> Any:
            # instructor's JSON mode sends a bare {"type": "json_object"}; `extra_body` is
            # merged over it, per call, because each ragas step expects its own model.
            schema = response_model.model_json_schema()
            return await self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                response_model=response_model,
                extra_body={"response_format": {"type": "json_object", "schema": schema}},
                **self._map_provider_params(),
            )

    return SchemaGrammarLLM(llm.client, llm.model, llm.provider, **llm.model_args)


def _metric_inputs(name: str, sample: RagSample) -> dict[str, Any]:
    if name == "faithfulness":
        return {
            "user_input": sample.question,
            "response": sample.answer,
            "retrieved_contexts": sample.contexts,
        }
    if name == "answer_relevancy":
        return {"user_input": sample.question, "response": sample.answer}
    return {
        "user_input": sample.question,
        "reference": sample.reference,
        "retrieved_contexts": sample.contexts,
    }


def _error_text(error: Exception) -> str:
    # instructor's str() renders every failed attempt with full completions (kilobytes);
    # its message alone names the attempts and the last validation error.
    message = Exception.__str__(error) or repr(error)
    text = f"{type(error).__name__}: {message}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _report(metrics: tuple[str, ...], results: list[dict[str, _Outcome]]) -> QualityReport:
    scores = [{name: result[name][0] for name in metrics} for result in results]
    errors = [{name: error for name, (_, error) in result.items() if error is not None} for result in results]
    means: dict[str, float | None] = {}
    failures: dict[str, int] = {}
    for name in metrics:
        scored = [value for row in scores if (value := row[name]) is not None]
        means[name] = round(float(np.mean(scored)), 4) if scored else None
        failures[name] = len(scores) - len(scored)
    return QualityReport(metrics=metrics, scores=scores, errors=errors, means=means, failures=failures)
