"""The indexing graph end to end: real git repos over file://, real tree-sitter, the real
packaged embedding model, the real embedded Qdrant engine, real Dagster materializations."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout, collection_alias
from cia_assets.lib.core.project import Project
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.retrieval.search import search_code
from cia_assets.lib.vectorstore.base import versioned_collection_name
from cia_assets_tests.support.materialize import asset_metadata, check_results, materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

ALL_CHECKS = {"points_match_chunks", "lines_exist_at_snapshot", "smoke_search_finds_symbol"}


@pytest.fixture
def payments(make_repo: Callable[..., GitRepo]) -> GitRepo:
    return make_repo("payments", dict(SAMPLE_FILES))


@pytest.fixture(params=["embedded", "server"])
def config(
    request: pytest.FixtureRequest, payments: GitRepo, write_config: Callable[..., CiaConfig]
) -> CiaConfig:
    """Both backends: the embedded engine, and qdrant-client's in-memory engine standing in
    for a Qdrant server (same client API as a real server)."""
    vector_store = {"backend": "server", "url": ":memory:"} if request.param == "server" else {}
    return write_config(
        [{"url": payments.url, "web_url": "https://git.example.com/acme/payments"}],
        vector_store=vector_store,
    )


def test_first_index_then_search_cites_exact_lines(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_repo(config, instance, "payments")
    sha = payments.git("rev-parse", "HEAD")

    snapshot = asset_metadata(result, "git_repo_snapshots")
    assert snapshot["commit_sha"] == sha
    assert snapshot["file_count"] == 4
    assert snapshot["web_url"] == "https://git.example.com/acme/payments"
    chunks = asset_metadata(result, "code_chunks")
    assert chunks["files"] == 4
    assert chunks["chunks"] >= 6
    embeddings = asset_metadata(result, "chunk_embeddings")
    assert (embeddings["embedded"], embeddings["reused"]) == (chunks["chunks"], 0)
    collection = asset_metadata(result, "qdrant_collection")
    assert collection["mode"] == "full"
    assert collection["points"] == chunks["chunks"]
    assert check_results(result) == dict.fromkeys(ALL_CHECKS, True)

    hits = search_code(project_of(config), "check_permission", k=3)
    top = hits[0]
    assert (top.path, top.symbol, top.line_start, top.line_end) == (
        "payments/auth.py",
        "check_permission",
        6,
        10,
    )
    assert top.url == f"https://git.example.com/acme/payments/blob/{sha}/payments/auth.py#L6-L10"

    ledger = search_code(project_of(config), "move money between accounts", k=3)
    assert any(h.path == "payments/ledger.go" and h.symbol and "Transfer" in h.symbol for h in ledger)


def test_one_file_commit_reembeds_only_that_file(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_repo(config, instance, "payments")
    total = asset_metadata(first, "code_chunks")["chunks"]
    ts_chunks_before = [
        c
        for c in indexing.read_chunks(DataLayout(config.data_dir).chunks("payments"))
        if c.path == "web/refund.ts"
    ]
    new_sha = payments.commit(
        {
            "web/refund.ts": (
                "export function computeRefundAmount(total: number, fee: number): number {\n"
                "  return Math.max(0, total - fee);\n"
                "}\n"
                "\n"
                "export function refundDeadlineDays(country: string): number {\n"
                "  return country === 'DE' ? 14 : 30;\n"
                "}\n"
            )
        }
    )
    second = materialize_repo(config, instance, "payments")
    chunks = asset_metadata(second, "code_chunks")
    assert chunks["files_chunked"] == 1
    assert chunks["files_reused"] == 3
    embeddings = asset_metadata(second, "chunk_embeddings")
    ts_chunks_after = [
        c
        for c in indexing.read_chunks(DataLayout(config.data_dir).chunks("payments"))
        if c.path == "web/refund.ts"
    ]
    new_texts = {c.embedding_text for c in ts_chunks_after} - {c.embedding_text for c in ts_chunks_before}
    assert embeddings["embedded"] == len(new_texts) >= 1
    assert embeddings["reused"] == chunks["chunks"] - len(new_texts)
    collection = asset_metadata(second, "qdrant_collection")
    assert collection["mode"] == "incremental"
    assert collection["changed_files"] == 1
    # Before the switch, only the written file's lines were re-read from git (a full build
    # reads them all); the blocking asset check still audits every point after it.
    assert asset_metadata(first, "qdrant_collection")["files_verified"] == 4
    assert collection["files_verified"] == 1
    assert collection["points"] == chunks["chunks"] == total + len(new_texts)
    assert check_results(second) == dict.fromkeys(ALL_CHECKS, True)

    hit = search_code(project_of(config), "refundDeadlineDays", k=1)[0]
    assert (hit.path, hit.line_start, hit.line_end, hit.commit_sha) == ("web/refund.ts", 5, 7, new_sha)
    # An unchanged file's points are left alone (not rewritten): they cite the commit they
    # were read at, where the file is the very blob it is at the new commit.
    first_sha = asset_metadata(first, "code_chunks")["commit_sha"]
    auth = search_code(project_of(config), "TokenValidator validate", k=1)[0]
    assert auth.path != "web/refund.ts" and auth.commit_sha == first_sha != new_sha
    assert payments.git("rev-parse", f"{first_sha}:{auth.path}") == payments.git(
        "rev-parse", f"{new_sha}:{auth.path}"
    )


def test_rewritten_history_rebuilds_so_no_point_cites_a_dropped_commit(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_repo(config, instance, "payments")
    first_sha = asset_metadata(first, "code_chunks")["commit_sha"]
    # A force push: the indexed commit is amended away, so git may garbage-collect it.
    payments.write({"web/refund.ts": "export const REFUND_WINDOW_DAYS = 30;\n"})
    payments.git("add", "-A")
    payments.git("commit", "--amend", "-m", "Refund window as a constant")
    new_sha = payments.git("rev-parse", "HEAD")

    second = materialize_repo(config, instance, "payments")
    collection = asset_metadata(second, "qdrant_collection")
    assert collection["mode"] == "full"
    store = project_of(config).store
    cited = {payload["commit_sha"] for _, payload in store.scroll(collection_alias("cia", "payments"))}
    assert cited == {new_sha} and first_sha not in cited
    assert check_results(second) == dict.fromkeys(ALL_CHECKS, True)


def test_deleted_file_points_disappear(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    assert any(
        h.path == "payments/ledger.go" for h in search_code(project_of(config), "Ledger Transfer", k=5)
    )
    payments.commit({"payments/ledger.go": None})
    result = materialize_repo(config, instance, "payments")
    collection = asset_metadata(result, "qdrant_collection")
    assert collection["deleted_files"] == 1
    assert collection["mode"] == "incremental"
    store = project_of(config).store
    live = store.resolve_alias(collection_alias("cia", "payments"))
    assert live is not None
    assert all(payload["path"] != "payments/ledger.go" for _, payload in store.scroll(live))
    assert all(
        h.path != "payments/ledger.go" for h in search_code(project_of(config), "Ledger Transfer", k=10)
    )
    assert check_results(result) == dict.fromkeys(ALL_CHECKS, True)


def test_second_run_without_changes_reuses_everything(payments: GitRepo, config: CiaConfig) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    again = materialize_repo(config, instance, "payments")
    assert asset_metadata(again, "chunk_embeddings")["embedded"] == 0
    assert asset_metadata(again, "qdrant_collection")["mode"] == "unchanged"
    rebuilt = materialize_repo(config, instance, "payments", full_rebuild=True)
    assert asset_metadata(rebuilt, "chunk_embeddings")["embedded"] == 0
    assert asset_metadata(rebuilt, "qdrant_collection")["mode"] == "full"
    assert check_results(rebuilt) == dict.fromkeys(ALL_CHECKS, True)


# Sections of 12-14 lines: cut into pieces at `chunking.max_lines: 10`.
PAYMENTS_SETTINGS = "".join(
    f"{section}:\n" + "".join(f"  {section}_setting_{i}: {i}\n" for i in range(12)) + "\n"
    for section in ("service", "refunds", "ledger")
)


def test_a_new_chunking_recuts_the_live_collection(
    payments: GitRepo,
    config: CiaConfig,
    write_config: Callable[..., CiaConfig],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    """`chunking.max_lines` changed (as a new chunker's version does) at the same commit: the
    chunks are recut, and the collection follows them. It kept the old points before, as no
    file had changed, so search cited ranges the chunks no longer had."""
    payments.commit({"deploy/payments.yaml": PAYMENTS_SETTINGS})
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_repo(config, instance, "payments")
    finer = write_config(
        [{"url": payments.url, "web_url": "https://git.example.com/acme/payments"}],
        vector_store=config.vector_store.model_dump(mode="json", exclude_defaults=True),
        chunking={"max_lines": 10},
    )
    second = materialize_repo(finer, instance, "payments")
    assert asset_metadata(second, "code_chunks")["chunks"] > asset_metadata(first, "code_chunks")["chunks"]
    assert asset_metadata(second, "qdrant_collection")["mode"] == "full"
    chunks = indexing.read_chunks(DataLayout(finer.data_dir).chunks("payments"))
    store = project_of(finer).store
    live = store.resolve_alias(collection_alias("cia", "payments"))
    assert live is not None
    points = {(p["path"], p["line_start"], p["line_end"]) for _, p in store.scroll(live)}
    assert points == {(c.path, c.line_start, c.line_end) for c in chunks}
    assert check_results(second) == dict.fromkeys(ALL_CHECKS, True)


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_skipped_files_are_counted(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    repo = make_repo(
        "odd",
        {
            "main.py": "def main():\n    return 'ok'\n",
            "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
            "bundle.min.js": "var a=1;" * 500 + "\n",
            "huge.txt": "x = 1\n" * 20_000,
            "latin1.py": "# caf\xe9\n\ndef cafe():\n    return 1\n".encode("latin-1"),
        },
    )
    config = write_config([{"url": repo.url}], chunking={"max_file_bytes": 64_000})
    result = materialize_repo(config, dg.DagsterInstance.ephemeral(), "odd")
    chunks = asset_metadata(result, "code_chunks")
    skipped = chunks["skipped"]
    assert skipped["binary"] == 1
    assert skipped["too_large"] == 1
    assert skipped["minified"] == 1
    assert chunks["files"] == 2
    hit = search_code(project_of(config), "cafe", k=1)[0]
    assert (hit.path, hit.line_start, hit.line_end) == ("latin1.py", 3, 4)


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_unreachable_remote_fails_partition_and_keeps_snapshot(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    layout = DataLayout(config.data_dir)
    before = layout.snapshot("payments").read_text()
    payments.path.rename(payments.path.with_name("moved-away"))
    result = materialize_repo(config, instance, "payments", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.event_specific_data.user_failure_data.description  # type: ignore[union-attr]
    assert "payments" in description and "could not fetch" in description
    assert "The previous snapshot (" in description and ") is kept." in description
    assert layout.snapshot("payments").read_text() == before
    assert search_code(project_of(config), "check_permission", k=1)[0].path == "payments/auth.py"


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_failure_halfway_through_rebuild_keeps_old_alias(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    store = project_of(config).store
    alias = collection_alias("cia", "payments")
    live_before = store.resolve_alias(alias)
    count_before = store.count(live_before or "")
    layout = DataLayout(config.data_dir)
    chunks = indexing.read_chunks(layout.chunks("payments"))
    meta = indexing.read_chunks_meta(layout.chunks_meta("payments"))
    assert meta is not None and live_before is not None
    embedder = project_of(config).embedder
    with pytest.raises(indexing.IndexingError, match="injected failure"):
        indexing.update_collection(
            store,
            alias=alias,
            chunks=chunks,
            chunk_meta=meta,
            model_id=embedder.model_id,
            dense_size=embedder.dim,
            cache=project_of(config).embedding_cache,
            state_path=layout.index_state("payments"),
            verify=lambda *_: {},
            in_branch_history=lambda _commit: True,
            force_full=True,
            fail_after_points=len(chunks) // 2 or 1,
        )
    assert store.resolve_alias(alias) == live_before
    assert store.count(live_before) == count_before
    assert store.list_collections() == [live_before]  # the half-built one is gone
    assert search_code(project_of(config), "check_permission", k=1)[0].symbol == "check_permission"
    rerun = materialize_repo(config, instance, "payments", full_rebuild=True)
    assert asset_metadata(rerun, "qdrant_collection")["points"] == count_before
    assert store.resolve_alias(alias) != live_before
    assert check_results(rerun) == dict.fromkeys(ALL_CHECKS, True)


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_searches_during_full_rebuilds_never_fail(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    errors: list[BaseException] = []
    empty: list[int] = []
    searches = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                hits = search_code(project_of(config), "check_permission", k=3)
                searches[0] += 1
                if not hits or hits[0].symbol != "check_permission":
                    empty.append(1)
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    rebuilds = 0
    try:
        # Rebuild until enough searches overlapped the swaps: a fixed number of
        # rebuilds saw only 4 searches on a slow CI machine, which proves little.
        while rebuilds < 3 or (searches[0] <= 10 and rebuilds < 30):
            result = materialize_repo(config, instance, "payments", full_rebuild=True)
            assert asset_metadata(result, "qdrant_collection")["mode"] == "full"
            rebuilds += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == [], "".join(traceback.format_exception(errors[0]))
    assert empty == []
    assert searches[0] > 10, f"only {searches[0]} searches ran during {rebuilds} rebuilds"


def test_builds_abandoned_by_a_dead_process_are_dropped(
    payments: GitRepo, config: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    store = project_of(config).store
    alias = collection_alias("cia", "payments")
    abandoned = f"{alias}-20200101000000-abcdef"
    in_progress = versioned_collection_name(alias)
    unrelated = "cia-other-20200101000000-abcdef"
    for name in (abandoned, in_progress, unrelated):
        store.create_collection(name, 384)
    payments.commit({"web/refund.ts": "export const FEE = 1;\n"})
    materialize_repo(config, instance, "payments")
    remaining = set(store.list_collections())
    assert abandoned not in remaining
    assert {in_progress, unrelated} <= remaining
    assert store.resolve_alias(alias) in remaining
