"""The retrieval adapter: the embedding model fine-tuned on the indexed repos' own history,
with the blocking check that keeps it out of the index unless the history benchmark says it
retrieves better than the model in use, and its promotion, after which every repo's chunks are
embedded again with it (`chunk_embeddings` follows `retrieval_embedding_model`)."""

from datetime import UTC, datetime

import dagster as dg

from cia_assets.defs.owners import OWNERS
from cia_assets.defs.repos.assets import git_repo_snapshots
from cia_assets.defs.resources import CiaConfigResource, KubernetesResource


@dg.asset(
    deps=[git_repo_snapshots],
    group_name="training",
    kinds={"pytorch", "sentence-transformers", "kubernetes"},
    owners=OWNERS,
    code_version="2",
    # Training takes turns with the LoRA adapter's: on the GPU node, or on the CPUs it shares.
    pool="gpu",
)
def retrieval_adapter(
    context: dg.AssetExecutionContext, cia: CiaConfigResource, kubernetes: KubernetesResource
) -> dg.MaterializeResult:
    """all-MiniLM-L6-v2 fine-tuned on each repo's descriptive commit messages paired with the
    chunks they changed (hard negatives from other files), in process on CPU or, with
    `training.retrieval_adapter_backend: gpu`, in the trainer pod on the GPU node (dagster-k8s
    Pipes); then measured on the history benchmark's cases (each repo's newest commits, never
    trained on) against the model the index uses now, both indexing those commits in their own
    data dirs. The verdict is the blocking check `retrieval_adapter_beats_current_model`."""
    from cia_assets.defs.training.gpu import GpuTrainingError, fit_retrieval_adapter_on_gpu
    from cia_assets.lib.learning.retrieval_adapter import RetrievalAdapterError
    from cia_assets.lib.learning.retrieval_adapter_run import train_and_evaluate

    config = cia.load()
    on_gpu = config.training.retrieval_adapter_backend == "gpu"
    fit = fit_retrieval_adapter_on_gpu(context, config, kubernetes) if on_gpu else None
    try:
        run = train_and_evaluate(config, fit=fit, progress=context.log.info)
    except (RetrievalAdapterError, GpuTrainingError) as error:
        raise dg.Failure(description=str(error)) from error
    verdict = run.verdict
    metadata: dict[str, dg.RawMetadataValue] = {
        "model_id": run.model_id,
        "model_dir": dg.MetadataValue.path(str(run.model_dir)),
        "triples": dg.MetadataValue.json(run.triples),
        "trained_on": run.trained_on,
        "training_s": dg.MetadataValue.float(run.training_s),
        "device": run.device,
        "loss_curve": dg.MetadataValue.json([{"step": s, "loss": round(v, 4)} for s, v in run.losses]),
        "history_cases": verdict.cases,
        "current_model": verdict.current_model,
        "better": verdict.better,
    }
    for model, scores in (("current", verdict.current), ("adapter", verdict.adapter)):
        for measure, value in scores.items():
            metadata[f"{model}/{measure}"] = dg.MetadataValue.float(float(value))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(run.model_id))


@dg.asset_check(asset=retrieval_adapter, blocking=True)
def retrieval_adapter_beats_current_model(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Passes when the adapter's history-benchmark MRR is higher than the current model's and
    its Acc@5 no lower; `retrieval_embedding_model` never promotes an adapter that fails."""
    from cia_assets.lib.learning.retrieval_adapter_run import candidate_verdict, read_candidate

    candidate = read_candidate(cia.load())
    if candidate is None:
        return dg.AssetCheckResult(passed=False, description="no retrieval adapter has been trained")
    verdict = candidate_verdict(candidate)
    return dg.AssetCheckResult(
        passed=verdict.better,
        description=verdict.describe(),
        metadata={
            "current_model": verdict.current_model,
            "current": dg.MetadataValue.json(verdict.current),
            "adapter": dg.MetadataValue.json(verdict.adapter),
        },
    )


class RetrievalEmbeddingModelConfig(dg.Config):
    rollback: bool = False
    """Go back to cia.yaml's embedding model; every repo is embedded again with it."""


@dg.asset(
    deps=[retrieval_adapter],
    group_name="training",
    kinds={"sentence-transformers"},
    owners=OWNERS,
    code_version="1",
)
def retrieval_embedding_model(
    context: dg.AssetExecutionContext, config: RetrievalEmbeddingModelConfig, cia: CiaConfigResource
) -> dg.MaterializeResult:
    """The embedding model the index uses: the retrieval adapter once its blocking check passed
    (a failed check stops the run before this step), else cia.yaml's model. A new version
    re-embeds every repo: `chunk_embeddings` and `qdrant_collection` follow it, each repo
    rebuilt blue-green, and questions are embedded with whatever model each repo's live
    collection was built with meanwhile. `{"rollback": true}` goes back to cia.yaml's model."""
    from cia_assets.lib.indexing.embedding_models import active_model
    from cia_assets.lib.learning.retrieval_adapter_run import (
        PromotionRefused,
        promote_candidate,
        roll_back_promotion,
    )

    project = cia.load()
    now = datetime.now(UTC).isoformat()
    if config.rollback:
        previous = roll_back_promotion(project, at=now)
        model = active_model(project)
        rolled_back_from = previous.model_id if previous else "none"
        context.log.info(f"rolled back from {rolled_back_from} to {model.model_id}")
        return dg.MaterializeResult(
            metadata={"model_id": model.model_id, "rolled_back_from": rolled_back_from},
            data_version=dg.DataVersion(model.model_id),
        )
    try:
        promoted = promote_candidate(project, at=now)
    except PromotionRefused as error:
        raise dg.Failure(description=str(error)) from error
    return dg.MaterializeResult(
        metadata={
            "model_id": promoted.model_id,
            "model_dir": dg.MetadataValue.path(str(promoted.model_dir)),
            "verdict": dg.MetadataValue.json(promoted.verdict),
        },
        data_version=dg.DataVersion(promoted.model_id),
    )


# Run from the UI or `dagster job launch`: a CPU fine-tune plus two indexings of the history
# cases takes minutes to an hour, and the history it learns from changes slowly. A passed
# adapter is promoted in the same run; the re-embedding follows on its own.
# Not named like an asset: a job and an asset's op may not share a name in one code location.
retrieval_adapter_job = dg.define_asset_job(
    "train_retrieval_adapter",
    selection=dg.AssetSelection.assets(retrieval_adapter, retrieval_embedding_model),
    description="Fine-tune the embedding model on the repos' history, judge it on newer commits, "
    "and promote it when it retrieves better.",
)
