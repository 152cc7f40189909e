"""Fixed line windows: the fallback chunks for files without a grammar (or a failed parse)."""

from __future__ import annotations

from collections.abc import Iterator

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing.chunking.kinds import KIND_WINDOW


def window_ranges(first: int, last: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """0-based inclusive windows of `size` lines over [first, last], `overlap` lines shared."""
    size = max(size, 1)
    step = max(size - max(overlap, 0), 1)
    start = first
    while True:
        end = min(start + size - 1, last)
        yield start, end
        if end >= last:
            return
        start += step


def chunk_windows(
    language: str, lines: list[str], window_lines: int, window_overlap: int
) -> list[ChunkDraft]:
    """Overlapping "window" chunks over the non-blank span of `lines`."""
    out: list[ChunkDraft] = []
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    first = 0
    while first <= last and not lines[first].strip():
        first += 1
    if first > last:
        return out
    for a, b in window_ranges(first, last, window_lines, window_overlap):
        while a <= b and not lines[a].strip():
            a += 1
        while b >= a and not lines[b].strip():
            b -= 1
        if a > b or (out and out[-1].line_start <= a + 1 and out[-1].line_end >= b + 1):
            continue
        out.append(
            ChunkDraft(
                line_start=a + 1,
                line_end=b + 1,
                text="\n".join(lines[a : b + 1]),
                language=language,
                kind=KIND_WINDOW,
            )
        )
    return out
