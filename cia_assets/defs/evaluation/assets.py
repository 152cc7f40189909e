"""Evaluation of retrieval and of each model's answers on the held-out split, and the
promotion verdict that gates `served_endpoint`."""

import dagster as dg

from cia_assets.defs.datasets.assets import training_dataset
from cia_assets.defs.indexing.assets import qdrant_collection
from cia_assets.defs.owners import OWNERS
from cia_assets.defs.resources import CiaConfigResource, EmbedderResource, MlflowResource, VectorStoreResource
from cia_assets.defs.training.assets import lora_adapter
from cia_assets.lib.core import artifacts
from cia_assets.lib.serving.endpoint import EndpointSpec

EVAL_CODE_VERSION = "2"


@dg.asset(
    deps=[lora_adapter, training_dataset],
    group_name="evaluation",
    kinds={"ragas", "mlflow", "python"},
    owners=OWNERS,
    code_version=EVAL_CODE_VERSION,
)
def rag_eval_results(
    context: dg.AssetExecutionContext,
    cia: CiaConfigResource,
    mlflow: MlflowResource,
    embedder: EmbedderResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """Retrieval and answer quality on the eval split (files never trained on), per model.

    Retrieval: Recall@1/5/10 and MRR of each question's source file and source chunk. Answers,
    through the same answering path users get, from the teacher (when it is its own endpoint),
    the base model, the champion adapter and the challenger: citation validity, share citing
    the source file (cite-hit), reference-identifier recall, grounded rate, and ragas
    faithfulness, answer relevancy, context precision and recall from the judge endpoint
    (`evaluation.judge`). With `evaluation.question_sets`, every model also answers those fixed
    questions, scored as `cia eval-answers` scores them (`set_cite_hit`, `set_abstention`, ...).
    The figures go to this asset's metadata (the UI plots them across
    runs) and to the challenger's MLflow run; the promotion verdict (challenger no worse than
    the champion, or the base model, on citation validity, cite-hit, identifier recall,
    grounded rate, faithfulness and the fixed set's figures and abstention within `promotion`
    thresholds) is checked by a blocking check.
    """
    from cia_assets.lib.evaluation.answers.sets import AnswerEvalError
    from cia_assets.lib.evaluation.heldout_run import (
        Contenders,
        HeldoutRunError,
        load_eval_cases,
        load_question_set,
        run_heldout_evaluation,
    )
    from cia_assets.lib.learning.registry import CHALLENGER, CHAMPION
    from cia_assets.lib.retrieval.search import search_code

    config = cia.load()
    layout = cia.layout()
    try:
        dataset = artifacts.require_current(layout.training_datasets, "training_dataset")
    except FileNotFoundError as error:
        raise dg.Failure(description=str(error)) from error
    cases = load_eval_cases(dataset, config.evaluation.max_questions)
    if not cases:
        raise dg.Failure(description=f"training set {dataset.version} has no eval examples")
    try:
        question_set = load_question_set(config)
    except AnswerEvalError as error:
        raise dg.Failure(description=f"evaluation.question_sets: {error}") from error
    if config.evaluation.question_sets and not question_set.cases:
        raise dg.Failure(
            description="evaluation.question_sets: no question is about a configured codebase ("
            + "; ".join(question_set.skipped[:5])
            + ")"
        )
    top_k = config.evaluation.top_k

    registry = mlflow.registry()
    challenger = registry.by_alias(CHALLENGER)
    champion = registry.by_alias(CHAMPION)
    base = EndpointSpec.from_config(config).with_adapter(None, None)
    project = vector_store.project()  # the run's store and model, closed when the run ends
    try:
        evaluation = run_heldout_evaluation(
            config,
            cases,
            search=lambda case: search_code(project, case.question, repos=[case.repo], k=max(10, top_k)),
            contenders=Contenders.of(base, champion=champion, challenger=challenger),
            question_set=question_set,
            embedder=embedder.model,
            log=context.log.info,
        )
    except HeldoutRunError as error:
        raise dg.Failure(description=str(error)) from error
    verdict = evaluation.verdict
    version, report = evaluation.publish(layout.evaluation, dataset.version)
    if challenger is not None:
        registry.log_evaluation(challenger.run_id, evaluation.challenger_metrics(), report)
        registry.tag(challenger.version, "evaluation", "passed" if verdict.passed else "failed")

    metadata: dict[str, dg.RawMetadataValue] = {
        "questions": len(cases),
        "dataset_version": dataset.version,
        "report": dg.MetadataValue.path(str(report)),
        "models": dg.MetadataValue.md(evaluation.markdown_table()),
        "verdict": "passed" if verdict.passed else "failed",
        "verdict_reasons": dg.MetadataValue.json(list(verdict.reasons)),
        "answer_quality": (
            "ragas with the configured judge" if evaluation.judged else "not scored: no judge configured"
        ),
        "question_set": len(question_set.cases),
        "question_set_skipped": dg.MetadataValue.json(list(question_set.skipped)),
        "challenger_version": challenger.version if challenger else "none",
        "champion_version": champion.version if champion else "none",
    }
    for key, value in evaluation.figures().items():
        metadata[key] = dg.MetadataValue.float(value)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


@dg.asset(
    deps=[qdrant_collection],
    group_name="evaluation",
    kinds={"python", "qdrant", "mlflow"},
    owners=OWNERS,
    code_version="1",
)
def retrieval_history_benchmark(
    context: dg.AssetExecutionContext, cia: CiaConfigResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Retrieval measured on each indexed repo's own history: a descriptive commit's message is
    the question, the 1-3 non-test files it changed are the answer, searched in the index as it
    was at the commit's parent (in a separate data dir and collection prefix, so the live index
    is untouched). Scored beside whole-file BM25 on the same files: file Acc@1/5/10 and MRR per
    repo, in this asset's metadata (plotted across runs) and as an MLflow run."""
    from cia_assets.lib.evaluation.history_benchmark import run_history_benchmark

    benchmark = run_history_benchmark(cia.load(), progress=context.log.debug)
    if benchmark.report is None or benchmark.report_path is None:
        return dg.MaterializeResult(metadata={"cases": 0, "note": benchmark.note})
    metadata: dict[str, dg.RawMetadataValue] = {
        "cases": benchmark.cases,
        "skipped": len(benchmark.report.skipped),
    }
    metrics: dict[str, float | None] = {}
    for retriever, repo, measure, value in benchmark.scores():
        metadata[f"{retriever}/{repo}/{measure}"] = dg.MetadataValue.float(float(value))
        metrics[f"history_{retriever}_{repo}_{measure}"] = value
    run_id = mlflow.registry().log_benchmark("retrieval-history", metrics, benchmark.report_path)
    metadata["mlflow_run_id"] = run_id
    metadata["report"] = dg.MetadataValue.path(str(benchmark.report_path))
    return dg.MaterializeResult(metadata=metadata)
