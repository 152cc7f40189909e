"""The alias table: aliases.json, its read-modify-write across processes, and its cache.

The file is `{"format": 1, "aliases": {alias: collection}}`, replaced atomically (temp +
fsync + os.replace), so a switch is a single rename and a reader sees the old or the new
target, never neither. Writers serialise their read-modify-write with an flock on
aliases.lock.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cia_assets.lib.core.fsio import file_lock, write_json_atomic

FileKey = tuple[int, int, int, int]

ALIASES_FORMAT = 1


class AliasTable:
    """aliases.json, and the version of it this store instance read last.

    The change check is one stat: (device, inode, mtime, size). The inode is what
    catches a switch: mtime ticks are coarse (about 4 ms on ext4) and two versions can
    have the same size. A replaced file frees its inode, which the next file could get
    back, so the last file read is kept open: its inode stays allocated, and any
    replacement necessarily has another one.

    The cache (`current`, `is_stale`, `reload`, `close`) takes no lock of its own: the
    store changes it under the lock that also guards its views, so that taking in a
    switch and retiring the old target's view happen together.
    """

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self.lock_path = lock_path
        self.current: dict[str, str] = {}
        self._key: FileKey | None = None
        self._file: IO[str] | None = None

    def stat_key(self) -> FileKey | None:
        """The file's key now (one stat, no lock needed); None when there is no file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def is_stale(self, key: FileKey | None) -> bool:
        """Whether a file with `key` differs from the one `current` was read from."""
        return key != self._key or (key is None and bool(self.current))

    def reload(self) -> dict[str, str]:
        """Re-read the file into `current`, keeping the new file open (see the class)."""
        aliases, key, handle = self.read(pin=True)
        if self._file is not None:
            self._file.close()
        self.current, self._key, self._file = aliases, key, handle
        return aliases

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, *, pin: bool = False) -> tuple[dict[str, str], FileKey | None, IO[str] | None]:
        """The alias file's content and key; with `pin`, also the still-open file."""
        try:
            handle = open(self.path, encoding="utf-8")  # noqa: SIM115 - kept open when pinned
        except FileNotFoundError:
            return {}, None, None
        try:
            st = os.fstat(handle.fileno())
            data = json.load(handle)
            aliases = data.get("aliases") if isinstance(data, dict) else None
            if not isinstance(aliases, dict):
                raise ValueError(f"{self.path}: not an alias file")
        except BaseException:
            handle.close()
            raise
        if not pin:
            handle.close()
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        return {str(k): str(v) for k, v in aliases.items()}, key, handle if pin else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, str]]:
        """Read-modify-write of aliases.json under an exclusive lock across processes."""
        with file_lock(self.lock_path):
            current, _, _ = self.read()
            updated = dict(current)
            yield updated
            if updated != current:
                write_json_atomic(self.path, {"format": ALIASES_FORMAT, "aliases": updated})
