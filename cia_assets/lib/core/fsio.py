"""Files that readers never see half-written, and locks that other processes respect.

The one home for both: every stage that publishes a file (a snapshot record, chunk files, an
alias table, the live endpoint record, a model file's digest record) writes it with
`write_json_atomic`, `write_jsonl_atomic` or `write_text_atomic`, and every cross-process
critical section takes `file_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar, cast

Parsed = TypeVar("Parsed")


def write_json_atomic(path: Path, data: object, *, create_folder: bool = True) -> None:
    """Readers see the old file or the new one, whole (write, fsync, rename, fsync the folder).

    `create_folder=False` fails when the folder is gone instead of making it again: a file that
    only means something inside an existing folder (a collection's seal) is never written alone.
    """
    _write_atomic(path, lambda out: json.dump(data, out, indent=1, sort_keys=True), create_folder)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, published as one file the way `write_json_atomic` does."""

    def write_rows(out: IO[str]) -> None:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")

    _write_atomic(path, write_rows, create_folder=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Plain text, published as one file the way `write_json_atomic` does."""

    def write_text(out: IO[str]) -> None:
        out.write(text)

    _write_atomic(path, write_text, create_folder=True)


def _write_atomic(path: Path, write: Callable[[IO[str]], None], create_folder: bool) -> None:
    if create_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    # A unique staging name in the same folder, so the rename is atomic and two writers never
    # share a staging file.
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(staging, "w", encoding="utf-8") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    # The rename itself is durable only once the folder's entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing) for the block; blocks until it is free.

    flock is released by the kernel when the holder dies, so a killed process never leaves a
    stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_by_version(path: Path, parse: Callable[[Path], Parsed]) -> Parsed | None:
    """`parse(path)`, computed once per version of the file (its mtime, size and inode) and kept for
    the process; None when the file does not exist. For what a question reads on every call
    (the index state, the code graph) but a new commit rewrites."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    # The inode too: every atomic replace (`write_json_atomic`) makes a new one, so two
    # same-size writes within one tick of the file system's clock still read as two versions.
    return cast(Parsed, _parse_version(parse, path, stat.st_mtime_ns, stat.st_size, stat.st_ino))


@functools.lru_cache(maxsize=128)
def _parse_version(
    parse: Callable[[Path], object], path: Path, _mtime_ns: int, _size: int, _inode: int
) -> object:
    return parse(path)
