"""The question sets of `cia eval-answers`: loading, checking and selecting them.

A set is JSONL in SWE-QA's format (id, repo "owner/name", commit, question, reference_answer,
reference_files), plus absent-feature questions: the same format with `"absent": true` and no
reference, asking about code the repo does not have, which should be answered "not found".
A follow-up question carries the conversation before it, as an API client sends it:
`"history": [{"role": "user" | "assistant", "content": ...}, ...]`.
A row that cannot be used is named by its file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AnswerEvalError(ValueError):
    """A question set, a repo source or a model cannot be used; the message names which."""


@dataclass(frozen=True)
class AnswerCase:
    case_id: str
    repo: str  # as the set names it: "owner/name", or a configured repo id such as "cia"
    commit: str | None  # None: the branch head
    question: str
    reference: str  # "" for absent-feature questions
    reference_files: tuple[str, ...]
    absent: bool = False
    history: tuple[dict[str, str], ...] = ()  # the conversation before a follow-up question

    @classmethod
    def from_json(cls, row: Any, where: str, *, absent_default: bool = False) -> AnswerCase:
        if not isinstance(row, dict):
            raise AnswerEvalError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "repo", "question"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise AnswerEvalError(f"{where}: {key!r} is missing or not a non-empty string")
        case_id = row["id"].strip()
        commit = row.get("commit")
        if commit is not None and (not isinstance(commit, str) or not commit.strip()):
            raise AnswerEvalError(f"{where}: case {case_id}: 'commit' must be a commit sha or null")
        absent = row.get("absent", absent_default)
        if not isinstance(absent, bool):
            raise AnswerEvalError(f"{where}: case {case_id}: 'absent' must be true or false")
        reference = row.get("reference_answer")
        files = row.get("reference_files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise AnswerEvalError(f"{where}: case {case_id}: 'reference_files' must be a list of paths")
        if absent:
            if reference or files:
                raise AnswerEvalError(
                    f"{where}: case {case_id} is absent (about code the repo does not have) "
                    "but has a reference_answer or reference_files"
                )
            reference = ""
        elif not isinstance(reference, str) or not reference.strip():
            raise AnswerEvalError(
                f"{where}: case {case_id}: 'reference_answer' is missing or empty "
                '(a question about code the repo does not have needs "absent": true)'
            )
        return cls(
            case_id=case_id,
            repo=row["repo"].strip(),
            commit=commit.strip() if isinstance(commit, str) else None,
            question=row["question"].strip(),
            reference=reference,
            reference_files=tuple(files),
            absent=absent,
            history=_history(row.get("history", []), f"{where}: case {case_id}"),
        )


def _history(turns: Any, where: str) -> tuple[dict[str, str], ...]:
    """A follow-up's conversation: user and assistant messages, each a non-empty string."""
    if not isinstance(turns, list):
        raise AnswerEvalError(f"{where}: 'history' must be a list of messages")
    history: list[dict[str, str]] = []
    for number, turn in enumerate(turns, start=1):
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ("user", "assistant")
            or not isinstance(turn.get("content"), str)
            or not turn["content"].strip()
        ):
            raise AnswerEvalError(
                f"{where}: 'history' message {number} must be "
                '{"role": "user" or "assistant", "content": a non-empty string}'
            )
        history.append({"role": turn["role"], "content": turn["content"]})
    return tuple(history)


def load_answer_cases(path: Path, *, absent: bool = False) -> list[AnswerCase]:
    """The cases of one JSONL set. With `absent`, rows are absent-feature questions unless
    they say otherwise, and one that says `"absent": false` is an error."""
    cases: list[AnswerCase] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise AnswerEvalError(f"{path}: cannot read the question set ({error.strerror or error})") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise AnswerEvalError(f"{where}: not JSON ({error.msg})") from None
        case = AnswerCase.from_json(row, where, absent_default=absent)
        if absent and not case.absent:
            raise AnswerEvalError(f"{where}: case {case.case_id} says absent: false in an absent-feature set")
        if case.case_id in seen:
            raise AnswerEvalError(f"{where}: id {case.case_id!r} already used on line {seen[case.case_id]}")
        seen[case.case_id] = number
        cases.append(case)
    return cases


def load_sets(sets: Sequence[Path], absent_sets: Sequence[Path] = ()) -> list[AnswerCase]:
    """Every case of the sets, ids unique across all of them."""
    cases: list[AnswerCase] = []
    origin: dict[str, Path] = {}
    for path, absent in [*((p, False) for p in sets), *((p, True) for p in absent_sets)]:
        for case in load_answer_cases(path, absent=absent):
            if case.case_id in origin:
                raise AnswerEvalError(f"{path}: id {case.case_id!r} is also used in {origin[case.case_id]}")
            origin[case.case_id] = path
            cases.append(case)
    return cases


def select_cases(
    cases: Sequence[AnswerCase],
    *,
    ids: Iterable[str] | None = None,
    repos: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[AnswerCase]:
    """Cases with those ids, of those repos; then the first `limit` real and the first
    `limit` absent questions of each repo (set order)."""
    wanted = set(ids) if ids else None
    if wanted is not None:
        unknown = sorted(wanted - {c.case_id for c in cases})
        if unknown:
            raise AnswerEvalError(f"--ids: no such case(s): {', '.join(unknown)}")
    only = set(repos) if repos else None
    kept: list[AnswerCase] = []
    taken: dict[tuple[str, bool], int] = {}
    for case in cases:
        if wanted is not None and case.case_id not in wanted:
            continue
        if only is not None and case.repo not in only:
            continue
        key = (case.repo, case.absent)
        if limit is not None and taken.get(key, 0) >= limit:
            continue
        taken[key] = taken.get(key, 0) + 1
        kept.append(case)
    return kept
