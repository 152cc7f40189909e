"""The syntax-aware chunker: walks one tree-sitter parse tree and cuts it into chunks.

Definitions become "function"/"method"/"class"/"block" chunks, the code between them "module"
chunks; a definition larger than `max_lines` is split at its members or statements.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from tree_sitter import Node, Parser
from tree_sitter_language_pack import get_parser

from cia_assets.lib.core.records import ChunkDraft
from cia_assets.lib.indexing.chunking.decode import UTF8_BOM
from cia_assets.lib.indexing.chunking.definitions import (
    CONTAINER_ROLES,
    ROLE_BLOCK,
    ROLE_CLASS,
    ROLE_FLATTEN,
    ROLE_FUNCTION,
    ROLE_METHOD,
    ROLE_NAMESPACE,
    ROLE_TRANSPARENT,
    Definition,
    LanguageSpec,
    classify_with,
    clean_name,
)
from cia_assets.lib.indexing.chunking.kinds import (
    KIND_BLOCK,
    KIND_CLASS,
    KIND_FUNCTION,
    KIND_METHOD,
    KIND_MODULE,
)
from cia_assets.lib.indexing.chunking.specs import LINE_COMMENTS
from cia_assets.lib.indexing.chunking.windows import window_ranges

# Tree-sitter parsers are cached per thread: a Parser must not be shared across threads.
_PARSERS = threading.local()


def cached_parser(language: str) -> Parser | None:
    """This thread's parser for `language`, or None when the grammar is missing."""
    cache: dict[str, Parser | None] | None = getattr(_PARSERS, "cache", None)
    if cache is None:
        cache = {}
        _PARSERS.cache = cache
    if language not in cache:
        try:
            cache[language] = get_parser(language)  # type: ignore[arg-type]
        except Exception:  # a missing grammar only means "use windows"
            cache[language] = None
    return cache[language]


# Bodies whose children are the members / statements of a definition.
_BODY_TYPES: frozenset[str] = frozenset(
    {
        "annotation_type_body",
        "block",
        "body_statement",
        "braced_expression",
        "class_body",
        "class_declarations",
        "compound_statement",
        "constructor_body",
        "contract_body",
        "declaration_list",
        "do_block",
        "enum_body",
        "enum_body_declarations",
        "enum_class_body",
        "enum_declaration_list",
        "enum_member_declaration_list",
        "enum_variant_list",
        "extension_body",
        "field_declaration_list",
        "function_body",
        "instance_declarations",
        "interface_body",
        "message_body",
        "protocol_body",
        "statement_block",
        "statement_list",
        "statements",
        "template_body",
    }
)

# Comments and decorators that belong to the definition right below them.
_ATTACHABLE: frozenset[str] = frozenset(
    {
        "annotation",
        "attribute",
        "attribute_item",
        "attribute_list",
        "block_comment",
        "comment",
        "decorator",
        "doc_comment",
        "documentation_comment",
        "haddock",
        "line_comment",
        "marker_annotation",
        "multiline_comment",
        "pod",
    }
)

# Lines that carry no information on their own: closing brackets, `end`, `#endif`, optionally
# followed by a comment (`}  // namespace foo`). A chunk made only of these is not emitted.
_TRIVIAL_LINE = re.compile(
    r"\s*(?:[(){}\[\];,.]*|(?:end|fi|done|esac|endif|endfunction|endmodule)\b[(){}\[\];,.]*"
    r"|[(){}\[\];,.]+\s*(?://|/\*|#|--).*|(?:end|fi|done|esac)\b\s*(?:#|--).*"
    r"|#\s*(?:endif|else)\b.*)\s*"
)


def _is_trivial(line: str) -> bool:
    return _TRIVIAL_LINE.fullmatch(line) is not None


_MAX_DEPTH = 40
_MAX_HEADER_ROWS = 8
_MAX_CONTEXT_ROWS = 16


def _rows(node: Node) -> tuple[int, int]:
    """0-based first and last row; a node ending at column 0 does not occupy its last row."""
    start = node.start_point
    end = node.end_point
    end_row = end.row
    if end.column == 0 and end_row > start.row:
        end_row -= 1
    return start.row, end_row


@dataclass(slots=True)
class _Item:
    node: Node
    prefix: tuple[str, ...]  # qualifying names of enclosing containers
    context: tuple[int, ...]  # rows of enclosing headers
    in_class: bool


@dataclass(slots=True)
class _Unit:
    start: int
    end: int
    definition: Definition
    item: _Item
    symbol: str | None


class _TreeChunker:
    """Walks one parse tree; all rows are 0-based, ranges inclusive."""

    def __init__(
        self,
        language: str,
        spec: LanguageSpec,
        src: bytes,
        lines: list[str],
        max_lines: int,
        min_lines: int,
    ) -> None:
        self.language = language
        self.spec = spec
        self.src = src
        self.lines = lines
        self.max_lines = max_lines
        self.min_lines = min_lines
        self.out: list[ChunkDraft] = []
        self.comment_prefixes = LINE_COMMENTS.get(language, ())
        self._classified: dict[int, Definition | str | None] = {}

    # -- helpers ---------------------------------------------------------------------------

    def classify(self, node: Node) -> Definition | str | None:
        key = node.id
        if key not in self._classified:
            if node.type == "ERROR":
                self._classified[key] = ROLE_FLATTEN
            else:
                self._classified[key] = classify_with(self.spec, node, self.src)
        return self._classified[key]

    def attachable(self, node: Node) -> bool:
        if node.type in _ATTACHABLE:
            return True
        return self.spec.attach is not None and self.spec.attach(node, self.src)

    @staticmethod
    def kids(node: Node) -> list[Node]:
        """Named children with body wrappers (blocks, class bodies) opened up."""
        result: list[Node] = []
        for child in node.named_children:
            if child.type in _BODY_TYPES:
                for grandchild in child.named_children:
                    # Dart keeps a method's function_body beside its signature in the class body.
                    if grandchild.type in _BODY_TYPES and grandchild.type != "function_body":
                        result.extend(grandchild.named_children)
                    else:
                        result.append(grandchild)
            else:
                result.append(child)
        return result

    def header_rows(self, definition: Definition) -> tuple[int, ...]:
        """Rows of the definition's own header: `class Foo(Base):`, a (multi-line) signature."""
        core = definition.core
        start = core.start_point.row
        if definition.extra is not None:
            end = _rows(core)[1]
        else:
            body = core.child_by_field_name("body")
            if body is None or body.start_byte == body.end_byte:
                body = next((c for c in core.named_children if c.type in _BODY_TYPES), None)
            if body is None:
                end = start
            else:
                column = body.start_point.column
                before = self.src[body.start_byte - column : body.start_byte]
                end = body.start_point.row if before.strip() else body.start_point.row - 1
        for child in core.named_children:
            # Ruby keeps a comment between `module Foo` and its body inside the module node.
            if child.start_point.row > start and self.attachable(child):
                end = min(end, child.start_point.row - 1)
                break
        end = max(start, min(end, start + _MAX_HEADER_ROWS - 1))
        return tuple(range(start, end + 1))

    def header_only_row(self, node: Node) -> bool:
        """Whether the node's first line is a header (nothing multi-line starts on it)."""
        row = node.start_point.row
        first_line_types: set[str] = set()
        for child in node.named_children:
            child_row = child.start_point.row
            if child_row == row:
                if _rows(child)[1] > row and child.type not in _BODY_TYPES:
                    return False
                first_line_types.add(child.type)
            elif child.type in first_line_types:
                # The first line holds the first of a list of siblings (YAML pairs, array
                # items), not a header such as `if x:` or `jobs:`.
                return False
        return True

    def emit(self, start: int, end: int, kind: str, symbol: str | None, context: Sequence[int]) -> None:
        lines = self.lines
        while start <= end and not lines[start].strip():
            start += 1
        while end >= start and not lines[end].strip():
            end -= 1
        if start > end:
            return
        body = lines[start : end + 1]
        if all(_is_trivial(line) for line in body):
            return
        rows = sorted({r for r in context if r < start and not _is_trivial(lines[r])})
        if len(rows) > _MAX_CONTEXT_ROWS:
            rows = rows[:6] + rows[-(_MAX_CONTEXT_ROWS - 6) :]
        self.out.append(
            ChunkDraft(
                line_start=start + 1,
                line_end=end + 1,
                text="\n".join(body),
                language=self.language,
                kind=kind,
                symbol=symbol,
                context="\n".join(lines[r] for r in rows),
            )
        )

    def slices(self, start: int, end: int, kind: str, symbol: str | None, context: Sequence[int]) -> None:
        """Last resort for an unsplittable node (a giant literal): consecutive max_lines slices."""
        for a, b in window_ranges(start, end, self.max_lines, 0):
            self.emit(a, b, kind, symbol, context)

    # -- items -----------------------------------------------------------------------------

    def expand(
        self, nodes: Iterable[Node], prefix: tuple[str, ...], context: tuple[int, ...], in_class: bool
    ) -> Iterator[_Item]:
        """Items of a scope; namespaces, preprocessor blocks and parse errors are opened up."""
        for node in nodes:
            if node.start_byte == node.end_byte:
                continue
            found = self.classify(node)
            if found == ROLE_FLATTEN:
                yield from self.expand(node.named_children, prefix, context, in_class)
            elif found == ROLE_TRANSPARENT:
                header = (node.start_point.row,) if self.header_only_row(node) else ()
                yield from self.expand(self.kids(node), prefix, context + header, in_class)
            elif isinstance(found, Definition) and found.role == ROLE_NAMESPACE and self.holds_types(found):
                name = clean_name(found.name)
                yield from self.expand(
                    self.kids(found.core),
                    (*prefix, name) if name else prefix,
                    context + self.header_rows(found),
                    False,
                )
            else:
                yield _Item(node, prefix, context, in_class)

    def holds_types(self, definition: Definition) -> bool:
        for child in self.kids(definition.core):
            found = self.classify(child)
            if isinstance(found, Definition) and found.role in CONTAINER_ROLES:
                return True
        return False

    # -- scopes ----------------------------------------------------------------------------

    def scope(
        self,
        items: list[_Item],
        lo: int,
        hi: int,
        gap_kind: str,
        gap_symbol: str | None,
        gap_context: tuple[int, ...],
        depth: int,
    ) -> None:
        """Emit definitions among `items` as units and the code between them as gap chunks."""
        units = self.units(items, lo)
        cursor = lo
        index = 0
        for unit in units:
            if unit.start > cursor:
                index = self.gap(
                    items, index, cursor, unit.start - 1, gap_kind, gap_symbol, gap_context, depth
                )
            self.unit(unit, depth)
            cursor = unit.end + 1
        if cursor <= hi:
            self.gap(items, index, cursor, hi, gap_kind, gap_symbol, gap_context, depth)

    def units(self, items: list[_Item], lo: int) -> list[_Unit]:
        units: list[_Unit] = []
        consumed: set[int] = set()
        previous_end = lo - 1
        ends = [_rows(item.node)[1] for item in items]
        for i, item in enumerate(items):
            if i in consumed:
                continue
            found = self.classify(item.node)
            if not isinstance(found, Definition):
                continue
            start, end = item.node.start_point.row, ends[i]
            if (
                self.spec.pair_body
                and found.extra is None
                and i + 1 < len(items)
                and items[i + 1].node.type == "function_body"
            ):
                found.extra = items[i + 1].node
                end = max(end, ends[i + 1])
                consumed.add(i + 1)
            # Comments/decorators directly above (no blank line, on their own lines) belong here.
            j = i - 1
            while j >= 0 and j not in consumed and self.attachable(items[j].node):
                c_start = items[j].node.start_point.row
                if ends[j] < start - 1 or c_start <= previous_end:
                    break
                if j > 0 and ends[j - 1] >= c_start:
                    break
                if isinstance(self.classify(items[j].node), Definition):
                    break
                start = c_start
                j -= 1
            # Grammars that swallow a doc comment into the preceding node (Kotlin imports,
            # Haskell imports) still get it attached, line by line.
            while (
                self.comment_prefixes
                and start - 1 > previous_end
                and self.lines[start - 1].lstrip().startswith(self.comment_prefixes)
            ):
                start -= 1
            name = clean_name(found.name)
            symbol = ".".join((*item.prefix, name)) if name else None
            if units and start <= units[-1].end:
                units[-1].end = max(units[-1].end, end)
            elif (
                units
                and symbol is not None
                and units[-1].symbol == symbol
                and found.role in (ROLE_FUNCTION, ROLE_METHOD)
                and units[-1].definition.role == found.role
                and end - units[-1].start + 1 <= self.max_lines
                and not any(line.strip() for line in self.lines[units[-1].end + 1 : start])
            ):
                # Overloads, Haskell equations, Elixir clauses, property getter+setter.
                units[-1].end = end
            else:
                units.append(_Unit(start, end, found, item, symbol))
            previous_end = units[-1].end
        return units

    def gap(
        self,
        items: list[_Item],
        index: int,
        start: int,
        end: int,
        kind: str,
        symbol: str | None,
        context: tuple[int, ...],
        depth: int,
    ) -> int:
        """Emit lines [start, end] that hold no definition; returns the next item index."""
        nodes: list[Node] = []
        gap_context = context
        while index < len(items) and items[index].node.start_point.row <= end:
            item = items[index]
            if _rows(item.node)[1] >= start:
                if not nodes:
                    gap_context = item.context or context
                nodes.append(item.node)
            index += 1
        if end - start + 1 <= self.max_lines:
            self.emit(start, end, kind, symbol, gap_context)
        else:
            self.pack(nodes, start, end, kind, symbol, gap_context, (), depth)
        return index

    def unit(self, unit: _Unit, depth: int) -> None:
        definition, item = unit.definition, unit.item
        role = definition.role
        if role == ROLE_FUNCTION:
            kind = KIND_METHOD if item.in_class else KIND_FUNCTION
        elif role == ROLE_METHOD:
            kind = KIND_METHOD
        elif role == ROLE_BLOCK:
            kind = KIND_BLOCK
        else:
            kind = KIND_CLASS
        if unit.end - unit.start + 1 <= self.max_lines:
            self.emit(unit.start, unit.end, kind, unit.symbol, item.context)
            return
        if depth > _MAX_DEPTH:
            self.slices(unit.start, unit.end, kind, unit.symbol, item.context)
            return
        inner_context = item.context + self.header_rows(definition)
        kids = self.kids(definition.core)
        if definition.extra is not None:
            kids.extend(self.kids(definition.extra))
        if role in CONTAINER_ROLES:
            prefix = (*item.prefix, clean_name(definition.name) or "?")
            members = list(self.expand(kids, prefix, inner_context, role == ROLE_CLASS))
            self.scope(members, unit.start, unit.end, kind, unit.symbol, inner_context, depth + 1)
        else:
            prefix = tuple(unit.symbol.split(".")) if unit.symbol else item.prefix
            self.pack(kids, unit.start, unit.end, kind, unit.symbol, inner_context, prefix, depth + 1)

    # -- splitting large code --------------------------------------------------------------

    def pack(
        self,
        nodes: list[Node],
        start: int,
        end: int,
        kind: str,
        symbol: str | None,
        context: tuple[int, ...],
        prefix: tuple[str, ...],
        depth: int,
    ) -> None:
        """Cover [start, end] with pieces of at most max_lines, cut only between `nodes`."""
        limit = self.max_lines
        cursor = start  # first row of the current piece
        filled_end = -1  # last row of the nodes in the current piece (-1: none yet)
        comments_from = -1  # first row of the comment run right before the next node
        for node in nodes:
            n_start, n_end = node.start_point.row, _rows(node)[1]
            if n_end < cursor or node.start_byte == node.end_byte:
                continue
            if n_start > end:
                break
            n_start, n_end = max(n_start, cursor), min(n_end, end)
            is_comment = self.attachable(node)
            if n_end - cursor + 1 > limit:
                oversized = n_end - n_start + 1 > limit
                cut = comments_from if comments_from > cursor else n_start
                if oversized and cut - cursor < self.min_lines and filled_end - cursor + 1 < limit:
                    pass  # a short lead-in joins the first piece of the split node below
                elif cut > cursor:
                    self.flush(cursor, cut - 1, filled_end, kind, symbol, context)
                    cursor = cut
                comments_from = -1
                filled_end = -1
            if n_end - cursor + 1 <= limit:
                filled_end = n_end
                if not is_comment:
                    comments_from = -1
                elif comments_from < 0:
                    comments_from = n_start
                continue
            # One node too large on its own: split inside it.
            self.split_node(node, cursor, n_end, kind, symbol, context, prefix, depth)
            cursor = n_end + 1
            filled_end = -1
            comments_from = -1
        if cursor <= end:
            self.flush(cursor, end, filled_end, kind, symbol, context)

    def flush(
        self,
        start: int,
        end: int,
        filled_end: int,
        kind: str,
        symbol: str | None,
        context: tuple[int, ...],
    ) -> None:
        """Emit [start, end]; rows beyond the last node that do not fit are cut into slices."""
        if end - start + 1 <= self.max_lines:
            self.emit(start, end, kind, symbol, context)
            return
        if filled_end >= start:
            self.emit(start, filled_end, kind, symbol, context)
            start = filled_end + 1
        self.slices(start, end, kind, symbol, context)

    def split_node(
        self,
        node: Node,
        start: int,
        end: int,
        kind: str,
        symbol: str | None,
        context: tuple[int, ...],
        prefix: tuple[str, ...],
        depth: int,
    ) -> None:
        if depth > _MAX_DEPTH:
            self.slices(start, end, kind, symbol, context)
            return
        found = self.classify(node)
        if isinstance(found, Definition):
            name = clean_name(found.name)
            nested = _Unit(
                start,
                end,
                found,
                _Item(node, prefix, context, False),
                ".".join((*prefix, name)) if name else symbol,
            )
            self.unit(nested, depth + 1)
            return
        kids = [c for c in node.named_children if c.start_byte < c.end_byte]
        if not kids or all(_rows(c)[1] == c.start_point.row == kids[0].start_point.row for c in kids):
            self.slices(start, end, kind, symbol, context)
            return
        header = (node.start_point.row,) if self.header_only_row(node) else ()
        self.pack(kids, start, end, kind, symbol, context + header, prefix, depth + 1)


def chunk_tree(
    language: str,
    spec: LanguageSpec,
    parser: Parser,
    data: bytes,
    lines: list[str],
    max_lines: int,
    min_lines: int,
) -> list[ChunkDraft] | None:
    """Chunks of one parsed file, sorted by line range; None when the parse is unusable."""
    # Rows only depend on b"\n", so the raw bytes (minus a BOM) parse to the decoded lines'
    # numbering even when the file is not valid UTF-8.
    src = data[3:] if data.startswith(UTF8_BOM) else data
    tree = parser.parse(src)
    root = tree.root_node
    if root is None or (root.type == "ERROR" and root.named_child_count == 0):
        return None
    chunker = _TreeChunker(language, spec, src, lines, max_lines, min_lines)
    items = list(chunker.expand(root.named_children, (), (), False))
    chunker.scope(items, 0, len(lines) - 1, KIND_MODULE, None, (), 0)
    drafts = chunker.out
    drafts.sort(key=lambda d: (d.line_start, d.line_end))
    return drafts
