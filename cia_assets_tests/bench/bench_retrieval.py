"""Retrieval quality on a case set: file Acc@1/5/10 and MRR per repo and overall, for each
retriever variant beside BM25 over whole files, plus per-stage timings.

    .venv/bin/python -m cia_assets_tests.bench.bench_retrieval --set quick
    .venv/bin/python -m cia_assets_tests.bench.bench_retrieval --set swebench --repos astropy/astropy
    python -m cia_assets_tests.bench.bench_retrieval --cases mine.jsonl --source org/app=/srv/app.git

Each repo is indexed as the default cia.yaml indexes it (the whole tree: tests, docs,
changelogs, vendored packages); `--non-test-py` indexes non-test `.py` files only. BM25, the
baseline, ranks the indexed `.py` files (whole files) in the same run.

Sets (../shared/devsets): `commits` (commit localization on flask, requests, click: easy, a
regression guard), `swebench` (SWE-bench Lite issues: the real difficulty), `quick` (a fixed
small subset of both). Repositories are read from `--repos-dir` (a folder of bare git repos
named `owner+name/repo`, as the fetch tool leaves them) or `--source owner/name=PATH`; they
are never committed. The work dir keeps mirrors, chunks and the embedding cache between runs,
so a second run only re-scores.

Every variant in `--retrievers` is scored on the same index at every case's commit (an
ablation costs searches, not re-indexing); variants that change what is indexed need a run
of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from cia_assets.config import CodebaseConfig, RerankerConfig, RetrievalConfig, load_config
from cia_assets.lib.evaluation.retrieval import (
    TEST_PATH_GLOBS,
    RepoSource,
    RetrievalCase,
    RetrievalEvalError,
    RetrievalHarness,
    load_cases,
)
from cia_assets.lib.retrieval.search import SearchOptions

DEVSETS = Path(__file__).resolve().parents[3] / "shared" / "devsets"
SETS = {"commits": "commit_localization.jsonl", "swebench": "swebench_lite_dev.jsonl"}
# The quick set: every xarray and astropy issue, a fixed spread of sympy issues, and five
# commit cases of each small repo. Fixed ids, so runs compare.
QUICK_SWEBENCH_REPOS = ("pydata/xarray", "astropy/astropy")
QUICK_SYMPY = 10
QUICK_COMMITS_PER_REPO = 5

_SWITCHES = ("query_tf", "mentions", "definitions", "file_lexical")
_NO_ROLES = {"role_weight": 0.0}


def _only(*switches: str) -> SearchOptions:
    return SearchOptions(**{name: name in switches for name in _SWITCHES}, **_NO_ROLES)  # type: ignore[arg-type]


def _without(*switches: str) -> SearchOptions:
    return SearchOptions(**{name: name not in switches for name in _SWITCHES})  # type: ignore[arg-type]


# Ablations: the switches added one at a time from what search did before this harness
# (the text as one query, files in order of their best chunk), then each removed from the
# full set; then the file-role prior's settings (`cia` is the default); then the code graph's;
# then the LLM re-ranker over the default (with `--rerank-url`; the others never call it).
_ABLATIONS: dict[str, SearchOptions] = {
    "chunks": _only(),
    "+query_tf": _only("query_tf"),
    "+mentions": _only("query_tf", "mentions"),
    "+definitions": _only("query_tf", "mentions", "definitions"),
    "+file_lexical": replace(_without(), **_NO_ROLES),
    **{f"-{name}": _without(name) for name in _SWITCHES},
    "cia": SearchOptions(),
    "roles=question": SearchOptions(roles_from_question=True),
    "roles*3": SearchOptions(role_weight=3.0),
    "+graph": SearchOptions(graph_weight=1.0),
    "graph*0.5": SearchOptions(graph_weight=0.5),
    "graph seeds=5": SearchOptions(graph_weight=1.0, graph_seeds=5),
    "-title": SearchOptions(title_weight=0.0),
    "title*0.5": SearchOptions(title_weight=0.5),
}
RETRIEVERS: dict[str, SearchOptions] = {
    **{name: replace(options, rerank=False) for name, options in _ABLATIONS.items()},
    "+rerank": SearchOptions(rerank=True),
}


def quick_cases(commits: list[RetrievalCase], swebench: list[RetrievalCase]) -> list[RetrievalCase]:
    chosen = [c for c in swebench if c.repo in QUICK_SWEBENCH_REPOS]
    sympy = sorted((c for c in swebench if c.repo == "sympy/sympy"), key=lambda c: c.case_id)
    step = max(1, len(sympy) // QUICK_SYMPY)
    chosen += sympy[::step][:QUICK_SYMPY]
    for repo in dict.fromkeys(c.repo for c in commits):
        chosen += [c for c in commits if c.repo == repo][:QUICK_COMMITS_PER_REPO]
    return chosen


def indexed_globs(non_test_py: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(include, exclude): by default the whole tree, as the default cia.yaml indexes a repo
    (tests, docs, vendored code); `--non-test-py`: non-test `.py` files only."""
    if non_test_py:
        return ("*.py",), TEST_PATH_GLOBS
    defaults = CodebaseConfig.model_fields
    return defaults["include"].default, defaults["exclude"].default


def default_branch(git_dir: Path) -> str:
    ref = subprocess.run(
        ["git", "--git-dir", str(git_dir), "symbolic-ref", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=[*SETS, "quick"], default="quick")
    parser.add_argument("--cases", type=Path, help="a JSONL case file instead of a named set")
    parser.add_argument("--repos", nargs="*", help="only these repos of the set (owner/name)")
    parser.add_argument("--limit", type=int, help="at most this many cases per repo")
    parser.add_argument(
        "--repos-dir", type=Path, default=Path(os.environ.get("CIA_DEVSET_REPOS", "/work/.mirror"))
    )
    parser.add_argument("--source", action="append", default=[], help="owner/name=PATH_OR_URL")
    parser.add_argument("--retrievers", nargs="*", default=list(RETRIEVERS), choices=list(RETRIEVERS))
    parser.add_argument("--no-bm25", action="store_true")
    parser.add_argument(
        "--non-test-py",
        action="store_true",
        help="index only non-test .py files (how the retriever was first tuned), not the whole tree",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".cia-bench/retrieval"))
    parser.add_argument("--config", help="cia.yaml whose embedding and store settings are used")
    parser.add_argument("--out", type=Path, help="write the full report (every case) as JSON")
    parser.add_argument("--rerank-url", help="an OpenAI-compatible endpoint that judges files (+rerank)")
    parser.add_argument("--rerank-model", help="the judge's model name at --rerank-url")
    parser.add_argument("--rerank-files", type=int, default=10, help="first files judged per case")
    parser.add_argument("--rerank-weight", type=float, default=1.0)
    args = parser.parse_args(argv)

    if args.cases:
        cases = load_cases(args.cases)
    elif args.set == "quick":
        cases = quick_cases(load_cases(DEVSETS / SETS["commits"]), load_cases(DEVSETS / SETS["swebench"]))
    else:
        cases = load_cases(DEVSETS / SETS[args.set])
    if args.repos:
        cases = [c for c in cases if c.repo in args.repos]
    if args.limit:
        kept: list[RetrievalCase] = []
        for repo in dict.fromkeys(c.repo for c in cases):
            kept += [c for c in cases if c.repo == repo][: args.limit]
        cases = kept

    explicit = dict(item.split("=", 1) for item in args.source)
    include, exclude = indexed_globs(args.non_test_py)
    sources: dict[str, RepoSource] = {}
    for repo in dict.fromkeys(c.repo for c in cases):
        location = explicit.get(repo) or str(args.repos_dir / repo.replace("/", "+") / "repo")
        if repo not in explicit and not Path(location).exists():
            print(
                f"skipping {repo}: no repository at {location} (use --source or --repos-dir)", file=sys.stderr
            )
            continue
        branch = default_branch(Path(location)) if Path(location).exists() else "main"
        sources[repo] = RepoSource(repo=repo, url=location, branch=branch, include=include, exclude=exclude)
    cases = [c for c in cases if c.repo in sources]

    config = load_config(args.config)
    if args.rerank_url:
        reranker = RerankerConfig(
            base_url=args.rerank_url,
            model=args.rerank_model,
            files=args.rerank_files,
            weight=args.rerank_weight,
            request_timeout_s=300.0,
        )
        config = config.model_copy(update={"retrieval": RetrievalConfig(reranker=reranker)})
    harness = RetrievalHarness(config, args.workdir)
    started = time.perf_counter()
    try:
        report = harness.run(
            cases,
            sources,
            {name: RETRIEVERS[name] for name in args.retrievers},
            bm25=not args.no_bm25,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except RetrievalEvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    full = report.to_json()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(full, indent=1))
    summary = {
        "cases": len(report.results),
        "seconds": round(time.perf_counter() - started, 1),
        "scores": full["scores"],
        "timings": full["timings"],
        "index": full["index"],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
