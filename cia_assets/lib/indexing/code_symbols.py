"""What each file defines, references and imports, from tree-sitter: the nodes of the code graph.

`code_graph` links a file that uses a name to the files that define it, and a file
to the modules it imports, as Aider's repo map does, so a question's candidate files can pass
rank to the code they depend on (a test to the module it tests, a caller to its callee).

Definitions are the chunker's own symbols plus every definition node of the language spec
the chunker uses (a method inside a class that is one chunk is still a definition);
references are the identifier nodes of the file's syntax tree, so names in comments and
strings do not count; imports are resolved for Python, the language whose
module paths are file paths.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tree_sitter import Language, Node, Query, QueryCursor
from tree_sitter_language_pack import get_language

from cia_assets.lib.indexing.chunking.decode import UTF8_BOM
from cia_assets.lib.indexing.chunking.definitions import (
    ROLE_FLATTEN,
    ROLE_TRANSPARENT,
    Definition,
    classify_with,
    clean_name,
)
from cia_assets.lib.indexing.chunking.specs import SPECS
from cia_assets.lib.indexing.chunking.tree import cached_parser

# Node types that are a name in some grammar; each language's query keeps those it has.
_REFERENCE_TYPES = (
    "identifier",
    "type_identifier",
    "field_identifier",
    "property_identifier",
    "simple_identifier",
    "constant",
    "name",
)
# Bump when what a file's symbols hold changes for the same blob, so files are read again.
SYMBOLS_FORMAT = 1
_SYMBOL_KINDS = frozenset({"function", "method", "class"})
# One-letter and two-letter names (`i`, `df`, `os`) link everything to everything.
MIN_NAME_LEN = 3
# A generated or minified file can hold tens of thousands of names: the most used carry the signal.
MAX_REFERENCES = 2000


@dataclass(frozen=True)
class FileSymbols:
    path: str
    blob_sha: str
    defines: tuple[str, ...]  # last segments of the file's definitions (`Session.send` -> send)
    references: dict[str, int]  # identifier -> uses in the file
    imports: tuple[str, ...]  # absolute dotted module names (Python)

    def to_json(self) -> dict[str, object]:
        return {
            "format": SYMBOLS_FORMAT,
            "path": self.path,
            "blob_sha": self.blob_sha,
            "defines": list(self.defines),
            "references": self.references,
            "imports": list(self.imports),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FileSymbols:
        return cls(
            path=str(data["path"]),
            blob_sha=str(data["blob_sha"]),
            defines=tuple(data["defines"]),  # type: ignore[arg-type]
            references=dict(data["references"]),  # type: ignore[call-overload]
            imports=tuple(data["imports"]),  # type: ignore[arg-type]
        )


@functools.lru_cache(maxsize=64)
def _reference_query(language: str) -> Query | None:
    """One query capturing every name node type the grammar has; None without a grammar."""
    try:
        grammar: Language = get_language(language)  # type: ignore[arg-type]
    except Exception:  # no grammar: no references, the file is still a graph node
        return None
    patterns = [f"({kind}) @name" for kind in _REFERENCE_TYPES if grammar.id_for_node_kind(kind, True)]
    return Query(grammar, "\n".join(patterns)) if patterns else None


@functools.lru_cache(maxsize=64)
def _definition_query(language: str) -> Query | None:
    """The node types the language's spec names as definitions (its custom classifiers'
    definitions reach the graph through the chunks' symbols)."""
    spec = SPECS.get(language)
    try:
        grammar: Language = get_language(language)  # type: ignore[arg-type]
    except Exception:
        return None
    if spec is None:
        return None
    kinds = [
        kind
        for kind, role in spec.roles.items()
        if role not in (ROLE_TRANSPARENT, ROLE_FLATTEN) and grammar.id_for_node_kind(kind, True)
    ]
    return Query(grammar, "\n".join(f"({kind}) @definition" for kind in kinds)) if kinds else None


def file_symbols(
    path: str, blob_sha: str, data: bytes, language: str, symbols: Iterable[tuple[str, str | None]]
) -> FileSymbols:
    """The graph node of one file; `symbols` are its chunks' (kind, symbol) pairs."""
    names = {symbol.rsplit(".", 1)[-1] for kind, symbol in symbols if kind in _SYMBOL_KINDS and symbol}
    references: Counter[str] = Counter()
    imports: list[str] = []
    try:
        imports = _read_tree(language, data, path, names, references)
    except Exception:  # a grammar bug must not stop indexing: the file stays a node, without edges
        references.clear()
    defines = sorted(name for name in names if len(name) >= MIN_NAME_LEN)
    for name in defines:
        references.pop(name, None)  # a file's own names are not references to another file
    return FileSymbols(
        path=path,
        blob_sha=blob_sha,
        defines=tuple(defines),
        references=dict(references.most_common(MAX_REFERENCES)),
        imports=tuple(dict.fromkeys(imports)),
    )


def _read_tree(language: str, data: bytes, path: str, names: set[str], references: Counter[str]) -> list[str]:
    """Adds the tree's definitions to `names` and its name uses to `references`; returns the
    Python imports."""
    imports: list[str] = []
    parser = cached_parser(language)
    query = _reference_query(language)
    if parser is not None and query is not None:
        src = data[3:] if data.startswith(UTF8_BOM) else data
        root = parser.parse(src).root_node
        definition_query = _definition_query(language)
        if definition_query is not None:
            spec = SPECS[language]
            for node in QueryCursor(definition_query).captures(root).get("definition", ()):
                found = classify_with(spec, node, src)
                name = clean_name(found.name) if isinstance(found, Definition) else None
                if name:
                    names.add(name.rsplit(".", 1)[-1])
        for node in QueryCursor(query).captures(root).get("name", ()):
            name = src[node.start_byte : node.end_byte].decode("utf-8", errors="replace")
            if len(name) >= MIN_NAME_LEN:
                references[name] += 1
        if language == "python":
            imports = _python_imports(root, src, path)
    return imports


def _python_imports(root: Node, src: bytes, path: str) -> list[str]:
    """`import a.b`, `from a.b import c` (also as `a.b.c`, which may be a module) and
    relative imports resolved against the file's package; only top-level statements and
    those in function bodies the walk reaches are read: imports under `if TYPE_CHECKING:`
    count too, since they name real dependencies."""
    package = path.split("/")[:-1]
    found: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "import_statement":
            for child in node.named_children:
                target = child.child_by_field_name("name") if child.type == "aliased_import" else child
                if target is not None and target.type == "dotted_name":
                    found.append(_text(target, src))
        elif node.type == "import_from_statement":
            module_node = node.child_by_field_name("module_name")
            if module_node is None:
                continue
            module = _resolve_module(_text(module_node, src), package)
            if module is None:
                continue
            found.append(module)
            for name_node in node.children_by_field_name("name"):
                target = (
                    name_node.child_by_field_name("name") if name_node.type == "aliased_import" else name_node
                )
                if target is not None:
                    found.append(f"{module}.{_text(target, src)}" if module else _text(target, src))
        elif node.type in (
            "module",
            "block",
            "if_statement",
            "try_statement",
            "function_definition",
            "class_definition",
            "decorated_definition",
            "else_clause",
            "except_clause",
            "elif_clause",
            "with_statement",
            "finally_clause",
        ):
            stack.extend(node.named_children)
    return [name for name in found if name]


def _resolve_module(name: str, package: list[str]) -> str | None:
    """`.utils` in `pkg/sub/mod.py` -> `pkg.sub.utils`; `..` climbs one package per dot."""
    if not name.startswith("."):
        return name
    dots = len(name) - len(name.lstrip("."))
    rest = name[dots:]
    if dots - 1 > len(package):
        return None  # climbs out of the repo
    base = package[: len(package) - (dots - 1)]
    return ".".join([*base, rest] if rest else base)


def _text(node: Node, src: bytes) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8", errors="replace")
