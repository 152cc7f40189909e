"""Writable shards: the collections this process is writing, held until `publish` seals them.

qdrant-edge lets one process open a shard directory (its WAL is locked), so a shard
being written is cached per collection here, in the writing process, and every write,
count or search of it in this process goes through that handle.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import qdrant_edge as qe

from cia_assets.lib.vectorstore.base import CollectionNotFound
from cia_assets.lib.vectorstore.embedded.edge import load_writable
from cia_assets.lib.vectorstore.embedded.errors import CollectionPublished
from cia_assets.lib.vectorstore.embedded.layout import SEALED_FILE, StoreLayout, write_seal


@dataclass
class Writer:
    shard: qe.EdgeShard
    # Serialises this process's operations on one writable shard, so that sealing
    # (optimize + close) never runs under a concurrent upsert or query.
    lock: threading.Lock = field(default_factory=threading.Lock)


class WriterPool:
    """The writer handles of one store instance, by collection; safe to share between threads."""

    def __init__(self, layout: StoreLayout) -> None:
        self._layout = layout
        # Held while a shard loads, so two threads never both try to open one.
        self._lock = threading.Lock()
        self._writers: dict[str, Writer] = {}

    def add(self, name: str, shard: qe.EdgeShard) -> None:
        """Hold `shard`, just created or copied, as the writer of collection `name`."""
        with self._lock:
            self._writers[name] = Writer(shard)

    def cached(self, name: str) -> Writer | None:
        """The writer if this process holds one; a dict read is atomic, so no lock on the hot path."""
        return self._writers.get(name)

    def get(self, name: str) -> Writer:
        """The writer of an unsealed collection, loading its shard if this process has none."""
        with self._lock:
            writer = self._writers.get(name)
            if writer is not None:
                return writer
            path = self._layout.collection_dir(name)
            if not path.is_dir():
                raise CollectionNotFound(name)
            if (path / SEALED_FILE).exists():
                raise CollectionPublished(
                    f"collection {name!r} is published and immutable; write into open_for_update(alias)"
                )
            # An unsealed collection not open here: left by a crashed or closed writer.
            self._writers[name] = writer = Writer(load_writable(name, path))
            return writer

    def seal(self, name: str) -> None:
        """Optimize, flush and close the collection's shard, then mark it sealed (no-op if it is)."""
        path = self._layout.collection_dir(name)
        if (path / SEALED_FILE).exists():
            return
        writer = self.get(name)
        with writer.lock:
            writer.shard.optimize()
            points = writer.shard.count(qe.CountRequest(exact=True))
            writer.shard.flush()
            writer.shard.close()
        with self._lock:
            self._writers.pop(name, None)
        write_seal(path, points)

    def discard(self, name: str) -> None:
        """Close the collection's writer, if this process holds one (it is being dropped)."""
        with self._lock:
            writer = self._writers.pop(name, None)
        if writer is not None:
            with writer.lock:
                writer.shard.close()

    def close(self) -> None:
        """Flush and close every writer (an unsealed collection can be reopened later)."""
        with self._lock:
            writers = list(self._writers.items())
            self._writers.clear()
        for name, writer in writers:
            with writer.lock:
                if not self._layout.collection_dir(name).is_dir():
                    # Dropped by another store instance meanwhile (a build it took for
                    # abandoned): there is nothing left to flush, only the handle to let go.
                    with contextlib.suppress(Exception):
                        writer.shard.close()
                    continue
                writer.shard.flush()
                writer.shard.close()
