"""The embedded store's vocabulary in qdrant-edge terms: shard config, points, filters, queries.

Everything that builds or reads qdrant-edge objects without knowing about collections,
aliases or views lives here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from cia_assets.lib.vectorstore.base import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    IndexedPoint,
    SearchHit,
    SparseVector,
)
from cia_assets.lib.vectorstore.embedded.errors import CollectionBusy

RRF_K = 60  # the usual RRF constant; both backends use it so scores compare
INDEXED_FIELDS = ("repo_id", "path")


def create_shard(path: Path, dense_size: int) -> qe.EdgeShard:
    """A new empty shard in `path`, with the payload indexes filters rely on."""
    shard = qe.EdgeShard.create(str(path), _edge_config(dense_size))
    for field_name in INDEXED_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Keyword))
    return shard


def _edge_config(dense_size: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dense_size, distance=qe.Distance.Cosine)},
        # IDF at query time: documents carry BM25 term-frequency weights (lexical.py).
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def load_writable(name: str, path: Path) -> qe.EdgeShard:
    try:
        return qe.EdgeShard.load(str(path))
    except Exception as err:
        if "WouldBlock" in str(err):
            raise CollectionBusy(f"collection {name!r} is open for writing in another process") from err
        raise


def hybrid_request(
    dense: Sequence[float],
    sparse: SparseVector,
    limit: int,
    filters: dict[str, str | list[str]] | None,
    candidates: int,
    exact: SparseVector | None,
    hnsw_ef: int | None,
) -> qe.QueryRequest:
    """Dense + sparse (+ exact-identifier) candidate lists, RRF-fused."""
    condition = edge_filter(filters)
    depth = max(candidates, limit)
    params = qe.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
    prefetches = [
        qe.Prefetch(
            limit=depth,
            query=qe.Query.Nearest(_floats(dense), using=DENSE_VECTOR),
            filter=condition,
            params=params,
        )
    ]
    if sparse.indices:
        prefetches.append(
            qe.Prefetch(
                limit=depth,
                query=qe.Query.Nearest(
                    qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE_VECTOR
                ),
                filter=condition,
            )
        )
    if exact is not None and exact.indices:
        prefetches.append(
            qe.Prefetch(
                limit=depth,
                query=qe.Query.Nearest(
                    qe.SparseVector(list(exact.indices), list(exact.values)), using=SPARSE_VECTOR
                ),
                filter=condition,
            )
        )
    # RRF even with the dense list alone: scores stay on the RRF scale, so hits from
    # several collections searched with one query still merge fairly by score.
    return qe.QueryRequest(
        limit=limit,
        prefetches=prefetches,
        query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # the stub omits nested Rrf
        with_payload=True,
        with_vector=False,
    )


def lexical_request(
    sparse: SparseVector,
    limit: int,
    filters: dict[str, str | list[str]] | None,
    fields: Sequence[str] | None,
) -> qe.QueryRequest:
    """The sparse list alone, with its own scores; payload restricted to `fields` if given."""
    return qe.QueryRequest(
        limit=limit,
        query=qe.Query.Nearest(
            qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE_VECTOR
        ),
        filter=edge_filter(filters),
        with_payload=qe.PayloadSelector.Include(list(fields)) if fields else True,
        with_vector=False,
    )


def _floats(vector: Sequence[float]) -> list[float]:
    return vector if isinstance(vector, list) else [float(x) for x in vector]


def edge_point(point: IndexedPoint) -> qe.Point:
    vector: dict[str, Any] = {DENSE_VECTOR: _floats(point.dense)}
    if point.sparse.indices:
        vector[SPARSE_VECTOR] = qe.SparseVector(list(point.sparse.indices), list(point.sparse.values))
    return qe.Point(point.id, vector, dict(point.payload))


def edge_filter(filters: dict[str, str | list[str]] | None) -> qe.Filter | None:
    if not filters:
        return None
    must: list[Any] = []
    for key, value in filters.items():
        if isinstance(value, str):
            must.append(qe.FieldCondition(key, match=qe.MatchValue(value)))
        else:
            must.append(qe.FieldCondition(key, match=qe.MatchAny(list(value))))
    return qe.Filter(must=must)


def hits(points: Sequence[qe.ScoredPoint]) -> list[SearchHit]:
    return [SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in points]


def scroll(
    shard: qe.EdgeShard, batch_size: int, lock: threading.Lock | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    offset: Any = None
    while True:
        request = qe.ScrollRequest(offset=offset, limit=batch_size, with_payload=True, with_vector=False)
        with lock if lock is not None else contextlib.nullcontext():
            records, offset = shard.scroll(request)
        for record in records:
            yield str(record.id), dict(record.payload or {})
        if offset is None:
            return
