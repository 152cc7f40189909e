"""The entry point: `chunk_file` picks document, syntax-aware or window chunking for one file."""

from __future__ import annotations

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing.chunking.config_files import CONFIG_LANGUAGES, chunk_config
from cia_assets.lib.indexing.chunking.decode import decode_source, split_lines
from cia_assets.lib.indexing.chunking.documents import chunk_document, markdown_headings, rst_headings
from cia_assets.lib.indexing.chunking.languages import STRUCTURAL_LANGUAGES, sniff_language
from cia_assets.lib.indexing.chunking.specs import SPECS, STRUCTURAL_SPEC
from cia_assets.lib.indexing.chunking.tree import cached_parser, chunk_tree
from cia_assets.lib.indexing.chunking.windows import chunk_windows


def chunk_file(
    path: str,
    data: bytes,
    *,
    max_lines: int = 120,
    min_lines: int = 3,
    window_lines: int = 60,
    window_overlap: int = 10,
) -> list[ChunkDraft]:
    """Cut one file into chunks (see the package docstring); never raises on odd input.

    `max_lines` bounds code chunks and document sections; `min_lines` is the shortest lead-in
    kept as its own piece when a large statement is split (shorter ones join its first piece);
    `window_lines`/`window_overlap` shape the fallback windows for files without a grammar.
    """
    max_lines = max(max_lines, 1)
    min_lines = max(min_lines, 1)
    try:
        text = decode_source(data)
    except Exception:  # decode_source does not raise; belt and braces
        return []
    lines = split_lines(text)
    if not any(line.strip() for line in lines):
        return []
    language = sniff_language(path, data) or "text"
    try:
        if language == "markdown":
            return chunk_document(language, lines, markdown_headings(lines), max_lines)
        if language == "rst":
            return chunk_document(language, lines, rst_headings(lines), max_lines)
        spec = SPECS.get(language)
        if spec is None and language in STRUCTURAL_LANGUAGES:
            spec = STRUCTURAL_SPEC
        parser = cached_parser(language) if spec is not None else None
        if spec is not None and parser is not None:
            # tree-sitter reads UTF-8: a file in another encoding (Latin-1) is parsed as its
            # decoded text, so `calcule_réduction` stays one name; the lines are the same.
            source = text.encode("utf-8")
            if language in CONFIG_LANGUAGES:
                sections = chunk_config(language, parser, source, lines, max_lines)
                if sections is not None:
                    return sections
            drafts = chunk_tree(language, spec, parser, source, lines, max_lines, min_lines)
            if drafts is not None:
                return drafts
    except RecursionError:
        pass
    except Exception:  # a grammar bug must not stop indexing; windows still cite
        pass
    return chunk_windows(language, lines, window_lines, window_overlap)
