import dagster as dg

from cia_assets.defs.owners import OWNERS
from cia_assets.defs.repos.assets import git_repo_snapshots
from cia_assets.defs.repos.partitions import repos_partitions
from cia_assets.defs.resources import CiaConfigResource, EmbedderResource, VectorStoreResource
from cia_assets.defs.training.retrieval import retrieval_embedding_model
from cia_assets.lib.core.layout import collection_alias
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.indexing.pipeline import CHUNK_FORMAT_VERSION
from cia_assets.lib.retrieval.search import search_collection
from cia_assets.lib.sources.git_sync import RepoMirror

# Each stage runs as soon as the stage before it has new data for the same repo: the repo
# sensor only has to request a snapshot, and the rest of the graph follows it.
FOLLOW_UPSTREAM = dg.AutomationCondition.eager()

# Embeddings also follow the embedding model: a promoted retrieval adapter (or a rollback)
# re-embeds every repo. Eager, except that the model may be missing: a project that never
# promoted an adapter has no materialization of it, and eager would wait for one forever.
FOLLOW_CHUNKS_AND_MODEL = FOLLOW_UPSTREAM.replace(
    "any_deps_missing",
    dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(retrieval_embedding_model)),
).with_label("eager; the embedding model may be missing")


@dg.asset(
    partitions_def=repos_partitions,
    deps=[git_repo_snapshots],
    group_name="indexing",
    kinds={"python", "tree-sitter"},
    owners=OWNERS,
    code_version=CHUNK_FORMAT_VERSION,
    automation_condition=FOLLOW_UPSTREAM,
)
def code_chunks(context: dg.AssetExecutionContext, cia: CiaConfigResource) -> dg.MaterializeResult:
    """Syntax-aware chunks of every tracked file at the snapshot's commit: whole functions,
    methods and classes (tree-sitter), Markdown sections, line windows for other text.

    Each chunk carries repo, path, line range, language, symbol, kind, commit and content
    hash: everything an exact source link needs. Files whose blob did not change since the
    last run keep their chunks without being read again.
    """
    config = cia.load()
    layout = cia.layout()
    repo_id = context.partition_key
    codebase = config.codebase(repo_id)
    snapshot = indexing.load_snapshot_or_fail(layout, repo_id)
    mirror = RepoMirror(layout.mirror(repo_id), snapshot.clone_url, snapshot.branch)
    try:
        meta = indexing.chunk_snapshot(layout, snapshot, mirror, codebase, config.chunking)
    finally:
        mirror.close()
    return dg.MaterializeResult(
        metadata={
            "commit_sha": meta.commit_sha,
            "files": len(meta.files),
            "chunks": meta.chunk_count,
            "files_chunked": meta.chunked_files,
            "files_reused": meta.reused_files,
            "skipped": dg.MetadataValue.json(meta.skipped),
            "skipped_total": sum(meta.skipped.values()),
        },
        data_version=dg.DataVersion(f"{meta.commit_sha}:{meta.format_version}"),
    )


@dg.asset(
    partitions_def=repos_partitions,
    deps=[code_chunks, retrieval_embedding_model],
    group_name="indexing",
    kinds={"fastembed", "onnx"},
    owners=OWNERS,
    code_version="1",
    automation_condition=FOLLOW_CHUNKS_AND_MODEL,
)
def chunk_embeddings(
    context: dg.AssetExecutionContext, cia: CiaConfigResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """A dense vector for every chunk, from the active embedding model: cia.yaml's, or the
    retrieval adapter `retrieval_embedding_model` promoted.

    Vectors are cached by (model, text hash): text that did not change is never embedded
    again, across commits and full rebuilds.
    """
    layout = cia.layout()
    repo_id = context.partition_key
    chunks = indexing.read_chunks(layout.chunks(repo_id))
    model = embedder.model()

    def report(done: int, total: int) -> None:
        context.log.info(f"{repo_id}: embedded {done}/{total} chunks")

    stats = indexing.ensure_embeddings(chunks, model, embedder.cache(), progress=report)
    return dg.MaterializeResult(
        metadata={
            "model": model.model_id,
            "precision": model.precision,
            "dimensions": model.dim,
            "chunks": len(chunks),
            "embedded": stats.embedded,
            "reused": stats.reused,
            "seconds": round(stats.seconds, 2),
            "chunks_per_second": round(stats.embedded / stats.seconds, 1) if stats.embedded else 0.0,
        }
    )


class QdrantCollectionConfig(dg.Config):
    full_rebuild: bool = False
    """Write a fresh collection and switch the alias even when an in-place update would do."""


@dg.asset(
    partitions_def=repos_partitions,
    deps=[chunk_embeddings],
    group_name="indexing",
    kinds={"qdrant"},
    owners=OWNERS,
    code_version="1",
    automation_condition=FOLLOW_UPSTREAM,
)
def qdrant_collection(
    context: dg.AssetExecutionContext,
    config: QdrantCollectionConfig,
    cia: CiaConfigResource,
    embedder: EmbedderResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """The searchable index of one repo: dense + lexical vectors behind the alias
    `<prefix>-<repo>`, which is all readers ever use.

    A full rebuild writes a new versioned collection, verifies it, switches the alias
    (a blue-green Service switch) and then drops the old one; a small change updates the
    live collection in place. A failure before the switch leaves the old collection live.
    """
    project = cia.load()
    layout = cia.layout()
    repo_id = context.partition_key
    snapshot = indexing.load_snapshot_or_fail(layout, repo_id)
    chunks = indexing.read_chunks(layout.chunks(repo_id))
    chunk_meta = indexing.read_chunks_meta(layout.chunks_meta(repo_id))
    if chunk_meta is None:
        raise dg.Failure(description=f"{repo_id}: no chunks yet; materialize code_chunks first")
    store = vector_store.open()
    model = embedder.model()
    alias = collection_alias(project.vector_store.collection_prefix, repo_id)
    mirror = RepoMirror(layout.mirror(repo_id), snapshot.clone_url, snapshot.branch)

    def verify(collection: str, paths: frozenset[str] | None) -> dict[str, object]:
        return {
            **indexing.verify_point_count(store, collection, len(chunks)),
            **indexing.verify_lines_exist(store, collection, mirror, chunk_meta.commit_sha, paths),
            **indexing.verify_smoke_search(
                lambda q: search_collection(store, model, collection, q, 5),
                chunks,
            ),
        }

    try:
        update = indexing.update_collection(
            store,
            alias=alias,
            chunks=chunks,
            chunk_meta=chunk_meta,
            model_id=model.model_id,
            dense_size=model.dim,
            cache=embedder.cache(),
            state_path=layout.index_state(repo_id),
            verify=verify,
            in_branch_history=mirror.in_branch_history,
            force_full=config.full_rebuild,
        )
    finally:
        mirror.close()
    context.log.info(
        f"{repo_id}: {update.mode} update of {alias} -> {update.collection} "
        f"({update.upserted} points written, {update.point_count} live)"
    )
    return dg.MaterializeResult(
        metadata={
            "alias": alias,
            "collection": update.collection,
            "mode": update.mode,
            "points": update.point_count,
            "upserted": update.upserted,
            "changed_files": update.changed_files,
            "deleted_files": update.deleted_files,
            "commit_sha": chunk_meta.commit_sha,
            "seconds": round(update.seconds, 2),
            "backend": project.vector_store.backend,
            # Lines re-read from git before the switch: every file on a full build, the
            # written ones on an update.
            "files_verified": update.verification.get("files_checked", 0),
        }
    )
