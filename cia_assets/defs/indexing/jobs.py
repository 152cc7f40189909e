import dagster as dg

from cia_assets.defs.repos.partitions import repos_partitions

# The whole indexing chain for one repo in one run: what `cia index` and the UI's
# "Materialize all" launch.
index_repo_job = dg.define_asset_job(
    name="index_repo",
    selection=dg.AssetSelection.groups("repos", "indexing"),
    partitions_def=repos_partitions,
    description="Snapshot, chunk, embed and index one repository (one partition per repo).",
)


@dg.definitions
def indexing_jobs_and_automation() -> dg.Definitions:
    # Evaluates the assets' automation conditions, running from the start so a fresh
    # install follows repo changes without a click in the UI.
    return dg.Definitions(
        jobs=[index_repo_job],
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "indexing_automation",
                target=dg.AssetSelection.groups("indexing"),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
            )
        ],
    )
