"""Hybrid code search across the indexed repos, as the CLI and the answering service use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from cia_assets.config import CiaConfig
from cia_assets.lib import lexical
from cia_assets.lib.embeddings import Embedder
from cia_assets.lib.layout import collection_alias
from cia_assets.lib.project import open_embedder, open_embedding_cache, open_vector_store
from cia_assets.lib.records import sha256_text, source_url
from cia_assets.lib.vector_store import SearchHit, SparseVector, VectorStore

MERGE_RRF_K = 60  # as the stores' own fusion


class SearchError(RuntimeError):
    """The search cannot run as asked; the message says why."""


@dataclass(frozen=True)
class HybridQuery:
    """A query encoded once for any number of collections."""

    dense: list[float]
    sparse: SparseVector
    exact: SparseVector

    @classmethod
    def encode(cls, embedder: Embedder, text: str) -> HybridQuery:
        return cls(
            dense=embedder.embed_query(text).tolist(),
            sparse=lexical.encode_query(text),
            exact=lexical.encode_identifiers(text),
        )

    def run(
        self,
        store: VectorStore,
        collection: str,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
    ) -> list[SearchHit]:
        return store.search(collection, self.dense, self.sparse, limit, filters, exact=self.exact)


def search_collection(
    store: VectorStore, embedder: Embedder, collection: str, text: str, limit: int
) -> list[SearchHit]:
    """One collection or alias, e.g. a build being verified before it is published."""
    return HybridQuery.encode(embedder, text).run(store, collection, limit)


@dataclass(frozen=True)
class CodeHit:
    repo: str
    path: str
    line_start: int
    line_end: int
    symbol: str | None
    language: str
    score: float
    url: str | None
    kind: str
    commit_sha: str
    text: str
    context: str = ""

    def to_json(self, with_text: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("context")
        if not with_text:
            for key in ("text", "kind", "commit_sha"):
                data.pop(key)
        return data


def search_code(
    config: CiaConfig, query: str, *, repos: Sequence[str] | None = None, k: int = 10
) -> list[CodeHit]:
    """Top-k chunks for `query` over `repos` (default: all configured and indexed).

    Each repo has its own collection (so repos re-index independently and access control
    is a choice of collections); per-repo RRF scores are on one scale, so merging by score
    is fair.
    """
    if not query.strip():
        raise SearchError("the query is empty")
    if k < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    for repo in repos or ():
        config.codebase(repo)  # raises KeyError naming an unknown repo
    store = open_vector_store(config)
    wanted = list(repos) if repos else config.repo_ids
    aliases = {repo: collection_alias(config.vector_store.collection_prefix, repo) for repo in wanted}
    indexed = {repo: alias for repo, alias in aliases.items() if store.resolve_alias(alias)}
    if not indexed:
        raise SearchError(f"nothing indexed yet for {', '.join(wanted) or 'any repo'}; run `cia index` first")
    encoded = HybridQuery.encode(open_embedder(config), query)
    hits: list[CodeHit] = []
    for alias in indexed.values():
        for hit in encoded.run(store, alias, k):
            p = hit.payload
            hits.append(
                CodeHit(
                    repo=p["repo_id"],
                    path=p["path"],
                    line_start=p["line_start"],
                    line_end=p["line_end"],
                    symbol=p.get("symbol"),
                    language=p["language"],
                    score=round(hit.score, 6),
                    url=source_url(
                        p.get("web_url"), p["commit_sha"], p["path"], p["line_start"], p["line_end"]
                    ),
                    kind=p["kind"],
                    commit_sha=p["commit_sha"],
                    text=p.get("text", ""),
                    context=p.get("context") or "",
                )
            )
    if len(indexed) > 1:
        hits = merge_across_repos(config, encoded, hits)
    else:
        hits.sort(key=lambda h: (-h.score, h.path, h.line_start))
    return hits[:k]


def merge_across_repos(config: CiaConfig, encoded: HybridQuery, hits: list[CodeHit]) -> list[CodeHit]:
    """One ranking for the hits of several repos' collections.

    RRF scores are built from ranks, so every collection's first hit scores the same: merged
    by score, repos would interleave and ties would go by repo name. The union is fused again
    with evidence that compares across collections: cosine similarity to the query (the
    chunks' vectors come from the embedding cache), the BM25-style overlap of code tokens, and
    the exact identifiers, each ranked over the union and combined with the same RRF.
    """

    def embedding_text(hit: CodeHit) -> str:
        context = hit.context
        return f"{hit.path}\n{context}\n{hit.text}" if context else f"{hit.path}\n{hit.text}"

    texts = [embedding_text(hit) for hit in hits]
    keys = [sha256_text(text) for text in texts]
    vectors = open_embedding_cache(config).get_many(open_embedder(config).model_id, keys)
    query_vector = np.asarray(encoded.dense, dtype=np.float32)
    query_vector /= float(np.linalg.norm(query_vector)) or 1.0

    def cosine(key: str) -> float:
        vector = vectors.get(key)
        if vector is None:
            return -1.0  # not cached here: ranked last on this evidence, not dropped
        return float(np.dot(query_vector, vector) / (float(np.linalg.norm(vector)) or 1.0))

    def overlap(terms: SparseVector, text: str) -> float:
        document = lexical.encode_document(text)
        weights = dict(zip(document.indices, document.values, strict=True))
        return sum(weights.get(i, 0.0) * w for i, w in zip(terms.indices, terms.values, strict=True))

    # (values, whether a zero still earns a rank): every hit has a cosine; a hit without a
    # query token or identifier in it gets nothing from those lists, as in the stores.
    evidence = [
        ([cosine(key) for key in keys], True),
        ([overlap(encoded.sparse, text) for text in texts], False),
        ([overlap(encoded.exact, text) for text in texts], False),
    ]
    fused = [0.0] * len(hits)
    for values, zero_counts in evidence:
        order = sorted(range(len(hits)), key=lambda i: -values[i])
        for rank, index in enumerate(order, start=1):
            if zero_counts or values[index] > 0:
                fused[index] += 1.0 / (MERGE_RRF_K + rank)
    ranked = sorted(range(len(hits)), key=lambda i: (-fused[i], -hits[i].score, hits[i].repo, hits[i].path))
    return [replace(hits[i], score=round(fused[i], 6)) for i in ranked]
