"""The embedded vector store: qdrant-edge shards, with collections and aliases added here.

qdrant-edge is Qdrant's Rust engine in-process: fast (filtered hybrid top-10 in a few ms),
but it has no collections, no aliases, and a shard directory can be opened by one process
only (its WAL is locked). The server backend gets all of that from Qdrant; here it is
built from files:

    root/
      aliases.json              {"format": 1, "aliases": {alias: collection}}
      aliases.lock              flock serialising alias read-modify-write across processes
      collections/<name>/       one edge shard per collection (+ cia_sealed.json once sealed)
      views/<token>.lock        held (flock) by a live store instance: its views are in use
      views/<token>-<name>-<r>/ a process's read-only view of a sealed collection
      trash/                    collections being deleted

- Aliases: one JSON file replaced atomically (temp + fsync + os.replace), so a switch is a
  single rename and a reader sees the old or the new target, never neither.
- Published collections are immutable ("sealed"): the writing process optimizes (builds
  the HNSW index), flushes and closes the shard, then writes `cia_sealed.json`; only then
  can an alias point at it. An incremental update writes into a full copy
  (`open_for_update`), so readers never see a half-applied update and a small change
  still costs no re-embedding and no index rebuild: the copy is in-kernel and keeps the
  engine's holes (0.3 s for 100k points), and only the changed points are rewritten (a
  write to every point would move them all into the appendable segment and re-index them:
  5 s at 10k points; see `bench_indexing.py`).
- Readers never open a collection's own directory (that would take its WAL lock and
  block writers and other readers). Each process searches through a private *view*: a
  directory whose bulk segment files are hard links to the sealed collection's files.
  Hard links make a view cheap (no data copied) and keep its data alive after the
  collection is dropped, so a reader finishes its searches on the old data while the
  alias moves on. One view per collection per process, shared by all threads, reference
  counted: it is closed and removed only when no search uses it any more.
- Writers (create_collection/open_for_update, then upsert/delete) hold the
  shard itself, cached per collection in the writing process until `publish` seals it.

Modules: `store` (`EmbeddedVectorStore`, the `VectorStore` API), `layout` (the tree, names,
seals), `aliases` (the alias table), `writers` (writable shards), `views` (reader views,
owner locks, stale-view cleanup), `files` (copies, hard links, trash), `edge` (qdrant-edge
configs, points, filters and queries), `errors`.
"""

from __future__ import annotations

from cia_assets.lib.vectorstore.embedded.errors import CollectionPublished
from cia_assets.lib.vectorstore.embedded.layout import SEALED_FILE
from cia_assets.lib.vectorstore.embedded.store import EmbeddedVectorStore

__all__ = ["SEALED_FILE", "CollectionPublished", "EmbeddedVectorStore"]
