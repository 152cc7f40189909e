"""Running the held-out evaluation: the body of the `rag_eval_results` asset, without Dagster.

Retrieval is measured on the eval split's questions; then each compared model (the teacher when
it is its own endpoint, the base model, the champion adapter, the challenger) answers them
through the same answering path users get, and the fixed question set's when one is configured
(asked of the live index at each codebase's branch head), the judge scores the eval split's
answers with ragas when one is configured, and the challenger gets its promotion verdict.
`heldout` holds the metrics and the verdict rule; this module runs them and writes the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cia_assets.config import CiaConfig, PromotionConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import EVAL_FILE
from cia_assets.lib.evaluation.heldout import EvalCase, ModelResult, Verdict

if TYPE_CHECKING:
    from cia_assets.lib.core.records import SourceSpan
    from cia_assets.lib.evaluation.answer_quality import TextEmbedder
    from cia_assets.lib.evaluation.answers.sets import AnswerCase
    from cia_assets.lib.learning.registry import AdapterVersion
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

Log = Callable[[str], None]


class HeldoutRunError(RuntimeError):
    """A compared model cannot answer (its endpoint does not start); the message names it."""


def load_eval_cases(dataset: artifacts.ArtifactVersion, max_questions: int) -> list[EvalCase]:
    """The first `max_questions` questions of a training set's eval split."""
    rows = artifacts.read_jsonl(dataset.path / EVAL_FILE)
    return [EvalCase.from_example(row) for row in rows][:max_questions]


@dataclass(frozen=True)
class QuestionSet:
    """The fixed questions every compared model answers (`evaluation.question_sets`), each
    case's repo renamed to the configured codebase it means; `skipped` says which were left
    out and why."""

    cases: tuple[AnswerCase, ...] = ()
    skipped: tuple[str, ...] = ()


def load_question_set(config: CiaConfig) -> QuestionSet:
    """The configured sets' cases about configured codebases: at most
    `evaluation.max_questions` real and as many absent-feature questions per repo. A set that
    cannot be read or has a bad row raises AnswerEvalError naming its file and line."""
    import dataclasses

    from cia_assets.lib.evaluation.answers.sets import load_sets, select_cases
    from cia_assets.lib.evaluation.answers.sources import configured_codebase

    if not config.evaluation.question_sets:
        return QuestionSet()
    cases: list[AnswerCase] = []
    skipped: list[str] = []
    for case in load_sets(config.evaluation.question_sets):
        codebase = configured_codebase(config, case.repo)
        if codebase is None:
            skipped.append(f"{case.case_id}: {case.repo} is not a configured codebase")
        else:
            cases.append(dataclasses.replace(case, repo=codebase.repo_id))
    return QuestionSet(tuple(select_cases(cases, limit=config.evaluation.max_questions)), tuple(skipped))


@dataclass(frozen=True)
class Contenders:
    """The models the eval split compares, and what the challenger is judged against."""

    variants: tuple[tuple[str, EndpointSpec], ...]  # (name, what serves it), base first
    challenger_version: str | None
    reference_name: str  # champion when there is one, else base

    @classmethod
    def of(
        cls, base: EndpointSpec, *, champion: AdapterVersion | None, challenger: AdapterVersion | None
    ) -> Contenders:
        """The base model, the champion adapter and the challenger (when it is not the champion)."""
        from cia_assets.lib.learning.registry import spec_for_adapter

        variants: list[tuple[str, EndpointSpec]] = [("base", base)]
        if champion is not None:
            variants.append((f"champion v{champion.version}", spec_for_adapter(base, champion)))
        if challenger is not None and (champion is None or challenger.version != champion.version):
            variants.append((f"challenger v{challenger.version}", spec_for_adapter(base, challenger)))
        return cls(
            variants=tuple(variants),
            challenger_version=challenger.version if challenger else None,
            reference_name="champion" if champion is not None else "base",
        )


@dataclass(frozen=True)
class HeldoutEvaluation:
    """What one run measured, and the verdict on the challenger."""

    questions: int
    retrieval: dict[str, Any]
    results: list[ModelResult]
    judged: bool  # answer quality scored by the judge
    table: dict[str, dict[str, float | None]]  # model name -> metrics
    by_role: dict[str, dict[str, float | None]]  # teacher | base | champion | challenger -> metrics
    verdict: Verdict

    def report(self, dataset_version: str) -> dict[str, Any]:
        """The report.json of the run: figures, verdict, and every answer."""
        return {
            "dataset_version": dataset_version,
            "questions": self.questions,
            "retrieval": self.retrieval,
            "models": self.table,
            "verdict": self.verdict.to_json(),
            "answers": {
                r.name: [
                    {"question": c.question, "answer": a.answer, "citations": [x.link for x in a.citations]}
                    for c, a in r.answers
                ]
                for r in self.results
            },
            "question_set": {
                r.name: [row.to_json() for row in r.set_rows] for r in self.results if r.set_rows
            },
            "errors": {r.name: r.errors for r in self.results if r.errors},
            "quality_failures": {r.name: r.quality_failures for r in self.results if r.quality_failures},
        }

    def publish(self, root: Path, dataset_version: str) -> tuple[str, Path]:
        """Write the report as a new version under `root` and make it current (its summary is
        the verdict); returns the version and the report's path."""
        version, folder = artifacts.new_version(root)
        (folder / "report.json").write_text(json.dumps(self.report(dataset_version), indent=1))
        artifacts.publish(root, version, {"verdict": self.verdict.to_json()})
        return version, folder / "report.json"

    def challenger_metrics(self) -> dict[str, float | None]:
        """The challenger's figures and retrieval's, as logged to the challenger's MLflow run."""
        return {f"eval_{k}": v for k, v in self.by_role.get("challenger", {}).items()} | {
            f"eval_retrieval_{k}": v for k, v in self.retrieval.items() if k != "cases"
        }

    def figures(self) -> dict[str, float]:
        """Every measured figure by `retrieval/<metric>` and `<role>/<metric>` (plotted across runs)."""
        figures: dict[str, float] = {}
        for key, value in self.retrieval.items():
            if key != "cases" and value is not None:
                figures[f"retrieval/{key}"] = float(value)
        for role, metrics in self.by_role.items():
            for key, metric in metrics.items():
                if metric is not None:
                    figures[f"{role}/{key}"] = float(metric)
        return figures

    def markdown_table(self) -> str:
        return markdown_table(self.table)


def run_heldout_evaluation(
    config: CiaConfig,
    cases: Sequence[EvalCase],
    *,
    search: Callable[[EvalCase], Sequence[SourceSpan]],
    contenders: Contenders,
    question_set: QuestionSet = QuestionSet(),
    embedder: Callable[[], TextEmbedder] | None = None,
    log: Log,
) -> HeldoutEvaluation:
    """Retrieval with `search`, then every contender's answers (and the teacher's) to the eval
    split and to `question_set`, scored and compared. `embedder` loads the embedding model
    ragas scores with, only when a judge is configured (default: the configured one). Raises
    HeldoutRunError when a model cannot start."""
    from cia_assets.lib.evaluation.heldout import promotion_verdict, retrieval_metrics
    from cia_assets.lib.serving.endpoint import EndpointSpec
    from cia_assets.lib.serving.model_endpoints import own_server_model, packaged_model_config

    retrieval = retrieval_metrics(cases, search)
    log(f"retrieval on {len(cases)} questions: {retrieval}")
    fixed = question_set.cases
    if question_set.skipped:
        log(f"question set: left out {len(question_set.skipped)}: {'; '.join(question_set.skipped)}")
    results = [answer_with(config, name, spec, cases, fixed, log) for name, spec in contenders.variants]
    teacher = config.datasets.teacher
    if teacher.base_url:
        results.insert(0, answer_with_teacher(config, cases, fixed, log))
    elif (packaged_teacher := own_server_model(config, teacher)) is not None:
        # The teacher's own answers on the same path: what the student is learning toward.
        spec = EndpointSpec.from_config(packaged_model_config(config, packaged_teacher))
        results.insert(0, answer_with(config, "teacher", spec, cases, fixed, log))
    # Answer quality is scored by a judge of its own: an endpoint at `evaluation.judge.base_url`
    # or a packaged model (the 1.5B by default). The served model does not judge itself.
    judge = config.evaluation.judge
    judged = config.evaluation.ragas and bool(judge.base_url or own_server_model(config, judge))
    if judged:
        score_quality(config, results, embedder or _configured_embedder(config), log)

    table = {result.name: result.metrics() for result in results}
    by_role = {result.name.split(" ")[0]: table[result.name] for result in results}
    max_drops = gated_drops(config.promotion, judged=judged, question_set=bool(fixed))
    verdict = promotion_verdict(
        by_role.get("challenger"),
        by_role[contenders.reference_name],
        challenger_version=contenders.challenger_version,
        reference_name=contenders.reference_name,
        max_drops=max_drops,
    )
    return HeldoutEvaluation(
        questions=len(cases),
        retrieval=retrieval,
        results=results,
        judged=judged,
        table=table,
        by_role=by_role,
        verdict=verdict,
    )


def gated_drops(gate: PromotionConfig, *, judged: bool, question_set: bool = False) -> dict[str, float]:
    """The metrics the promotion verdict compares, each with the drop it allows; faithfulness
    only when a judge scored it; the fixed question set's figures (abstention among them) when
    one was asked."""
    drops = {
        "citation_validity": gate.max_citation_validity_drop,
        "cites_source_file": gate.max_cite_hit_drop,
        "ref_identifier_recall": gate.max_identifier_recall_drop,
        "grounded_rate": gate.max_grounded_rate_drop,
    }
    if judged:
        drops["faithfulness"] = gate.max_faithfulness_drop
    if question_set:
        drops |= {
            "set_cite_hit": gate.max_cite_hit_drop,
            "set_ref_identifier_recall": gate.max_identifier_recall_drop,
            "set_grounded_rate": gate.max_grounded_rate_drop,
            "set_abstention": gate.max_abstention_drop,
        }
    return drops


def _configured_embedder(config: CiaConfig) -> Callable[[], TextEmbedder]:
    def load() -> TextEmbedder:
        from cia_assets.lib.core.project import open_embedder

        return open_embedder(config)

    return load


def answer_with(
    config: CiaConfig,
    name: str,
    spec: EndpointSpec,
    cases: Sequence[EvalCase],
    fixed: Sequence[AnswerCase],
    log: Log,
) -> ModelResult:
    """The answers of the model `spec` serves, from an endpoint started for the evaluation."""
    from cia_assets.lib.serving.endpoint import EndpointError, temporary_endpoint

    result = ModelResult(name=name, model=spec.adapter or spec.model)
    try:
        with temporary_endpoint(config, spec, note=f"evaluation: {name}") as record:
            ask_all(config, record, cases, fixed, result)
    except EndpointError as error:
        raise HeldoutRunError(f"cannot start the {name} model for evaluation: {error}") from error
    log(f"{name}: {result.citation_metrics() | result.set_metrics()}")
    return result


def answer_with_teacher(
    config: CiaConfig, cases: Sequence[EvalCase], fixed: Sequence[AnswerCase], log: Log
) -> ModelResult:
    """The answers of the teacher endpoint (`datasets.teacher`, which must have a base_url)."""
    from cia_assets.lib.serving.model_endpoints import remote_endpoint_record

    teacher = config.datasets.teacher
    record = remote_endpoint_record(config, teacher, origin="evaluation")
    # The answering path authenticates with llm.api_key; the teacher has its own.
    teacher_config = config.model_copy(
        update={"llm": config.llm.model_copy(update={"api_key": teacher.api_key})}
    )
    result = ModelResult(name="teacher", model=record.model)
    ask_all(teacher_config, record, cases, fixed, result)
    log(f"teacher: {result.citation_metrics() | result.set_metrics()}")
    return result


def ask_all(
    config: CiaConfig,
    record: EndpointRecord,
    cases: Sequence[EvalCase],
    fixed: Sequence[AnswerCase],
    result: ModelResult,
) -> None:
    """Ask every case's question of `record`, as an eval grant limited to the case's repo; an
    answer that fails is counted in `result.errors`. Then the fixed set's questions, asked and
    scored as `cia eval-answers` does (a failed one is a row with its error)."""
    from cia_assets.lib.answering.answer import AnswerError, AskRequest
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.core.access import Grant
    from cia_assets.lib.evaluation.answers.harness import ask_case

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
        for fixed_case in fixed:
            row = ask_case(answerer, fixed_case, fixed_case.repo, model=result.name, commit=None)
            result.set_rows.append(row)
    finally:
        answerer.close()


def score_quality(
    config: CiaConfig, results: list[ModelResult], embedder: Callable[[], TextEmbedder], log: Log
) -> None:
    """ragas scores of each model's answers from the judge endpoint (`evaluation.judge`), into
    each result's `quality` and `quality_failures`."""
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, RagSample, score_answers
    from cia_assets.lib.serving.model_endpoints import model_endpoint

    model = embedder()
    # A packaged judge's server runs for the judging only, after the answering servers stopped.
    with model_endpoint(config, config.evaluation.judge, role="evaluation.judge") as judge:
        endpoint = JudgeEndpoint.at(
            judge.base_url, judge.model, engine=judge.engine, api_key=judge.api_key, timeout_s=judge.timeout_s
        )
        for result in results:
            samples = [
                RagSample(
                    question=c.question, answer=a.answer, contexts=list(a.contexts), reference=c.reference
                )
                for c, a in result.answers
            ]
            if not samples:
                continue
            report = score_answers(samples, endpoint, model)
            result.quality = dict(report.means)
            result.quality_failures = dict(report.failures)
            log(f"{result.name} quality (judge {judge.label}): {report.means}")


def markdown_table(table: dict[str, dict[str, float | None]]) -> str:
    """Models as rows, metrics as columns (3 decimals; `-` where not measured)."""
    metrics = sorted({k for row in table.values() for k in row})
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in table.items():
        cells = ["-" if row.get(m) is None else f"{row[m]:.3f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
