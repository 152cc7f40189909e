"""Blocking checks on the live index: a collection that fails them stops everything
downstream (answering, datasets) from building on it."""

from collections.abc import Callable
from typing import Any

import dagster as dg

from cia_assets.defs.indexing.assets import qdrant_collection
from cia_assets.defs.repos.partitions import repos_partitions
from cia_assets.defs.resources import CiaConfigResource, EmbedderResource, VectorStoreResource
from cia_assets.lib.core.layout import collection_alias
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.indexing.pipeline import VerificationError
from cia_assets.lib.retrieval.search import search_collection
from cia_assets.lib.sources.git_sync import RepoMirror


def _live_collection(cia: CiaConfigResource, vector_store: VectorStoreResource, repo_id: str) -> str:
    alias = collection_alias(cia.load().vector_store.collection_prefix, repo_id)
    collection = vector_store.open().resolve_alias(alias)
    if collection is None:
        raise VerificationError(f"{repo_id}: alias {alias} does not exist")
    return collection


def _result(run: Callable[[], dict[str, Any]]) -> dg.AssetCheckResult:
    try:
        metadata = run()
    except VerificationError as error:
        return dg.AssetCheckResult(passed=False, description=str(error))
    return dg.AssetCheckResult(passed=True, metadata=metadata)


@dg.asset_check(asset=qdrant_collection, blocking=True, partitions_def=repos_partitions)
def points_match_chunks(
    context: dg.AssetCheckExecutionContext, cia: CiaConfigResource, vector_store: VectorStoreResource
) -> dg.AssetCheckResult:
    """The live collection holds exactly one point per chunk."""
    repo_id = context.partition_key
    meta = indexing.read_chunks_meta(cia.layout().chunks_meta(repo_id))
    expected = meta.chunk_count if meta else 0
    return _result(
        lambda: indexing.verify_point_count(
            vector_store.open(), _live_collection(cia, vector_store, repo_id), expected
        )
    )


@dg.asset_check(asset=qdrant_collection, blocking=True, partitions_def=repos_partitions)
def lines_exist_at_snapshot(
    context: dg.AssetCheckExecutionContext, cia: CiaConfigResource, vector_store: VectorStoreResource
) -> dg.AssetCheckResult:
    """Every point's file and line range exist at the snapshot's commit, with the same text:
    a citation built from any point is a valid link."""
    repo_id = context.partition_key
    layout = cia.layout()
    snapshot = indexing.load_snapshot_or_fail(layout, repo_id)
    meta = indexing.read_chunks_meta(layout.chunks_meta(repo_id))
    commit_sha = meta.commit_sha if meta else snapshot.commit_sha
    mirror = RepoMirror(layout.mirror(repo_id), snapshot.clone_url, snapshot.branch)
    try:
        return _result(
            lambda: indexing.verify_lines_exist(
                vector_store.open(), _live_collection(cia, vector_store, repo_id), mirror, commit_sha
            )
        )
    finally:
        mirror.close()


@dg.asset_check(asset=qdrant_collection, blocking=True, partitions_def=repos_partitions)
def smoke_search_finds_symbol(
    context: dg.AssetCheckExecutionContext,
    cia: CiaConfigResource,
    embedder: EmbedderResource,
    vector_store: VectorStoreResource,
) -> dg.AssetCheckResult:
    """Searching for a distinctive symbol of the repo returns that symbol's own chunk first."""
    repo_id = context.partition_key
    chunks = indexing.read_chunks(cia.layout().chunks(repo_id))
    alias = collection_alias(cia.load().vector_store.collection_prefix, repo_id)
    store = vector_store.open()
    # The live index may still be the one built before a promoted retrieval adapter.
    model = embedder.for_repo(repo_id)
    return _result(
        lambda: indexing.verify_smoke_search(lambda q: search_collection(store, model, alias, q, 5), chunks)
    )
