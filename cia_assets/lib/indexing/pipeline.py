"""The indexing steps without Dagster: chunk a snapshot, embed, update a collection, verify.

Each step reads and writes files under the data dir (`DataLayout`), so every step is
incremental against what the previous run left: a file whose blob did not change keeps its
chunks, a chunk whose text did not change keeps its vector, and an unchanged chunk keeps
its point in the collection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cia_assets.config import ChunkingConfig, CodebaseConfig
from cia_assets.lib.core.fsio import write_json_atomic, write_jsonl_atomic
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.records import Chunk, sha256_text
from cia_assets.lib.indexing import chunking, code_graph, lexical
from cia_assets.lib.indexing.code_symbols import FileSymbols, file_symbols
from cia_assets.lib.indexing.embeddings import Embedder, EmbeddingCache
from cia_assets.lib.sources.git_sync import RepoMirror, Snapshot, read_snapshot
from cia_assets.lib.vectorstore.base import (
    IndexedPoint,
    SearchHit,
    VectorStore,
    collection_age_seconds,
    versioned_collection_name,
)

# Bump when chunking output changes for the same input, so cached chunks are recut.
# 2: non-UTF-8 files parsed as their decoded text; NUL anywhere = binary.
# 3: config files (YAML, TOML, INI, Makefiles) cut at their top-level entries.
CHUNK_FORMAT_VERSION = "3"
# Above this share of changed files an in-place update costs about as much as a rebuild,
# and a fresh collection also sheds the deleted-point tombstones.
FULL_REBUILD_CHANGED_SHARE = 0.5
_IDENTIFIER_WORD = re.compile(r"[A-Za-z_]\w*")
UPSERT_BATCH = 256
# A build not published after this long is abandoned (its process died).
ABANDONED_BUILD_AGE_S = 6 * 3600

logger = logging.getLogger(__name__)


class IndexingError(RuntimeError):
    """An indexing step cannot go on; the message names the repo and the cause."""


# --- chunks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSetMeta:
    repo_id: str
    commit_sha: str
    format_version: str
    files: dict[str, str]  # path -> blob sha of every file that was chunked
    skipped: dict[str, int]
    chunk_count: int
    reused_files: int = 0
    chunked_files: int = 0


def read_chunks(path: Path) -> list[Chunk]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [Chunk.from_json(json.loads(line)) for line in lines if line.strip()]


def read_chunks_meta(path: Path) -> ChunkSetMeta | None:
    if not path.exists():
        return None
    return ChunkSetMeta(**json.loads(path.read_text()))


def chunk_snapshot(
    layout: DataLayout,
    snapshot: Snapshot,
    mirror: RepoMirror,
    codebase: CodebaseConfig,
    limits: ChunkingConfig,
) -> ChunkSetMeta:
    """Chunk every file `codebase` selects at the snapshot's sha, reusing chunks of
    unchanged blobs."""
    repo_id = snapshot.repo_id
    include, exclude = codebase.include, codebase.exclude
    max_lines, max_file_bytes = limits.max_lines, limits.max_file_bytes
    format_version = f"{CHUNK_FORMAT_VERSION}:{max_lines}:{max_file_bytes}"
    previous_meta = read_chunks_meta(layout.chunks_meta(repo_id))
    previous_by_path: dict[str, list[Chunk]] = {}
    if previous_meta and previous_meta.format_version == format_version:
        for chunk in read_chunks(layout.chunks(repo_id)):
            previous_by_path.setdefault(chunk.path, []).append(chunk)
    previous_blobs = previous_meta.files if previous_meta else {}
    previous_symbols = code_graph.read_symbols(layout.code_symbols(repo_id))
    symbols: dict[str, FileSymbols] = {}

    skipped: Counter[str] = Counter()
    files: dict[str, str] = {}
    chunks: list[Chunk] = []
    to_read: list[tuple[str, str]] = []
    reused_files = 0
    for tracked in mirror.tracked_files(snapshot.commit_sha, include, exclude, skipped=skipped):
        if tracked.size is None:
            # A tree entry whose blob the mirror lacks (a partial or damaged clone): nothing to
            # read, counted, and the rest of the repo is indexed.
            skipped["missing_blob"] += 1
            continue
        if tracked.size > max_file_bytes:
            skipped["too_large"] += 1
            continue
        if previous_blobs.get(tracked.path) == tracked.blob_sha and tracked.path in previous_by_path:
            files[tracked.path] = tracked.blob_sha
            chunks.extend(
                dataclasses.replace(c, commit_sha=snapshot.commit_sha, web_url=snapshot.web_url)
                for c in previous_by_path[tracked.path]
            )
            reused_files += 1
            known = previous_symbols.get(tracked.path)
            if known is not None and known.blob_sha == tracked.blob_sha:
                symbols[tracked.path] = known
        else:
            to_read.append((tracked.path, tracked.blob_sha))

    path_by_blob: dict[str, list[str]] = {}
    for path, blob_sha in to_read:
        path_by_blob.setdefault(blob_sha, []).append(path)
    for blob_sha, data in mirror.read_blobs(list(path_by_blob)):
        for path in path_by_blob[blob_sha]:
            reason = chunking.classify_file(path, data, max_bytes=max_file_bytes)
            if reason is not None:
                skipped[reason] += 1
                continue
            drafts = chunking.chunk_file(path, data, max_lines=max_lines)
            if not drafts:
                skipped["no_content"] += 1
                continue
            files[path] = blob_sha
            symbols[path] = file_symbols(
                path, blob_sha, data, drafts[0].language, [(d.kind, d.symbol) for d in drafts]
            )
            chunks.extend(
                Chunk(
                    repo_id=repo_id,
                    path=path,
                    line_start=d.line_start,
                    line_end=d.line_end,
                    language=d.language,
                    kind=d.kind,
                    symbol=d.symbol,
                    commit_sha=snapshot.commit_sha,
                    content_hash=sha256_text(d.text),
                    text=d.text,
                    context=d.context,
                    web_url=snapshot.web_url,
                )
                for d in drafts
            )

    chunks.sort(key=lambda c: (c.path, c.line_start, c.line_end))
    _complete_symbols(symbols, files, chunks, mirror)
    code_graph.write_symbols(layout.code_symbols(repo_id), [symbols[path] for path in sorted(files)])
    code_graph.write_code_graph(layout.code_graph(repo_id), code_graph.build_code_graph(symbols.values()))
    meta = ChunkSetMeta(
        repo_id=repo_id,
        commit_sha=snapshot.commit_sha,
        format_version=format_version,
        files=files,
        skipped=dict(sorted(skipped.items())),
        chunk_count=len(chunks),
        reused_files=reused_files,
        chunked_files=len(files) - reused_files,
    )
    write_jsonl_atomic(layout.chunks(repo_id), (c.to_json() for c in chunks))
    write_json_atomic(layout.chunks_meta(repo_id), dataclasses.asdict(meta))
    return meta


def _complete_symbols(
    symbols: dict[str, FileSymbols], files: dict[str, str], chunks: Sequence[Chunk], mirror: RepoMirror
) -> None:
    """Symbols for reused files that have none yet (an index from before the code graph)."""
    missing = {path: blob for path, blob in files.items() if path not in symbols}
    if not missing:
        return
    by_path: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        if chunk.path in missing:
            by_path.setdefault(chunk.path, []).append(chunk)
    paths_by_blob: dict[str, list[str]] = {}
    for path, blob in missing.items():
        paths_by_blob.setdefault(blob, []).append(path)
    for blob_sha, data in mirror.read_blobs(list(paths_by_blob)):
        for path in paths_by_blob[blob_sha]:
            own = by_path[path]
            symbols[path] = file_symbols(
                path, blob_sha, data, own[0].language, [(c.kind, c.symbol) for c in own]
            )


# --- embeddings ------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingStats:
    embedded: int  # chunks whose vector was computed in this run
    reused: int  # chunks whose vector came from the cache
    seconds: float


def ensure_embeddings(
    chunks: Sequence[Chunk],
    embedder: Embedder,
    cache: EmbeddingCache,
    *,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddingStats:
    """Make sure every chunk's text has a vector in the cache; embed only what is missing."""
    started = time.perf_counter()
    keys = [c.embedding_key for c in chunks]
    cached = cache.get_many(embedder.model_id, keys)
    missing: dict[str, str] = {}
    for chunk, key in zip(chunks, keys, strict=True):
        if key not in cached and key not in missing:
            missing[key] = chunk.embedding_text
    reused = sum(1 for key in keys if key in cached)
    pending = list(missing.items())
    # Embed longest texts together: padding to the batch's longest text is the main waste.
    pending.sort(key=lambda item: len(item[1]))
    done = 0
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        vectors = embedder.embed([text for _, text in batch])
        cache.put_many(embedder.model_id, zip((key for key, _ in batch), vectors, strict=True))
        done += len(batch)
        if progress:
            progress(done, len(pending))
    return EmbeddingStats(embedded=len(chunks) - reused, reused=reused, seconds=time.perf_counter() - started)


# --- collection ------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexState:
    """What is live behind a repo's alias, so the next run can update it incrementally."""

    repo_id: str
    alias: str
    collection: str
    model_id: str
    commit_sha: str
    files: dict[str, str]
    point_count: int
    # The chunking the points were cut with (`ChunkSetMeta.format_version`): another one (a
    # new chunker, `chunking.max_lines` changed) re-chunks every file, so no point is kept.
    # "" in a state written before it was recorded.
    chunk_format: str = ""


@dataclass(frozen=True)
class CollectionUpdate:
    mode: str  # "full" | "incremental" | "unchanged"
    collection: str
    previous_collection: str | None
    upserted: int
    deleted_files: int
    changed_files: int
    point_count: int
    seconds: float
    verification: dict[str, Any] = field(default_factory=dict)


def read_index_state(path: Path) -> IndexState | None:
    if not path.exists():
        return None
    return IndexState(**json.loads(path.read_text()))


def collection_models_path(state_path: Path) -> Path:
    """Beside the index state: the embedding model of each of the repo's collections."""
    return state_path.with_name(f"{state_path.stem}.models.json")


def read_collection_models(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _record_collection_model(
    state_path: Path, collection: str, model_id: str, keep: Sequence[str | None]
) -> None:
    """Written before the alias switches to `collection`, so whoever finds it live can tell
    which model embedded it, even if this process dies before the index state is written."""
    path = collection_models_path(state_path)
    known = {name: model for name, model in read_collection_models(path).items() if name in keep}
    write_json_atomic(path, {**known, collection: model_id})


def point_payload(chunk: Chunk) -> dict[str, Any]:
    """What a point carries. `commit_sha` is the indexed commit its file was last read at:
    an incremental update leaves the points of unchanged files alone (rewriting every
    point's payload cost 5 s at 10k points, whatever the change), and such a file is
    byte-identical at every later indexed commit, so its lines and links are the same.
    `update_collection` keeps that commit in the branch's history."""
    return {
        "chunk_id": chunk.chunk_id,
        "repo_id": chunk.repo_id,
        "path": chunk.path,
        "line_start": chunk.line_start,
        "line_end": chunk.line_end,
        "language": chunk.language,
        "kind": chunk.kind,
        "symbol": chunk.symbol,
        "commit_sha": chunk.commit_sha,
        "content_hash": chunk.content_hash,
        "web_url": chunk.web_url,
        "context": chunk.context,
        "text": chunk.text,
    }


def build_points(
    chunks: Sequence[Chunk], embedder_model_id: str, cache: EmbeddingCache
) -> Iterator[list[IndexedPoint]]:
    """Points in batches; every vector must already be cached (see `ensure_embeddings`)."""
    for start in range(0, len(chunks), UPSERT_BATCH):
        batch = chunks[start : start + UPSERT_BATCH]
        vectors = cache.get_many(embedder_model_id, (c.embedding_key for c in batch))
        points = []
        for chunk in batch:
            vector = vectors.get(chunk.embedding_key)
            if vector is None:
                raise IndexingError(
                    f"{chunk.repo_id}: no cached {embedder_model_id} embedding for "
                    f"{chunk.path}:{chunk.line_start}; materialize chunk_embeddings first (if the "
                    "embedding model was promoted or rolled back since it ran, the indexing "
                    "automation embeds the repo again with the new one)"
                )
            points.append(
                IndexedPoint(
                    id=chunk.chunk_id,
                    dense=vector.tolist(),
                    sparse=lexical.encode_document(chunk.embedding_text),
                    payload=point_payload(chunk),
                )
            )
        yield points


def update_collection(
    store: VectorStore,
    *,
    alias: str,
    chunks: Sequence[Chunk],
    chunk_meta: ChunkSetMeta,
    model_id: str,
    dense_size: int,
    cache: EmbeddingCache,
    state_path: Path,
    verify: Callable[[str, frozenset[str] | None], dict[str, Any]],
    in_branch_history: Callable[[str], bool],
    force_full: bool = False,
    fail_after_points: int | None = None,
) -> CollectionUpdate:
    """Bring the collection behind `alias` to `chunks`, zero-downtime.

    Full rebuild: a new versioned collection is written and verified, the alias switches
    to it atomically, then the old one is dropped. Incremental: only points of changed and
    deleted files are touched; every other point keeps its payload, `commit_sha` included
    (see `point_payload`). If anything fails before the switch, the alias stays on the old,
    complete collection and the half-written one is dropped.
    `in_branch_history(sha)`: whether the mirror's branch still contains that commit; after
    a force push that dropped the indexed commit, the update is a full rebuild, so no point
    is left citing a commit git may garbage-collect.
    `verify(collection, paths)` checks the new collection before the switch: `paths` are the
    files this update wrote (None: every file).
    `fail_after_points` injects a failure (for tests of exactly that guarantee).
    """
    started = time.perf_counter()
    repo_id = chunk_meta.repo_id
    state = read_index_state(state_path)
    live = store.resolve_alias(alias)
    usable_state = (
        state is not None
        and live is not None
        and state.collection == live
        and state.model_id == model_id
        and state.chunk_format == chunk_meta.format_version
        and in_branch_history(state.commit_sha)
    )
    current_files = chunk_meta.files
    indexed_files = state.files if usable_state and state else {}
    changed = sorted(p for p, blob in current_files.items() if indexed_files.get(p) != blob)
    deleted = sorted(set(indexed_files) - set(current_files))
    churn = (len(changed) + len(deleted)) / max(1, len(current_files))
    full = force_full or not usable_state or churn > FULL_REBUILD_CHANGED_SHARE

    if not full and not changed and not deleted and state and state.commit_sha == chunk_meta.commit_sha:
        return CollectionUpdate(
            "unchanged", live or "", None, 0, 0, 0, store.count(live or ""), time.perf_counter() - started
        )

    if full:
        target = versioned_collection_name(alias)
        store.create_collection(target, dense_size)
        to_write = list(chunks)
    else:
        target = store.open_for_update(alias)
        changed_paths = set(changed)
        to_write = [c for c in chunks if c.path in changed_paths]

    written = 0
    try:
        if not full and (changed or deleted):
            store.delete_where(target, "path", [*changed, *deleted])
        for points in build_points(to_write, model_id, cache):
            store.upsert(target, points)
            written += len(points)
            if fail_after_points is not None and written >= fail_after_points:
                raise IndexingError(f"{repo_id}: injected failure after {written} points")
        # A full build is verified whole; an update, in the files it wrote: every other point
        # is a file whose blob is unchanged, verified when it was written.
        verification = verify(target, None if full else frozenset(changed))
    except BaseException:
        if target != live:
            store.drop_collection(target)
        raise

    if full:
        _record_collection_model(state_path, target, model_id, keep=[live])
    previous = store.publish(alias, target)
    point_count = store.count(target)
    write_json_atomic(
        state_path,
        dataclasses.asdict(
            IndexState(
                repo_id=repo_id,
                alias=alias,
                collection=target,
                model_id=model_id,
                commit_sha=chunk_meta.commit_sha,
                files=current_files,
                point_count=point_count,
                chunk_format=chunk_meta.format_version,
            )
        ),
    )
    if previous and previous != target:
        store.drop_collection(previous)
    drop_abandoned_builds(store, alias, keep=target)
    return CollectionUpdate(
        mode="full" if full else "incremental",
        collection=target,
        previous_collection=previous,
        upserted=written,
        deleted_files=len(deleted),
        changed_files=len(changed),
        point_count=point_count,
        seconds=time.perf_counter() - started,
        verification=verification,
    )


def drop_abandoned_builds(
    store: VectorStore, alias: str, keep: str, min_age_s: float = ABANDONED_BUILD_AGE_S
) -> list[str]:
    """Drop versions of `alias` left by builds that died before publishing (a killed
    process cannot clean up after itself). Young ones may belong to a build in progress."""
    dropped = []
    for name in store.list_collections():
        age = collection_age_seconds(alias, name)
        if name != keep and age is not None and age > min_age_s and name != store.resolve_alias(alias):
            try:
                store.drop_collection(name)
            except Exception as error:  # another process still holds it: leave it
                logger.warning("kept abandoned collection %s: %s", name, error)
                continue
            dropped.append(name)
    return dropped


# --- verification (shared by the asset before its switch and by the asset checks) ------


class VerificationError(IndexingError):
    pass


def verify_point_count(store: VectorStore, collection: str, expected: int) -> dict[str, Any]:
    actual = store.count(collection)
    if actual != expected:
        raise VerificationError(f"collection {collection} has {actual} points, expected {expected} chunks")
    return {"points": actual}


def verify_lines_exist(
    store: VectorStore,
    collection: str,
    mirror: RepoMirror,
    commit_sha: str,
    paths: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Every point's line range exists at `commit_sha` and holds exactly the chunk's text;
    with `paths`, the points of those files only (reading files from git is the cost)."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for _, payload in store.scroll(collection):
        if paths is None or payload["path"] in paths:
            by_path.setdefault(payload["path"], []).append(payload)
    bad: list[str] = []
    for path, payloads in by_path.items():
        data = mirror.read_file(commit_sha, path)
        if data is None:
            bad.extend(f"{path} (missing at {commit_sha[:12]})" for _ in payloads)
            continue
        lines = chunking.split_lines(chunking.decode_source(data))
        for payload in payloads:
            start, end = payload["line_start"], payload["line_end"]
            text = "\n".join(lines[start - 1 : end])
            if end > len(lines) or start < 1 or sha256_text(text) != payload["content_hash"]:
                bad.append(f"{path}#L{start}-L{end}")
    if bad:
        raise VerificationError(
            f"{len(bad)} point(s) do not match their lines at {commit_sha[:12]}: {', '.join(bad[:5])}"
        )
    return {"files_checked": len(by_path)}


def pick_smoke_chunk(chunks: Sequence[Chunk]) -> Chunk | None:
    """A definition with a compound name (snake_case or camelCase) that appears in no other
    chunk: searching that name must find this chunk first, or retrieval is broken. The
    longest such name wins, so the pick is deterministic."""
    document_frequency: Counter[str] = Counter()
    for chunk in chunks:
        document_frequency.update(set(_IDENTIFIER_WORD.findall(chunk.text)))
    best: Chunk | None = None
    best_key: tuple[int, str, int] | None = None
    for chunk in chunks:
        if not chunk.symbol or chunk.kind not in ("function", "method", "class"):
            continue
        name = chunk.symbol.rsplit(".", 1)[-1]
        compound = bool(lexical.encode_identifiers(name).indices)
        if not compound or document_frequency[name] != 1 or name not in chunk.text:
            continue
        key = (len(name), chunk.path, -chunk.line_start)
        if best_key is None or key > best_key:
            best, best_key = chunk, key
    return best


def smoke_query(chunk: Chunk) -> str:
    return (chunk.symbol or "").rsplit(".", 1)[-1]


def verify_smoke_search(search: Callable[[str], list[SearchHit]], chunks: Sequence[Chunk]) -> dict[str, Any]:
    chunk = pick_smoke_chunk(chunks)
    if chunk is None:
        return {"smoke_symbol": None}
    query = smoke_query(chunk)
    hits = search(query)
    if not hits:
        raise VerificationError(f"smoke search for {query!r} returned nothing")
    top = hits[0].payload
    if top.get("path") != chunk.path or top.get("symbol") != chunk.symbol:
        raise VerificationError(
            f"smoke search for {query!r} ranked {top.get('path')}:{top.get('symbol')} first, "
            f"expected {chunk.path}:{chunk.symbol}"
        )
    return {"smoke_symbol": chunk.symbol, "smoke_path": chunk.path}


def load_snapshot_or_fail(layout: DataLayout, repo_id: str) -> Snapshot:
    snapshot = read_snapshot(layout.snapshot(repo_id))
    if snapshot is None:
        raise IndexingError(f"{repo_id}: no snapshot yet; materialize git_repo_snapshots first")
    return snapshot
