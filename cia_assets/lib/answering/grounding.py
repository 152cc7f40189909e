"""Is an answer grounded in the code it was shown, and is there code to answer from at all?

A `[n]` marker only proves that block `n` was in the prompt. A small model can cite a block and
still name a function that is not in it. So after generation every backticked identifier and
every quoted code line of the answer is looked up in the blocks it cites, then in the rest of
the context; what occurs in neither is ungrounded, marked in the answer and counted.

Before generation, `evidence` tells whether the retrieved code supports the question (it has
the code the question names, or nearly all of its distinctive words). Support does not decide
"not found" by itself: it sets how sure the model must be of NOT FOUND (the answerer's odds), and
an unsupported question's answer names the words the code lacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cia_assets.lib.indexing.lexical import STOPWORDS
from cia_assets.lib.retrieval.query_plan import FILE_SUFFIXES, named_code, path_mentions

if TYPE_CHECKING:
    from cia_assets.lib.answering.citations import ContextBlock

_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s+")
# A quoted line shorter than this (`}`, `else:`) proves nothing either way.
MIN_QUOTED_LINE_CHARS = 6
UNGROUNDED_MARK = " (not in the sources)"


@dataclass(frozen=True)
class Grounding:
    """`checked` backticked spans and quoted code lines; `ungrounded` are those found in no
    block of the context (as written in the answer); `uncited` were found only in blocks the
    answer does not cite."""

    checked: int
    ungrounded: list[str] = field(default_factory=list)
    uncited: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return None if not self.checked else 1 - len(self.ungrounded) / self.checked


def _normalized(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


class _Corpus:
    """Text of some blocks, searchable for whole code fragments and for identifiers."""

    def __init__(self, texts: Iterable[str]) -> None:
        joined = "\n".join(texts)
        self.flat = _normalized(joined)
        self.words = set(_IDENTIFIER.findall(joined))

    def has_span(self, span: str) -> bool:
        normalized = _normalized(span)
        if normalized and normalized in self.flat:
            return True
        names = [name for name in _IDENTIFIER.findall(span) if len(name) > 1]
        return bool(names) and all(name in self.words for name in names)

    def has_line(self, line: str) -> bool:
        return _normalized(line) in self.flat


def _checkable_span(span: str) -> bool:
    """Spans that name code: `[1]`, `42` or `->` name nothing to look up."""
    return any(len(name) > 1 for name in _IDENTIFIER.findall(span))


def quoted_lines(answer: str) -> list[str]:
    lines: list[str] = []
    for match in _FENCED.finditer(answer):
        for line in match.group(2).splitlines():
            stripped = line.strip()
            if len(stripped) < MIN_QUOTED_LINE_CHARS or stripped in ("...", "…"):
                continue
            if _IDENTIFIER.search(stripped):
                lines.append(stripped)
    return lines


def inline_spans(answer: str) -> list[str]:
    """Backticked spans outside fenced blocks, first occurrence order, without repeats."""
    outside = _FENCED.sub("", answer)
    seen: dict[str, None] = {}
    for match in _INLINE.finditer(outside):
        span = match.group(1).strip()
        if span and _checkable_span(span):
            seen.setdefault(span, None)
    return list(seen)


def check_grounding(
    answer: str, cited: Sequence[str], context: Sequence[str], paths: Sequence[str] = ()
) -> Grounding:
    """Look up the answer's code in the cited block texts, then in the whole context (block
    texts plus their file paths, which answers name too)."""
    cited_corpus = _Corpus(cited)
    context_corpus = _Corpus([*context, *paths])
    checked = 0
    ungrounded: list[str] = []
    uncited: list[str] = []
    for span in inline_spans(answer):
        checked += 1
        if cited_corpus.has_span(span):
            continue
        (uncited if context_corpus.has_span(span) else ungrounded).append(f"`{span}`")
    for line in quoted_lines(answer):
        checked += 1
        if cited_corpus.has_line(line):
            continue
        (uncited if context_corpus.has_line(line) else ungrounded).append(line)
    return Grounding(checked=checked, ungrounded=ungrounded, uncited=uncited)


def check_blocks(answer: str, cited: Sequence[ContextBlock], blocks: Sequence[ContextBlock]) -> Grounding:
    """`check_grounding` over what the model read of the context blocks: each header's symbol
    (`ResolvedGrouper.__post_init__` for a method cut from its class) with its code, and the
    blocks' files."""
    read = [b.read for b in blocks]
    return check_grounding(answer, [b.read for b in cited], read, [b.path for b in blocks])


# A name that can only be code when written without backticks: snake_case, camelCase, dotted,
# or called (`check_permission`, `TokenValidator`, `os.path`, `validate(`).
_CODE_WORD = re.compile(
    r"\b(?:[A-Za-z]+_[A-Za-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*"
    r"|[A-Za-z_]\w*\.[A-Za-z_]\w*|[A-Za-z_]\w*(?=\())"
)


# Words in a row that an answer must share with a block to have taken a passage from it (a
# docstring or comment retold): shorter runs ("the user is a manager") occur anywhere.
PASSAGE_WORDS = 8


def _word_runs(text: str) -> set[tuple[str, ...]]:
    words = [word.lower() for word in _WORD.findall(text)]
    return {tuple(words[i : i + PASSAGE_WORDS]) for i in range(len(words) - PASSAGE_WORDS + 1)}


def _names_file(path: str, mentions: Sequence[str]) -> bool:
    """Whether a mentioned file (`query_plan.path_mentions`) is `path`, or a tail of it at a
    folder boundary (`fits/base.py`, `base.py` of `astropy/io/fits/base.py`)."""
    return any(path == mention or path.endswith("/" + mention) for mention in mentions)


def attribute(answer: str, blocks: Sequence[str], limit: int = 3, paths: Sequence[str] = ()) -> list[int]:
    """Indexes of the blocks the answer's code comes from (its backticked names and quoted
    lines, code-shaped names written without backticks, passages of 8 words or more it
    shares with a block, across the block's line breaks, and the block's file when `paths`
    gives it and the answer names it), most first: the citations of an answer whose model
    wrote none of its own. A small model asked about plain behaviour often retells the
    docstring that explains it and names no code at all; asked "where", it names the file and
    lines of a source ("in `astropy/utils/data.py` lines 1956-1974") instead of its number."""
    spans = inline_spans(answer)
    spans += [
        word for word in dict.fromkeys(_CODE_WORD.findall(_FENCED.sub("", answer))) if word not in spans
    ]
    lines = quoted_lines(answer)
    runs = _word_runs(_FENCED.sub("", answer))
    # The files it names (`astropy/utils/data.py`, `data.py`); module readings (`os.path`) are
    # not files.
    files = [m for m in path_mentions(answer) if "." in m.rsplit("/", 1)[-1]] if paths else []
    counts: list[tuple[int, int]] = []
    for index, text in enumerate(blocks):
        corpus = _Corpus([text])
        found = sum(corpus.has_span(span) for span in spans) + sum(corpus.has_line(line) for line in lines)
        found += len(runs & _word_runs(text))
        if index < len(paths) and _names_file(paths[index], files):
            found += 1
        if found:
            counts.append((found, index))
    counts.sort(key=lambda pair: (-pair[0], pair[1]))
    return [index for _, index in counts[:limit]]


def mostly_ungrounded(grounding: Grounding) -> bool:
    """At least two of the answer's names and lines, and half of them, occur in no source."""
    return len(grounding.ungrounded) >= 2 and len(grounding.ungrounded) * 2 >= grounding.checked


def mark_ungrounded(answer: str, grounding: Grounding) -> tuple[str, str]:
    """The answer with each ungrounded backticked span marked where it first occurs, and the
    note that says which names and lines the sources do not contain ("" when all are found)."""
    if not grounding.ungrounded:
        return answer, ""
    for item in grounding.ungrounded:
        if item.startswith("`") and item in answer:
            answer = answer.replace(item, item + UNGROUNDED_MARK, 1)
    listed = ", ".join(item if item.startswith("`") else f"`{item[:80]}`" for item in grounding.ungrounded)
    return answer, f"> Not found in the sources shown: {listed}. Check these before relying on them."


# ---------------------------------------------------------------------------------------------
# Evidence before generation
# ---------------------------------------------------------------------------------------------

# Words of how people ask, not of what they ask about.
_QUESTION_WORDS_TEXT = """
    about across after also although another apart around based because before being between both
    could did doing done during each either else ever every explain explained explains find found
    give given goes going happen happens have having here however implement implementation
    implemented implements into just kind later like look made make makes many may might more most
    much must need needs new next now once only other others our out over own part parts perform
    performed performs please possible purpose rather really reason relationship relate related
    role same semantic semantics show shows since specific such sure take tell their them thing
    things through thus tell under until upon used uses using very want way ways well whether
    while within without work works working would yet your code codebase repo repository project
    function functions method methods class classes module modules file files logic mechanism
    behavior behaviour handle handled handles handling responsible system systems service services
    feature features support supported supports call called calls value values data type types
    different certain various overall ensure ensures design designed approach implemented defined
    define defines definition affect affects effect effects impact role roles decide decides
    decided whole newly nobody somebody anybody everybody anyone someone everyone last first
    alongside single instead again everything something anything nothing result results
"""
_QUESTION_WORDS = frozenset(_QUESTION_WORDS_TEXT.split())
# Longest first: "authorizations" loses "ations" (-> "authoriz", which "authorize" has too),
# not "s"; a stem is kept only with at least 4 letters left ("payments" -> "payment").
_SUFFIXES: tuple[str, ...] = (
    *("ations", "ation", "ments", "ment", "ings", "ing"),
    *("ies", "ers", "er", "ed", "es", "s"),
)


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def question_terms(question: str) -> list[str]:
    """The question's distinctive words, lower-cased and stemmed, without repeats."""
    terms: dict[str, None] = {}
    for word in _WORD.findall(question):
        for part in re.split(r"_|(?<=[a-z])(?=[A-Z])", word):
            lowered = part.lower()
            if len(lowered) < 3 or lowered in STOPWORDS or lowered in _QUESTION_WORDS:
                continue
            terms.setdefault(_stem(lowered), None)
    return list(terms)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text) is not None


def _mentions(text: str, name: str) -> bool:
    """`text` has `name` as a whole word, case-sensitively; a dotted name (`Dataset.update`,
    defined as `update` inside `class Dataset`) when it has every part; a file name
    (`utils.py`) only whole."""
    if _has_word(text, name):
        return True
    parts = name.split(".")
    if len(parts) == 1 or parts[-1] in FILE_SUFFIXES:
        return False
    return all(_has_word(text, part) for part in parts)


@dataclass(frozen=True)
class Evidence:
    """How much of the question's subject the retrieved code mentions: `coverage` is the share
    of `terms` found anywhere in the blocks, `best_block` the most any one block has; `named`
    are the code names the question uses and `named_found` those the blocks contain."""

    terms: list[str]
    missing: list[str]
    coverage: float
    best_block: float
    named: list[str] = field(default_factory=list)
    named_found: list[str] = field(default_factory=list)

    def supports_answer(self, min_coverage: float) -> bool:
        """Whether the retrieved code is about the question's subject: it has at least half of
        the code names the question uses, or `min_coverage` of its distinctive words. The answerer
        asks the model either way; support only sets how sure the model must be of NOT FOUND.

        Words alone say little: questions that name code (`How does NDArrayMixin delegate
        __getitem__?`) surround it with words no code contains ("delegation pattern"), and on
        81 dev-set questions whose named code was not retrieved the word share ranked real
        above absent-feature questions no better than chance (AUC 0.50; the model's odds: 0.89).
        Only nearly all of the words (0.8) marks a plain-word question as supported."""
        if self.named_found and 2 * len(self.named_found) >= len(self.named):
            return True
        return self.coverage >= min_coverage

    def to_json(self) -> dict[str, object]:
        return {
            "terms": self.terms,
            "missing": self.missing,
            "coverage": round(self.coverage, 3),
            "best_block": round(self.best_block, 3),
            "named": self.named,
            "named_found": self.named_found,
        }


def evidence(question: str, blocks: Sequence[tuple[str, str]]) -> Evidence:
    """`blocks` are (path, text) of the context the answer would be read from."""
    terms = question_terms(question)
    named = named_code(question)
    texts = [f"{path}\n{text}" for path, text in blocks]
    joined = "\n".join(texts)
    named_found = [name for name in named if _mentions(joined, name)]
    if not terms:
        return Evidence(
            terms=[], missing=[], coverage=1.0, best_block=1.0, named=named, named_found=named_found
        )
    lowered = [text.lower() for text in texts]
    found_in = [sum(term in block for term in terms) for block in lowered]
    missing = [term for term in terms if not any(term in block for block in lowered)]
    return Evidence(
        terms=terms,
        missing=missing,
        coverage=1 - len(missing) / len(terms),
        best_block=max(found_in, default=0) / len(terms),
        named=named,
        named_found=named_found,
    )
