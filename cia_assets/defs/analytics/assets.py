"""Analytics over traces and feedback: a snapshot of the trace store, then the dbt models
(staging, golden examples, failed questions, weekly topics and drift); dbt's tests are shown
as asset checks on the models."""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, dbt_assets

from cia_assets.defs.analytics.project import analytics_project
from cia_assets.defs.owners import OWNERS
from cia_assets.defs.resources import AnalyticsDbtResource, CiaConfigResource
from cia_assets.lib.observability.analytics import TRACES_SNAPSHOT

if not analytics_project.manifest_path.exists():
    raise FileNotFoundError(
        f"the dbt manifest {analytics_project.manifest_path} is missing: run `make install` (or "
        "`dagster-dbt project prepare-and-package --file cia_assets/defs/analytics/project.py`)"
    )


SNAPSHOT_TABLES = ("traces", "feedback")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key=["trace_store", table],
            group_name="analytics",
            kinds={"duckdb"},
            owners=OWNERS,
            code_version="1",
            description=f"The `{table}` table of a consistent copy of the trace store (every answer "
            "and feedback vote), for the dbt models: dbt keeps its source open for the whole run, "
            "which would block the chat app's writes to the live file.",
        )
        for table in SNAPSHOT_TABLES
    ],
    name="trace_store_snapshot",
)
def trace_store_snapshot(
    context: dg.AssetExecutionContext, cia: CiaConfigResource
) -> Iterator[dg.MaterializeResult]:
    from cia_assets.lib.observability.traces import TraceStore

    layout = cia.layout()
    store = TraceStore(layout.traces)
    stats = store.stats()
    target = store.snapshot(layout.analytics / TRACES_SNAPSHOT)
    context.log.info(f"snapshot of {layout.traces} at {target}: {stats}")
    for table in SNAPSHOT_TABLES:
        yield dg.MaterializeResult(
            asset_key=["trace_store", table],
            metadata={"rows": stats[table], "path": dg.MetadataValue.path(str(target))},
        )


class _Translator(DagsterDbtTranslator):
    """dbt's sources are the snapshot's tables; every model is in the analytics group."""

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("source."):
            table = manifest["sources"][unique_id]["name"]
            return spec.replace_attributes(key=dg.AssetKey(["trace_store", table]))
        return spec.replace_attributes(group_name="analytics", owners=OWNERS)


@dbt_assets(
    manifest=analytics_project.manifest_path,
    project=analytics_project,
    dagster_dbt_translator=_Translator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    name="analytics_models",
)
def analytics_models(context: dg.AssetExecutionContext, dbt: AnalyticsDbtResource) -> Iterator[Any]:
    """`dbt build`: seeds, models and their tests, over the latest trace snapshot."""
    yield from dbt.cli().cli(["build"], context=context, target_path=dbt.run_folder(context)).stream()
