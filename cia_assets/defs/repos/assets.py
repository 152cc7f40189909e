import dagster as dg

from cia_assets.defs.owners import OWNERS
from cia_assets.defs.repos.partitions import repos_partitions
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.lib.sources.git_sync import (
    GitAuth,
    GitSyncError,
    RepoMirror,
    read_snapshot,
    snapshot_at,
    write_snapshot,
)


@dg.asset(
    partitions_def=repos_partitions,
    group_name="repos",
    kinds={"git"},
    owners=OWNERS,
    code_version="1",
)
def git_repo_snapshots(context: dg.AssetExecutionContext, cia: CiaConfigResource) -> dg.MaterializeResult:
    """A local mirror of the repository's configured branch, pinned to one commit.

    Clones on first run, fetches afterwards. If the remote cannot be reached the partition
    fails with git's message and the previous snapshot stays in place, so everything
    downstream keeps serving the last good commit.
    """
    config = cia.load()
    layout = cia.layout()
    repo_id = context.partition_key
    try:
        codebase = config.codebase(repo_id)
    except KeyError as error:
        raise dg.Failure(description=str(error.args[0])) from None
    clone_url = config.clone_url(codebase)
    try:
        mirror = RepoMirror(layout.mirror(repo_id), clone_url, codebase.branch, auth=GitAuth.of(codebase))
        try:
            snapshot = snapshot_at(mirror, mirror.sync(), codebase, clone_url)
        finally:
            mirror.close()
    except GitSyncError as error:
        previous = read_snapshot(layout.snapshot(repo_id))
        kept = (
            f"The previous snapshot ({previous.commit_sha[:12]}) is kept."
            if previous is not None
            else "Nothing was indexed for it yet."
        )
        raise dg.Failure(description=f"{repo_id}: {error}. {kept}") from error
    write_snapshot(layout.snapshot(repo_id), snapshot)
    return dg.MaterializeResult(
        metadata={
            "commit_sha": snapshot.commit_sha,
            "branch": snapshot.branch,
            "clone_url": snapshot.clone_url,
            "file_count": snapshot.file_count,
            **({"web_url": dg.MetadataValue.url(snapshot.web_url)} if snapshot.web_url else {}),
        },
        data_version=dg.DataVersion(snapshot.commit_sha),
    )
