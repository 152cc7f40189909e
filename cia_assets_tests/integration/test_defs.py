from __future__ import annotations

import json

import dagster as dg

from cia_assets.definitions import defs

EXPECTED_ASSETS = {
    "git_repo_snapshots",
    "code_chunks",
    "chunk_embeddings",
    "qdrant_collection",
    "served_endpoint",
    "synthetic_qa_dataset",
    "training_dataset",
    "lora_adapter",
    "rag_eval_results",
    "retrieval_history_benchmark",
    "retrieval_adapter",
    "retrieval_embedding_model",
}
EXPECTED_CHECKS = {
    "points_match_chunks",
    "lines_exist_at_snapshot",
    "smoke_search_finds_symbol",
    "answers_smoke_question_with_citation",
    "synthetic_pairs_match_schema",
    "synthetic_dataset_not_empty",
    "synthetic_dataset_has_no_secrets",
    "challenger_no_worse_than_champion",
    "retrieval_adapter_beats_current_model",
}
PER_REPO_ASSETS = {"git_repo_snapshots", "code_chunks", "chunk_embeddings", "qdrant_collection"}
GATED_ASSET = {
    "points_match_chunks": "qdrant_collection",
    "lines_exist_at_snapshot": "qdrant_collection",
    "smoke_search_finds_symbol": "qdrant_collection",
    "answers_smoke_question_with_citation": "served_endpoint",
    "synthetic_pairs_match_schema": "synthetic_qa_dataset",
    "synthetic_dataset_not_empty": "synthetic_qa_dataset",
    "synthetic_dataset_has_no_secrets": "synthetic_qa_dataset",
    "challenger_no_worse_than_champion": "rag_eval_results",
    "retrieval_adapter_beats_current_model": "retrieval_adapter",
}
GROUPS = {"repos", "indexing", "datasets", "analytics", "training", "evaluation", "serving"}


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
    loop = definitions.resolve_job_def("learning_loop")
    loop_keys = {key.to_user_string() for key in loop.asset_layer.executable_asset_keys}
    assert not loop_keys & {"retrieval_adapter", "retrieval_embedding_model"}
    adapter_job = definitions.resolve_job_def("train_retrieval_adapter")
    assert {key.to_user_string() for key in adapter_job.asset_layer.executable_asset_keys} == {
        "retrieval_adapter",
        "retrieval_embedding_model",
    }
    # What the code server does when `cia dev` loads the location: every job, op and graph
    # built once, so two definitions of one name fail here and not in the UI.
    definitions.get_repository_def().load_all_definitions()
    # Only the synthetic job's pods may reach the teacher endpoint (the NetworkPolicy's label).
    refresh = definitions.resolve_job_def("synthetic_refresh")
    labels = json.loads(refresh.tags["dagster-k8s/config"])["pod_template_spec_metadata"]["labels"]
    assert labels == {"cia.example.com/teacher-egress": "true"}
    assert definitions.resolve_sensor_def("feedback_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    schedule = definitions.resolve_schedule_def("weekly_synthetic_refresh")
    assert (
        schedule.cron_schedule == "0 3 * * 1" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    )


def test_lineage_runs_repo_to_collection() -> None:
    graph = load().resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["code_chunks"] == {"git_repo_snapshots"}
    assert parents["chunk_embeddings"] == {"code_chunks", "retrieval_embedding_model"}
    assert parents["qdrant_collection"] == {"chunk_embeddings"}
    assert parents["synthetic_qa_dataset"] == {"code_chunks"}
    assert parents["training_dataset"] >= {"synthetic_qa_dataset", "golden_examples"}
    assert parents["lora_adapter"] == {"training_dataset"}
    assert parents["rag_eval_results"] == {"lora_adapter", "training_dataset"}
    assert parents["served_endpoint"] == {"rag_eval_results"}
    assert parents["retrieval_history_benchmark"] == {"qdrant_collection"}
    assert parents["retrieval_adapter"] == {"git_repo_snapshots"}


def test_gpu_work_takes_turns_in_the_gpu_pool() -> None:
    graph = load().resolve_asset_graph()
    assert graph.get(dg.AssetKey("lora_adapter")).pools == {"gpu"}


def test_every_asset_is_documented_and_owned() -> None:
    graph = load().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.group_name in GROUPS, name
        assert node.kinds, name
        assert node.owners, name
        assert node.description and len(node.description) > 40, name
        if name in PER_REPO_ASSETS:
            assert node.partitions_def is not None and node.partitions_def.name == "repos", name  # type: ignore[attr-defined]


def test_blocking_checks_gate_the_collection() -> None:
    graph = load().resolve_asset_graph()
    for check_key in graph.asset_check_keys:
        check = graph.get_check_spec(check_key)
        if check_key.name not in GATED_ASSET:
            # dbt's own tests, shown as checks on the analytics models.
            assert graph.get(check.asset_key).group_name == "analytics", check_key
            continue
        assert check.blocking, check_key
        assert check.asset_key.to_user_string() == GATED_ASSET[check_key.name]
