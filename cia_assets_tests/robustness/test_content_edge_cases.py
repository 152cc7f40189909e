"""Odd repository content and odd configs (issue 18 item 8), through the real chunker, a real
git repository and the real CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cia_assets.config import CiaConfig
from cia_assets_tests.support.cli import cia
from cia_assets_tests.support.materialize import asset_metadata, materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

pytestmark = pytest.mark.robustness


def test_a_latin1_file_keeps_its_accented_names() -> None:
    from cia_assets.lib.indexing.chunking import chunk_file

    source = "# Calcul des remises\n\ndef calcule_réduction(prix):\n    return prix * 0.9\n"
    drafts = chunk_file("remise.py", source.encode("latin-1"))
    [function] = [d for d in drafts if d.kind == "function"]
    assert function.symbol == "calcule_réduction"
    assert (function.line_start, function.line_end) == (3, 4)


def test_a_nul_byte_anywhere_marks_a_file_binary() -> None:
    from cia_assets.lib.indexing.chunking import classify_file

    text = b"x = 1\n" * 2000  # 12 KB of code
    assert classify_file("data.py", text, max_bytes=1_000_000) is None
    assert classify_file("data.py", text + b"\x00\x01\x02", max_bytes=1_000_000) == "binary"


def test_symlinks_and_submodules_are_counted_as_skipped(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    repo = make_repo("payments", SAMPLE_FILES)
    first = next(iter(SAMPLE_FILES))
    (repo.path / "linked.py").symlink_to(first)
    repo.git("add", "linked.py")
    # A submodule as git records it: a gitlink entry (mode 160000) pointing at a commit.
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{'a' * 40},vendor/lib")
    repo.git("commit", "-q", "-m", "a symlink and a submodule")
    config = write_config([{"url": repo.url, "id": "payments"}])
    chunks = asset_metadata(
        materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments"), "code_chunks"
    )
    skipped = chunks["skipped"]
    assert isinstance(skipped, dict)
    assert skipped.get("symlink") == 1 and skipped.get("submodule") == 1
    assert chunks["files"] == len(SAMPLE_FILES)


def test_an_empty_codebase_list_and_a_mistyped_key_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cia.yaml"
    path.write_text(yaml.safe_dump({"data_dir": "data", "codebases": []}))
    done = cia("index", "--config", str(path))
    assert done.returncode != 0
    assert "codebases: the list is empty, nothing to index" in done.stderr

    path.write_text(yaml.safe_dump({"data_dir": "data", "codebase": [{"url": "https://x.example/r.git"}]}))
    done = cia("index", "--config", str(path))
    assert done.returncode != 0
    assert "unknown top-level key(s) 'codebase' (did you mean 'codebases'?)" in done.stderr
    assert "codebases: required" not in done.stderr
