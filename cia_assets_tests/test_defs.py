from __future__ import annotations

import dagster as dg

from cia_assets.definitions import defs

EXPECTED_ASSETS = {
    "git_repo_snapshots",
    "code_chunks",
    "chunk_embeddings",
    "qdrant_collection",
    "served_endpoint",
}
EXPECTED_CHECKS = {
    "points_match_chunks",
    "lines_exist_at_snapshot",
    "smoke_search_finds_symbol",
    "answers_smoke_question_with_citation",
}
PER_REPO_ASSETS = {"git_repo_snapshots", "code_chunks", "chunk_embeddings", "qdrant_collection"}
GATED_ASSET = {
    "points_match_chunks": "qdrant_collection",
    "lines_exist_at_snapshot": "qdrant_collection",
    "smoke_search_finds_symbol": "qdrant_collection",
    "answers_smoke_question_with_citation": "served_endpoint",
}


def load() -> dg.Definitions:
    return defs()


def test_definitions_load_with_expected_graph() -> None:
    definitions = load()
    graph = definitions.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys >= EXPECTED_ASSETS
    checks = {key.name for key in graph.asset_check_keys}
    assert checks >= EXPECTED_CHECKS
    assert (
        definitions.resolve_sensor_def("repo_change_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    )
    assert (
        definitions.resolve_sensor_def("indexing_automation").default_status == dg.DefaultSensorStatus.RUNNING
    )
    assert definitions.resolve_job_def("index_repo") is not None


def test_lineage_runs_repo_to_collection() -> None:
    graph = load().resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["code_chunks"] == {"git_repo_snapshots"}
    assert parents["chunk_embeddings"] == {"code_chunks"}
    assert parents["qdrant_collection"] == {"chunk_embeddings"}


def test_every_asset_is_documented_and_owned() -> None:
    graph = load().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.group_name in {"repos", "indexing", "serving"}, name
        assert node.kinds, name
        assert node.owners, name
        assert node.description and len(node.description) > 40, name
        if name in PER_REPO_ASSETS:
            assert node.partitions_def is not None and node.partitions_def.name == "repos", name  # type: ignore[attr-defined]


def test_blocking_checks_gate_the_collection() -> None:
    graph = load().resolve_asset_graph()
    for check_key in graph.asset_check_keys:
        check = graph.get_check_spec(check_key)
        assert check.blocking, check_key
        assert check.asset_key.to_user_string() == GATED_ASSET[check_key.name]
