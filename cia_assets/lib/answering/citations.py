"""The citation contract, in one place: the `[n]` marker, the numbered source blocks the model
reads, the citations an answer keeps, and the check of markers as an answer streams.

A context block is source `n` of a prompt; a marker `[n]` in an answer cites it. Every user of
markers (the answerer, synthetic Q&A, training data) reads them through `CITATION_MARKER` and
`cited_numbers`, and every prompt shows blocks through
`format_sources` / `source_block`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cia_assets.lib.core.records import LinkedSpan, SourceSpan

# `[3]`, `[1, 2]`, `[1;2]`: one or more block numbers in brackets.
CITATION_MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
# The longest prefix of a marker worth holding back while streaming ("[12, 3" ...).
_MAX_PENDING_MARKER = 16
PREVIEW_LINES = 8


def cited_numbers(text: str) -> list[int]:
    """Every block number the text's markers name, in order of appearance (repeats kept)."""
    return [int(n) for m in CITATION_MARKER.finditer(text) for n in re.split(r"[,;]", m.group(1))]


def renumber_markers(text: str, mapping: dict[int, int]) -> str:
    """Rewrite the numbers of every marker by `mapping` (an example's sources reordered); numbers
    not in it are dropped, and a marker left with none is removed."""

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"[,;]", match.group(1))]
        kept = [mapping[n] for n in numbers if n in mapping]
        return "".join(f"[{n}]" for n in kept)

    return " ".join(CITATION_MARKER.sub(replace, text).split())


def tidy_answer(text: str) -> str:
    """Whitespace left where removed markers stood."""
    text = re.sub(r"[ \t]+([.,;:])", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


@dataclass(frozen=True, kw_only=True)
class ContextBlock(LinkedSpan):
    """Lines of one file at one commit, shown to the model as source `n`, linked to those lines
    (see `LinkedSpan`)."""

    n: int
    language: str
    symbol: str | None
    text: str

    @property
    def read(self) -> str:
        """What the model reads of the block besides its file: the symbol its header names
        (`ResolvedGrouper.__post_init__` for a method cut from its class) and the code."""
        return f"{self.symbol}\n{self.text}" if self.symbol else self.text

    def preview(self) -> SourcePreview:
        return SourcePreview(
            n=self.n,
            repo=self.repo,
            path=self.path,
            line_start=self.line_start,
            line_end=self.line_end,
            symbol=self.symbol,
            language=self.language,
            url=self.url,
            commit_sha=self.commit_sha,
            preview="\n".join(self.text.splitlines()[:PREVIEW_LINES]),
        )

    def citation(self) -> Citation:
        return Citation(
            n=self.n,
            repo=self.repo,
            path=self.path,
            line_start=self.line_start,
            line_end=self.line_end,
            url=self.url,
            commit_sha=self.commit_sha,
        )


@dataclass(frozen=True, kw_only=True)
class Citation(SourceSpan):
    """Source `n` of an answer's context, cited by the answer."""

    n: int
    url: str | None
    commit_sha: str

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, **self.span_json(), "url": self.url}

    @property
    def link(self) -> str:
        return self.url or self.label


@dataclass(frozen=True, kw_only=True)
class SourcePreview(SourceSpan):
    """A block of the context as the caller sees it before the explanation: where it is, and
    its first lines."""

    n: int
    symbol: str | None
    language: str
    url: str | None
    commit_sha: str
    preview: str

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            **self.span_json(),
            "symbol": self.symbol,
            "language": self.language,
            "url": self.url,
            "preview": self.preview,
        }


# A block's header line as format_sources writes it ("[2] payments/auth.py lines 4-8 (authorize)").
SOURCE_HEADER = r"\[(?P<n>\d+)\][ \t]+(?P<path>\S+)[ \t]+lines[ \t]+(?P<start>\d+)-(?P<end>\d+)"
# A block as format_sources writes it: what reads a prompt back (the egress redaction) finds
# each block's file and code with this.
SOURCE_BLOCK = re.compile(
    rf"^{SOURCE_HEADER}[^\n]*\n(?P<fence>`{{3,}})[^\n]*\n(?P<body>.*?)\n(?P=fence)(?=\n|\Z)",
    re.MULTILINE | re.DOTALL,
)


def format_sources(blocks: Sequence[ContextBlock]) -> str:
    """The sources as the model reads them. Each is fenced; a fence inside the code is
    lengthened past, so code cannot close its block and pose as the prompt."""
    parts: list[str] = []
    for block in blocks:
        fence = "```"
        while fence in block.text:
            fence += "`"
        what = f" ({block.symbol})" if block.symbol else ""
        parts.append(  # SOURCE_HEADER reads this line back
            f"[{block.n}] {block.path} lines {block.line_start}-{block.line_end}{what}\n"
            f"{fence}{block.language}\n{block.text}\n{fence}"
        )
    return "\n\n".join(parts)


# A source's header line as `format_sources` writes it, repeated in an answer: a small model
# often lists a source ("[1] tests/test_models.py lines 106-121 (test_corrupted_part)" and its
# code) instead of explaining, and its number may be another source's.
_REPEATED_HEADER = re.compile(rf"^[ \t]*{SOURCE_HEADER}(?:[ \t]+\([^)\n]*\))?[ \t]*$", re.MULTILINE)


def restate_source_headers(answer: str, blocks: Sequence[ContextBlock]) -> str:
    """The answer with each repeated source header restated as a sentence citing the block of
    that file and lines (`test_corrupted_part` in `tests/test_models.py`, lines 106-121 [2]),
    the block's own number and symbol in place of the model's. A header no block has (the
    prompt's worked example) is left as it is."""

    def restate(match: re.Match[str]) -> str:
        start, end = int(match["start"]), int(match["end"])
        of_file = [block for block in blocks if block.path == match["path"]]
        # The block of those lines, else one they overlap, else the file's first.
        overlapping = [block for block in of_file if block.line_start <= end and block.line_end >= start]
        exact = [block for block in of_file if (block.line_start, block.line_end) == (start, end)]
        block = next(iter(exact or overlapping or of_file), None)
        if block is None:
            return match.group()
        named = f"`{block.symbol}` in " if block.symbol else ""
        return f"{named}`{block.path}`, lines {block.line_start}-{block.line_end} [{block.n}]"

    return _REPEATED_HEADER.sub(restate, answer)


# A line longer than this that started with "[" is no header: it is released.
_MAX_HELD_LINE = 400


class SourceHeaderRestater:
    """`restate_source_headers` on streamed text, so that what streams is what the final
    answer says: a line that may repeat a source header (it starts with "[") is held back
    until it ends, then restated; any other text passes at once."""

    def __init__(self, blocks: Sequence[ContextBlock]) -> None:
        self._blocks = blocks
        self._held = ""
        self._line_start = True  # nothing of the current line has been passed on

    def feed(self, text: str) -> str:
        out: list[str] = []
        for piece in re.split(r"(?<=\n)", text):
            if not piece:
                continue
            if not self._line_start:
                out.append(piece)
                self._line_start = piece.endswith("\n")
                continue
            self._held += piece
            if self._held.endswith("\n"):
                out.append(restate_source_headers(self._held, self._blocks))
                self._held = ""
                continue
            opening = self._held.lstrip(" \t")
            if not opening or (opening.startswith("[") and len(self._held) < _MAX_HELD_LINE):
                continue  # may still become a header
            out.append(self._held)
            self._held, self._line_start = "", False
        return "".join(out)

    def finish(self) -> str:
        held, self._held, self._line_start = self._held, "", True
        return restate_source_headers(held, self._blocks)


class CitationFilter:
    """Checks `[n]` markers in streamed text against the context's block numbers.

    Text is passed through as it comes, except a possible marker's prefix, which is held
    back until it is complete (at most a few characters). Valid numbers are kept; invalid
    ones are removed and remembered.
    """

    def __init__(self, valid_numbers: set[int]) -> None:
        self.valid_numbers = valid_numbers
        self.cited: list[int] = []
        self.invalid: list[str] = []
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending += text
        out: list[str] = []
        while self._pending:
            bracket = self._pending.find("[")
            if bracket < 0:
                out.append(self._pending)
                self._pending = ""
                break
            out.append(self._pending[:bracket])
            rest = self._pending[bracket:]
            match = CITATION_MARKER.match(rest)
            if match:
                out.append(self._check(match.group(1)))
                self._pending = rest[match.end() :]
                continue
            if len(rest) < _MAX_PENDING_MARKER and re.fullmatch(r"\[\s*[\d\s,;]*", rest):
                self._pending = rest  # maybe a marker still arriving
                break
            out.append("[")
            self._pending = rest[1:]
        return "".join(out)

    def finish(self) -> str:
        tail, self._pending = self._pending, ""
        return tail

    def _check(self, numbers_text: str) -> str:
        kept: list[int] = []
        for raw in re.split(r"[,;]", numbers_text):
            number = int(raw.strip())
            if number in self.valid_numbers:
                kept.append(number)
                if number not in self.cited:
                    self.cited.append(number)
            else:
                self.invalid.append(f"[{number}]")
        return "".join(f"[{n}]" for n in kept)


def render_sources(citations: Sequence[Citation]) -> str:
    return "Sources:\n" + "\n".join(f"[{c.n}] {c.link}" for c in citations)
