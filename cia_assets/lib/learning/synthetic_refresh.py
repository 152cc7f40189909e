"""Which repos need new synthetic pairs: those whose indexed commit differs from the one the
current synthetic dataset was written from."""

from __future__ import annotations

from cia_assets.config import CiaConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.indexing.pipeline import read_chunks_meta


def indexed_commits(config: CiaConfig) -> dict[str, str]:
    """repo -> the commit its chunks were made from (repos never chunked are absent)."""
    layout = config.layout
    commits = {}
    for repo_id in config.repo_ids:
        meta = read_chunks_meta(layout.chunks_meta(repo_id))
        if meta is not None:
            commits[repo_id] = meta.commit_sha
    return commits


def changed_repos(config: CiaConfig) -> list[str]:
    current = artifacts.current(config.layout.synthetic_datasets)
    recorded = current.summary.get("indexed_commits", {}) if current else {}
    return [repo for repo, sha in indexed_commits(config).items() if recorded.get(repo) != sha]
