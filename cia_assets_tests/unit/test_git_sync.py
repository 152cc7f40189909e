from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cia_assets.config import ChunkingConfig, CodebaseConfig
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.indexing.pipeline import chunk_snapshot
from cia_assets.lib.sources.git_sync import GitSyncError, RepoMirror, path_selected, remote_head, snapshot_at
from cia_assets_tests.support.repos import GitRepo


def test_clone_then_fetch_follows_the_branch(make_repo: Callable[..., GitRepo], tmp_path: Path) -> None:
    remote = make_repo("svc", {"a.py": "x = 1\n"})
    mirror = RepoMirror(tmp_path / "m.git", remote.url, "main")
    first = mirror.sync()
    assert first == remote.git("rev-parse", "HEAD")
    second_commit = remote.commit({"b.py": "y = 2\n"})
    assert remote_head(remote.url, "main") == second_commit
    assert mirror.sync() == second_commit
    assert [f.path for f in mirror.tracked_files(second_commit)] == ["a.py", "b.py"]
    assert mirror.read_file(first, "b.py") is None
    assert mirror.read_file(second_commit, "b.py") == b"y = 2\n"


def test_only_tracked_regular_files_and_no_symlinks(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("do not index me\n")
    remote = make_repo("svc", {"src/app.py": "print(1)\n", ".gitignore": "build/\n"})
    (remote.path / "build").mkdir()
    (remote.path / "build" / "out.py").write_text("ignored = True\n")
    os.symlink(outside, remote.path / "src" / "leak.txt")
    os.symlink("app.py", remote.path / "src" / "alias.py")
    sha = remote.commit({})
    mirror = RepoMirror(tmp_path / "m.git", remote.url, "main")
    mirror.sync()
    paths = [f.path for f in mirror.tracked_files(sha)]
    assert paths == [".gitignore", "src/app.py"]


@pytest.mark.parametrize(
    ("path", "include", "exclude", "selected"),
    [
        ("src/a.py", ("**",), (), True),
        ("src/a.py", ("src/**",), (), True),
        ("docs/a.md", ("src/**",), (), False),
        ("src/vendor/x.py", ("**",), ("**/vendor/**",), False),
        ("poetry.lock", ("**",), ("*.lock",), False),
        ("pkg/poetry.lock", ("**",), ("*.lock",), False),
        ("src/a.py", ("*.md",), (), False),
    ],
)
def test_path_globs(path: str, include: tuple[str, ...], exclude: tuple[str, ...], selected: bool) -> None:
    assert path_selected(path, include, exclude) is selected


def test_unreachable_remote_keeps_the_previous_mirror(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    remote = make_repo("svc", {"a.py": "x = 1\n"})
    mirror = RepoMirror(tmp_path / "m.git", remote.url, "main")
    sha = mirror.sync()
    moved = remote.path.with_name("gone")
    remote.path.rename(moved)
    with pytest.raises(GitSyncError, match=r"svc: could not fetch branch 'main'"):
        mirror.sync()
    assert mirror.read_file(sha, "a.py") == b"x = 1\n"
    with pytest.raises(GitSyncError, match="svc"):
        remote_head(remote.url, "main")


def test_missing_branch_and_failed_first_clone(make_repo: Callable[..., GitRepo], tmp_path: Path) -> None:
    remote = make_repo("svc", {"a.py": "x = 1\n"})
    with pytest.raises(GitSyncError, match="branch 'develop' not found"):
        remote_head(remote.url, "develop")
    target = tmp_path / "m.git"
    with pytest.raises(GitSyncError, match="develop"):
        RepoMirror(target, remote.url, "develop").sync()
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.git")] == []


def test_a_blob_missing_from_the_mirror_is_listed_without_a_size(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    """A partial or damaged clone lacks some blobs (`git ls-tree -l` prints "BAD" as their size):
    the file is listed as unreadable instead of failing the whole listing."""
    repo = make_repo("payments", {"a.py": "x = 1\n", "big.bin": "y" * 5000})
    mirror = RepoMirror(tmp_path / "mirror.git", repo.url, "main")
    head = mirror.sync()
    blob = mirror.repo.git.rev_parse(f"{head}:big.bin")
    mirror.repo.git.repack("-a", "-d")  # one pack: unpack it loose so one object can go
    packs = list((tmp_path / "mirror.git" / "objects" / "pack").glob("*.pack"))
    for pack in packs:
        moved = pack.with_suffix(".moved")
        pack.rename(moved)
        pack.with_suffix(".idx").unlink()
        mirror.repo.git.execute(["git", "unpack-objects"], istream=moved.open("rb"))
        moved.unlink()
    (tmp_path / "mirror.git" / "objects" / blob[:2] / blob[2:]).unlink()
    sizes = {f.path: f.size for f in mirror.tracked_files(head)}
    # Chunking counts the file as skipped and indexes the rest.
    codebase = CodebaseConfig(url=repo.url, id="payments")
    snapshot = snapshot_at(mirror, head, codebase, repo.url)
    meta = chunk_snapshot(DataLayout(tmp_path / "data"), snapshot, mirror, codebase, ChunkingConfig())
    mirror.close()
    assert sizes == {"a.py": 6, "big.bin": None}
    assert meta.skipped == {"missing_blob": 1} and list(meta.files) == ["a.py"]
