"""Heading-aware chunking of Markdown and reStructuredText: one "section" chunk per heading."""

from __future__ import annotations

import re
from collections.abc import Iterator

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing.chunking.kinds import KIND_SECTION

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_LIST_OR_QUOTE = re.compile(r" {0,3}(?:[-+*>]|\d+[.)])(?:\s|$)")


def markdown_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(row, level, title) of ATX and setext headings outside code fences and front matter."""
    headings: list[tuple[int, int, str]] = []
    fence: str | None = None
    start = 0
    if lines and lines[0].strip() == "---":
        # YAML front matter belongs to the preamble; its closing `---` is not a heading underline.
        for i in range(1, min(len(lines), 200)):
            if lines[i].strip() in ("---", "..."):
                start = i + 1
                break
    previous_text = False  # whether the previous line could be a setext heading's text
    for row in range(start, len(lines)):
        line = lines[row]
        fence_match = _FENCE.fullmatch(line)
        if fence is not None:
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
                and not fence_match.group(2).strip()
            ):
                fence = None
            previous_text = False
            continue
        if fence_match:
            fence = fence_match.group(1)
            previous_text = False
            continue
        atx = _ATX_HEADING.fullmatch(line)
        if atx:
            headings.append((row, len(atx.group(1)), (atx.group(2) or "").strip()))
            previous_text = False
            continue
        underline = _SETEXT_UNDERLINE.fullmatch(line)
        if underline and previous_text:
            level = 1 if underline.group(1)[0] == "=" else 2
            headings.append((row - 1, level, lines[row - 1].strip()))
            previous_text = False
            continue
        stripped = line.strip()
        previous_text = (
            bool(stripped)
            and not line.startswith("    ")
            and not _LIST_OR_QUOTE.match(line)
            and not (underline is not None)
        )
    return headings


_RST_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1{2,}\s*")


def rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(row, level, title) of reStructuredText titles; levels follow first-seen adornment styles."""
    styles: list[tuple[str, bool]] = []
    headings: list[tuple[int, int, str]] = []
    row = 0
    count = len(lines)
    while row < count - 1:
        text = lines[row]
        under = lines[row + 1]
        over = lines[row - 1] if row > 0 else ""
        if (
            text.strip()
            and not text.startswith((" ", "\t"))
            and _RST_ADORNMENT.fullmatch(under)
            and len(under.rstrip()) >= len(text.rstrip())
            and not _RST_ADORNMENT.fullmatch(text)
        ):
            char = under[0]
            overlined = bool(_RST_ADORNMENT.fullmatch(over)) and over[0] == char
            style = (char, overlined)
            if style not in styles:
                styles.append(style)
            first = row - 1 if overlined else row
            if not headings or headings[-1][0] < first:
                headings.append((first, styles.index(style) + 1, text.strip()))
            row += 2
            continue
        row += 1
    return headings


def chunk_document(
    language: str,
    lines: list[str],
    headings: list[tuple[int, int, str]],
    max_lines: int,
) -> list[ChunkDraft]:
    out: list[ChunkDraft] = []
    starts = [row for row, _, _ in headings]
    bounds = list(zip([0, *starts], [*starts, len(lines)], strict=True))
    stack: list[tuple[int, int, str]] = []  # (level, row, title) of open headings
    sections: list[tuple[int, int, tuple[tuple[int, int, str], ...]]] = []
    for index, (start, stop) in enumerate(bounds):
        if index == 0:
            if start < stop:
                sections.append((start, stop - 1, ()))
            continue
        row, level, title = headings[index - 1]
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, row, title))
        sections.append((start, stop - 1, tuple(stack)))

    # A heading followed directly by a deeper heading ("# Install" then "## From source") is
    # merged into that subsection instead of becoming a one-line chunk.
    merged: list[tuple[int, int, tuple[tuple[int, int, str], ...]]] = []
    pending: int | None = None
    for i, (start, end, path) in enumerate(sections):
        begin = start if pending is None else pending
        has_body = any(line.strip() for line in lines[start + 1 : end + 1]) or not path
        nxt = sections[i + 1] if i + 1 < len(sections) else None
        if (
            path
            and not has_body
            and nxt is not None
            and len(nxt[2]) > len(path)
            and nxt[2][: len(path)] == path
        ):
            pending = begin
            continue
        merged.append((begin, end, path))
        pending = None

    for start, end, path in merged:
        symbol = " > ".join(title or "(untitled)" for _, _, title in path) or None
        heading_rows = [row for _, row, _ in path]
        for a, b in _document_pieces(lines, start, end, max_lines):
            context_rows = [r for r in heading_rows if r < a]
            body = lines[a : b + 1]
            while body and not body[-1].strip():
                body.pop()
                b -= 1
            lead = 0
            while lead < len(body) and not body[lead].strip():
                lead += 1
            if lead == len(body):
                continue
            a += lead
            body = body[lead:]
            out.append(
                ChunkDraft(
                    line_start=a + 1,
                    line_end=b + 1,
                    text="\n".join(body),
                    language=language,
                    kind=KIND_SECTION,
                    symbol=symbol,
                    context="\n".join(lines[r] for r in context_rows),
                )
            )
    return out


def _document_pieces(lines: list[str], start: int, end: int, max_lines: int) -> Iterator[tuple[int, int]]:
    """Split [start, end] into pieces of at most max_lines, preferably at blank lines outside fences."""
    if end - start + 1 <= max_lines:
        yield start, end
        return
    cuts: list[int] = []  # rows where a new paragraph may start
    fence: str | None = None
    for row in range(start + 1, end + 1):
        match = _FENCE.fullmatch(lines[row])
        if match:
            fence = None if fence is not None and match.group(1)[0] == fence[0] else (fence or match.group(1))
        if fence is None and not lines[row - 1].strip() and lines[row].strip():
            cuts.append(row)
    cursor = start
    candidate = None
    for cut in cuts:
        if cut - cursor > max_lines:
            if candidate is not None and candidate > cursor:
                yield cursor, candidate - 1
                cursor = candidate
            while cut - cursor > max_lines:
                yield cursor, cursor + max_lines - 1
                cursor += max_lines
        candidate = cut
    while end - cursor + 1 > max_lines:
        if candidate is not None and cursor < candidate and candidate - cursor <= max_lines:
            yield cursor, candidate - 1
            cursor = candidate
        else:
            yield cursor, cursor + max_lines - 1
            cursor += max_lines
    yield cursor, end
