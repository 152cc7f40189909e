"""File copies for the embedded store: full copies, hard-linked views, deletion via trash.

qdrant-edge preallocates its mmap files (32 MiB, mostly holes), so copies keep holes and
use in-kernel copies; views hard-link the bulk files and copy only the small ones the
engine rewrites.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

# Files the engine rewrites when it opens or closes a shard (mmap'd flags, trackers and
# status words; measured with qdrant-edge 0.9: same bytes, but new mtimes). A view gets
# private copies of these so that no process ever writes into a published collection's
# inodes; so does every file with less than _LINK_MIN_BYTES allocated, which costs nothing.
_PRIVATE_FILE_NAMES = frozenset(
    {"tracker.dat", "tracker_journal.dat", "status.dat", "deleted.dat", "gaps.dat", "bitmask.dat"}
)
_PRIVATE_FILE_PREFIXES = ("flags_",)
_LINK_MIN_BYTES = 64 * 1024


def copy_tree(source: Path, dest: Path, *, link: bool) -> None:
    """Recreate `source` under `dest`: files copied, or (link=True) bulk files hard-linked.

    Raises FileNotFoundError when `source` disappears midway (dropped meanwhile).
    """
    dest.mkdir()
    for entry in os.scandir(source):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False):
            copy_tree(Path(entry.path), target, link=link)
        elif link and _linkable(entry):
            os.link(entry.path, target)
        else:
            copy_file(Path(entry.path), target)


def _linkable(entry: os.DirEntry[str]) -> bool:
    if entry.name in _PRIVATE_FILE_NAMES or entry.name.startswith(_PRIVATE_FILE_PREFIXES):
        return False
    return entry.stat(follow_symlinks=False).st_blocks * 512 >= _LINK_MIN_BYTES


def copy_file(source: Path, dest: Path) -> None:
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


def delete_via_trash(path: Path, trash_dir: Path) -> None:
    """Rename `path` into `trash_dir`, then remove it there; a missing `path` is a no-op."""
    trash = trash_dir / f"{path.name}-{secrets.token_hex(4)}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def empty_trash(trash_dir: Path) -> None:
    """Remove what deletions interrupted midway left in `trash_dir`."""
    for entry in os.scandir(trash_dir):
        shutil.rmtree(entry.path, ignore_errors=True)
