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
  still costs no re-embedding and no index rebuild.
- Readers never open a collection's own directory (that would take its WAL lock and
  block writers and other readers). Each process searches through a private *view*: a
  directory whose bulk segment files are hard links to the sealed collection's files.
  Hard links make a view cheap (no data copied) and keep its data alive after the
  collection is dropped, so a reader finishes its searches on the old data while the
  alias moves on. One view per collection per process, shared by all threads, reference
  counted: it is closed and removed only when no search uses it any more.
- Writers (create_collection/open_for_update, then upsert/delete/set_payload) hold the
  shard itself, cached per collection in the writing process until `publish` seals it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from cia_assets.lib.vectorstore.base import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CollectionExists,
    CollectionNotFound,
    IndexedPoint,
    SearchHit,
    SparseVector,
    versioned_collection_name,
)

log = logging.getLogger(__name__)

_FileKey = tuple[int, int, int, int]

RRF_K = 60  # the usual RRF constant; both backends use it so scores compare
SEALED_FILE = "cia_sealed.json"
INDEXED_FIELDS = ("repo_id", "path")
_ALIASES_FORMAT = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Files the engine rewrites when it opens or closes a shard (mmap'd flags, trackers and
# status words; measured with qdrant-edge 0.9: same bytes, but new mtimes). A view gets
# private copies of these so that no process ever writes into a published collection's
# inodes; so does every file with less than _LINK_MIN_BYTES allocated, which costs nothing.
_PRIVATE_FILE_NAMES = frozenset(
    {"tracker.dat", "tracker_journal.dat", "status.dat", "deleted.dat", "gaps.dat", "bitmask.dat"}
)
_PRIVATE_FILE_PREFIXES = ("flags_",)
_LINK_MIN_BYTES = 64 * 1024


class CollectionPublished(RuntimeError):
    """A write to a sealed (published) collection; use `open_for_update(alias)`."""


class CollectionBusy(RuntimeError):
    """The collection is being written by another process (its shard is locked there)."""


class _SourceVanished(Exception):
    """The collection disappeared while a view of it was being made (dropped meanwhile)."""


@dataclass
class _Writer:
    shard: qe.EdgeShard
    # Serialises this process's operations on one writable shard, so that sealing
    # (optimize + close) never runs under a concurrent upsert or query.
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _View:
    collection: str
    path: Path
    shard: qe.EdgeShard
    users: int = 0
    retired: bool = False


class EmbeddedVectorStore:
    """`VectorStore` over qdrant-edge shards under `root` (see the module docstring).

    Safe to share between threads. Any number of processes may search the same root
    while one process per collection writes it. `hnsw_ef` overrides the HNSW search
    breadth of the dense candidate search (None: the engine's default).
    """

    def __init__(self, root: Path, *, hnsw_ef: int | None = None) -> None:
        self.root = Path(root)
        self.hnsw_ef = hnsw_ef
        self._collections_dir = self.root / "collections"
        self._views_dir = self.root / "views"
        self._trash_dir = self.root / "trash"
        self._aliases_path = self.root / "aliases.json"
        self._aliases_lock_path = self.root / "aliases.lock"
        for directory in (self._collections_dir, self._views_dir, self._trash_dir):
            directory.mkdir(parents=True, exist_ok=True)

        self._pid = os.getpid()
        self._token = f"{self._pid}-{secrets.token_hex(4)}"
        self._owner_fd = self._claim_owner_lock()
        self._closed = False

        # _lock guards the alias cache and the views; _writers_lock the writer handles
        # (held while a shard loads, so two threads never both try to open one).
        self._lock = threading.Lock()
        self._writers_lock = threading.Lock()
        self._alias_key: _FileKey | None = None
        self._alias_file: IO[str] | None = None
        self._aliases: dict[str, str] = {}
        self._live: frozenset[str] = frozenset()
        self._views: dict[str, _View] = {}
        self._openers: dict[str, threading.Lock] = {}
        self._writers: dict[str, _Writer] = {}
        self._cleanup_stale()

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
        _check_name(alias)
        if self._is_collection(alias):
            raise ValueError(f"{alias!r} is a collection name and cannot also be an alias")
        path = self._collection_dir(collection)
        if not path.is_dir():
            raise CollectionNotFound(collection)
        self._seal(collection)
        with self._alias_transaction() as aliases:
            previous = aliases.get(alias)
            aliases[alias] = collection
        self._alias_map()  # take our own switch in now: retires the old target's view
        return previous

    # --- collections -----------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Names of all collections, sealed or still being written."""
        self._check_usable()
        return sorted(
            entry.name
            for entry in os.scandir(self._collections_dir)
            if entry.is_dir() and _NAME.fullmatch(entry.name)
        )

    def create_collection(self, name: str, dense_size: int) -> None:
        """Create an empty writable collection; raises `CollectionExists` if taken."""
        self._check_usable()
        _check_name(name)
        if name in self._alias_map():
            raise CollectionExists(f"{name!r} is already an alias")
        path = self._collection_dir(name)
        try:
            path.mkdir()  # the atomic claim of the name, also against other processes
        except FileExistsError:
            raise CollectionExists(f"collection {name!r} already exists") from None
        try:
            shard = qe.EdgeShard.create(str(path), _edge_config(dense_size))
            for field_name in INDEXED_FIELDS:
                shard.update(qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Keyword))
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        with self._writers_lock:
            self._writers[name] = _Writer(shard)

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
        source_dir = self._collection_dir(source)
        if not (source_dir / SEALED_FILE).is_file():
            raise CollectionBusy(f"{source!r} (behind {alias!r}) is not sealed; it cannot be copied")
        name = versioned_collection_name(alias)
        target_dir = self._collection_dir(name)
        target_dir.mkdir()
        try:
            # The WAL comes along although the segments hold everything: it carries the
            # operation counter, and the engine ignores an update whose number is not above
            # the version a point already has; with a fresh WAL (numbering from 0) every
            # delete and overwrite in the copy would be silently dropped.
            _copy_file(source_dir / "edge_config.json", target_dir / "edge_config.json")
            _copy_tree(source_dir / "wal", target_dir / "wal", link=False)
            _copy_tree(source_dir / "segments", target_dir / "segments", link=False)
            shard = qe.EdgeShard.load(str(target_dir))
        except FileNotFoundError as err:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise CollectionNotFound(alias, f"{source!r} was dropped while being copied") from err
        except Exception:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise
        with self._writers_lock:
            self._writers[name] = _Writer(shard)
        return name

    def drop_collection(self, collection: str) -> None:
        """Delete the collection and aliases pointing at it (a missing one is a no-op).

        Views of it (in this and other processes) keep working until they are released:
        they hold hard links to its files.
        """
        self._check_usable()
        _check_name(collection)
        with self._writers_lock:
            writer = self._writers.pop(collection, None)
        if writer is not None:
            with writer.lock:
                writer.shard.close()
        with self._alias_transaction() as aliases:
            for alias in [a for a, target in aliases.items() if target == collection]:
                del aliases[alias]
        self._alias_map()
        with self._lock:
            view = self._views.get(collection)
            dispose = view is not None and self._retire_locked(view)
        if dispose and view is not None:
            self._dispose(view)
        # Rename first: a concurrent view or copy of this collection either finishes on
        # the intact directory or fails on the missing path and retries; it never sees a
        # half-deleted tree that looks like a smaller collection.
        trash = self._trash_dir / f"{collection}-{secrets.token_hex(4)}"
        try:
            os.rename(self._collection_dir(collection), trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- writing ----------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[IndexedPoint]) -> None:
        """Insert or replace points in a collection this process is writing."""
        self._check_usable()
        if not points:
            return
        writer = self._writer(collection)
        operation = qe.UpdateOperation.upsert_points([_edge_point(p) for p in points])
        with writer.lock:
            writer.shard.update(operation)

    def delete_where(self, collection: str, field: str, values: Sequence[str]) -> None:
        """Delete every point whose payload `field` equals one of `values`."""
        self._check_usable()
        if not values:
            return
        writer = self._writer(collection)
        condition = qe.Filter(must=[qe.FieldCondition(field, match=qe.MatchAny(list(values)))])
        with writer.lock:
            writer.shard.update(qe.UpdateOperation.delete_points_by_filter(condition))

    def set_payload_all(self, collection: str, payload: dict[str, Any]) -> None:
        """Set these payload keys on every point of a collection this process is writing."""
        self._check_usable()
        writer = self._writer(collection)
        with writer.lock:
            writer.shard.update(qe.UpdateOperation.set_payload_by_filter(qe.Filter(), dict(payload)))

    # --- reading ----------------------------------------------------------------------

    def count(self, collection: str) -> int:
        """Points in a collection (or an alias's); sealed ones answer from their seal."""
        self._check_usable()
        name = self._collection_or_alias(collection)
        seal = _read_seal(self._collection_dir(name))
        if seal is not None:
            return int(seal["points"])
        writer = self._writer(name)
        with writer.lock:
            return writer.shard.count(qe.CountRequest(exact=True))

    def scroll(self, collection: str, batch_size: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point's (id, payload): from the writer's shard, or a view once sealed."""
        self._check_usable()
        name = self._collection_or_alias(collection)
        if _read_seal(self._collection_dir(name)) is None:
            writer = self._writer(name)
            yield from _scroll(writer.shard, batch_size, writer.lock)
            return
        try:
            view = self._acquire_view(name)
        except _SourceVanished as err:
            raise CollectionNotFound(collection, "dropped meanwhile") from err
        try:
            yield from _scroll(view.shard, batch_size, None)
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
                if not self._is_collection(alias):
                    raise CollectionNotFound(alias)
                target = alias
            writer = self._writers.get(target)  # a dict read is atomic; no lock on the hot path
            if writer is not None:
                # Searching a collection this process is still writing (a smoke test
                # before publish): the writer's shard is the only way in.
                with writer.lock:
                    return _hits(writer.shard.query(request))
            try:
                view = self._acquire_view(target)
            except _SourceVanished:
                # Switched and dropped since we resolved the alias: publish moves the alias
                # before the old collection is dropped, so the alias now names another
                # target. Rebuilds faster than a view opens could repeat this, so there is
                # no attempt limit, but the same target twice means the alias is broken.
                if target == vanished:
                    raise CollectionNotFound(alias, f"it points at {target!r}, which is gone") from None
                vanished = target
                continue
            try:
                return _hits(view.shard.query(request))
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
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(
                qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE_VECTOR
            ),
            filter=_edge_filter(filters),
            with_payload=qe.PayloadSelector.Include(list(fields)) if fields else True,
            with_vector=False,
        )
        return self._query(alias, request)

    def close(self) -> None:
        """Flush and close writers (an unsealed collection can be reopened later), close
        and remove this process's views, and release the owner lock."""
        if self._closed or os.getpid() != self._pid:
            return
        with self._writers_lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for writer in writers:
            with writer.lock:
                writer.shard.flush()
                writer.shard.close()
        with self._lock:
            views = list(self._views.values())
            for view in views:
                self._retire_locked(view)
        for view in views:
            # In-flight searches at close are the caller's bug; close anyway.
            self._dispose(view)
        self._closed = True
        with self._lock:
            if self._alias_file is not None:
                self._alias_file.close()
                self._alias_file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._views_dir / f"{self._token}.lock")
        os.close(self._owner_fd)

    # --- internals: aliases -------------------------------------------------------------

    def _alias_map(self) -> dict[str, str]:
        """The current alias map; re-read only when aliases.json changed.

        The change check is one stat: (device, inode, mtime, size). The inode is what
        catches a switch: mtime ticks are coarse (about 4 ms on ext4) and two versions can
        have the same size. A replaced file frees its inode, which the next file could get
        back, so the last file read is kept open: its inode stays allocated, and any
        replacement necessarily has another one.
        """
        try:
            st = os.stat(self._aliases_path)
            key: _FileKey | None = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        disposable: list[_View] = []
        with self._lock:
            if key != self._alias_key or (key is None and self._aliases):
                aliases, key, handle = self._read_aliases(pin=True)
                if self._alias_file is not None:
                    self._alias_file.close()
                self._aliases, self._alias_key, self._alias_file = aliases, key, handle
                self._live = frozenset(aliases.values())
                for view in list(self._views.values()):
                    if view.collection not in self._live and self._retire_locked(view):
                        disposable.append(view)
            aliases = self._aliases
        for view in disposable:
            self._dispose(view)
        return aliases

    def _read_aliases(self, *, pin: bool = False) -> tuple[dict[str, str], _FileKey | None, IO[str] | None]:
        """The alias file's content and key; with `pin`, also the still-open file."""
        try:
            handle = open(self._aliases_path, encoding="utf-8")  # noqa: SIM115 - kept open when pinned
        except FileNotFoundError:
            return {}, None, None
        try:
            st = os.fstat(handle.fileno())
            data = json.load(handle)
            aliases = data.get("aliases") if isinstance(data, dict) else None
            if not isinstance(aliases, dict):
                raise ValueError(f"{self._aliases_path}: not an alias file")
        except BaseException:
            handle.close()
            raise
        if not pin:
            handle.close()
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        return {str(k): str(v) for k, v in aliases.items()}, key, handle if pin else None

    @contextlib.contextmanager
    def _alias_transaction(self) -> Iterator[dict[str, str]]:
        """Read-modify-write of aliases.json under an exclusive lock across processes."""
        fd = os.open(self._aliases_lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current, _, _ = self._read_aliases()
            updated = dict(current)
            yield updated
            if updated != current:
                _write_json_atomic(self._aliases_path, {"format": _ALIASES_FORMAT, "aliases": updated})
        finally:
            os.close(fd)  # releases the flock

    # --- internals: writers --------------------------------------------------------------

    def _writer(self, name: str) -> _Writer:
        with self._writers_lock:
            writer = self._writers.get(name)
            if writer is not None:
                return writer
            path = self._collection_dir(name)
            if not path.is_dir():
                raise CollectionNotFound(name)
            if (path / SEALED_FILE).exists():
                raise CollectionPublished(
                    f"collection {name!r} is published and immutable; write into open_for_update(alias)"
                )
            # An unsealed collection not open here: left by a crashed or closed writer.
            self._writers[name] = writer = _Writer(_load_writable(name, path))
            return writer

    def _seal(self, name: str) -> None:
        path = self._collection_dir(name)
        if (path / SEALED_FILE).exists():
            return
        writer = self._writer(name)
        with writer.lock:
            writer.shard.optimize()
            points = writer.shard.count(qe.CountRequest(exact=True))
            writer.shard.flush()
            writer.shard.close()
        with self._writers_lock:
            self._writers.pop(name, None)
        _write_json_atomic(path / SEALED_FILE, {"points": points, "sealed_at": time.time()})

    # --- internals: views -----------------------------------------------------------------

    def _acquire_view(self, collection: str) -> _View:
        with self._lock:
            view = self._views.get(collection)
            if view is not None:
                view.users += 1
                return view
            opener = self._openers.setdefault(collection, threading.Lock())
        # Opening takes tens of ms: done outside _lock so searches on other views go on,
        # and under a per-collection lock so a burst of searches right after a switch
        # opens one view, not one per thread.
        with opener:
            with self._lock:
                view = self._views.get(collection)
                if view is not None:
                    view.users += 1
                    return view
            fresh = self._open_view(collection)
            with self._lock:
                view = self._views.get(collection)
                if view is None:
                    fresh.users = 1
                    self._views[collection] = fresh
                    return fresh
                view.users += 1
        self._dispose(fresh)  # lost a race with an opener that was replaced meanwhile
        return view

    def _release_view(self, view: _View) -> None:
        with self._lock:
            view.users -= 1
            if view.users == 0 and view.collection not in self._live:
                # Opened for direct access (a collection name, or an alias that moved on
                # while the view was being opened): do not keep it around.
                self._retire_locked(view)
            dispose = view.users == 0 and view.retired
        if dispose:
            self._dispose(view)

    def _retire_locked(self, view: _View) -> bool:
        """Take the view out of service; True when nobody uses it (dispose it now)."""
        view.retired = True
        if self._views.get(view.collection) is view:
            del self._views[view.collection]
            self._openers.pop(view.collection, None)
        return view.users == 0

    def _open_view(self, collection: str) -> _View:
        source = self._collection_dir(collection)
        if not (source / SEALED_FILE).is_file():
            if source.is_dir():
                raise CollectionBusy(
                    f"collection {collection!r} is not published yet; "
                    "only the process writing it can search it"
                )
            raise _SourceVanished(collection)
        # New views are made only after a switch, so this is a cheap moment to tidy up.
        self._cleanup_stale()
        path = self._views_dir / f"{self._token}-{collection}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            _copy_file(source / "edge_config.json", path / "edge_config.json")
            _copy_tree(source / "segments", path / "segments", link=True)
        except FileNotFoundError as err:
            shutil.rmtree(path, ignore_errors=True)
            raise _SourceVanished(collection) from err
        try:
            shard = qe.EdgeShard.load(str(path))
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return _View(collection, path, shard)

    def _dispose(self, view: _View) -> None:
        try:
            view.shard.close()
        except Exception:  # a failed close must not fail the search that released the view
            log.warning("closing view %s failed", view.path, exc_info=True)
        shutil.rmtree(view.path, ignore_errors=True)

    # --- internals: housekeeping ----------------------------------------------------------

    def _claim_owner_lock(self) -> int:
        """Hold an flock on views/<token>.lock for this instance's lifetime.

        Other processes remove a token's views only when they can take this lock, i.e.
        when its owner is gone. Unlike a pid check, this works across PID namespaces
        (containers sharing the volume). The lock is taken under a temporary name and
        renamed, so no cleaner can see the file unlocked.
        """
        temp = self._views_dir / f".{self._token}.lock.tmp"
        fd = os.open(temp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, self._views_dir / f"{self._token}.lock")
        return fd

    def _cleanup_stale(self) -> None:
        """Remove views of store instances that are gone, and leftover trash."""
        alive: dict[str, bool] = {self._token: True}
        dead: list[tuple[Path, int]] = []  # lock files held by us until their views are gone
        for entry in os.scandir(self._views_dir):
            name = entry.name
            if name.startswith("."):
                if name.endswith(".lock.tmp"):
                    self._remove_if_unlocked(Path(entry.path))
                continue
            token = name.removesuffix(".lock") if name.endswith(".lock") else _view_token(name)
            if token not in alive:
                # An owner takes its lock before it makes any view, so a view whose lock
                # file is missing or can be taken belongs to nobody.
                lock_path = self._views_dir / f"{token}.lock"
                fd = _try_lock(lock_path)
                alive[token] = fd is None and lock_path.exists()
                if fd is not None:
                    dead.append((lock_path, fd))
            if not alive[token] and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        for lock_path, fd in dead:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
            os.close(fd)
        for entry in os.scandir(self._trash_dir):
            shutil.rmtree(entry.path, ignore_errors=True)

    @staticmethod
    def _remove_if_unlocked(path: Path) -> None:
        fd = _try_lock(path)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)

    # --- internals: misc ---------------------------------------------------------------

    def _collection_dir(self, name: str) -> Path:
        _check_name(name)
        return self._collections_dir / name

    def _is_collection(self, name: str) -> bool:
        return bool(_NAME.fullmatch(name)) and (self._collections_dir / name).is_dir()

    def _collection_or_alias(self, name: str) -> str:
        if self._is_collection(name):
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

    def _query_request(
        self,
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filters: dict[str, str | list[str]] | None,
        candidates: int,
        exact: SparseVector | None = None,
    ) -> qe.QueryRequest:
        condition = _edge_filter(filters)
        depth = max(candidates, limit)
        params = qe.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None
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


# --- module helpers -------------------------------------------------------------------


def _edge_config(dense_size: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dense_size, distance=qe.Distance.Cosine)},
        # IDF at query time: documents carry BM25 term-frequency weights (lexical.py).
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def _load_writable(name: str, path: Path) -> qe.EdgeShard:
    try:
        return qe.EdgeShard.load(str(path))
    except Exception as err:
        if "WouldBlock" in str(err):
            raise CollectionBusy(f"collection {name!r} is open for writing in another process") from err
        raise


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid collection or alias name {name!r} (letters, digits, . _ - only)")


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if it is missing or held."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    return fd


def _view_token(dir_name: str) -> str:
    # <pid>-<hex>-<collection>-<hex>: neither pid nor hex contains "-".
    return "-".join(dir_name.split("-", 2)[:2])


def _floats(vector: Sequence[float]) -> list[float]:
    return vector if isinstance(vector, list) else [float(x) for x in vector]


def _edge_point(point: IndexedPoint) -> qe.Point:
    vector: dict[str, Any] = {DENSE_VECTOR: _floats(point.dense)}
    if point.sparse.indices:
        vector[SPARSE_VECTOR] = qe.SparseVector(list(point.sparse.indices), list(point.sparse.values))
    return qe.Point(point.id, vector, dict(point.payload))


def _edge_filter(filters: dict[str, str | list[str]] | None) -> qe.Filter | None:
    if not filters:
        return None
    must: list[Any] = []
    for key, value in filters.items():
        if isinstance(value, str):
            must.append(qe.FieldCondition(key, match=qe.MatchValue(value)))
        else:
            must.append(qe.FieldCondition(key, match=qe.MatchAny(list(value))))
    return qe.Filter(must=must)


def _hits(points: Sequence[qe.ScoredPoint]) -> list[SearchHit]:
    return [SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in points]


def _scroll(
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


def _read_seal(path: Path) -> dict[str, Any] | None:
    try:
        with open(path / SEALED_FILE, encoding="utf-8") as handle:
            data: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        return None
    return data


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename with fsyncs: readers see the old file or the new one, whole."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _copy_tree(source: Path, dest: Path, *, link: bool) -> None:
    """Recreate `source` under `dest`: files copied, or (link=True) bulk files hard-linked.

    Raises FileNotFoundError when `source` disappears midway (dropped meanwhile).
    """
    dest.mkdir()
    for entry in os.scandir(source):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False):
            _copy_tree(Path(entry.path), target, link=link)
        elif link and _linkable(entry):
            os.link(entry.path, target)
        else:
            _copy_file(Path(entry.path), target)


def _linkable(entry: os.DirEntry[str]) -> bool:
    if entry.name in _PRIVATE_FILE_NAMES or entry.name.startswith(_PRIVATE_FILE_PREFIXES):
        return False
    return entry.stat(follow_symlinks=False).st_blocks * 512 >= _LINK_MIN_BYTES


def _copy_file(source: Path, dest: Path) -> None:
    """Copy a file keeping its holes (edge preallocates 32 MiB mmap files, mostly holes)."""
    with open(source, "rb") as src, open(dest, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                data = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # nothing but a hole up to the end
                    break
                raise
            hole = os.lseek(src.fileno(), data, os.SEEK_HOLE)
            _copy_range(src.fileno(), dst.fileno(), data, hole - data)
            offset = hole
        os.ftruncate(dst.fileno(), size)


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        try:
            # In-kernel copy; reflinks on filesystems that support it (XFS, btrfs).
            copied = os.copy_file_range(src, dst, end - offset, offset, offset)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            copied = _copy_range_slow(src, dst, offset, end)
        if copied == 0:
            return  # the file shrank under us; the caller sees a short copy only if so
        offset += copied


def _copy_range_slow(src: int, dst: int, offset: int, end: int) -> int:
    chunk = os.pread(src, min(end - offset, 1 << 20), offset)
    if chunk:
        os.pwrite(dst, chunk, offset)
    return len(chunk)
