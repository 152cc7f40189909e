"""The answer harness: index each (repo, commit) of a set, ask its questions with each model
through the real answering path, score the answers, and judge them with ragas when asked.

Each repo is indexed at each commit through the normal incremental path (the retrieval
harness's steps, in a data dir and collection prefix of its own: the live index is never
moved); every question is asked through `Answerer.stream` with a grant for that repo, timing
what a user sees (the sources event, the first text, the end).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.evaluation.answers.report import RAGAS_METRICS, AnswerReport
from cia_assets.lib.evaluation.answers.scoring import CaseRow, error_row, explanation_text, score_answer
from cia_assets.lib.evaluation.answers.sets import AnswerCase, AnswerEvalError
from cia_assets.lib.evaluation.retrieval import Report as IndexReport
from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalHarness
from cia_assets.lib.serving.packaged_models import QWEN_15B
from cia_assets.lib.sources.git_sync import GitAuth, GitSyncError, RepoMirror

if TYPE_CHECKING:
    from cia_assets.lib.answering.answer import Answer
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, TextEmbedder
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec


@dataclass(frozen=True)
class PackagedJudge:
    """The ragas judge as a packaged model on a local llama.cpp server (by default the 1.5B,
    the larger of the two), started for the judging only, after the answering models have
    stopped: two models need not share 2 cores and their memory. Its replies are held to each
    step's JSON schema with a grammar (a small judge otherwise copies the schema)."""

    model: str = QWEN_15B.name

    def config(self, config: CiaConfig) -> CiaConfig:
        """The judge's llm settings: its packaged weights as shipped (a judge writes long JSON
        replies, and the 4-bit file writes faster than a bf16 copy, which it need not make)."""
        from cia_assets.lib.serving.model_endpoints import packaged_model_config

        return packaged_model_config(config, self.model)


@dataclass(frozen=True)
class ModelChoice:
    """A model to answer with: `name` is llm.model for it (a packaged model for llama_cpp, the
    served name for remote engines); None keeps the config's llm settings as they are."""

    name: str | None = None

    def config(self, config: CiaConfig) -> CiaConfig:
        if self.name is None or self.name == config.llm.model:
            return config
        # Another model than the configured one: its own GGUF, not the configured file.
        llm = config.llm.model_copy(update={"model": self.name, "model_path": None})
        return config.model_copy(update={"llm": llm})

    def label(self, config: CiaConfig) -> str:
        return self.name or config.llm.model


class _IndexHarness(RetrievalHarness):
    """The retrieval harness's indexing steps, in collections of the answer harness's own
    (a Qdrant server shared with `cia eval-retrieval` must not see one repo at two commits)."""

    def config_for(self, sources: Sequence[RepoSource]) -> CiaConfig:
        config = super().config_for(sources)
        prefix = f"{self.base.vector_store.collection_prefix}-answer-eval"
        return config.model_copy(
            update={"vector_store": config.vector_store.model_copy(update={"collection_prefix": prefix})}
        )


class AnswerHarness:
    """Index each (repo, commit) of a set, ask its questions with each model, score."""

    def __init__(self, base: CiaConfig, workdir: Path) -> None:
        self.base = base
        self.workdir = workdir.resolve()
        self.indexer = _IndexHarness(base, self.workdir)
        self.layout = DataLayout(self.workdir)

    def run(
        self,
        cases: Sequence[AnswerCase],
        sources: Mapping[str, RepoSource],
        models: Sequence[ModelChoice] = (ModelChoice(),),
        *,
        judge: JudgeEndpoint | PackagedJudge | None = None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> AnswerReport:
        report = AnswerReport()
        for case in cases:
            if case.repo not in sources:
                report.skipped[case.case_id] = (
                    f"no source for repo {case.repo}: give --repo-dir {case.repo}=PATH "
                    "(a local clone or bare git dir that has the commit)"
                )
        usable = [c for c in cases if c.case_id not in report.skipped]
        repos = list(dict.fromkeys(c.repo for c in usable))
        if not repos:
            return report
        config = self.indexer.config_for([sources[repo] for repo in repos])
        index_report = IndexReport()
        labels = [m.label(config) for m in models]
        if len(set(labels)) != len(labels):
            raise AnswerEvalError(f"a model is named twice: {', '.join(labels)}")
        specs = {label: _model_spec(m.config(config), label) for m, label in zip(models, labels, strict=True)}
        # A packaged judge's model is checked with the answering models, before any indexing.
        judge_config = judge.config(config) if isinstance(judge, PackagedJudge) else None
        judge_spec = (
            _model_spec(judge_config, f"judge {judge_config.llm.model}") if judge_config is not None else None
        )
        with ExitStack() as endpoints:
            started: dict[str, EndpointRecord] = {}

            def endpoint(model: ModelChoice) -> EndpointRecord:
                label = model.label(config)
                if label not in started:
                    started[label] = endpoints.enter_context(
                        _model_endpoint(model.config(config), specs[label], label)
                    )
                return started[label]

            for repo in repos:
                repo_cases = [c for c in usable if c.repo == repo]
                self._run_repo(
                    config, sources[repo], repo_cases, models, endpoint, report, index_report, progress
                )
        report.index_timings = index_report.timing_summary()
        if judge_config is not None and judge_spec is not None:
            with _packaged_judge(judge_config, judge_spec) as judge_endpoint:
                score_with_judge(report, judge_endpoint, _open_embedder(config), progress=progress)
        elif judge is not None and not isinstance(judge, PackagedJudge):
            score_with_judge(report, judge, _open_embedder(config), progress=progress)
        return report

    def _run_repo(
        self,
        config: CiaConfig,
        source: RepoSource,
        cases: Sequence[AnswerCase],
        models: Sequence[ModelChoice],
        endpoint: Callable[[ModelChoice], EndpointRecord],
        report: AnswerReport,
        index_report: IndexReport,
        progress: Callable[[str], None],
    ) -> None:
        from cia_assets.lib.answering.answerer import Answerer
        from cia_assets.lib.core.project import Project

        codebase = config.codebase(source.repo_id)
        mirror = RepoMirror(
            self.layout.mirror(source.repo_id),
            config.clone_url(codebase),
            codebase.branch,
            auth=GitAuth.of(codebase),
        )
        # One store handle and embedding model for every commit and model of this repo.
        project = Project(config)
        try:
            head = mirror.sync()
            groups = _by_commit(mirror, head, cases, report)
            for sha, group in groups.items():
                progress(f"{source.repo}: indexing {sha[:12]} ({len(group)} question(s))")
                meta = self.indexer.index_at(project, source, mirror, sha, index_report)
                report.index[f"{source.repo}@{sha[:12]}"] = dict(index_report.index[source.repo])
                if not meta.files:
                    for case in group:
                        report.skipped[case.case_id] = f"nothing indexed of {source.repo} at {sha[:12]}"
                    continue
                for model in models:
                    label = model.label(config)
                    details: dict[str, Any] = {}
                    answerer = Answerer(
                        model.config(config), endpoint=endpoint(model), project=project,
                        trace_sink=_details_into(details),
                    )  # fmt: skip
                    try:
                        # As the chat app does when it starts; the first search after an
                        # update also opens the collection: both kept out of the timings.
                        answerer.warm_up()
                        for position, case in enumerate(group, start=1):
                            details.clear()
                            row = ask_case(answerer, case, source.repo_id, model=label, commit=sha)
                            row.supported = details.get("supported")
                            row.not_found_odds = details.get("not_found_odds")
                            row.context_blocks = list(details.get("blocks") or [])
                            report.rows.append(row)
                            progress(
                                f"{label} {source.repo} {position}/{len(group)} {case.case_id}: {_brief(row)}"
                            )
                    finally:
                        answerer.close()
        except GitSyncError as error:
            for case in cases:
                report.skipped.setdefault(case.case_id, str(error))
            progress(f"{source.repo}: {error}")
        finally:
            project.close()
            mirror.close()


def _by_commit(
    mirror: RepoMirror, head: str, cases: Sequence[AnswerCase], report: AnswerReport
) -> dict[str, list[AnswerCase]]:
    """The cases by the full sha they pin (None: the branch head), oldest commit first so
    each index update reuses the files that did not change."""
    resolved: dict[str, str | None] = {}
    groups: dict[str, list[AnswerCase]] = {}
    for case in cases:
        wanted = case.commit or head
        if wanted not in resolved:
            resolved[wanted] = _resolve(mirror, wanted)
        sha = resolved[wanted]
        if sha is None:
            report.skipped[case.case_id] = (
                f"commit {case.commit} is not on branch {mirror.branch!r} of {mirror.shown_url}"
            )
            continue
        groups.setdefault(sha, []).append(case)
    if len(groups) > 1:
        order = mirror.repo.git.rev_list("--topo-order", "--reverse", head).split()
        position = {sha: i for i, sha in enumerate(order)}
        groups = dict(sorted(groups.items(), key=lambda item: position.get(item[0], len(order))))
    return groups


def _resolve(mirror: RepoMirror, revision: str) -> str | None:
    import git

    try:
        sha = str(mirror.repo.git.rev_parse("--verify", "--quiet", f"{revision}^{{commit}}"))
    except git.GitCommandError:
        return None
    # The mirror holds only its branch: a commit must be on it, not merely fetched once.
    try:
        mirror.repo.git.merge_base("--is-ancestor", sha, f"refs/heads/{mirror.branch}")
    except git.GitCommandError:
        return None
    return sha


def _brief(row: CaseRow) -> str:
    if row.error:
        return f"ERROR {row.error}"
    parts = [f"not_found ({row.not_found_reason})" if row.not_found else f"{row.words} words"]
    if row.cite_hit is not None:
        parts.append(f"cite_hit={int(row.cite_hit)}")
    if row.recall is not None:
        parts.append(f"recall={row.recall:.2f}")
    if row.total_ms is not None:
        parts.append(f"{row.total_ms / 1000:.1f}s")
    return " ".join(parts)


def _model_spec(config: CiaConfig, label: str) -> EndpointSpec:
    """What serves the model; checked before any indexing (an unknown packaged model, a
    missing GGUF file), so a typo does not cost an index build."""
    from cia_assets.lib.serving.endpoint import EndpointSpec
    from cia_assets.lib.serving.llm_server import LlmServerError

    try:
        return EndpointSpec.from_config(config)
    except LlmServerError as error:
        raise AnswerEvalError(f"model {label}: {error}") from error


@contextmanager
def _model_endpoint(config: CiaConfig, spec: EndpointSpec, label: str) -> Iterator[EndpointRecord]:
    """A temporary endpoint for the model (never made live; a local server is stopped on
    exit); failures to start it name the model."""
    from cia_assets.lib.serving.endpoint import EndpointError, temporary_endpoint

    started = False
    try:
        with temporary_endpoint(config, spec, note=f"answer-eval: {label}") as record:
            started = True
            yield record
    except EndpointError as error:
        if started:
            raise
        raise AnswerEvalError(f"cannot start model {label}: {error}") from error


@contextmanager
def _packaged_judge(judge_config: CiaConfig, spec: EndpointSpec) -> Iterator[JudgeEndpoint]:
    """The packaged judge's local server (`PackagedJudge.config`) for the length of the judging."""
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint

    with _model_endpoint(judge_config, spec, f"judge {judge_config.llm.model}") as record:
        yield JudgeEndpoint.at(
            record.base_url,
            record.model,
            engine=record.engine,
            api_key=None,
            timeout_s=judge_config.evaluation.judge.request_timeout_s,
        )


def _details_into(kept: dict[str, Any]) -> Callable[[Any, Any, dict[str, Any]], None]:
    """A trace sink that keeps the last answer's details (support, the model's NOT odds)."""

    def keep(_request: Any, _answer: Any, details: dict[str, Any]) -> None:
        kept.update(details)

    return keep


def ask_case(
    answerer: Answerer,
    case: AnswerCase,
    repo_id: str,
    *,
    model: str,
    commit: str | None,
    clock: Callable[[], float] = time.perf_counter,
) -> CaseRow:
    """Ask one question through `Answerer.stream` as a user would, timing the sources event,
    the first text and the final answer as they arrive; score the final answer."""
    from cia_assets.lib.answering.answer import Answer, AnswerDelta, AnswerError, AnswerSources, AskRequest
    from cia_assets.lib.core.access import Grant

    request = AskRequest(
        question=case.question,
        grant=Grant(name="answer-eval", repos=(repo_id,)),
        repos=None,
        interface="eval",
        history=case.history,
    )
    started = clock()
    sources_at: float | None = None
    first_at: float | None = None
    final: Answer | None = None
    final_at = started
    try:
        for event in answerer.stream(request):
            now = clock()
            if isinstance(event, Answer):
                final, final_at = event, now
            elif isinstance(event, AnswerDelta):
                if first_at is None and event.text:
                    first_at = now
            elif isinstance(event, AnswerSources) and sources_at is None:
                sources_at = now
    except AnswerError as error:
        elapsed = round((clock() - started) * 1000, 1)
        return error_row(case, model=model, commit=commit, error=str(error), total_ms=elapsed)
    if final is None:
        return error_row(
            case, model=model, commit=commit, error="the answering path sent no final answer",
            total_ms=round((clock() - started) * 1000, 1),
        )  # fmt: skip

    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - started) * 1000, 1)

    return score_answer(
        case,
        final,
        model=model,
        commit=commit,
        sources_ms=ms(sources_at),
        # Nothing streamed (a "not found" or an answer that replaced what streamed): the
        # first text a user reads is the final answer.
        first_token_ms=ms(first_at if first_at is not None else final_at),
        total_ms=ms(final_at),
        streamed=first_at is not None,
    )


def _open_embedder(config: CiaConfig) -> TextEmbedder:
    from cia_assets.lib.core.project import open_embedder

    return open_embedder(config)


def score_with_judge(
    report: AnswerReport,
    judge: JudgeEndpoint,
    embedder: Any,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> None:
    """ragas' faithfulness and answer relevancy for every real question answered (not "not
    found"), written into the rows; a sample the judge fails keeps None and the error."""
    from cia_assets.lib.evaluation.answer_quality import RagSample, score_answers

    report.judge = f"{judge.model}@{judge.base_url}"
    scored = [r for r in report.rows if r.error is None and not r.absent and not r.not_found]
    if not scored:
        return
    progress(f"judging {len(scored)} answer(s) with {report.judge}")
    samples = [
        RagSample(
            question=r.question,
            answer=explanation_text(r.answer),
            contexts=r.contexts or [""],
            reference="",  # neither metric reads it
        )
        for r in scored
    ]
    quality = score_answers(samples, judge, embedder, metrics=RAGAS_METRICS, concurrency=judge.concurrency)
    for row, scores, errors in zip(scored, quality.scores, quality.errors, strict=True):
        row.faithfulness = scores.get("faithfulness")
        row.answer_relevancy = scores.get("answer_relevancy")
        row.judge_errors = dict(errors)
    report.judge_failures = dict(quality.failures)
