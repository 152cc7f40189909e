"""ragas answer quality, end to end: the real ragas, instructor and openai client against a
local judge that answers ragas' prompts deterministically (word overlap, see
`fakes.ragas_judge_reply`), and the real packaged embedding model for answer relevancy."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, RagSample, ragas_embeddings, score_answers
from cia_assets.lib.indexing.embeddings import PACKAGED_MODEL, Embedder
from cia_assets.lib.serving.llm_server import start_llama_server, stop_process
from cia_assets_tests.support.fakes import fake_openai, ragas_judge_reply

CONTEXT = (
    "def refund_allowed(order, today):\n"
    '    """A refund is allowed within the refund deadline after delivery."""\n'
    "    return (today - order.delivered_on).days <= REFUND_DEADLINE_DAYS\n"
)
UNRELATED = "def ledger_total(ledger):\n    return sum(ledger.entries)\n"
QUESTION = "How is a refund allowed?"
REFERENCE = "refund_allowed checks the refund deadline after delivery."
GARBAGE_MARKER = "zzgarbage"

SAMPLES = [
    # Every statement supported; the one context is the useful one.
    RagSample(
        QUESTION, "refund_allowed compares delivery days with the refund deadline.", [CONTEXT], REFERENCE
    ),
    # The second statement is not in the context; the useful context is ranked first.
    RagSample(
        QUESTION,
        "refund_allowed checks the refund deadline. It also emails invoices to customers.",
        [CONTEXT, UNRELATED],
        REFERENCE,
    ),
    # Noncommittal; the useful context ranked second; half the reference is not retrieved.
    RagSample(
        QUESTION,
        "I don't know where refunds are checked.",
        [UNRELATED, CONTEXT],
        REFERENCE + " Refunds are paid by bank transfer.",
    ),
    # The judge answers every prompt about this sample with prose instead of JSON.
    RagSample(f"{GARBAGE_MARKER} refunds?", f"{GARBAGE_MARKER} refunds are allowed.", [CONTEXT], REFERENCE),
]


def _judge(request: dict[str, Any]) -> str:
    prompt = request["messages"][1]["content"]  # [0] is instructor's schema message
    if GARBAGE_MARKER in prompt:
        return "Sure! The statements look mostly fine to me."
    reply = json.loads(ragas_judge_reply(request))
    if "noncommittal" in reply and reply["question"].startswith("I don't know"):
        reply["noncommittal"] = 1
    return json.dumps(reply)


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder(PACKAGED_MODEL, model_dir, threads=2)


def _cosine(embedder: Embedder, a: str, b: str) -> float:
    u, v = embedder.embed([a, b])
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_scores_per_sample_and_a_garbage_judge_costs_only_its_sample(embedder: Embedder) -> None:
    with fake_openai(_judge, model="judge") as judge:
        report = score_answers(SAMPLES, JudgeEndpoint(judge.base_url, "judge", "k", 30.0), embedder)

    faithful, half, noncommittal, garbage = report.scores
    assert [s["faithfulness"] for s in (faithful, half, noncommittal)] == [1.0, 0.5, 0.0]
    # Context precision is ranked: the useful context first scores 1, second scores 1/2.
    assert [s["context_precision"] for s in (faithful, half, noncommittal)] == pytest.approx([1.0, 1.0, 0.5])
    assert [s["context_recall"] for s in (faithful, half, noncommittal)] == [1.0, 1.0, 0.5]
    # The judge's question is the answer's first sentence; CIA's model embeds both.
    first_sentences = [SAMPLES[0].answer, "refund_allowed checks the refund deadline."]
    expected = [_cosine(embedder, QUESTION, sentence) for sentence in first_sentences]
    assert [faithful["answer_relevancy"], half["answer_relevancy"]] == pytest.approx(expected, abs=1e-5)
    assert noncommittal["answer_relevancy"] == 0.0

    assert garbage == dict.fromkeys(report.metrics)
    assert set(report.errors[3]) == set(report.metrics) and report.errors[:3] == [{}, {}, {}]
    assert "InstructorRetryException" in report.errors[3]["faithfulness"]
    assert "Invalid JSON" in report.errors[3]["faithfulness"]
    assert report.failures == dict.fromkeys(report.metrics, 1)
    assert report.means["faithfulness"] == 0.5
    assert report.means["context_recall"] == pytest.approx(5 / 6, abs=1e-4)

    assert {r["model"] for r in judge.requests} == {"judge"}
    assert all(r["response_format"] == {"type": "json_object"} for r in judge.requests)
    # One retry per failed prompt (showing the judge its error), then the score is given up.
    garbage_requests = [r for r in judge.requests if GARBAGE_MARKER in r["messages"][1]["content"]]
    assert len(garbage_requests) == 2 * len(report.metrics)
    assert report.to_json()["samples"][3]["errors"] == report.errors[3]


def test_runs_from_inside_a_running_event_loop(embedder: Embedder) -> None:
    """Callers that are themselves async (a notebook, an async server) get the same result."""

    async def caller(base_url: str) -> Any:
        judge = JudgeEndpoint(base_url, "judge", None, 30.0)
        return score_answers(SAMPLES[:1], judge, embedder, metrics=["context_recall"])

    with fake_openai(_judge, model="judge") as judge:
        report = asyncio.run(caller(judge.base_url))
    assert report.scores == [{"context_recall": 1.0}] and report.failures == {"context_recall": 0}


def test_schema_grammar_sends_each_steps_schema(embedder: Embedder) -> None:
    """For llama.cpp judges: each request carries the JSON schema of the reply that step
    parses, which llama.cpp turns into a grammar."""
    with fake_openai(_judge, model="judge") as judge:
        endpoint = JudgeEndpoint(judge.base_url, "judge", None, 30.0, schema_grammar=True)
        report = score_answers(SAMPLES[:1], endpoint, embedder, metrics=["faithfulness"])
    assert report.scores == [{"faithfulness": 1.0}]
    formats = [r["response_format"] for r in judge.requests]
    assert {f["type"] for f in formats} == {"json_object"}
    assert [f["schema"]["title"] for f in formats] == ["StatementGeneratorOutput", "NLIStatementOutput"]


def test_embeddings_adapter_is_the_cia_model(embedder: Embedder) -> None:
    adapter = ragas_embeddings(embedder)
    texts = ["def refund_allowed(order)", "class Ledger"]
    np.testing.assert_allclose(adapter.embed_texts(texts), embedder.embed(texts), atol=1e-6)
    one = asyncio.run(adapter.aembed_text(texts[0]))
    np.testing.assert_allclose(one, embedder.embed(texts[:1])[0], atol=1e-6)


def test_unknown_metric_and_no_samples() -> None:
    judge = JudgeEndpoint("http://127.0.0.1:9/v1", "judge", None, 1.0)
    with pytest.raises(ValueError, match="unknown ragas metrics \\['bleu'\\]"):
        score_answers([SAMPLES[0]], judge, embedder=None, metrics=["bleu"])  # type: ignore[arg-type]
    empty = score_answers([], judge, embedder=None)  # type: ignore[arg-type]
    assert empty.scores == [] and empty.means["faithfulness"] is None and empty.failures["faithfulness"] == 0


@pytest.mark.skipif(
    os.environ.get("CIA_SMALL_JUDGE") != "1",
    reason="the packaged 135M model as ragas judge: 20-60 s a sample on 2 cores; set CIA_SMALL_JUDGE=1",
)
def test_packaged_small_model_as_judge(embedder: Embedder, write_config: Callable[..., CiaConfig]) -> None:
    """The embedded default judge (SmolLM2-135M on llama.cpp) writes replies that parse when
    held to each step's schema; what it judges is not meaningful (it tends to write empty
    statement lists, which leave faithfulness and recall unscored)."""
    config = write_config([], llm={"context_tokens": 8192})  # ragas' few-shot prompts: ~1.7k tokens
    server = start_llama_server(config, log_dir=config.data_dir / "logs")
    try:
        endpoint = JudgeEndpoint(
            server.base_url, config.llm.model, None, 300.0, max_tokens=512, schema_grammar=True
        )
        report = score_answers(SAMPLES[:2], endpoint, embedder, concurrency=1)
    finally:
        stop_process(server.pid)
    errors = [text for sample in report.errors for text in sample.values()]
    assert all(text.startswith("no score:") for text in errors), errors
    assert report.failures["answer_relevancy"] == 0 and report.failures["context_precision"] == 0
