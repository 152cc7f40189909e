"""The retrieval history benchmark: the body of the `retrieval_history_benchmark` asset, without
Dagster. Questions are mined from each indexed repo's own commits and run through
`RetrievalHarness` (see `retrieval`), beside whole-file BM25; the report is written under the
evaluation folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets.lib.evaluation.retrieval import Report, RepoSource, RetrievalHarness
from cia_assets.lib.retrieval.search import SearchOptions


@dataclass(frozen=True)
class HistoryBenchmark:
    """One run: its report, or why nothing was measured."""

    cases: int
    report: Report | None = None
    report_path: Path | None = None
    note: str | None = None  # why there is no report

    def scores(self) -> Iterator[tuple[str, str, str, float]]:
        """(retriever, repo, measure, value) for every score: `acc@<k>` for each k, then `mrr`."""
        if self.report is None:
            return
        for retriever, per_repo in self.report.scores().items():
            for repo, scores in per_repo.items():
                for k, value in scores.acc.items():
                    yield retriever, repo, f"acc@{k}", value
                yield retriever, repo, "mrr", scores.mrr


def run_history_benchmark(config: CiaConfig, *, progress: Callable[[str], None]) -> HistoryBenchmark:
    """Up to `evaluation.history_cases` cases per indexed repo, searched in the index as it was at
    each commit's parent (in the harness's own data dir, so the live index is untouched)."""
    cases_per_repo = config.evaluation.history_cases
    if cases_per_repo == 0:
        return HistoryBenchmark(cases=0, note="evaluation.history_cases is 0")
    layout = config.layout
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in config.repo_ids}
    harness = RetrievalHarness(config, layout.retrieval_eval)
    cases = [case for source in sources.values() for case in harness.mine(source, cases_per_repo)]
    if not cases:
        return HistoryBenchmark(cases=0, note="no descriptive commit changes 1-3 indexed non-test files")
    report = harness.run(cases, sources, {"cia": SearchOptions()}, progress=progress)
    folder = layout.evaluation / "history"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    return HistoryBenchmark(cases=len(cases), report=report, report_path=folder / "report.json")
