"""Does fine-tuning the embedding model on a repo's own history pay? Measured without peeking.

    .venv/bin/python -m cia_assets_tests.bench.bench_retrieval_adapter
    .venv/bin/python -m cia_assets_tests.bench.bench_retrieval_adapter --repos pallets/click --max-triples 500

For each repo of the commit set (../shared/devsets/commit_localization.jsonl), the cases are
ordered by their base commit's date and the later half is the evaluation; the adapter is
trained (`learning.retrieval_adapter`) only on commits reachable from the earliest evaluation
base commit, so no evaluation commit, nor anything after it, is seen in training. One adapter
is trained for all the repos together, as a deployment trains one for its indexed repos. The
evaluation cases are then searched with the packaged model and with the adapter, each in its
own work dir, indexed whole as the default cia.yaml indexes (`--non-test-py`: non-test `.py`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from cia_assets.config import load_config
from cia_assets.lib.evaluation.retrieval import (
    RepoSource,
    RetrievalCase,
    RetrievalHarness,
    load_cases,
)
from cia_assets.lib.indexing.embeddings import packaged_model_source
from cia_assets.lib.learning.retrieval_adapter import (
    TrainingSettings,
    mine_triples,
    train_retrieval_adapter,
)
from cia_assets.lib.retrieval.search import SearchOptions
from cia_assets.lib.sources.git_sync import RepoMirror
from cia_assets_tests.bench.bench_retrieval import DEVSETS, SETS, default_branch, indexed_globs


def commit_time(git_dir: Path, sha: str) -> int:
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "log", "-1", "--format=%ct", sha],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def split_by_time(cases: list[RetrievalCase], git_dir: Path) -> tuple[str, list[RetrievalCase]]:
    """(the earliest evaluation base commit, the later half of the cases by base-commit date)."""
    dated = sorted(cases, key=lambda c: (commit_time(git_dir, c.base_commit), c.case_id))
    evaluation = dated[len(dated) // 2 :]
    return evaluation[0].base_commit, evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repos", nargs="*", help="only these repos of the commit set (owner/name)")
    parser.add_argument("--repos-dir", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--workdir", type=Path, default=Path(".cia-bench/retrieval-adapter"))
    parser.add_argument("--max-triples", type=int, default=TrainingSettings.max_triples)
    parser.add_argument("--epochs", type=int, default=TrainingSettings.epochs)
    parser.add_argument("--non-test-py", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    cases = load_cases(DEVSETS / SETS["commits"])
    repos = args.repos or list(dict.fromkeys(c.repo for c in cases))
    include, exclude = indexed_globs(args.non_test_py)
    sources: dict[str, RepoSource] = {}
    evaluation: list[RetrievalCase] = []
    triples = []
    started = time.perf_counter()
    for repo in repos:
        git_dir = args.repos_dir / repo.replace("/", "+") / "repo"
        branch = default_branch(git_dir)
        sources[repo] = RepoSource(
            repo=repo, url=str(git_dir), branch=branch, include=include, exclude=exclude
        )
        cutoff, later = split_by_time([c for c in cases if c.repo == repo], git_dir)
        evaluation += later
        # A mirror of our own: the fetched folders have no git config for GitPython to read.
        mirror = RepoMirror(args.workdir / "git" / f"{sources[repo].repo_id}.git", str(git_dir), branch)
        try:
            mirror.sync()
            mined = mine_triples(mirror, cutoff, repo=repo, include=include, exclude=exclude)
        finally:
            mirror.close()
        held_out = {c.case_id.rsplit("-", 1)[-1] for c in later}
        # The evaluation commits are after the cutoff; the check is a guard, not a filter.
        assert not any(t.commit[:10] in held_out for t in mined), "an evaluation commit reached training"
        triples += mined
        print(
            f"{repo}: cutoff {cutoff[:10]}, {len(later)} evaluation cases, {len(mined)} triples",
            file=sys.stderr,
        )
    mined_s = time.perf_counter() - started

    settings = TrainingSettings(max_triples=args.max_triples, epochs=args.epochs)
    adapter = train_retrieval_adapter(
        packaged_model_source(),
        triples,
        args.workdir / "adapter",
        settings,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(f"trained {adapter.model_id} on {adapter.triples} triples in {adapter.seconds} s", file=sys.stderr)

    base = load_config(None)
    adapted = base.model_copy(
        update={
            "embedding": base.embedding.model_copy(
                update={"model": adapter.model_id, "path": adapter.model_dir}
            )
        }
    )
    scores = {}
    for name, config in (("packaged", base), ("adapter", adapted)):
        harness = RetrievalHarness(config, args.workdir / f"eval-{name}")
        report = harness.run(
            evaluation,
            sources,
            {name: SearchOptions()},
            bm25=name == "packaged",
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        scores.update(report.to_json()["scores"])
    summary = {
        "evaluation_cases": len(evaluation),
        "triples": dict(Counter(t.repo for t in triples)),
        "trained_on": adapter.triples,
        "mining_s": round(mined_s, 1),
        "training_s": adapter.seconds,
        "scores": scores,
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
