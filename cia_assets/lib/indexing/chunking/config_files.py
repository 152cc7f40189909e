"""Configuration files (YAML, TOML, INI, Makefiles) cut at their top-level entries.

A config file answers "how do I set X": its `llm:` key, its `[tool.ruff]` table, its `run:`
target. Packed into 120-line pieces like other structural files, cia.yaml's `llm:` section sat
in the middle of one 115-line chunk whose first 256 tokens (all the embedding model reads)
were about `data_dir` and `codebases`, and the Makefile was one chunk. Here each top-level
entry (a YAML key, or a document of a multi-document stream such as Kubernetes manifests; a
TOML table; an INI section; a make rule) is a chunk, with the comment lines written directly
above it, and its name is the chunk's symbol. Runs of one-line entries (`log_level: info`,
make variables) are one chunk; an entry longer than `max_lines` is cut into pieces at blank
lines, each later piece carrying the entry's name (or first line) as its context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tree_sitter import Node, Parser

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing.chunking.kinds import KIND_SECTION

CONFIG_LANGUAGES: frozenset[str] = frozenset({"yaml", "toml", "ini", "make"})
# A file of this many non-blank lines is one chunk, as the embedding model reads ~256 tokens
# (~30 lines of YAML): cut, its keys would lose the context of one another.
WHOLE_FILE_LINES = 30
_COMMENT_PREFIXES: dict[str, tuple[str, ...]] = {
    "yaml": ("#",),
    "toml": ("#",),
    "ini": ("#", ";"),
    "make": ("#",),
}


@dataclass(frozen=True)
class _Entry:
    row: int  # its first line (0-based), comments above it not included
    name: str | None
    one_line: bool  # `log_level: info`, `VENV := .venv`: joins the one-line entries beside it


def chunk_config(
    language: str, parser: Parser, source: bytes, lines: list[str], max_lines: int
) -> list[ChunkDraft] | None:
    """Chunks of one config file, in line order; None when it is short enough to read whole
    (`WHOLE_FILE_LINES`: most are, and they are not parsed here) or has fewer than two
    top-level entries: the structural chunker's pieces are then as good."""
    if sum(1 for line in lines if line.strip()) <= WHOLE_FILE_LINES:
        return None
    root = parser.parse(source).root_node
    entries = _yaml_entries(root) if language == "yaml" else _entries(language, root)
    if len(entries) < 2:
        return None
    starts = _starts_with_comments(entries, lines, _COMMENT_PREFIXES[language])
    # A file's header comments open its first chunk; an entry runs to the next one's start.
    starts[0] = 0
    ends = [start - 1 for start in starts[1:]] + [len(lines) - 1]
    out: list[ChunkDraft] = []
    for start, end, names in _groups(list(zip(starts, ends, entries, strict=True)), max_lines):
        symbol = names[0] if len(names) == 1 else None
        for piece_start, piece_end in _pieces(lines, start, end, max_lines):
            trimmed = _trim(lines, piece_start, piece_end)
            if trimmed is None:
                continue
            a, b = trimmed
            out.append(
                ChunkDraft(
                    line_start=a + 1,
                    line_end=b + 1,
                    text="\n".join(lines[a : b + 1]),
                    language=language,
                    kind=KIND_SECTION,
                    symbol=symbol,
                    # A later piece of a long entry says whose it is (`Deployment web`, `jobs:`).
                    context=(symbol or _first_code_line(lines, start, end, language)) if a > start else "",
                )
            )
    return out or None


def _entries(language: str, root: Node) -> list[_Entry]:
    return [
        _Entry(node.start_point.row, _entry_name(language, node), _one_line(node))
        for node in root.named_children
        if node.type != "comment"
    ]


def _one_line(node: Node) -> bool:
    # Some grammars (make, INI) end a node after the blank lines that follow it.
    return "\n" not in _text(node).strip()


def _entry_name(language: str, node: Node) -> str | None:
    if language == "toml" and node.type in ("table", "table_array_element", "pair"):
        key = next((c for c in node.named_children if c.type.endswith("_key")), None)
        return _text(key)
    if language == "ini" and node.type == "section":
        name = next((c for c in node.named_children if c.type == "section_name"), None)
        return _text(name).strip().strip("[]").strip() if name is not None else None
    if language == "make":
        if node.type == "rule":
            targets = next((c for c in node.named_children if c.type == "targets"), None)
            return _text(targets)
        if node.type in ("variable_assignment", "define_directive"):
            return _text(node.child_by_field_name("name"))
    return None


def _yaml_entries(root: Node) -> list[_Entry]:
    documents = [node for node in root.named_children if node.type == "document"]
    if len(documents) > 1:
        # Kubernetes manifests and other streams: a document is one object ("Deployment cia-chat").
        return [_Entry(doc.start_point.row, _yaml_document_name(doc), False) for doc in documents]
    top = _yaml_collection(documents[0]) if documents else None
    if top is None:
        return []
    if top.type == "block_mapping":
        return [
            _Entry(
                pair.start_point.row,
                _yaml_scalar(pair.child_by_field_name("key")),
                _one_line(pair),
            )
            for pair in top.named_children
            if pair.type == "block_mapping_pair"
        ]
    # A list at the top (Ansible tasks, CI steps): an item is named by its `name` or `id`.
    return [
        _Entry(item.start_point.row, _yaml_item_name(item), _one_line(item))
        for item in top.named_children
        if item.type == "block_sequence_item"
    ]


def _yaml_collection(node: Node) -> Node | None:
    """The block mapping or sequence of a document or of a pair's value (a block node)."""
    block = (
        node
        if node.type == "block_node"
        else next((c for c in node.named_children if c.type == "block_node"), None)
    )
    if block is None:
        return None
    return next((c for c in block.named_children if c.type in ("block_mapping", "block_sequence")), None)


def _yaml_pairs(mapping: Node | None) -> dict[str, Node]:
    if mapping is None or mapping.type != "block_mapping":
        return {}
    pairs: dict[str, Node] = {}
    for pair in mapping.named_children:
        key = _yaml_scalar(pair.child_by_field_name("key")) if pair.type == "block_mapping_pair" else None
        value = pair.child_by_field_name("value")
        if key is not None and value is not None:
            pairs.setdefault(key, value)
    return pairs


def _yaml_document_name(document: Node) -> str | None:
    pairs = _yaml_pairs(_yaml_collection(document))
    kind = _yaml_scalar(pairs.get("kind"))
    metadata = _yaml_collection(pairs["metadata"]) if "metadata" in pairs else None
    name = _yaml_scalar(_yaml_pairs(metadata).get("name"))
    return " ".join(part for part in (kind, name) if part) or None


def _yaml_item_name(item: Node) -> str | None:
    pairs = _yaml_pairs(_yaml_collection(item))
    return _yaml_scalar(pairs.get("name")) or _yaml_scalar(pairs.get("id"))


def _yaml_scalar(node: Node | None) -> str | None:
    """A plain or quoted scalar's text; None for collections and missing nodes."""
    if node is None or "\n" in _text(node):
        return None
    text = _text(node).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text or None


def _text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", errors="replace")


def _starts_with_comments(entries: list[_Entry], lines: list[str], prefixes: tuple[str, ...]) -> list[int]:
    """Each entry's first row, moved up over the unindented comment lines written directly
    above it (an indented comment belongs to the entry before, as a commented-out setting)."""
    starts: list[int] = []
    floor = 0
    for entry in entries:
        start = entry.row
        while start - 1 >= floor and lines[start - 1].startswith(prefixes):
            start -= 1
        starts.append(start)
        floor = entry.row + 1
    return starts


def _groups(spans: list[tuple[int, int, _Entry]], max_lines: int) -> Iterator[tuple[int, int, list[str]]]:
    """Each entry alone, but runs of one-line entries together (never past max_lines); each
    group with the names of its entries."""
    group: list[tuple[int, int, _Entry]] = []
    for span in spans:
        _, end, entry = span
        if group and entry.one_line and group[-1][2].one_line and end - group[0][0] + 1 <= max_lines:
            group.append(span)
            continue
        if group:
            yield group[0][0], group[-1][1], [e.name for _, _, e in group if e.name]
        group = [span]
    if group:
        yield group[0][0], group[-1][1], [e.name for _, _, e in group if e.name]


def _trim(lines: list[str], start: int, end: int) -> tuple[int, int] | None:
    while start <= end and not lines[start].strip():
        start += 1
    while end >= start and not lines[end].strip():
        end -= 1
    return (start, end) if start <= end else None


def _pieces(lines: list[str], start: int, end: int, max_lines: int) -> Iterator[tuple[int, int]]:
    """[start, end] in pieces of at most max_lines, cut before a line that follows a blank one
    where there is such a line, else at max_lines."""
    cursor = start
    while end - cursor + 1 > max_lines:
        limit = cursor + max_lines  # the first row that may not be in this piece
        cut = next(
            (
                row
                for row in range(limit, cursor + 1, -1)
                if not lines[row - 1].strip() and lines[row].strip()
            ),
            limit,
        )
        yield cursor, cut - 1
        cursor = cut
    yield cursor, end


def _first_code_line(lines: list[str], start: int, end: int, language: str) -> str:
    prefixes = _COMMENT_PREFIXES[language]
    return next(
        (line for line in lines[start : end + 1] if line.strip() and not line.startswith((*prefixes, "---"))),
        "",
    )
