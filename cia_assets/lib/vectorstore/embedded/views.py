"""Reader views of sealed collections, the owner locks that keep them alive, and their cleanup.

Readers never open a collection's own directory (that would take its WAL lock and block
writers and other readers). Each process searches through a private *view*: a directory
whose bulk segment files are hard links to the sealed collection's files, under
views/<token>-<name>-<r>/. One view per collection per store instance, shared by all
threads, reference counted: it is closed and removed only when no search uses it any more.

Each store instance holds an flock on views/<token>.lock for its lifetime; any instance
removes the views of a token whose lock it can take, since their owner is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as qe

from cia_assets.lib.vectorstore.embedded.errors import CollectionBusy, SourceVanished
from cia_assets.lib.vectorstore.embedded.files import copy_file, copy_tree, empty_trash
from cia_assets.lib.vectorstore.embedded.layout import SEALED_FILE, StoreLayout

# The package's logger, as before the split into modules: log lines keep their logger name.
log = logging.getLogger(__package__)


@dataclass
class View:
    collection: str
    path: Path
    shard: qe.EdgeShard
    users: int = 0
    retired: bool = False


class ViewPool:
    """One store instance's views, by collection.

    `lock` is the store's lock, which also guards its alias cache: the set of collections
    aliases point at (`live`) changes together with the alias map. Methods named
    `..._locked` expect the caller to hold it; the others take it themselves.
    """

    def __init__(self, layout: StoreLayout, token: str, lock: threading.Lock) -> None:
        self._layout = layout
        self._token = token
        self._lock = lock
        self._views: dict[str, View] = {}
        self._openers: dict[str, threading.Lock] = {}
        self._live: frozenset[str] = frozenset()

    def acquire(self, collection: str) -> View:
        """The view of a sealed collection, opened if needed; `release` it after use."""
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
            fresh = self._open(collection)
            with self._lock:
                view = self._views.get(collection)
                if view is None:
                    fresh.users = 1
                    self._views[collection] = fresh
                    return fresh
                view.users += 1
        self.dispose(fresh)  # lost a race with an opener that was replaced meanwhile
        return view

    def release(self, view: View) -> None:
        with self._lock:
            view.users -= 1
            if view.users == 0 and view.collection not in self._live:
                # Opened for direct access (a collection name, or an alias that moved on
                # while the view was being opened): do not keep it around.
                self._retire_locked(view)
            dispose = view.users == 0 and view.retired
        if dispose:
            self.dispose(view)

    def retire(self, collection: str) -> None:
        """Take the collection's view out of service (it is being dropped)."""
        with self._lock:
            view = self._views.get(collection)
            dispose = view is not None and self._retire_locked(view)
        if dispose and view is not None:
            self.dispose(view)

    def set_live_locked(self, live: frozenset[str]) -> list[View]:
        """Take in the collections aliases now point at; returns the views to dispose."""
        self._live = live
        disposable: list[View] = []
        for view in list(self._views.values()):
            if view.collection not in self._live and self._retire_locked(view):
                disposable.append(view)
        return disposable

    def close(self) -> None:
        """Close and remove every view of this instance."""
        with self._lock:
            views = list(self._views.values())
            for view in views:
                self._retire_locked(view)
        for view in views:
            # In-flight searches at close are the caller's bug; close anyway.
            self.dispose(view)

    def _retire_locked(self, view: View) -> bool:
        """Take the view out of service; True when nobody uses it (dispose it now)."""
        view.retired = True
        if self._views.get(view.collection) is view:
            del self._views[view.collection]
            self._openers.pop(view.collection, None)
        return view.users == 0

    def _open(self, collection: str) -> View:
        source = self._layout.collection_dir(collection)
        if not (source / SEALED_FILE).is_file():
            if source.is_dir():
                raise CollectionBusy(
                    f"collection {collection!r} is not published yet; "
                    "only the process writing it can search it"
                )
            raise SourceVanished(collection)
        # New views are made only after a switch, so this is a cheap moment to tidy up.
        cleanup_stale(self._layout, self._token)
        path = self._layout.views_dir / f"{self._token}-{collection}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            copy_file(source / "edge_config.json", path / "edge_config.json")
            copy_tree(source / "segments", path / "segments", link=True)
        except FileNotFoundError as err:
            shutil.rmtree(path, ignore_errors=True)
            raise SourceVanished(collection) from err
        try:
            shard = qe.EdgeShard.load(str(path))
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return View(collection, path, shard)

    @staticmethod
    def dispose(view: View) -> None:
        try:
            view.shard.close()
        except Exception:  # a failed close must not fail the search that released the view
            log.warning("closing view %s failed", view.path, exc_info=True)
        shutil.rmtree(view.path, ignore_errors=True)


class OwnerLock:
    """An flock on views/<token>.lock, held for a store instance's lifetime.

    Other processes remove a token's views only when they can take this lock, i.e.
    when its owner is gone. Unlike a pid check, this works across PID namespaces
    (containers sharing the volume). The lock is taken under a temporary name and
    renamed, so no cleaner can see the file unlocked.
    """

    def __init__(self, views_dir: Path, token: str) -> None:
        self._path = views_dir / f"{token}.lock"
        temp = views_dir / f".{token}.lock.tmp"
        fd = os.open(temp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, self._path)
        self._fd = fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        os.close(self._fd)


def cleanup_stale(layout: StoreLayout, token: str) -> None:
    """Remove views of store instances that are gone, and leftover trash."""
    views_dir = layout.views_dir
    alive: dict[str, bool] = {token: True}
    dead: list[tuple[Path, int]] = []  # lock files held by us until their views are gone
    for entry in os.scandir(views_dir):
        name = entry.name
        if name.startswith("."):
            if name.endswith(".lock.tmp"):
                _remove_if_unlocked(Path(entry.path))
            continue
        owner = name.removesuffix(".lock") if name.endswith(".lock") else _view_token(name)
        if owner not in alive:
            # An owner takes its lock before it makes any view, so a view whose lock
            # file is missing or can be taken belongs to nobody.
            lock_path = views_dir / f"{owner}.lock"
            fd = _try_lock(lock_path)
            alive[owner] = fd is None and lock_path.exists()
            if fd is not None:
                dead.append((lock_path, fd))
        if not alive[owner] and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
    for lock_path, fd in dead:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)
    empty_trash(layout.trash_dir)


def _remove_if_unlocked(path: Path) -> None:
    fd = _try_lock(path)
    if fd is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


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
