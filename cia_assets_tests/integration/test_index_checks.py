"""The blocking checks fail when the index is wrong: a tampered live collection is caught."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout, collection_alias
from cia_assets.lib.core.project import Project
from cia_assets.lib.core.records import Chunk
from cia_assets.lib.indexing import lexical
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.vectorstore.base import IndexedPoint, SearchHit
from cia_assets_tests.support.materialize import check_results, materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo


def test_tampered_collection_fails_count_and_lines_checks(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    repo = make_repo("payments", dict(SAMPLE_FILES))
    # The server backend (qdrant-client's in-memory engine) lets the test write into the
    # live collection, as a stray process could on a real server.
    config = write_config([{"url": repo.url}], vector_store={"backend": "server", "url": ":memory:"})
    instance = dg.DagsterInstance.ephemeral()
    assert all(check_results(materialize_repo(config, instance, "payments")).values())

    store = project_of(config).store
    live = store.resolve_alias(collection_alias("cia", "payments"))
    assert live is not None
    chunk = indexing.read_chunks(DataLayout(config.data_dir).chunks("payments"))[0]
    bogus = indexing.point_payload(chunk) | {"line_start": 40, "line_end": 60, "chunk_id": "x"}
    store.upsert(
        live,
        [
            IndexedPoint(
                id="00000000-0000-0000-0000-000000000001",
                dense=[0.1] * 384,
                sparse=lexical.encode_document("bogus"),
                payload=bogus,
            )
        ],
    )
    rerun = materialize_repo(config, instance, "payments", raise_on_error=False)
    results = check_results(rerun)
    assert results["points_match_chunks"] is False
    assert results["lines_exist_at_snapshot"] is False
    assert results["smoke_search_finds_symbol"] is True
    failures = {e.check_name: e.description for e in rerun.get_asset_check_evaluations() if not e.passed}
    assert "expected" in (failures["points_match_chunks"] or "")
    assert f"{chunk.path}#L40-L60" in (failures["lines_exist_at_snapshot"] or "")


def test_smoke_search_names_what_ranked_first() -> None:
    chunks = [
        Chunk(
            repo_id="r",
            path=f"m{i}.py",
            line_start=1,
            line_end=2,
            language="python",
            kind="function",
            symbol=name,
            commit_sha="0" * 40,
            content_hash="h",
            text=f"def {name}(): ...",
        )
        for i, name in enumerate(["reconcile_ledger_entries", "run"])
    ]
    assert indexing.pick_smoke_chunk(chunks) is chunks[0]
    wrong = [SearchHit(id="1", score=1.0, payload={"path": "m1.py", "symbol": "run"})]
    with pytest.raises(indexing.VerificationError, match=r"ranked m1\.py:run first, expected m0\.py"):
        indexing.verify_smoke_search(lambda _: wrong, chunks)
    with pytest.raises(indexing.VerificationError, match="returned nothing"):
        indexing.verify_smoke_search(lambda _: [], chunks)
    right = [SearchHit(id="0", score=1.0, payload={"path": "m0.py", "symbol": "reconcile_ledger_entries"})]
    assert indexing.verify_smoke_search(lambda _: right, chunks)["smoke_symbol"] == "reconcile_ledger_entries"
