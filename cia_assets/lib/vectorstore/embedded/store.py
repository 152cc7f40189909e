"""`EmbeddedVectorStore`: the `VectorStore` API over qdrant-edge shards under one root.

The store composes the pieces of this package: the folder tree (`layout`), the alias
table (`aliases`), the writers of unpublished collections (`writers`), the readers'
views of published ones (`views`) and file copies (`files`); `edge` speaks qdrant-edge.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from cia_assets.lib.vectorstore.base import (
    CollectionExists,
    CollectionNotFound,
    IndexedPoint,
    SearchHit,
    SparseVector,
    versioned_collection_name,
)
from cia_assets.lib.vectorstore.embedded import edge
from cia_assets.lib.vectorstore.embedded.aliases import AliasTable
from cia_assets.lib.vectorstore.embedded.errors import CollectionBusy, SourceVanished
from cia_assets.lib.vectorstore.embedded.files import copy_file, copy_tree, delete_via_trash
from cia_assets.lib.vectorstore.embedded.layout import SEALED_FILE, StoreLayout, check_name, read_seal
from cia_assets.lib.vectorstore.embedded.views import OwnerLock, View, ViewPool, cleanup_stale
from cia_assets.lib.vectorstore.embedded.writers import WriterPool


class EmbeddedVectorStore:
    """`VectorStore` over qdrant-edge shards under `root` (see the package docstring).

    Safe to share between threads. Any number of processes may search the same root
    while one process per collection writes it. `hnsw_ef` overrides the HNSW search
    breadth of the dense candidate search (None: the engine's default).
    """

    def __init__(self, root: Path, *, hnsw_ef: int | None = None) -> None:
        self.root = Path(root)
        self.hnsw_ef = hnsw_ef
        self._layout = StoreLayout(self.root)
        self._layout.make_dirs()

        self._pid = os.getpid()
        self._token = f"{self._pid}-{secrets.token_hex(4)}"
        self._owner = OwnerLock(self._layout.views_dir, self._token)
        self._closed = False

        # _lock guards the alias cache and the views; the writers have their own lock
        # (held while a shard loads, so two threads never both try to open one).
        self._lock = threading.Lock()
        self._aliases = AliasTable(self._layout.aliases_path, self._layout.aliases_lock_path)
        self._views = ViewPool(self._layout, self._token, self._lock)
        self._writers = WriterPool(self._layout)
        cleanup_stale(self._layout, self._token)

    # --- aliases --------------------------------------------------------------------

    def resolve_alias(self, alias: str) -> str | None:
        """The collection the alias points at now, or None when it does not exist."""
        self._check_usable()
        return self._alias_map().get(alias)

    def publish(self, alias: str, collection: str) -> str | None:
        """Seal `collection` if this process wrote it, then point `alias` at it.

        Sealing optimizes the shard (builds the HNSW index), so publishing a large fresh
        collection takes as long as the index build. Returns the previous target.
        """
        self._check_usable()
        check_name(alias)
        if self._layout.is_collection(alias):
            raise ValueError(f"{alias!r} is a collection name and cannot also be an alias")
        path = self._layout.collection_dir(collection)
        if not path.is_dir():
            raise CollectionNotFound(collection)
        self._writers.seal(collection)
        with self._aliases.transaction() as aliases:
            previous = aliases.get(alias)
            aliases[alias] = collection
        self._alias_map()  # take our own switch in now: retires the old target's view
        return previous

    # --- collections -----------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Names of all collections, sealed or still being written."""
        self._check_usable()
        return self._layout.collection_names()

    def create_collection(self, name: str, dense_size: int) -> None:
        """Create an empty writable collection; raises `CollectionExists` if taken."""
        self._check_usable()
        check_name(name)
        if name in self._alias_map():
            raise CollectionExists(f"{name!r} is already an alias")
        path = self._layout.collection_dir(name)
        try:
            path.mkdir()  # the atomic claim of the name, also against other processes
        except FileExistsError:
            raise CollectionExists(f"collection {name!r} already exists") from None
        try:
            shard = edge.create_shard(path, dense_size)
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        self._writers.add(name, shard)

    def open_for_update(self, alias: str) -> str:
        """Copy the collection behind `alias` to a new writable collection; return its name.

        A real copy, not hard links: the writer mutates its files. Holes in the engine's
        preallocated files are preserved, so the copy costs about the collection's real
        size on disk, and the HNSW index comes along (no rebuild for a small change).
        """
        self._check_usable()
        source = self.resolve_alias(alias)
        if source is None:
            raise CollectionNotFound(alias)
        source_dir = self._layout.collection_dir(source)
        if not (source_dir / SEALED_FILE).is_file():
            raise CollectionBusy(f"{source!r} (behind {alias!r}) is not sealed; it cannot be copied")
        name = versioned_collection_name(alias)
        target_dir = self._layout.collection_dir(name)
        target_dir.mkdir()
        try:
            # The WAL comes along although the segments hold everything: it carries the
            # operation counter, and the engine ignores an update whose number is not above
            # the version a point already has; with a fresh WAL (numbering from 0) every
            # delete and overwrite in the copy would be silently dropped.
            copy_file(source_dir / "edge_config.json", target_dir / "edge_config.json")
            copy_tree(source_dir / "wal", target_dir / "wal", link=False)
            copy_tree(source_dir / "segments", target_dir / "segments", link=False)
            shard = qe.EdgeShard.load(str(target_dir))
        except FileNotFoundError as err:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise CollectionNotFound(alias, f"{source!r} was dropped while being copied") from err
        except Exception:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise
        self._writers.add(name, shard)
        return name

    def drop_collection(self, collection: str) -> None:
        """Delete the collection and aliases pointing at it (a missing one is a no-op).

        Views of it (in this and other processes) keep working until they are released:
        they hold hard links to its files.
        """
        self._check_usable()
        check_name(collection)
        self._writers.discard(collection)
        with self._aliases.transaction() as aliases:
            for alias in [a for a, target in aliases.items() if target == collection]:
                del aliases[alias]
        self._alias_map()
        self._views.retire(collection)
        # Rename first: a concurrent view or copy of this collection either finishes on
        # the intact directory or fails on the missing path and retries; it never sees a
        # half-deleted tree that looks like a smaller collection.
        delete_via_trash(self._layout.collection_dir(collection), self._layout.trash_dir)

    # --- writing ----------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[IndexedPoint]) -> None:
        """Insert or replace points in a collection this process is writing."""
        self._check_usable()
        if not points:
            return
        writer = self._writers.get(collection)
        operation = qe.UpdateOperation.upsert_points([edge.edge_point(p) for p in points])
        with writer.lock:
            writer.shard.update(operation)

    def delete_where(self, collection: str, field: str, values: Sequence[str]) -> None:
        """Delete every point whose payload `field` equals one of `values`."""
        self._check_usable()
        if not values:
            return
        writer = self._writers.get(collection)
        condition = qe.Filter(must=[qe.FieldCondition(field, match=qe.MatchAny(list(values)))])
        with writer.lock:
            writer.shard.update(qe.UpdateOperation.delete_points_by_filter(condition))

    # --- reading ----------------------------------------------------------------------

    def count(self, collection: str) -> int:
        """Points in a collection (or an alias's); sealed ones answer from their seal."""
        self._check_usable()
        name = self._collection_or_alias(collection)
        seal = read_seal(self._layout.collection_dir(name))
        if seal is not None:
            return int(seal["points"])
        writer = self._writers.get(name)
        with writer.lock:
            return writer.shard.count(qe.CountRequest(exact=True))

    def scroll(self, collection: str, batch_size: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's (id, payload): from the writer's shard, or a view once sealed."""
        self._check_usable()
        name = self._collection_or_alias(collection)
        if read_seal(self._layout.collection_dir(name)) is None:
            writer = self._writers.get(name)
            yield from edge.scroll(writer.shard, batch_size, writer.lock)
            return
        try:
            view = self._acquire_view(name)
        except SourceVanished as err:
            raise CollectionNotFound(collection, "dropped meanwhile") from err
        try:
            yield from edge.scroll(view.shard, batch_size, None)
        finally:
            self._release_view(view)

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
        """Hybrid search through `alias` (or a collection name): dense + sparse, RRF-fused.

        The alias is re-resolved on every call (a stat of aliases.json), so a switch made
        by any process is seen by the next search.
        """
        self._check_usable()
        request = self._query_request(dense, sparse, limit, filters, candidates, exact)
        return self._query(alias, request)

    def _query(self, alias: str, request: qe.QueryRequest) -> list[SearchHit]:
        vanished: str | None = None
        while True:
            target = self._alias_map().get(alias)
            if target is None:
                if not self._layout.is_collection(alias):
                    raise CollectionNotFound(alias)
                target = alias
            writer = self._writers.cached(target)
            if writer is not None:
                # Searching a collection this process is still writing (a smoke test
                # before publish): the writer's shard is the only way in.
                with writer.lock:
                    return edge.hits(writer.shard.query(request))
            try:
                view = self._acquire_view(target)
            except SourceVanished:
                # Switched and dropped since we resolved the alias: publish moves the alias
                # before the old collection is dropped, so the alias now names another
                # target. Rebuilds faster than a view opens could repeat this, so there is
                # no attempt limit, but the same target twice means the alias is broken.
                if target == vanished:
                    raise CollectionNotFound(alias, f"it points at {target!r}, which is gone") from None
                vanished = target
                continue
            try:
                return edge.hits(view.shard.query(request))
            finally:
                self._release_view(view)

    def search_lexical(
        self,
        alias: str,
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """The lexical list alone, with its own scores (BM25 with the collection's IDF)."""
        self._check_usable()
        if not sparse.indices:
            return []
        return self._query(alias, edge.lexical_request(sparse, limit, filters, fields))

    def close(self) -> None:
        """Flush and close writers (an unsealed collection can be reopened later), close
        and remove this process's views, and release the owner lock."""
        if self._closed or os.getpid() != self._pid:
            return
        self._writers.close()
        self._views.close()
        self._closed = True
        with self._lock:
            self._aliases.close()
        self._owner.release()

    # --- internals ------------------------------------------------------------------------

    def _alias_map(self) -> dict[str, str]:
        """The current alias map; re-read only when aliases.json changed (see `AliasTable`)."""
        key = self._aliases.stat_key()
        disposable: list[View] = []
        with self._lock:
            if self._aliases.is_stale(key):
                aliases = self._aliases.reload()
                disposable = self._views.set_live_locked(frozenset(aliases.values()))
            aliases = self._aliases.current
        for view in disposable:
            self._views.dispose(view)
        return aliases

    def _acquire_view(self, collection: str) -> View:
        return self._views.acquire(collection)

    def _release_view(self, view: View) -> None:
        self._views.release(view)

    def _query_request(
        self,
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None,
        candidates: int,
        exact: SparseVector | None = None,
    ) -> qe.QueryRequest:
        return edge.hybrid_request(dense, sparse, limit, filters, candidates, exact, self.hnsw_ef)

    def _collection_or_alias(self, name: str) -> str:
        if self._layout.is_collection(name):
            return name
        target = self._alias_map().get(name)
        if target is None:
            raise CollectionNotFound(name)
        return target

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"vector store at {self.root} is closed")
        if os.getpid() != self._pid:
            # Open shards and locks do not survive fork; the child must open its own store.
            raise RuntimeError("EmbeddedVectorStore was created in another process; open a new one here")
