import json

import dagster as dg

from cia_assets.defs.repos.assets import git_repo_snapshots
from cia_assets.defs.repos.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.lib.sources.git_sync import GitAuth, GitSyncError, remote_head


@dg.sensor(
    name="repo_change_sensor",
    target=[git_repo_snapshots],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def repo_change_sensor(context: dg.SensorEvaluationContext, cia: CiaConfigResource) -> dg.SensorResult:
    """Polls each configured repo with `git ls-remote` (no fetch). A repo new to cia.yaml
    becomes a partition; a commit that is neither the last one this sensor saw nor the one
    already snapshotted (by `cia index` or a run from the UI) requests a snapshot run keyed
    by its sha. Downstream assets follow through their automation conditions. An unreachable
    repo is logged and retried next tick."""
    config = cia.load()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))
    new_partitions = [repo_id for repo_id in config.repo_ids if repo_id not in known]
    run_requests: list[dg.RunRequest] = []
    for codebase in config.codebases:
        repo_id = codebase.repo_id
        try:
            sha = remote_head(config.clone_url(codebase), codebase.branch, auth=GitAuth.of(codebase))
        except GitSyncError as error:
            context.log.warning(f"{repo_id}: skipped this tick: {error}")
            continue
        # The cursor alone would start empty after `make run`'s `cia index` and re-snapshot
        # (and so re-chunk, re-embed and re-publish) the commit that was just indexed.
        if sha not in (seen.get(repo_id), snapshotted_sha(context.instance, repo_id)):
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{repo_id}@{sha}",
                    partition_key=repo_id,
                    tags={"cia/commit_sha": sha},
                )
            )
        seen[repo_id] = sha
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [repos_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=json.dumps(seen, sort_keys=True),
    )


def snapshotted_sha(instance: dg.DagsterInstance, repo_id: str) -> str | None:
    """The commit of the repo's latest `git_repo_snapshots` materialization, if any (none
    for a partition that does not exist yet)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=git_repo_snapshots.key, asset_partitions=[repo_id]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    commit = records[0].asset_materialization.metadata.get("commit_sha")
    return str(commit.value) if commit is not None else None
