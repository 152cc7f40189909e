"""Scoring one answer against its case's reference, into the row `--out` writes:

- cite_hit: the answer cites a reference file (paths compared by trailing path segments,
  after dropping SWE-QA's `./`, `/` and `/workspace/` prefixes);
- ref_identifier_recall: the share of the reference's backticked identifiers the answer names;
- grounded_rate: 1 - ungrounded identifiers / identifiers the answering path checked
  (`grounded_rate`: 1.0 for answers that name nothing checkable);
- abstention / false_abstention: "not found" on absent / on real questions.

A row keeps what each rate is made of (the cited files, the identifiers named, the
ungrounded ones, not_found); the rates over many rows are `report.summarize`'s.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cia_assets.lib.answering.grounding import UNGROUNDED_MARK
from cia_assets.lib.evaluation.answers.sets import AnswerCase

if TYPE_CHECKING:
    from cia_assets.lib.answering.answer import Answer

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


def grounded_rate(checked: int, ungrounded: int, answered: int) -> float | None:
    """1 - ungrounded / checked over the answers given (not "not found"). An answer naming
    nothing its sources could lack (no backticked name, no quoted line) claims nothing
    ungrounded: answers with no checked name rate 1.0 (what they fail to say, identifier
    recall and cite-hit measure). None when nothing was answered."""
    if answered == 0:
        return None
    if checked == 0:
        return 1.0
    return round(max(0.0, 1.0 - ungrounded / checked), 4)


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
    not_found_reason: str = ""  # Answer.not_found_reason: which step answered "not found"
    # What the abstention bars were compared with (from the answer's trace details), for
    # calibrating them: the retrieved code supported the question, and the model's NOT odds
    # (None when the model was not asked).
    supported: bool | None = None
    not_found_odds: float | None = None
    # The blocks the model read ("repo:path#Lstart-Lend", in the prompt's order): whether an
    # answer's miss is the retrieval's or the model's.
    context_blocks: list[str] = field(default_factory=list)
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
        not_found_reason=answer.not_found_reason,
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
