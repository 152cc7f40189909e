"""Materializing the indexing graph of one repo in process, and reading what the run reported."""

from __future__ import annotations

import dagster as dg

from cia_assets.config import CiaConfig


def indexing_assets() -> list[object]:
    from cia_assets.defs.indexing import assets as indexing_assets_module
    from cia_assets.defs.indexing import checks
    from cia_assets.defs.repos.assets import git_repo_snapshots

    return [
        git_repo_snapshots,
        indexing_assets_module.code_chunks,
        indexing_assets_module.chunk_embeddings,
        indexing_assets_module.qdrant_collection,
        checks.points_match_chunks,
        checks.lines_exist_at_snapshot,
        checks.smoke_search_finds_symbol,
    ]


def materialize_repo(
    config: CiaConfig,
    instance: dg.DagsterInstance,
    repo_id: str,
    *,
    full_rebuild: bool = False,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    from cia_assets.defs.repos.partitions import repos_partitions
    from cia_assets.defs.resources import build_resources

    if repo_id not in instance.get_dynamic_partitions(repos_partitions.name):
        instance.add_dynamic_partitions(repos_partitions.name, [repo_id])
    run_config = {"ops": {"qdrant_collection": {"config": {"full_rebuild": full_rebuild}}}}
    return dg.materialize(
        indexing_assets(),  # type: ignore[arg-type]
        instance=instance,
        resources=build_resources(str(config.config_path)),
        partition_key=repo_id,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def asset_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        if materialization.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
