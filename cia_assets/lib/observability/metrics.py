"""Prometheus metrics: what the chat app answers (latency, retrieval, tokens) and what the
index holds (chunks and freshness per repo), scraped from the chat app's `/metrics`.

Index figures are read from the data dir at scrape time (the files the indexing graph
writes), so they are right whichever process indexed: a Dagster run pod, `cia index`, or the
daemon's automation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cia_assets.config import CiaConfig
from cia_assets.lib.indexing.pipeline import read_chunks_meta
from cia_assets.lib.sources.git_sync import read_snapshot

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
RETRIEVAL_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class AnswerMetrics:
    """One set of answer metrics in its own registry (tests make several apps per process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.question_seconds = Histogram(
            "cia_question_seconds",
            "Time to answer a question, retrieval to last token.",
            ["interface", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token_seconds = Histogram(
            "cia_first_token_seconds",
            "Time from the question to the answer's first token.",
            ["interface"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retrieval_seconds = Histogram(
            "cia_retrieval_seconds",
            "Hybrid search and context assembly time per question.",
            buckets=RETRIEVAL_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "cia_llm_tokens", "Tokens through the served model.", ["kind", "model"], registry=registry
        )
        self.invalid_citations = Counter(
            "cia_invalid_citations",
            "Citations removed because they named no retrieved chunk.",
            registry=registry,
        )
        self.grounding_checked = Counter(
            "cia_grounding_checked",
            "Backticked identifiers and quoted code lines of answers looked up in their sources.",
            registry=registry,
        )
        self.ungrounded = Counter(
            "cia_ungrounded",
            "Backticked identifiers and quoted code lines of answers found in no source shown.",
            registry=registry,
        )

    def observe(self, interface: str, answer: Any) -> None:
        timings = answer.timings_ms
        total_ms = float(timings.get("retrieval_ms", 0.0)) + float(timings.get("generation_ms", 0.0))
        outcome = "not_found" if answer.not_found else "answered"
        self.question_seconds.labels(interface, outcome).observe(total_ms / 1000)
        self.retrieval_seconds.observe(float(timings.get("retrieval_ms", 0.0)) / 1000)
        if timings.get("first_token_ms") is not None:
            self.first_token_seconds.labels(interface).observe(float(timings["first_token_ms"]) / 1000)
        for kind in ("prompt_tokens", "completion_tokens"):
            count = answer.usage.get(kind)
            if count:
                self.tokens.labels(kind.removesuffix("_tokens"), answer.model).inc(count)
        if answer.invalid_citations:
            self.invalid_citations.inc(len(answer.invalid_citations))
        if answer.grounding_checked:
            self.grounding_checked.inc(answer.grounding_checked)
        if answer.ungrounded:
            self.ungrounded.inc(len(answer.ungrounded))


class IndexCollector(Collector):
    """Chunks, files and freshness of each repo's live index, read at scrape time."""

    def __init__(self, current_config: Callable[[], CiaConfig]) -> None:
        self.current_config = current_config  # the server's live config (LiveConfig.current)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        config = self.current_config()
        layout = config.layout
        chunks = GaugeMetricFamily("cia_index_chunks", "Chunks in the repo's index.", labels=["repo"])
        files = GaugeMetricFamily("cia_index_files", "Files chunked in the repo's index.", labels=["repo"])
        commit_time = GaugeMetricFamily(
            "cia_index_snapshot_timestamp_seconds", "When the indexed snapshot was fetched.", labels=["repo"]
        )
        age = GaugeMetricFamily(
            "cia_index_snapshot_age_seconds",
            "Seconds since the indexed snapshot was fetched.",
            labels=["repo"],
        )
        now = time.time()
        for repo in config.repo_ids:
            meta = read_chunks_meta(layout.chunks_meta(repo))
            if meta is not None:
                chunks.add_metric([repo], float(meta.chunk_count))
                files.add_metric([repo], float(len(meta.files)))
            snapshot = read_snapshot(layout.snapshot(repo))
            if snapshot is not None:
                moment = datetime.fromisoformat(snapshot.fetched_at).timestamp()
                commit_time.add_metric([repo], moment)
                age.add_metric([repo], max(0.0, now - moment))
        yield from (chunks, files, commit_time, age)
