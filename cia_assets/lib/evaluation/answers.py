"""Answer quality, measured: questions with reference answers, asked through the real path.

A set is JSONL in SWE-QA's format (id, repo "owner/name", commit, question, reference_answer,
reference_files), plus absent-feature questions: the same format with `"absent": true` and no
reference, asking about code the repo does not have, which should be answered "not found".
For each (repo, commit) the harness indexes the repo at that commit through the normal
incremental path (the retrieval harness's steps, in a data dir and collection prefix of its
own: the live index is never moved), asks every question through `Answerer.stream` with a
grant for that repo, times what a user sees (the sources event, the first text, the end),
and scores each answer against its reference:

- cite_hit: the answer cites a reference file (paths compared by trailing path segments,
  after dropping SWE-QA's `./`, `/` and `/workspace/` prefixes);
- ref_identifier_recall: the share of the reference's backticked identifiers the answer names;
- grounded_rate: 1 - ungrounded identifiers / identifiers the answering path checked;
- abstention / false_abstention: "not found" on absent / on real questions.

ragas' faithfulness and answer relevancy are added when a judge endpoint is given.
"""

from __future__ import annotations

import json
import keyword
import math
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cia_assets.config import CiaConfig
from cia_assets.lib.answering.grounding import UNGROUNDED_MARK
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.evaluation.retrieval import Report as IndexReport
from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalHarness
from cia_assets.lib.sources.git_sync import GitSyncError, RepoMirror

if TYPE_CHECKING:
    from cia_assets.lib.answering.answerer import Answer, Answerer
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, TextEmbedder
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

RAGAS_METRICS = ("faithfulness", "answer_relevancy")
LATENCIES = ("sources_ms", "first_token_ms", "total_ms")
# Extensions that make a backticked span a file name rather than an identifier.
_FILE_EXTENSIONS = frozenset({
    "py", "pyi", "pyx", "pxd", "ipynb", "md", "rst", "txt", "cfg", "ini", "toml", "yaml", "yml",
    "json", "jsonl", "lock", "sql", "html", "htm", "css", "js", "jsx", "ts", "tsx", "c", "h", "cc",
    "cpp", "hpp", "go", "rs", "java", "kt", "rb", "php", "sh", "bash", "zsh", "ps1", "bat", "xml",
    "csv", "tsv", "j2", "jinja", "jinja2", "sqlfluff", "env", "log", "tmp", "gz", "zip", "whl",
    "tar", "so", "dll", "exe", "png", "jpg", "svg", "pdf",
})  # fmt: skip
_FENCED = re.compile(r"```.*?```", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CALL = re.compile(rf"({_DOTTED_NAME.pattern})\s*\(.*\)")
_PATH_LIKE = re.compile(r"[\w.-]+\.(\w+)(?::\d+(?:-\d+)?)?")
_PLAIN_WORD = re.compile(r"[a-z]+")
_LITERALS = frozenset({"self", "cls", "True", "False", "None"})
_SOURCES_HEADING = re.compile(r"(?m)^Sources:[ \t]*$")
_SOURCE_LINE = re.compile(r"\s*(\[\d+\]|-)\s")
_PATH_PREFIX = re.compile(r"^(?:\./|/)+")


class AnswerEvalError(ValueError):
    """A question set, a repo source or a model cannot be used; the message names which."""


# --- question sets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerCase:
    case_id: str
    repo: str  # as the set names it: "owner/name", or a configured repo id such as "cia"
    commit: str | None  # None: the branch head
    question: str
    reference: str  # "" for absent-feature questions
    reference_files: tuple[str, ...]
    absent: bool = False

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
        )


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


# --- scoring one answer ----------------------------------------------------------------------


def reference_identifiers(reference: str) -> list[str]:
    """The identifiers a reference answer names in backticks, in order, without repeats.

    A span is reduced to its name (`Foo.bar()` and `Foo.bar(x, y)` -> `Foo.bar`, `@app.route`
    -> `app.route`) and kept when it is a dotted name. Dropped: file names and paths (a `/`,
    or a file extension), expressions and snippets (spaces, operators), names shorter than 3
    characters, single all-lowercase words (plain words such as `content`, `shape`: naming
    them in prose proves nothing), keywords and `self`/`cls`/`True`/`False`/`None`. Fenced
    code blocks are skipped."""
    found: dict[str, None] = {}
    for match in _BACKTICKED.finditer(_FENCED.sub(" ", reference)):
        name = _identifier(match.group(1))
        if name is not None:
            found.setdefault(name)
    return list(found)


def _identifier(span: str) -> str | None:
    text = span.strip().lstrip("@")
    if text.startswith(".") and not text.startswith(".."):
        text = text[1:]  # `.compute()`: a method named without its object
    if "/" in text or "\\" in text:
        return None
    path = _PATH_LIKE.fullmatch(text)
    if path and path.group(1).lower() in _FILE_EXTENSIONS:
        return None
    call = _CALL.fullmatch(text)
    if call:
        text = call.group(1)
    if not _DOTTED_NAME.fullmatch(text):
        return None
    if len(text) < 3 or _PLAIN_WORD.fullmatch(text) or keyword.iskeyword(text) or text in _LITERALS:
        return None
    return text


def accepted_forms(identifier: str) -> tuple[str, ...]:
    """What counts as naming an identifier: itself, or its last dotted part (`bar` of
    `Foo.bar`)."""
    last = identifier.rsplit(".", 1)[-1]
    return (identifier,) if last == identifier else (identifier, last)


def names_identifier(text: str, identifier: str) -> bool:
    """Whether `text` names `identifier`: a case-sensitive match of one of its accepted forms,
    not inside a longer name."""
    return any(
        re.search(rf"(?<![A-Za-z0-9_]){re.escape(form)}(?![A-Za-z0-9_])", text)
        for form in accepted_forms(identifier)
    )


def identifier_recall(answer_text: str, identifiers: Sequence[str]) -> tuple[float | None, list[str]]:
    """The share of `identifiers` that `answer_text` names (None when there are none), and
    the ones it names."""
    if not identifiers:
        return None, []
    named = [name for name in identifiers if names_identifier(answer_text, name)]
    return round(len(named) / len(identifiers), 4), named


def normalize_path(path: str) -> str:
    """A reference path as the repo names it: SWE-QA's `./x`, `/x` and `/workspace/x` are `x`."""
    text = _PATH_PREFIX.sub("", path.strip().replace("\\", "/"))
    if text.startswith("workspace/"):
        text = _PATH_PREFIX.sub("", text.removeprefix("workspace/"))
    return text


def path_matches(cited: str, reference: str) -> bool:
    """A cited repo path matches a reference path when one ends with the other at a path
    segment boundary: `src/a/b.py` matches `a/b.py` and `b.py`; a reference with an extra
    leading folder (`checkout/src/a/b.py`) matches a cited path with a folder (`src/a/b.py`)."""
    cited, reference = normalize_path(cited), normalize_path(reference)
    if not cited or not reference:
        return False
    if cited == reference or cited.endswith("/" + reference):
        return True
    return "/" in cited and reference.endswith("/" + cited)


def cites_reference(cited_files: Sequence[str], reference_files: Sequence[str]) -> bool | None:
    """Whether a cited file is a reference file; None when the case names no reference file."""
    references = [r for r in reference_files if normalize_path(r)]
    if not references:
        return None
    return any(path_matches(cited, reference) for cited in cited_files for reference in references)


def explanation_text(answer: str) -> str:
    """The answer without its trailing "Sources:" list (the part a person reads as prose)."""
    headings = list(_SOURCES_HEADING.finditer(answer))
    if headings:
        last = headings[-1]
        tail = answer[last.end() :].splitlines()
        if all(not line.strip() or _SOURCE_LINE.match(line + " ") for line in tail):
            return answer[: last.start()].strip()
    return answer.strip()


def answer_prose(answer: Answer) -> str:
    """What an answer explains, as scored: its text without the Sources list, without the
    answering path's note on ungrounded names and its marks (they name what the model got
    wrong, not what it said); "" for a "not found" answer (its text echoes the question)."""
    if answer.not_found:
        return ""
    text = explanation_text(answer.answer)
    if answer.grounding_note:
        text = text.replace(answer.grounding_note, "")
    return text.replace(UNGROUNDED_MARK, "").strip()


def word_count(text: str) -> int:
    return len(text.split())


@dataclass
class CaseRow:
    """One question answered by one model, scored; what `--out` writes, one per line."""

    case_id: str
    repo: str
    commit: str | None  # the commit indexed (full sha)
    model: str
    absent: bool
    question: str
    reference_files: list[str]
    cited_files: list[str] = field(default_factory=list)
    cite_hit: bool | None = None  # None: absent, or no reference file named
    identifiers: list[str] = field(default_factory=list)
    named: list[str] = field(default_factory=list)
    recall: float | None = None  # None: absent, or no identifier in the reference
    not_found: bool = False
    words: int = 0
    sources_ms: float | None = None  # None: the answering path sent no sources event
    first_token_ms: float | None = None
    total_ms: float | None = None
    streamed: bool = False  # text arrived as deltas (else the first text was the final answer)
    ungrounded: list[str] | None = None  # None: no answer (an error row)
    grounding_checked: int | None = None
    engine_timings_ms: dict[str, float] = field(default_factory=dict)
    answer_model: str | None = None  # what the Answer names (model + adapter)
    trace_id: str | None = None
    answer: str = ""
    error: str | None = None
    faithfulness: float | None = None
    answer_relevancy: float | None = None
    judge_errors: dict[str, str] = field(default_factory=dict)
    contexts: list[str] = field(default_factory=list, repr=False)  # for the judge; not written

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("contexts")
        return data


def score_answer(
    case: AnswerCase,
    answer: Answer,
    *,
    model: str,
    commit: str | None,
    sources_ms: float | None = None,
    first_token_ms: float | None = None,
    total_ms: float | None = None,
    streamed: bool = False,
) -> CaseRow:
    """Score one final Answer against its case (see the module docstring)."""
    cited = list(dict.fromkeys(c.path for c in answer.citations))
    prose = answer_prose(answer)
    row = CaseRow(
        case_id=case.case_id,
        repo=case.repo,
        commit=commit,
        model=model,
        absent=case.absent,
        question=case.question,
        reference_files=list(case.reference_files),
        cited_files=cited,
        not_found=bool(answer.not_found),
        words=word_count(prose),
        sources_ms=sources_ms,
        first_token_ms=first_token_ms,
        total_ms=total_ms,
        streamed=streamed,
        engine_timings_ms=dict(answer.timings_ms),
        answer_model=answer.model,
        trace_id=answer.trace_id,
        answer=answer.answer,
        contexts=list(answer.contexts),
        ungrounded=list(answer.ungrounded),
        grounding_checked=answer.grounding_checked,
    )
    if not case.absent:
        row.cite_hit = cites_reference(cited, case.reference_files)
        row.identifiers = reference_identifiers(case.reference)
        row.recall, row.named = identifier_recall(prose, row.identifiers)
    return row


def error_row(case: AnswerCase, *, model: str, commit: str | None, error: str, total_ms: float) -> CaseRow:
    return CaseRow(
        case_id=case.case_id,
        repo=case.repo,
        commit=commit,
        model=model,
        absent=case.absent,
        question=case.question,
        reference_files=list(case.reference_files),
        total_ms=total_ms,
        error=error,
    )


# --- summaries -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's
    default): within the values' range, exact on the median. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(rows: Sequence[CaseRow]) -> dict[str, Any]:
    """Every metric over `rows` (one model's answers, or one repo's of them); questions that
    failed with an error count in `errors` only. A metric with no case to measure is None."""
    done = [r for r in rows if r.error is None]
    real = [r for r in done if not r.absent]
    absent = [r for r in done if r.absent]
    hits = [r.cite_hit for r in real if r.cite_hit is not None]
    recalls = [r.recall for r in real if r.recall is not None]
    graded = [r for r in done if r.grounding_checked is not None and r.ungrounded is not None]
    checked = sum(r.grounding_checked or 0 for r in graded)
    ungrounded = sum(len(r.ungrounded or []) for r in graded)
    false_abstention = _share([r.not_found for r in real])
    summary: dict[str, Any] = {
        "questions": len(rows),
        "real": len(real),
        "absent": len(absent),
        "errors": len(rows) - len(done),
        "cite_hit": _share(hits),
        "cite_hit_cases": len(hits),
        "ref_identifier_recall": _mean(recalls),
        "recall_cases": len(recalls),
        "grounded_rate": round(max(0.0, 1.0 - ungrounded / checked), 4) if checked else None,
        "grounding_checked": checked if graded else None,
        "ungrounded": ungrounded if graded else None,
        "abstention": _share([r.not_found for r in absent]),
        "false_abstention": false_abstention,
        "answered_rate": None if false_abstention is None else round(1.0 - false_abstention, 4),
        "words": _mean([float(r.words) for r in done if not r.not_found]),
    }
    for name in LATENCIES:
        values = [value for r in done if (value := getattr(r, name)) is not None]
        summary[f"{name}_p50"] = _ms(percentile(values, 50))
        summary[f"{name}_p95"] = _ms(percentile(values, 95))
    for name in RAGAS_METRICS:
        summary[name] = _mean([value for r in real if (value := getattr(r, name)) is not None])
    return summary


# --- the harness -----------------------------------------------------------------------------


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


@dataclass
class AnswerReport:
    rows: list[CaseRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> why it was not asked
    index: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo@commit -> index figures
    index_timings: dict[str, dict[str, float]] = field(default_factory=dict)
    judge: str | None = None  # the judge's model@url, when ragas scored
    judge_failures: dict[str, int] = field(default_factory=dict)

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def summaries(self) -> dict[str, dict[str, dict[str, Any]]]:
        """model -> repo (and "all") -> metrics."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for model in self.models():
            rows = [r for r in self.rows if r.model == model]
            per = {
                repo: summarize([r for r in rows if r.repo == repo])
                for repo in dict.fromkeys(r.repo for r in rows)
            }
            per["all"] = summarize(rows)
            out[model] = per
        return out

    def to_json(self, *, cases: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "models": self.summaries(),
            "skipped": self.skipped,
            "index": self.index,
            "index_timings": self.index_timings,
            "judge": self.judge,
            "judge_failures": self.judge_failures,
        }
        if cases:
            data["cases"] = [r.to_json() for r in self.rows]
        return data

    def write_rows(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for row in self.rows:
                out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")

    def table(self) -> str:
        """A readable table: one line per model and repo (and "all" with several repos)."""
        columns = [
            ("model", 26, lambda m, r, s: m),
            ("repo", 22, lambda m, r, s: r),
            ("real", 4, lambda m, r, s: str(s["real"])),
            ("abs", 3, lambda m, r, s: str(s["absent"])),
            ("err", 3, lambda m, r, s: str(s["errors"])),
            ("cite_hit", 8, lambda m, r, s: _fmt(s["cite_hit"])),
            ("id_recall", 9, lambda m, r, s: _fmt(s["ref_identifier_recall"])),
            ("grounded", 8, lambda m, r, s: _fmt(s["grounded_rate"])),
            ("abstain", 7, lambda m, r, s: _fmt(s["abstention"])),
            ("false_abst", 10, lambda m, r, s: _fmt(s["false_abstention"])),
            ("words", 5, lambda m, r, s: _fmt(s["words"], "{:.0f}")),
            ("sources ms p50/95", 17, lambda m, r, s: _pair(s, "sources_ms")),
            ("1st token p50/95", 16, lambda m, r, s: _pair(s, "first_token_ms")),
            ("total ms p50/95", 15, lambda m, r, s: _pair(s, "total_ms")),
        ]
        if self.judge is not None:
            columns += [
                ("faithful", 8, lambda m, r, s: _fmt(s["faithfulness"])),
                ("relevancy", 9, lambda m, r, s: _fmt(s["answer_relevancy"])),
            ]
        lines = ["  ".join(name.ljust(width) for name, width, _ in columns)]
        for model, per in self.summaries().items():
            repos = [repo for repo in per if repo != "all"]
            for repo in [*repos, "all"] if len(repos) > 1 else repos:
                lines.append(
                    "  ".join(
                        cell(model, repo, per[repo]).ljust(width) for _, width, cell in columns
                    ).rstrip()
                )
        return "\n".join(lines)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _pair(summary: Mapping[str, Any], name: str) -> str:
    low, high = summary[f"{name}_p50"], summary[f"{name}_p95"]
    return "-" if low is None else f"{low:.0f}/{high:.0f}"


class _IndexHarness(RetrievalHarness):
    """The retrieval harness's indexing steps, in collections of the answer harness's own
    (a Qdrant server shared with `cia eval-retrieval` must not see one repo at two commits)."""

    def config_for(self, sources: Sequence[RepoSource]) -> CiaConfig:
        config = super().config_for(sources)
        prefix = f"{self.base.vector_store.collection_prefix}-answer-eval"
        return config.model_copy(
            update={"vector_store": config.vector_store.model_copy(update={"collection_prefix": prefix})}
        )


def source_from_dir(repo: str, path: Path, commits: Iterable[str | None] = (), **globs: Any) -> RepoSource:
    """A repo source for a local clone or bare git dir: the branch its HEAD names, or, when
    that branch lacks one of `commits`, a branch that has them all (main, master first)."""
    location = path.expanduser().resolve()

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(location), *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise AnswerEvalError(
                f"--repo-dir {repo}={path}: {done.stderr.strip() or 'not a git repository'}"
            )
        return done.stdout.strip()

    if not location.exists():
        raise AnswerEvalError(f"--repo-dir {repo}={path}: no such directory")
    try:
        head = git("symbolic-ref", "--quiet", "--short", "HEAD")
    except AnswerEvalError:
        git("rev-parse", "--git-dir")  # not a repository: git's own message
        head = ""  # a detached HEAD: a branch holding the commits must be found
    pinned = [c for c in dict.fromkeys(commits) if c]
    branch = head
    if pinned:
        candidates: set[str] | None = None
        for commit in pinned:
            try:
                listed = git("branch", "--format=%(refname:short)", "--contains", commit)
            except AnswerEvalError:
                listed = ""  # a commit this dir lacks: its cases are skipped, with the reason
            names = {line.strip() for line in listed.splitlines() if line.strip()}
            candidates = names if candidates is None else candidates & names
        if candidates and head not in candidates:
            branch = sorted(candidates, key=lambda b: (b not in ("main", "master"), b))[0]
    if not branch:
        raise AnswerEvalError(
            f"--repo-dir {repo}={path}: HEAD is detached and no branch holds the set's commits"
        )
    return RepoSource(repo=repo, url=str(location), branch=branch, **globs)


def parse_repo_dirs(values: Iterable[str]) -> dict[str, Path]:
    """`owner/name=PATH` arguments, by repo."""
    dirs: dict[str, Path] = {}
    for value in values:
        repo, sep, path = value.partition("=")
        if not sep or not repo.strip() or not path.strip():
            raise AnswerEvalError(f"--repo-dir {value!r}: expected OWNER/NAME=PATH")
        dirs[repo.strip()] = Path(path.strip())
    return dirs


def sources_for(
    config: CiaConfig,
    cases: Sequence[AnswerCase],
    repo_dirs: Mapping[str, Path],
    *,
    include: Sequence[str] = (),
) -> dict[str, RepoSource]:
    """Where each repo of `cases` comes from: its `--repo-dir` (a local clone or bare git dir;
    `include` globs limit what is indexed of it), else the configured codebase whose id is
    the set's repo name or its last part (`cia`, `sqlfluff` for `sqlfluff/sqlfluff`). Repos
    with neither are left out: the harness skips their cases, saying why."""
    repos = list(dict.fromkeys(c.repo for c in cases))
    unused = sorted(set(repo_dirs) - set(repos))
    if unused:
        raise AnswerEvalError(
            f"--repo-dir {', '.join(unused)}: no selected question is about it "
            f"(repos of the selected questions: {', '.join(repos) or 'none'})"
        )
    configured = {c.repo_id: c for c in config.codebases}
    sources: dict[str, RepoSource] = {}
    for repo in repos:
        if repo in repo_dirs:
            commits = [c.commit for c in cases if c.repo == repo]
            globs = {"include": tuple(include)} if include else {}
            sources[repo] = source_from_dir(repo, repo_dirs[repo], commits, **globs)
            continue
        codebase = configured.get(repo) or configured.get(repo.rsplit("/", 1)[-1])
        if codebase is not None:
            sources[repo] = RepoSource(
                repo=repo,
                url=config.clone_url(codebase),
                branch=codebase.branch,
                include=codebase.include,
                exclude=codebase.exclude,
            )
    return sources


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
        judge: JudgeEndpoint | None = None,
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
        if judge is not None:
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
        from cia_assets.lib.retrieval.search import search_code

        codebase = config.codebase(source.repo_id)
        mirror = RepoMirror(self.layout.mirror(source.repo_id), config.clone_url(codebase), codebase.branch)
        try:
            head = mirror.sync()
            groups = _by_commit(mirror, head, cases, report)
            for sha, group in groups.items():
                progress(f"{source.repo}: indexing {sha[:12]} ({len(group)} question(s))")
                meta = self.indexer.index_at(config, source, mirror, sha, index_report)
                report.index[f"{source.repo}@{sha[:12]}"] = dict(index_report.index[source.repo])
                if not meta.files:
                    for case in group:
                        report.skipped[case.case_id] = f"nothing indexed of {source.repo} at {sha[:12]}"
                    continue
                # The first search after an update opens the collection: kept out of the timings.
                search_code(config, group[0].question, repos=[source.repo_id], k=1)
                for model in models:
                    label = model.label(config)
                    answerer = Answerer(model.config(config), endpoint=endpoint(model))
                    try:
                        for position, case in enumerate(group, start=1):
                            row = ask_case(answerer, case, source.repo_id, model=label, commit=sha)
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
                f"commit {case.commit} is not on branch {mirror.branch!r} of {mirror.clone_url}"
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
    parts = ["not_found" if row.not_found else f"{row.words} words"]
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
    from cia_assets.lib.answering.answerer import Answer, AnswerDelta, AnswerError, AnswerSources, AskRequest
    from cia_assets.lib.core.access import Grant

    request = AskRequest(
        question=case.question,
        grant=Grant(name="answer-eval", repos=(repo_id,)),
        repos=None,
        interface="eval",
        history=(),
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
    quality = score_answers(samples, judge, embedder, metrics=RAGAS_METRICS)
    for row, scores, errors in zip(scored, quality.scores, quality.errors, strict=True):
        row.faithfulness = scores.get("faithfulness")
        row.answer_relevancy = scores.get("answer_relevancy")
        row.judge_errors = dict(errors)
    report.judge_failures = dict(quality.failures)
