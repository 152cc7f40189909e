"""The body of the `retrieval_adapter` asset, without Dagster: train an adapter on the indexed
repos' history and measure it on the history benchmark's cases against the packaged model.

The benchmark's cases are each repo's newest descriptive commits (`evaluation.history_cases`);
training reads only commits reachable from the oldest case's parent, so the verdict is on
commits the adapter never saw. Both models index the cases' commits in their own data dirs
(under the retrieval harness's folder), never the live collections.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets.lib.core.fsio import write_json_atomic
from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalCase, RetrievalHarness
from cia_assets.lib.indexing.embeddings import packaged_model_source
from cia_assets.lib.learning.retrieval_adapter import (
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
    """Adapter against the packaged model on the same cases: better means a higher MRR and no
    lower Acc@5 (a re-embed costs a full index run; a tie does not pay for it)."""

    cases: int
    packaged: dict[str, float]  # acc@1, acc@5, acc@10, mrr over all cases
    adapter: dict[str, float]

    @property
    def better(self) -> bool:
        return self.adapter["mrr"] > self.packaged["mrr"] and self.adapter["acc@5"] >= self.packaged["acc@5"]

    def describe(self) -> str:
        figures = ", ".join(
            f"{measure} {self.adapter[measure]:.3f} vs {self.packaged[measure]:.3f}"
            for measure in ("acc@5", "mrr")
        )
        verdict = "better than" if self.better else "not better than"
        return f"adapter {verdict} the packaged model on {self.cases} history cases ({figures})"


@dataclass(frozen=True)
class AdapterRun:
    model_id: str
    model_dir: Path
    triples: dict[str, int]  # repo -> training triples mined
    trained_on: int
    training_s: float
    verdict: AdapterVerdict

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["model_dir"] = str(self.model_dir)
        data["better"] = self.verdict.better
        return data


def adapter_folder(config: CiaConfig) -> Path:
    return config.layout.models / "retrieval-adapters"


def candidate_record(config: CiaConfig) -> Path:
    return adapter_folder(config) / f"{CANDIDATE}.json"


def read_candidate(config: CiaConfig) -> dict[str, object] | None:
    path = candidate_record(config)
    return json.loads(path.read_text()) if path.exists() else None


def train_and_evaluate(
    config: CiaConfig,
    *,
    settings: TrainingSettings | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> AdapterRun:
    settings = settings or TrainingSettings()
    if config.evaluation.history_cases == 0:
        raise RetrievalAdapterError("evaluation.history_cases is 0: there is nothing to judge an adapter on")
    layout = config.layout
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in config.repo_ids}
    harness_root = layout.retrieval_eval / "adapter"
    packaged_harness = RetrievalHarness(config, harness_root / "packaged")
    cases: list[RetrievalCase] = []
    triples: list[Triple] = []
    for repo, source in sources.items():
        repo_cases = packaged_harness.mine(source, config.evaluation.history_cases)
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
        packaged_model_source(), triples, adapter_folder(config) / CANDIDATE, settings, progress=progress
    )
    adapted = config.model_copy(
        update={
            "embedding": config.embedding.model_copy(
                update={"model": adapter.model_id, "path": adapter.model_dir}
            )
        }
    )
    scores: dict[str, dict[str, float]] = {}
    for name, harness in (
        ("packaged", packaged_harness),
        ("adapter", RetrievalHarness(adapted, harness_root / "adapter")),
    ):
        report = harness.run(cases, sources, {name: SearchOptions()}, bm25=False, progress=progress)
        overall = report.scores()[name]["all"]
        scores[name] = {**{f"acc@{k}": value for k, value in overall.acc.items()}, "mrr": overall.mrr}
    run = AdapterRun(
        model_id=adapter.model_id,
        model_dir=adapter.model_dir,
        triples=dict(Counter(t.repo for t in triples)),
        trained_on=adapter.triples,
        training_s=adapter.seconds,
        verdict=AdapterVerdict(cases=len(cases), packaged=scores["packaged"], adapter=scores["adapter"]),
    )
    write_json_atomic(candidate_record(config), run.to_json())
    return run
