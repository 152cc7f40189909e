"""The bodies of the `retrieval_adapter` and `retrieval_embedding_model` assets, without
Dagster: train an adapter on the indexed repos' history, measure it on the history benchmark's
cases against the model the index uses now (the packaged one, or an adapter promoted before),
and promote it when it is better.

The benchmark's cases are each repo's newest descriptive commits (`evaluation.history_cases`);
training reads only commits reachable from the oldest case's parent, so the verdict is on
commits the adapter never saw. Both models index the cases' commits in their own data dirs
(under the retrieval harness's folder), never the live collections.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets.lib.core.fsio import write_json_atomic
from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalCase, RetrievalHarness
from cia_assets.lib.indexing.embedding_models import (
    PromotedAdapter,
    active_model,
    adapter_folder,
    read_promoted_adapter,
    write_promoted_adapter,
)
from cia_assets.lib.indexing.embeddings import ADAPTER_RECORD, PACKAGED_MODEL, packaged_model_source
from cia_assets.lib.learning.retrieval_adapter import (
    Fit,
    RetrievalAdapterError,
    TrainingSettings,
    Triple,
    mine_triples,
    train_retrieval_adapter,
)
from cia_assets.lib.retrieval.search import SearchOptions
from cia_assets.lib.sources.git_sync import RepoMirror

CANDIDATE = "candidate"


@dataclass(frozen=True)
class AdapterVerdict:
    """Adapter against the model the index uses now (`current_model`: the packaged one or the
    adapter promoted last) on the same cases: better means a higher MRR and no lower Acc@5 (a
    re-embed costs a full index run; a tie does not pay for it)."""

    cases: int
    current: dict[str, float]  # acc@1, acc@5, acc@10, mrr over all cases
    adapter: dict[str, float]
    current_model: str = PACKAGED_MODEL

    @property
    def better(self) -> bool:
        return self.adapter["mrr"] > self.current["mrr"] and self.adapter["acc@5"] >= self.current["acc@5"]

    def describe(self) -> str:
        figures = ", ".join(
            f"{measure} {self.adapter[measure]:.3f} vs {self.current[measure]:.3f}"
            for measure in ("acc@5", "mrr")
        )
        verdict = "better than" if self.better else "not better than"
        return (
            f"adapter {verdict} the current model {self.current_model} "
            f"on {self.cases} history cases ({figures})"
        )


@dataclass(frozen=True)
class AdapterRun:
    model_id: str
    model_dir: Path
    triples: dict[str, int]  # repo -> training triples mined
    trained_on: int
    training_s: float
    verdict: AdapterVerdict
    device: str = "cpu"
    losses: list[tuple[int, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["model_dir"] = str(self.model_dir)
        data["better"] = self.verdict.better
        return data


def candidate_record(config: CiaConfig) -> Path:
    return config.layout.retrieval_adapters / f"{CANDIDATE}.json"


def read_candidate(config: CiaConfig) -> dict[str, object] | None:
    path = candidate_record(config)
    return json.loads(path.read_text()) if path.exists() else None


def candidate_verdict(candidate: dict[str, object]) -> AdapterVerdict:
    verdict = dict(candidate["verdict"])  # type: ignore[call-overload]
    if "packaged" in verdict:  # a record from before promotion: judged against the packaged model
        verdict["current"] = verdict.pop("packaged")
    return AdapterVerdict(**verdict)


def train_and_evaluate(
    config: CiaConfig,
    *,
    settings: TrainingSettings | None = None,
    fit: Fit | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> AdapterRun:
    """`fit` trains (default: in this process on CPU; the asset passes the GPU pod's when
    `training.retrieval_adapter_backend` is `gpu`)."""
    settings = settings or TrainingSettings()
    if config.evaluation.history_cases == 0:
        raise RetrievalAdapterError("evaluation.history_cases is 0: there is nothing to judge an adapter on")
    layout = config.layout
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in config.repo_ids}
    harness_root = layout.retrieval_eval / "adapter"
    current_model = active_model(config).model_id
    current_harness = RetrievalHarness(config, harness_root / "current")
    cases: list[RetrievalCase] = []
    triples: list[Triple] = []
    for repo, source in sources.items():
        repo_cases = current_harness.mine(source, config.evaluation.history_cases)
        if not repo_cases:
            progress(f"{repo}: no history cases, not used for training either")
            continue
        cases += repo_cases
        codebase = config.codebase(repo)
        mirror = RepoMirror(layout.mirror(repo), config.clone_url(codebase), codebase.branch)
        try:
            # Newest first: the last case's parent is the newest commit training may read.
            mined = mine_triples(
                mirror,
                repo_cases[-1].base_commit,
                repo=repo,
                include=codebase.include,
                exclude=codebase.exclude,
                seed=settings.seed,
            )
        finally:
            mirror.close()
        progress(f"{repo}: {len(repo_cases)} history cases, {len(mined)} training triples before them")
        triples += mined
    if not cases:
        raise RetrievalAdapterError(
            "no repo has history cases (descriptive commits changing 1-3 source files)"
        )
    adapter = train_retrieval_adapter(
        packaged_model_source(),
        triples,
        config.layout.retrieval_adapters / CANDIDATE,
        settings,
        fit=fit,
        progress=progress,
    )
    adapted = config.model_copy(
        update={
            "embedding": config.embedding.model_copy(
                update={"model": adapter.model_id, "path": adapter.model_dir, "use_promoted_adapter": False}
            )
        }
    )
    scores: dict[str, dict[str, float]] = {}
    for name, harness in (
        ("current", current_harness),
        ("adapter", RetrievalHarness(adapted, harness_root / "adapter")),
    ):
        # The embedding models are compared, not a re-ranker that may sit on top of them.
        options = SearchOptions(rerank=False)
        report = harness.run(cases, sources, {name: options}, bm25=False, progress=progress)
        overall = report.scores()[name]["all"]
        scores[name] = {**{f"acc@{k}": value for k, value in overall.acc.items()}, "mrr": overall.mrr}
    run = AdapterRun(
        model_id=adapter.model_id,
        model_dir=adapter.model_dir,
        triples=dict(Counter(t.repo for t in triples)),
        trained_on=adapter.triples,
        training_s=adapter.seconds,
        device=adapter.device,
        losses=list(adapter.losses),
        verdict=AdapterVerdict(
            cases=len(cases),
            current=scores["current"],
            adapter=scores["adapter"],
            current_model=current_model,
        ),
    )
    write_json_atomic(candidate_record(config), run.to_json())
    return run


class PromotionRefused(RetrievalAdapterError):
    """The candidate may not be promoted; the message says why."""


def promote_candidate(config: CiaConfig, *, at: str) -> PromotedAdapter:
    """Make the last trained adapter the model the index embeds with.

    Refused unless its recorded verdict is better than the model in use when it was judged,
    and that model is still the one in use (a verdict against another model says nothing about
    this one). The adapter folder is copied under its id first (a new training run overwrites
    the candidate's folder), then `promoted.json` is replaced: a reader sees the old model or
    the new one, complete.
    """
    candidate = read_candidate(config)
    if candidate is None:
        raise PromotionRefused("no retrieval adapter has been trained (materialize retrieval_adapter)")
    verdict = candidate_verdict(candidate)
    if not verdict.better:
        raise PromotionRefused(f"not promoted: {verdict.describe()}")
    current = active_model(config).model_id
    if verdict.current_model != current:
        raise PromotionRefused(
            f"not promoted: the adapter was judged against {verdict.current_model}, "
            f"but the index now uses {current}; train and judge it again"
        )
    model_id = str(candidate["model_id"])
    source = Path(str(candidate["model_dir"]))
    target = adapter_folder(config.layout, model_id)
    if not target.exists():
        # Ids are weight digests: a folder that exists holds these weights already.
        staging = target.with_name(f".{model_id}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source, staging)
            # The candidate's folder is rewritten by the next training run before its verdict
            # is: the copy must hold the weights that were judged, named in their own record.
            copied = staging / ADAPTER_RECORD
            copied_id = json.loads(copied.read_text()).get("model_id") if copied.exists() else None
        except (OSError, ValueError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise PromotionRefused(f"not promoted: {source} could not be copied whole ({error})") from error
        if copied_id != model_id:
            shutil.rmtree(staging, ignore_errors=True)
            raise PromotionRefused(
                f"not promoted: {source} now holds {copied_id or 'an unfinished model'}, not the judged "
                f"{model_id} (a training run replaced it); train and judge again"
            )
        os.replace(staging, target)
    promoted = PromotedAdapter(
        model_id=model_id, model_dir=target, promoted_at=at, verdict=asdict(verdict) | {"better": True}
    )
    write_promoted_adapter(config.layout, promoted, at=at)
    return promoted


def roll_back_promotion(config: CiaConfig, *, at: str) -> PromotedAdapter | None:
    """Back to cia.yaml's model; returns the adapter that was in use (None if there was none).
    Its folder stays, so collections built with it still answer until they are re-indexed."""
    previous = read_promoted_adapter(config.layout)
    write_promoted_adapter(config.layout, None, at=at)
    return previous
