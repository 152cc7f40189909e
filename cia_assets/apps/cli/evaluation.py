"""`cia eval-retrieval` (retrieval measured on cases mined from each repo's history) and
`cia eval-answers` (answers measured on questions with reference answers)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cia_assets.apps.cli.environment import _load

EVAL_ANSWERS_HELP = """\
Measure answers on questions with reference answers (and absent-feature questions).

Each (repo, commit) of the sets is indexed in the harness's own data dir (the live index is
not touched), every question is asked through the answering path, and per model it reports:
cite_hit (a reference file is cited), ref_identifier_recall (share of the reference's
backticked identifiers the answer names), grounded_rate (1 - ungrounded / checked identifiers),
abstention (absent questions answered not found), false_abstention (real ones answered not
found), words, and p50/p95 of the time to the sources, to the first text and to the end.
ragas faithfulness and answer relevancy are added with --judge (a packaged model, by default
Qwen2.5-Coder-1.5B-Instruct, on a local llama.cpp server started after the answers; minutes a
question on 2 cores) or --judge-url/--judge-model (API key: $CIA_JUDGE_API_KEY, else
evaluation.judge.api_key).

examples:
  cia eval-answers cia_assets_tests/bench/answer_sets/cia_qa.jsonl \\
      --absent cia_assets_tests/bench/answer_sets/absent_features.jsonl --repo cia
  cia eval-answers swe_qa_dev.jsonl --repo sqlfluff/sqlfluff --limit 5 --include '*.py' \\
      --repo-dir sqlfluff/sqlfluff=/path/to/sqlfluff.git --out rows.jsonl --json
"""


def _eval_retrieval(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalHarness
    from cia_assets.lib.retrieval.search import SearchOptions

    repos = list(args.repos) or config.repo_ids
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in repos}
    harness = RetrievalHarness(config, config.layout.retrieval_eval)
    cases = [case for source in sources.values() for case in harness.mine(source, args.cases)]
    if not cases:
        print(
            "cia: no descriptive commits that change 1-3 indexed non-test files were found", file=sys.stderr
        )
        return 1
    report = harness.run(
        cases,
        sources,
        {"cia": SearchOptions()},
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    if report.skipped:
        print(f"{len(report.skipped)} case(s) skipped (see --json)", file=sys.stderr)
    for name, per_repo in report.scores().items():
        for repo, scores in per_repo.items():
            accs = "  ".join(f"acc@{k} {value:.3f}" for k, value in scores.acc.items())
            print(f"{name:5s} {repo:30s} cases {scores.cases:3d}  {accs}  mrr {scores.mrr:.3f}")
    return 0


def _eval_answers(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.evaluation import answers as ae
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint

    if args.judge and args.judge_url:
        print("cia: give --judge (a packaged model) or --judge-url, not both", file=sys.stderr)
        return 2
    if args.judge_url and not args.judge_model:
        print("cia: --judge-url needs --judge-model (the model name at that endpoint)", file=sys.stderr)
        return 2
    try:
        if not args.sets and not args.absent:
            raise ae.AnswerEvalError("give a question set (SET.jsonl) and/or --absent FILE")
        cases = ae.load_sets([Path(p) for p in args.sets], [Path(p) for p in args.absent])
        ids = [i.strip() for value in args.ids or [] for i in value.split(",") if i.strip()]
        cases = ae.select_cases(cases, ids=ids or None, repos=args.repo, limit=args.limit)
        sources = ae.sources_for(config, cases, ae.parse_repo_dirs(args.repo_dir), include=args.include)
        # Judged by a packaged model on a local server (`--judge`), an endpoint, or not at all.
        judge: ae.PackagedJudge | JudgeEndpoint | None = ae.PackagedJudge(args.judge) if args.judge else None
        if args.judge_url:
            settings = config.evaluation.judge
            judge = JudgeEndpoint(
                base_url=args.judge_url.rstrip("/"),
                model=args.judge_model,
                api_key=os.environ.get("CIA_JUDGE_API_KEY") or settings.api_key,
                timeout_s=settings.request_timeout_s,
                schema_grammar=args.judge_schema_grammar,
            )
        models = [ae.ModelChoice(name) for name in args.model] if args.model else [ae.ModelChoice()]
        harness = ae.AnswerHarness(config, args.workdir or config.data_dir / "answer-eval")
        report = harness.run(
            cases,
            sources,
            models,
            judge=judge,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ae.AnswerEvalError as error:
        print(f"cia: {error}", file=sys.stderr)
        return 2
    if args.out:
        report.write_rows(args.out)
    for case_id, reason in report.skipped.items():
        print(f"skipped {case_id}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(cases=not args.out), indent=2))
    elif report.rows:
        print(report.table())
    if not report.rows:
        print("cia: no question was asked (see the skipped cases above)", file=sys.stderr)
        return 1
    return 0
