import dagster as dg

from cia_assets.defs.resources import CiaConfigResource
from cia_assets.defs.serving.assets import endpoint_metadata, served_endpoint

# Records made live by a materialization of `served_endpoint` are already on its asset page.
MATERIALIZED_ORIGINS = ("deploy", "rollback")


@dg.sensor(
    name="served_endpoint_sync",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def served_endpoint_sync(context: dg.SensorEvaluationContext, cia: CiaConfigResource) -> dg.SensorResult:
    """Records on `served_endpoint`'s asset page the endpoints made live outside a run: the
    model server `cia ask`, `cia serve` or MCP start on demand, and restarts of one that
    stopped. Without it the page would say "Never materialized" while a model answers.
    The cursor is the last record version reported."""
    from cia_assets.lib.serving.endpoint import endpoint_history

    reported = int(context.cursor) if context.cursor else 0
    history = [record for record in endpoint_history(cia.load()) if record.version > reported]
    events = [
        dg.AssetMaterialization(
            asset_key=served_endpoint.key,
            description=f"made live by {record.origin}" + (f" ({record.note})" if record.note else ""),
            metadata={**endpoint_metadata(record), "previous_version": record.previous_version or 0},
        )
        for record in history
        if record.origin not in MATERIALIZED_ORIGINS
    ]
    return dg.SensorResult(
        asset_events=events,
        cursor=str(max([reported, *(record.version for record in history)])),
    )
