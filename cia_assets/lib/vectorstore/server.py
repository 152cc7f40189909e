"""The server vector store: the `VectorStore` protocol over qdrant-client.

Qdrant itself provides collections, aliases and concurrent readers, so this is a thin
mapping. Works against a Qdrant server (`QdrantClient(url=...)`) and against
qdrant-client's local mode (`QdrantClient(":memory:")`, used by the tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from cia_assets.lib.vectorstore.base import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CollectionExists,
    CollectionNotFound,
    IndexedPoint,
    SearchHit,
    SparseVector,
)

RRF_K = 60  # same constant as the embedded backend, so scores mean the same on both
INDEXED_FIELDS = ("repo_id", "path", "symbol")  # symbol: the answering context's definition lookup


class ServerVectorStore:
    """`VectorStore` over a `QdrantClient`.

    `open_for_update` returns the live collection: the server applies each update
    atomically and serves concurrent readers, so updating in place is safe and saves a
    copy; readers may see an incremental update half-applied (some files updated, others
    not yet) for the seconds it takes, which is acceptable for a code index.
    """

    def __init__(self, client: QdrantClient, *, hnsw_ef: int | None = None, owns_client: bool = True) -> None:
        self.client = client
        self.hnsw_ef = hnsw_ef
        # A shared client (the process's in-memory engine) outlives this handle.
        self.owns_client = owns_client

    def resolve_alias(self, alias: str) -> str | None:
        """The collection the alias points at now, or None when it does not exist."""
        for description in self.client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    def list_collections(self) -> list[str]:
        """Names of all collections on the server."""
        return sorted(c.name for c in self.client.get_collections().collections)

    def create_collection(self, name: str, dense_size: int) -> None:
        """Create an empty collection with named dense + IDF sparse vectors and payload
        indexes; raises `CollectionExists` if the name is taken."""
        if self.client.collection_exists(name):
            raise CollectionExists(f"collection {name!r} already exists")
        self.client.create_collection(
            name,
            vectors_config={
                DENSE_VECTOR: models.VectorParams(size=dense_size, distance=models.Distance.COSINE)
            },
            # IDF at query time: documents carry BM25 term-frequency weights (lexical.py).
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        with warnings.catch_warnings():
            # Local mode warns that payload indexes do nothing there; on a server they
            # are what keeps repo/path filters fast.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field_name in INDEXED_FIELDS:
                self.client.create_payload_index(
                    name, field_name, models.PayloadSchemaType.KEYWORD, wait=True
                )

    def open_for_update(self, alias: str) -> str:
        """The live collection behind `alias`: the server backend updates in place."""
        target = self.resolve_alias(alias)
        if target is None:
            raise CollectionNotFound(alias)
        return target

    def upsert(self, collection: str, points: Sequence[IndexedPoint]) -> None:
        """Insert or replace points; returns once they are applied."""
        if not points:
            return
        self.client.upsert(collection, points=[_point_struct(p) for p in points], wait=True)

    def delete_where(self, collection: str, field: str, values: Sequence[str]) -> None:
        """Delete every point whose payload `field` equals one of `values`."""
        if not values:
            return
        condition = models.Filter(
            must=[models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))]
        )
        self.client.delete(collection, points_selector=models.FilterSelector(filter=condition), wait=True)

    def count(self, collection: str) -> int:
        """Exact number of points in the collection (or alias)."""
        return self.client.count(collection, exact=True).count

    def scroll(self, collection: str, batch_size: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's (id, payload), in batches of `batch_size`."""
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                collection, limit=batch_size, offset=offset, with_payload=True, with_vectors=False
            )
            for record in records:
                yield str(record.id), dict(record.payload or {})
            if offset is None:
                return

    def publish(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` in one aliases request (atomic on the server);
        return the previous target (which is `collection` itself after an in-place update)."""
        previous = self.resolve_alias(alias)
        actions: list[models.CreateAliasOperation | models.DeleteAliasOperation] = []
        if previous is not None:
            actions.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        actions.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=actions)
        return previous

    def drop_collection(self, collection: str) -> None:
        """Delete the collection (the server drops aliases pointing at it); missing is fine."""
        self.client.delete_collection(collection)

    def search(
        self,
        alias: str,
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
        candidates: int = 100,
        exact: SparseVector | None = None,
    ) -> list[SearchHit]:
        """Hybrid search: dense and sparse prefetches (both filtered) fused with RRF."""
        condition = _filter(filters)
        depth = max(candidates, limit)
        prefetch = [
            models.Prefetch(
                query=list(dense),
                using=DENSE_VECTOR,
                limit=depth,
                filter=condition,
                params=models.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None,
            )
        ]
        if sparse.indices:
            prefetch.append(
                models.Prefetch(
                    query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
                    using=SPARSE_VECTOR,
                    limit=depth,
                    filter=condition,
                )
            )
        if exact is not None and exact.indices:
            prefetch.append(
                models.Prefetch(
                    query=models.SparseVector(indices=list(exact.indices), values=list(exact.values)),
                    using=SPARSE_VECTOR,
                    limit=depth,
                    filter=condition,
                )
            )
        return self._query(
            alias,
            prefetch=prefetch,
            # RRF even over the dense list alone keeps scores on one scale.
            query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            limit=limit,
        )

    def search_lexical(
        self,
        alias: str,
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """The lexical list alone, with its own scores (BM25 with the collection's IDF)."""
        if not sparse.indices:
            return []
        return self._query(
            alias,
            query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
            using=SPARSE_VECTOR,
            query_filter=_filter(filters),
            limit=limit,
            with_payload=list(fields) if fields else True,
        )

    def _query(self, alias: str, **request: Any) -> list[SearchHit]:
        request.setdefault("with_payload", True)
        try:
            response = self.client.query_points(alias, with_vectors=False, **request)
        except (ValueError, UnexpectedResponse) as err:
            # Local mode raises ValueError, a server a 404: turn "no such collection" into
            # the protocol's error and let anything else through.
            if self.resolve_alias(alias) is None and not self.client.collection_exists(alias):
                raise CollectionNotFound(alias) from err
            raise
        return [
            SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
            for p in response.points
        ]

    def close(self) -> None:
        """Close the client's connections (unless the client is shared)."""
        if self.owns_client:
            self.client.close()


def _point_struct(point: IndexedPoint) -> models.PointStruct:
    dense = point.dense if isinstance(point.dense, list) else [float(x) for x in point.dense]
    vector: dict[str, Any] = {DENSE_VECTOR: dense}
    if point.sparse.indices:
        vector[SPARSE_VECTOR] = models.SparseVector(
            indices=list(point.sparse.indices), values=list(point.sparse.values)
        )
    return models.PointStruct(id=point.id, vector=vector, payload=dict(point.payload))


def _filter(filters: dict[str, str | list[str]] | None) -> models.Filter | None:
    if not filters:
        return None
    must: list[models.Condition] = []
    for key, value in filters.items():
        match: models.MatchValue | models.MatchAny = (
            models.MatchValue(value=value) if isinstance(value, str) else models.MatchAny(any=list(value))
        )
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)
