"""Evaluation of retrieval and of each model's answers on the held-out split, and the
promotion verdict that gates `served_endpoint`."""

import json
from collections.abc import Sequence

import dagster as dg

from cia_assets.config import CiaConfig
from cia_assets.defs.datasets.assets import training_dataset
from cia_assets.defs.indexing.assets import qdrant_collection
from cia_assets.defs.repos.partitions import OWNERS
from cia_assets.defs.resources import CiaConfigResource, EmbedderResource, MlflowResource
from cia_assets.defs.training.assets import lora_adapter
from cia_assets.lib.core import artifacts
from cia_assets.lib.evaluation.heldout import EvalCase, ModelResult
from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

EVAL_CODE_VERSION = "1"
GATED_METRICS = ("citation_validity", "faithfulness")


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
) -> dg.MaterializeResult:
    """Retrieval and answer quality on the eval split (files never trained on), per model.

    Retrieval: Recall@1/5/10 and MRR of each question's source file and source chunk. Answers,
    through the same answering path users get, from the teacher (when it is its own endpoint),
    the base model, the champion adapter and the challenger: citation validity, share citing
    the source file, and ragas faithfulness, answer relevancy, context precision and recall
    from the judge endpoint (`evaluation.judge`). The figures go to this asset's metadata (the
    UI plots them across runs) and to the challenger's MLflow run; the promotion verdict
    (challenger no worse than the champion, or the base model, on citation validity and
    faithfulness within `promotion` thresholds) is checked by a blocking check.
    """
    from cia_assets.lib.evaluation.heldout import promotion_verdict, retrieval_metrics
    from cia_assets.lib.learning.registry import CHALLENGER, CHAMPION, spec_for_adapter
    from cia_assets.lib.retrieval.search import search_code

    config = cia.load()
    layout = cia.layout()
    try:
        dataset = artifacts.require_current(layout.datasets / "training", "training_dataset")
    except FileNotFoundError as error:
        raise dg.Failure(description=str(error)) from error
    rows = artifacts.read_jsonl(dataset.path / "eval.jsonl")
    cases = [EvalCase.from_example(row) for row in rows][: config.evaluation.max_questions]
    if not cases:
        raise dg.Failure(description=f"training set {dataset.version} has no eval examples")
    top_k = config.evaluation.top_k
    retrieval = retrieval_metrics(
        cases, lambda case: search_code(config, case.question, repos=[case.repo], k=max(10, top_k))
    )
    context.log.info(f"retrieval on {len(cases)} questions: {retrieval}")

    registry = mlflow.registry()
    challenger = registry.by_alias(CHALLENGER)
    champion = registry.by_alias(CHAMPION)
    base = EndpointSpec.from_config(config).with_adapter(None, None)
    variants: list[tuple[str, EndpointSpec]] = [("base", base)]
    if champion is not None:
        variants.append((f"champion v{champion.version}", spec_for_adapter(base, champion)))
    if challenger is not None and (champion is None or challenger.version != champion.version):
        variants.append((f"challenger v{challenger.version}", spec_for_adapter(base, challenger)))
    results = [_answer_with(config, name, spec, cases, context) for name, spec in variants]
    if config.datasets.teacher.base_url:
        results.insert(0, _answer_with_teacher(config, cases, context))
    # The packaged 135M model cannot judge (its replies do not follow ragas' schemas): answer
    # quality is scored only with a judge endpoint configured.
    judged = config.evaluation.ragas and bool(config.evaluation.judge.base_url)
    if judged:
        _score_quality(config, results, embedder, context)

    table = {result.name: result.metrics() for result in results}
    by_role = {result.name.split(" ")[0]: table[result.name] for result in results}
    reference_name = "champion" if champion is not None else "base"
    max_drops = {
        "citation_validity": config.promotion.max_citation_validity_drop,
        "faithfulness": config.promotion.max_faithfulness_drop,
    }
    if not judged:
        max_drops.pop("faithfulness")
    verdict = promotion_verdict(
        by_role.get("challenger"),
        by_role[reference_name],
        challenger_version=challenger.version if challenger else None,
        reference_name=reference_name,
        max_drops=max_drops,
    )
    version, folder = artifacts.new_version(layout.evaluation)
    report = {
        "dataset_version": dataset.version,
        "questions": len(cases),
        "retrieval": retrieval,
        "models": table,
        "verdict": verdict.to_json(),
        "answers": {
            r.name: [
                {"question": c.question, "answer": a.answer, "citations": [x.link for x in a.citations]}
                for c, a in r.answers
            ]
            for r in results
        },
        "errors": {r.name: r.errors for r in results if r.errors},
        "quality_failures": {r.name: r.quality_failures for r in results if r.quality_failures},
    }
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    artifacts.publish(layout.evaluation, version, {"verdict": verdict.to_json()})
    if challenger is not None:
        registry.log_evaluation(
            challenger.run_id,
            {f"eval_{k}": v for k, v in by_role.get("challenger", {}).items()}
            | {f"eval_retrieval_{k}": v for k, v in retrieval.items() if k != "cases"},
            folder / "report.json",
        )
        registry.tag(challenger.version, "evaluation", "passed" if verdict.passed else "failed")

    metadata: dict[str, dg.RawMetadataValue] = {
        "questions": len(cases),
        "dataset_version": dataset.version,
        "report": dg.MetadataValue.path(str(folder / "report.json")),
        "models": dg.MetadataValue.md(_markdown_table(table)),
        "verdict": "passed" if verdict.passed else "failed",
        "verdict_reasons": dg.MetadataValue.json(list(verdict.reasons)),
        "answer_quality": "ragas with the configured judge" if judged else "not scored: no judge configured",
        "challenger_version": challenger.version if challenger else "none",
        "champion_version": champion.version if champion else "none",
    }
    for key, value in retrieval.items():
        if key != "cases" and value is not None:
            metadata[f"retrieval/{key}"] = dg.MetadataValue.float(float(value))
    for role, metrics in by_role.items():
        for key, value in metrics.items():
            if value is not None:
                metadata[f"{role}/{key}"] = dg.MetadataValue.float(float(value))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def _answer_with(
    config: CiaConfig,
    name: str,
    spec: EndpointSpec,
    cases: Sequence[EvalCase],
    context: dg.AssetExecutionContext,
) -> ModelResult:
    from cia_assets.lib.serving.endpoint import EndpointError, temporary_endpoint

    result = ModelResult(name=name, model=spec.adapter or spec.model)
    try:
        with temporary_endpoint(config, spec, note=f"evaluation: {name}") as record:
            _ask_all(config, record, cases, result)
    except EndpointError as error:
        raise dg.Failure(description=f"cannot start the {name} model for evaluation: {error}") from error
    context.log.info(f"{name}: {result.citation_metrics()}")
    return result


def _answer_with_teacher(
    config: CiaConfig, cases: Sequence[EvalCase], context: dg.AssetExecutionContext
) -> ModelResult:
    from cia_assets.lib.core.records import utc_now

    teacher = config.datasets.teacher
    assert teacher.base_url
    model = teacher.model or config.llm.model
    spec = EndpointSpec(engine="openai", model=model, base_url=teacher.base_url.rstrip("/"))
    record = EndpointRecord(
        version=0, spec=spec, base_url=spec.base_url or "", started_at=utc_now(), origin="evaluation"
    )
    # The answering path authenticates with llm.api_key; the teacher has its own.
    teacher_config = config.model_copy(
        update={"llm": config.llm.model_copy(update={"api_key": teacher.api_key})}
    )
    result = ModelResult(name="teacher", model=model)
    _ask_all(teacher_config, record, cases, result)
    context.log.info(f"teacher: {result.citation_metrics()}")
    return result


def _ask_all(config: CiaConfig, record: object, cases: Sequence[EvalCase], result: ModelResult) -> None:
    from cia_assets.lib.answering.answer import AnswerError, AskRequest
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.core.access import Grant
    from cia_assets.lib.serving.endpoint import EndpointRecord

    assert isinstance(record, EndpointRecord)
    answerer = Answerer(config, endpoint=record)
    try:
        for case in cases:
            request = AskRequest(
                question=case.question, grant=Grant(name="evaluation", repos=(case.repo,)), interface="eval"
            )
            try:
                result.answers.append((case, answerer.ask(request)))
            except AnswerError as error:
                result.errors.append(f"{case.question[:80]}: {error}")
    finally:
        answerer.close()


def _score_quality(
    config: CiaConfig,
    results: list[ModelResult],
    embedder: EmbedderResource,
    context: dg.AssetExecutionContext,
) -> None:
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, RagSample, score_answers
    from cia_assets.lib.serving.model_endpoints import resolve_endpoint

    judge = resolve_endpoint(config, config.evaluation.judge)
    endpoint = JudgeEndpoint(
        base_url=judge.base_url,
        model=judge.model,
        api_key=judge.api_key,
        timeout_s=judge.timeout_s,
        # llama.cpp holds a judge to each step's JSON schema with a grammar; others use JSON mode.
        schema_grammar=judge.engine == "llama_cpp",
    )
    model = embedder.model()
    for result in results:
        samples = [
            RagSample(question=c.question, answer=a.answer, contexts=list(a.contexts), reference=c.reference)
            for c, a in result.answers
        ]
        if not samples:
            continue
        report = score_answers(samples, endpoint, model)
        result.quality = dict(report.means)
        result.quality_failures = dict(report.failures)
        context.log.info(f"{result.name} quality (judge {judge.label}): {report.means}")


def _markdown_table(table: dict[str, dict[str, float | None]]) -> str:
    metrics = sorted({k for row in table.values() for k in row})
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in table.items():
        cells = ["-" if row.get(m) is None else f"{row[m]:.3f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalHarness
    from cia_assets.lib.retrieval.search import SearchOptions

    config = cia.load()
    cases_per_repo = config.evaluation.history_cases
    if cases_per_repo == 0:
        return dg.MaterializeResult(metadata={"cases": 0, "note": "evaluation.history_cases is 0"})
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in config.repo_ids}
    harness = RetrievalHarness(config, cia.layout().retrieval_eval)
    cases = [case for source in sources.values() for case in harness.mine(source, cases_per_repo)]
    if not cases:
        return dg.MaterializeResult(
            metadata={"cases": 0, "note": "no descriptive commit changes 1-3 indexed non-test files"}
        )
    report = harness.run(cases, sources, {"cia": SearchOptions()}, progress=context.log.debug)
    metadata: dict[str, dg.RawMetadataValue] = {"cases": len(cases), "skipped": len(report.skipped)}
    metrics: dict[str, float | None] = {}
    for retriever, per_repo in report.scores().items():
        for repo, scores in per_repo.items():
            for k, value in scores.acc.items():
                metadata[f"{retriever}/{repo}/acc@{k}"] = dg.MetadataValue.float(float(value))
                metrics[f"history_{retriever}_{repo}_acc@{k}"] = value
            metadata[f"{retriever}/{repo}/mrr"] = dg.MetadataValue.float(float(scores.mrr))
            metrics[f"history_{retriever}_{repo}_mrr"] = scores.mrr
    folder = cia.layout().evaluation / "history"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    run_id = mlflow.registry().log_benchmark("retrieval-history", metrics, folder / "report.json")
    metadata["mlflow_run_id"] = run_id
    metadata["report"] = dg.MetadataValue.path(str(folder / "report.json"))
    return dg.MaterializeResult(metadata=metadata)
