"""The retrieval adapter: the embedding model fine-tuned on the indexed repos' own history,
with the blocking check that keeps it out of the index unless the history benchmark says it
retrieves better than the packaged model."""

import dagster as dg

from cia_assets.defs.owners import OWNERS
from cia_assets.defs.repos.assets import git_repo_snapshots
from cia_assets.defs.resources import CiaConfigResource


@dg.asset(
    deps=[git_repo_snapshots],
    group_name="training",
    kinds={"pytorch", "sentence-transformers"},
    owners=OWNERS,
    code_version="1",
)
def retrieval_adapter(context: dg.AssetExecutionContext, cia: CiaConfigResource) -> dg.MaterializeResult:
    """all-MiniLM-L6-v2 fine-tuned on each repo's descriptive commit messages paired with the
    chunks they changed (hard negatives from other files), on CPU, then measured on the
    history benchmark's cases (each repo's newest commits, never trained on) against the
    packaged model, both indexing those commits in their own data dirs. The verdict is the
    blocking check `retrieval_adapter_beats_packaged_model`."""
    from cia_assets.lib.learning.retrieval_adapter import RetrievalAdapterError
    from cia_assets.lib.learning.retrieval_adapter_run import train_and_evaluate

    try:
        run = train_and_evaluate(cia.load(), progress=context.log.info)
    except RetrievalAdapterError as error:
        raise dg.Failure(description=str(error)) from error
    verdict = run.verdict
    metadata: dict[str, dg.RawMetadataValue] = {
        "model_id": run.model_id,
        "model_dir": dg.MetadataValue.path(str(run.model_dir)),
        "triples": dg.MetadataValue.json(run.triples),
        "trained_on": run.trained_on,
        "training_s": dg.MetadataValue.float(run.training_s),
        "history_cases": verdict.cases,
        "better": verdict.better,
    }
    for model, scores in (("packaged", verdict.packaged), ("adapter", verdict.adapter)):
        for measure, value in scores.items():
            metadata[f"{model}/{measure}"] = dg.MetadataValue.float(float(value))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(run.model_id))


@dg.asset_check(asset=retrieval_adapter, blocking=True)
def retrieval_adapter_beats_packaged_model(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Passes when the adapter's history-benchmark MRR is higher than the packaged model's and
    its Acc@5 no lower; nothing downstream re-embeds a collection with an adapter that fails."""
    from cia_assets.lib.learning.retrieval_adapter_run import AdapterVerdict, read_candidate

    candidate = read_candidate(cia.load())
    if candidate is None:
        return dg.AssetCheckResult(passed=False, description="no retrieval adapter has been trained")
    verdict = AdapterVerdict(**candidate["verdict"])  # type: ignore[arg-type]
    return dg.AssetCheckResult(
        passed=verdict.better,
        description=verdict.describe(),
        metadata={
            "packaged": dg.MetadataValue.json(verdict.packaged),
            "adapter": dg.MetadataValue.json(verdict.adapter),
        },
    )


# Run from the UI or `dagster job launch`: a CPU fine-tune plus two indexings of the history
# cases takes minutes to an hour, and the history it learns from changes slowly.
# Not named like the asset: a job and an asset's op may not share a name in one code location.
retrieval_adapter_job = dg.define_asset_job(
    "train_retrieval_adapter",
    selection=dg.AssetSelection.assets(retrieval_adapter),
    description="Fine-tune the embedding model on the repos' history and judge it on newer commits.",
)
