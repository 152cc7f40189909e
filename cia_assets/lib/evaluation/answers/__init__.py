"""Answer quality, measured: questions with reference answers, asked through the real path.

A set is JSONL in SWE-QA's format (id, repo "owner/name", commit, question, reference_answer,
reference_files), plus absent-feature questions: the same format with `"absent": true` and no
reference, asking about code the repo does not have, which should be answered "not found".
For each (repo, commit) the harness indexes the repo at that commit through the normal
incremental path (the retrieval harness's steps, in a data dir and collection prefix of its
own: the live index is never moved), asks every question through `Answerer.stream` with a
grant for that repo, times what a user sees (the sources event, the first text, the end),
and scores each answer against its reference: cite_hit, ref_identifier_recall, grounded_rate,
abstention / false_abstention (defined in `scoring`). ragas' faithfulness and answer
relevancy are added when a judge endpoint is given.

- `sets`: the question sets (AnswerCase), loaded, checked and selected per repo;
- `sources`: where each repo comes from (a `--repo-dir`, or a configured codebase);
- `scoring`: one answer scored against its reference (CaseRow);
- `report`: the rows summarized per model and repo, as a table or JSON;
- `harness`: indexing at each commit, asking through the answering path, the ragas judge.

This package re-exports what `cia eval-answers` and its tests use.
"""

from __future__ import annotations

from cia_assets.lib.evaluation.answers.harness import (
    AnswerHarness,
    ModelChoice,
    PackagedJudge,
    ask_case,
    score_with_judge,
)
from cia_assets.lib.evaluation.answers.report import LATENCIES, AnswerReport, percentile, summarize
from cia_assets.lib.evaluation.answers.scoring import (
    CaseRow,
    accepted_forms,
    cites_reference,
    explanation_text,
    identifier_recall,
    names_identifier,
    normalize_path,
    path_matches,
    reference_identifiers,
    score_answer,
)
from cia_assets.lib.evaluation.answers.sets import (
    AnswerCase,
    AnswerEvalError,
    load_answer_cases,
    load_sets,
    select_cases,
)
from cia_assets.lib.evaluation.answers.sources import parse_repo_dirs, source_from_dir, sources_for

__all__ = [
    "LATENCIES",
    "AnswerCase",
    "AnswerEvalError",
    "AnswerHarness",
    "AnswerReport",
    "CaseRow",
    "ModelChoice",
    "PackagedJudge",
    "accepted_forms",
    "ask_case",
    "cites_reference",
    "explanation_text",
    "identifier_recall",
    "load_answer_cases",
    "load_sets",
    "names_identifier",
    "normalize_path",
    "parse_repo_dirs",
    "path_matches",
    "percentile",
    "reference_identifiers",
    "score_answer",
    "score_with_judge",
    "select_cases",
    "source_from_dir",
    "sources_for",
    "summarize",
]
