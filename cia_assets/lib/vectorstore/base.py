"""The vector store interface: collections behind aliases, hybrid (dense + sparse) search.

Two backends implement it (see `embedded/` and `server.py`):
- embedded: Qdrant's Rust engine in-process (qdrant-edge), with alias semantics added here;
- server: qdrant-client against a Qdrant server (or its in-memory mode in tests).

Readers always go through an alias, so a rebuild is a blue-green switch: write a new
versioned collection, verify it, `publish` it under the alias, then `drop_collection` the
old one.
"""

from __future__ import annotations

import calendar
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "lexical"


_VERSION_TIME_FORMAT = "%Y%m%d%H%M%S"


def versioned_collection_name(alias: str) -> str:
    """A new collection for `alias`: `<alias>-<UTC timestamp>-<random>`, sortable by age."""
    return f"{alias}-{time.strftime(_VERSION_TIME_FORMAT, time.gmtime())}-{secrets.token_hex(3)}"


def collection_age_seconds(alias: str, name: str) -> float | None:
    """How old a versioned collection of `alias` is, from its name; None if not one."""
    match = re.fullmatch(re.escape(alias) + r"-(\d{14})-[0-9a-f]{6}", name)
    if not match:
        return None
    created = calendar.timegm(time.strptime(match.group(1), _VERSION_TIME_FORMAT))
    return time.time() - created


class CollectionNotFound(KeyError):
    """No collection or alias of this name exists (both backends raise this)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.detail = detail

    def __str__(self) -> str:
        # KeyError's default str() is the repr of its argument, which reads badly in logs.
        message = f"no collection or alias named {self.name!r}"
        return f"{message}: {self.detail}" if self.detail else message


class CollectionExists(ValueError):
    """`create_collection` was asked for a name that is already taken."""


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class IndexedPoint:
    id: str  # a UUID string (Chunk.chunk_id)
    dense: Sequence[float]
    sparse: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    def resolve_alias(self, alias: str) -> str | None:
        """The collection the alias points at now, or None when it does not exist."""

    def list_collections(self) -> list[str]: ...

    def create_collection(self, name: str, dense_size: int) -> None:
        """Create an empty collection; fails if it already exists."""

    def open_for_update(self, alias: str) -> str:
        """Name of a collection into which an incremental update of `alias` is written.

        The server backend returns the live collection (updated in place); the embedded
        backend returns a fresh copy of it, because an edge shard can be opened by one
        process only and readers in other processes must never see a half-applied update.
        Either way, `publish(alias, name)` afterwards makes the result live.
        """

    def upsert(self, collection: str, points: Sequence[IndexedPoint]) -> None: ...

    def delete_where(self, collection: str, field: str, values: Sequence[str]) -> None:
        """Delete every point whose payload `field` equals one of `values`."""

    def count(self, collection: str) -> int:
        """Number of points in the collection (or in the one an alias points at)."""

    def scroll(self, collection: str, batch_size: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's (id, payload), of a collection or of an alias's collection."""

    def publish(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` atomically; return the collection it pointed at
        before (None if new). The caller drops the old one once it is safe."""

    def drop_collection(self, collection: str) -> None:
        """Delete the collection and any alias pointing at it; a missing one is a no-op."""

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
        """Hybrid search through the alias: dense and sparse candidates fused with RRF.

        `exact`, when it has indices, adds a third list: sparse search with only the query's
        whole identifiers (see `lexical.encode_identifiers`), so an exact match ranks first.

        `alias` may also name a collection directly (as on a Qdrant server), e.g. to
        smoke-test a build before it is published. `filters` maps payload keys to a value
        or list of allowed values and applies to both candidate lists. Scores are RRF
        scores (also when `sparse` is empty), so hits of different collections searched
        with one query can be merged by score. Raises `CollectionNotFound` for an unknown
        name.
        """

    def search_lexical(
        self,
        alias: str,
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """The lexical (sparse) list alone, scored by the store's BM25: term weights times the
        collection's IDF, so scores add up meaningfully across the chunks of one file.
        `fields` limits the payload returned (e.g. only "path" when reading hundreds)."""

    def close(self) -> None: ...
