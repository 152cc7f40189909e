"""Cut source files into citable chunks: syntax-aware for code, heading-aware for docs.

Every chunk is a contiguous, 1-based inclusive line range of the *decoded* file, and its
`text` is exactly those lines joined with "\\n". Lines are obtained by splitting the decoded
text on "\\n" only and removing one trailing "\\r" from each line (so CRLF files cite the same
line numbers as LF files and `str.splitlines()` quirks such as form feeds or U+2028 never shift
a line). `cia_assets.lib.indexing.pipeline.verify_lines_exist` re-derives lines the same way.

Kinds emitted (`ChunkDraft.kind`):

- "function": a top-level (or nested) function, including arrow functions / lambdas bound to a
  name, Haskell equations, Elixir `def`, R `f <- function`.
- "method": a function defined in a class-like container (or a Go method / Protobuf rpc).
- "class": a class-like container: class, struct, union, interface, trait, enum, record, impl
  block, protocol, extension, object, Ruby/Elixir/Rust/Julia module, Go type declaration, TS type
  alias, Haskell data/class/instance. Also the header/attribute pieces of a split large class.
- "block": an HCL/Terraform block (`resource "aws_s3_bucket" "b" { ... }`).
- "module": top-level code between definitions (imports, constants, scripts) and whole files of
  structural languages (JSON, YAML, ...), cut at syntax boundaries when large.
- "section": a Markdown / reStructuredText section (symbol = heading path "Install > From source").
- "window": fixed line windows, for files without a grammar (or a failed parse).

Every line holding something other than whitespace and closing punctuation (`}`, `);`, `end`,
`#endif`, ...) is in at least one chunk; chunks never overlap except "window" chunks.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from tree_sitter import Node, Parser
from tree_sitter_language_pack import get_parser

from cia_assets.lib.core.records import ChunkDraft

KIND_FUNCTION = "function"
KIND_METHOD = "method"
KIND_CLASS = "class"
KIND_BLOCK = "block"
KIND_MODULE = "module"
KIND_SECTION = "section"
KIND_WINDOW = "window"
CHUNK_KINDS: frozenset[str] = frozenset(
    {KIND_FUNCTION, KIND_METHOD, KIND_CLASS, KIND_BLOCK, KIND_MODULE, KIND_SECTION, KIND_WINDOW}
)

# ---------------------------------------------------------------------------------------------
# Language detection
# ---------------------------------------------------------------------------------------------

_EXTENSIONS: dict[str, str] = {
    # languages with definition-aware chunking
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".jsx": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".ipp": "cpp",
    ".inl": "cpp",
    ".tcc": "cpp",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".ino": "arduino",
    ".cs": "csharp",
    ".rb": "ruby",
    ".rake": "ruby",
    ".gemspec": "ruby",
    ".ru": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".sc": "scala",
    ".swift": "swift",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "bash",
    ".ksh": "bash",
    ".lua": "lua",
    ".hs": "haskell",
    ".ex": "elixir",
    ".exs": "elixir",
    ".r": "r",
    ".dart": "dart",
    ".jl": "julia",
    ".sol": "solidity",
    ".proto": "proto",
    ".tf": "hcl",
    ".tfvars": "hcl",
    ".hcl": "hcl",
    ".pl": "perl",
    ".pm": "perl",
    ".t": "perl",
    # structural languages: parsed and cut at syntax boundaries, no definitions
    ".json": "json",
    ".jsonc": "json",
    ".json5": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "scss",
    ".sql": "sql",
    ".xml": "xml",
    ".xsd": "xml",
    ".svg": "xml",
    ".plist": "xml",
    ".graphql": "graphql",
    ".gql": "graphql",
    ".cmake": "cmake",
    ".mk": "make",
    ".ini": "ini",
    ".cfg": "ini",
    ".vue": "vue",
    ".svelte": "svelte",
    ".m": "objc",
    ".mm": "objc",
    ".zig": "zig",
    ".nix": "nix",
    ".ml": "ocaml",
    ".mli": "ocaml_interface",
    ".clj": "clojure",
    ".erl": "erlang",
    ".elm": "elm",
    ".fs": "fsharp",
    ".groovy": "groovy",
    ".gradle": "groovy",
    ".ps1": "powershell",
    ".vim": "vim",
    # documents
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".text": "text",
}

_FILENAMES: dict[str, str] = {
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "makefile": "make",
    "gnumakefile": "make",
    "cmakelists.txt": "cmake",
    "rakefile": "ruby",
    "gemfile": "ruby",
    "podfile": "ruby",
    "vagrantfile": "ruby",
    "brewfile": "ruby",
    "guardfile": "ruby",
    "jenkinsfile": "groovy",
    "build.gradle": "groovy",
    "justfile": "make",
    ".bashrc": "bash",
    ".bash_profile": "bash",
    ".profile": "bash",
    ".zshrc": "bash",
    "pkgbuild": "bash",
    "license": "text",
    "licence": "text",
    "copying": "text",
    "notice": "text",
    "authors": "text",
    "changelog": "text",
    "readme": "text",
}

_SHEBANGS: dict[str, str] = {
    "python": "python",
    "python3": "python",
    "python2": "python",
    "bash": "bash",
    "sh": "bash",
    "zsh": "bash",
    "node": "javascript",
    "ruby": "ruby",
    "perl": "perl",
    "php": "php",
    "lua": "lua",
    "Rscript": "r",
    "julia": "julia",
    "elixir": "elixir",
}

# Languages whose grammar we know the definition node types of (function/class chunks).
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "bash",
    "c",
    "cpp",
    "csharp",
    "dart",
    "elixir",
    "go",
    "haskell",
    "hcl",
    "java",
    "javascript",
    "julia",
    "kotlin",
    "lua",
    "perl",
    "php",
    "proto",
    "python",
    "r",
    "ruby",
    "rust",
    "scala",
    "solidity",
    "swift",
    "tsx",
    "typescript",
)

# Parsed with tree-sitter but without definitions: large files are cut at syntax boundaries
# (top-level keys, elements, statements) instead of blind line windows.
STRUCTURAL_LANGUAGES: tuple[str, ...] = (
    "clojure",
    "cmake",
    "css",
    "dockerfile",
    "elm",
    "erlang",
    "fsharp",
    "graphql",
    "groovy",
    "html",
    "ini",
    "json",
    "make",
    "nix",
    "objc",
    "ocaml",
    "ocaml_interface",
    "powershell",
    "scss",
    "sql",
    "svelte",
    "toml",
    "vim",
    "vue",
    "xml",
    "yaml",
    "zig",
)

# Grammars that are supersets of one we have definitions for (chunked with its spec).
_SPEC_ALIASES: dict[str, str] = {"cuda": "cpp", "arduino": "cpp"}

DOCUMENT_LANGUAGES: tuple[str, ...] = ("markdown", "rst", "text")


def supported_languages() -> tuple[str, ...]:
    """Languages chunked into functions/classes (tree-sitter-language-pack names)."""
    return SUPPORTED_LANGUAGES


def detect_language(path: str) -> str | None:
    """Language of `path` from its file name or extension, or None when unknown.

    Returns a tree-sitter-language-pack grammar name ("python", "tsx", "csharp", ...) or one of
    "markdown", "rst", "text" for documents. `.h` maps to "c"; `chunk_file` switches it to "cpp"
    when the content looks like C++.
    """
    name = PurePosixPath(path.replace("\\", "/")).name
    lower = name.lower()
    if lower in _FILENAMES:
        return _FILENAMES[lower]
    if lower.startswith("dockerfile") or lower.endswith(".dockerfile"):
        return "dockerfile"
    if lower.startswith("makefile"):
        return "make"
    if lower.startswith("readme") or lower.startswith("license") or lower.startswith("changelog"):
        suffix = PurePosixPath(lower).suffix
        if suffix in ("", ".txt"):
            return "text"
    suffix = PurePosixPath(lower).suffix
    if not suffix:
        return None
    return _EXTENSIONS.get(suffix)


def _sniff_language(path: str, data: bytes) -> str | None:
    language = detect_language(path)
    if language == "c" and path.lower().endswith(".h") and _CPP_HINTS.search(data[:65536]):
        return "cpp"
    if language is None and data.startswith(b"#!"):
        first = data[:200].split(b"\n", 1)[0].decode("latin-1")
        parts = first[2:].split()
        if parts:
            program = parts[0].rsplit("/", 1)[-1]
            if program == "env" and len(parts) > 1:
                program = next((p for p in parts[1:] if not p.startswith("-")), "")
            program = re.sub(r"[\d.]+$", "", program) if program not in _SHEBANGS else program
            return _SHEBANGS.get(program)
    return language


_CPP_HINTS = re.compile(
    rb"^\s*(?:class\s+\w+[^;]*\{|namespace\s+\w*\s*\{|template\s*<|public:|private:|protected:)"
    rb"|std::|#include\s*<(?:vector|string|memory|map|iostream)>",
    re.MULTILINE,
)

# ---------------------------------------------------------------------------------------------
# Classification and decoding
# ---------------------------------------------------------------------------------------------

_BINARY_EXTENSION_GROUPS: tuple[str, ...] = (
    ".png .jpg .jpeg .gif .bmp .ico .icns .tif .tiff .webp .psd .xcf .heic .avif",
    ".pdf .doc .docx .xls .xlsx .ppt .pptx .odt .ods .odp .epub",
    ".zip .gz .tgz .bz2 .xz .zst .7z .rar .tar .lz .lz4 .jar .war .ear .whl .egg .apk .aar .ipa",
    ".dmg .iso .img .deb .rpm .msi .cab",
    ".exe .dll .so .dylib .a .lib .o .obj .ko .elf .bin .dat .class .pyc .pyo .pyd .wasm .beam",
    ".mp3 .mp4 .m4a .aac .ogg .oga .wav .flac .mov .avi .mkv .webm .wmv .mpg .mpeg",
    ".ttf .otf .woff .woff2 .eot",
    ".db .sqlite .sqlite3 .mdb .parquet .avro .orc .feather .arrow .npy .npz .pkl .pickle .h5",
    ".hdf5 .pt .pth .onnx .tflite .pb .ckpt .safetensors .joblib",
    ".jks .keystore .p12 .pfx .der .gpg",
)
_BINARY_EXTENSIONS: frozenset[str] = frozenset(
    ext for group in _BINARY_EXTENSION_GROUPS for ext in group.split()
)

_MINIFIED_SUFFIXES: tuple[str, ...] = (".min.js", ".min.mjs", ".min.css", ".js.map", ".css.map")

# Long lines are normal in prose, CSV and text; only code/data files are judged minified.
_NO_MINIFIED_CHECK: frozenset[str | None] = frozenset({*DOCUMENT_LANGUAGES, None})

MAX_AVERAGE_LINE_LENGTH = 300
MAX_LINE_LENGTH = 5000


def classify_file(path: str, data: bytes, *, max_bytes: int) -> str | None:
    """Why a file should not be chunked ("empty", "too_large", "binary", "minified"), or None."""
    if not data.strip():
        return "empty"
    if len(data) > max_bytes:
        return "too_large"
    lower = path.lower()
    if PurePosixPath(lower).suffix in _BINARY_EXTENSIONS or b"\x00" in data[:8192]:
        return "binary"
    if lower.endswith(_MINIFIED_SUFFIXES):
        return "minified"
    if _sniff_language(path, data[:4096]) not in _NO_MINIFIED_CHECK:
        line_count = data.count(b"\n") + 1
        if len(data) / line_count > MAX_AVERAGE_LINE_LENGTH:
            return "minified"
        if len(data) > MAX_LINE_LENGTH and max(map(len, data.split(b"\n"))) > MAX_LINE_LENGTH:
            return "minified"
    return None


_BOM = b"\xef\xbb\xbf"


def decode_source(data: bytes) -> str:
    """Decode file bytes to text without ever raising; the "\\n" count is preserved.

    UTF-8 (a leading BOM is dropped); otherwise UTF-8 with U+FFFD for the bad bytes when the
    file is mostly valid UTF-8, else Windows-1252 (a superset of printable Latin-1). All of these
    map b"\\n" and b"\\r" to themselves, so line numbers match the raw file.
    """
    if data.startswith(_BOM):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    replaced = data.decode("utf-8", errors="replace")
    bad = replaced.count("\ufffd")
    # Valid multi-byte sequences outnumbering the bad bytes means "UTF-8 with a few bad bytes";
    # otherwise it is a legacy single-byte encoding.
    non_ascii = sum(1 for ch in replaced if ord(ch) > 127) - bad
    if non_ascii > bad:
        return replaced
    return data.decode("cp1252", errors="replace")


def split_lines(text: str) -> list[str]:
    """Lines as cited: split on "\\n" only, one trailing "\\r" removed from each line."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


# ---------------------------------------------------------------------------------------------
# Shared line helpers
# ---------------------------------------------------------------------------------------------

# Lines that carry no information on their own: closing brackets, `end`, `#endif`, optionally
# followed by a comment (`}  // namespace foo`). A chunk made only of these is not emitted.
_TRIVIAL_LINE = re.compile(
    r"\s*(?:[(){}\[\];,.]*|(?:end|fi|done|esac|endif|endfunction|endmodule)\b[(){}\[\];,.]*"
    r"|[(){}\[\];,.]+\s*(?://|/\*|#|--).*|(?:end|fi|done|esac)\b\s*(?:#|--).*"
    r"|#\s*(?:endif|else)\b.*)\s*"
)


def _is_trivial(line: str) -> bool:
    return _TRIVIAL_LINE.fullmatch(line) is not None


def _window_ranges(first: int, last: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
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


# ---------------------------------------------------------------------------------------------
# Tree-sitter parsers (cached per thread: a Parser must not be shared across threads)
# ---------------------------------------------------------------------------------------------

_PARSERS = threading.local()


def _parser(language: str) -> Parser | None:
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


# ---------------------------------------------------------------------------------------------
# Language specs
# ---------------------------------------------------------------------------------------------

# Roles of definition nodes. "function" becomes kind "method" inside a class-like container.
_FUNCTION = "function"
_METHOD = "method"
_CLASS = "class"
_NAMESPACE = "namespace"  # module-like: transparent when it holds classes, else like a class
_BLOCK = "block"
_CONTAINER_ROLES = frozenset({_CLASS, _NAMESPACE, _BLOCK})

_TRANSPARENT = "transparent"  # descended into, first line kept as context (C++ namespace)
_FLATTEN = "flatten"  # descended into silently (preprocessor conditionals, parse errors)


@dataclass(slots=True)
class _Def:
    role: str
    name: str | None
    core: Node  # the node with the header and the body (inside decorators/export wrappers)
    extra: Node | None = None  # Dart: the function_body sibling that follows a signature


_Classifier = Callable[[Node, bytes], "_Def | str | None"]

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

_IDENT_TYPES: frozenset[str] = frozenset(
    {
        "bareword",
        "constant",
        "field_identifier",
        "identifier",
        "name",
        "property_identifier",
        "simple_identifier",
        "type_identifier",
        "word",
    }
)

# Definitions without a name of their own.
_DEFAULT_NAMES: dict[str, str] = {
    "init_declaration": "init",
    "deinit_declaration": "deinit",
    "constructor_definition": "constructor",
    "companion_object": "Companion",
    "static_initializer": "static",
}


def _text(node: Node, src: bytes) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8", errors="replace")


_TEMPLATE_ARGS = re.compile(r"<[^<>()]*>(?=::)")


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = _TEMPLATE_ARGS.sub("", " ".join(name.split())).replace("::", ".").strip(". \"'`")
    return name[:160] or None


def _declarator_name(node: Node, src: bytes) -> str | None:
    """Name inside a C/C++ declarator chain: `*foo(int)` -> foo, `Foo::bar() const` -> Foo::bar."""
    for _ in range(10):
        if node.type in (
            "identifier",
            "field_identifier",
            "qualified_identifier",
            "destructor_name",
            "operator_name",
            "type_identifier",
            "template_function",
            "operator_cast",
            "primitive_type",
        ):
            return _text(node, src)
        nxt = node.child_by_field_name("declarator")
        if nxt is None:
            nxt = next(
                (c for c in node.named_children if c.type.endswith("declarator") or c.type in _IDENT_TYPES),
                None,
            )
        if nxt is None:
            return _text(node, src)
        node = nxt
    return None


def _generic_name(node: Node, src: bytes) -> str | None:
    named = node.child_by_field_name("name")
    if named is not None:
        return _text(named, src)
    declarator = node.child_by_field_name("declarator")
    if declarator is not None:
        return _declarator_name(declarator, src)
    for child in node.named_children:
        if child.type in _IDENT_TYPES or child.type.endswith("_name"):
            return _text(child, src)
    return _DEFAULT_NAMES.get(node.type)


def _base_type_name(node: Node, src: bytes) -> str:
    """`Foo<T>` / `*Foo` / `pkg.Foo[T]` -> the bare type name."""
    text = _text(node, src)
    text = re.split(r"[<\[({]", text, maxsplit=1)[0]
    return text.strip().lstrip("*&").strip()


@dataclass(frozen=True, slots=True)
class _Spec:
    roles: dict[str, str]
    wrappers: frozenset[str] = frozenset()
    custom: _Classifier | None = None
    attach: Callable[[Node, bytes], bool] | None = None
    pair_body: bool = False  # Dart: a signature node is followed by its function_body sibling


def _js_value_def(value: Node | None, name: str | None) -> _Def | None:
    if value is None:
        return None
    if value.type in ("arrow_function", "function_expression", "function", "generator_function"):
        return _Def(_FUNCTION, name, value)
    if value.type in ("class", "class_expression"):
        return _Def(_CLASS, name, value)
    return None


def _js_custom(node: Node, src: bytes) -> _Def | str | None:
    t = node.type
    if t in ("lexical_declaration", "variable_declaration"):
        declarators = [c for c in node.named_children if c.type == "variable_declarator"]
        if len(declarators) != 1:
            return None
        name = declarators[0].child_by_field_name("name")
        return _js_value_def(
            declarators[0].child_by_field_name("value"),
            _text(name, src) if name is not None else None,
        )
    if t == "expression_statement":
        inner = node.named_children[0] if node.named_child_count else None
        if inner is None:
            return None
        if inner.type in ("internal_module", "module"):
            return _Def(_NAMESPACE, _generic_name(inner, src), inner)
        if inner.type == "assignment_expression":
            left = inner.child_by_field_name("left")
            return _js_value_def(
                inner.child_by_field_name("right"),
                _text(left, src) if left is not None else None,
            )
        return None
    if t == "export_statement":
        declaration = node.child_by_field_name("declaration")
        if declaration is not None:
            return _classify_with(_SPECS["typescript"], declaration, src)
        value = node.child_by_field_name("value")
        if value is not None:
            name = value.child_by_field_name("name")
            return _js_value_def(value, _text(name, src) if name is not None else "default")
        return None
    if t in ("public_field_definition", "field_definition"):
        value = node.child_by_field_name("value")
        name = node.child_by_field_name("name") or node.child_by_field_name("property")
        return _js_value_def(value, _text(name, src) if name is not None else None)
    if t in ("internal_module", "module"):
        return _Def(_NAMESPACE, _generic_name(node, src), node)
    if t == "ambient_declaration":
        for child in node.named_children:
            found = _classify_with(_SPECS["typescript"], child, src)
            if isinstance(found, _Def):
                return found
    return None


def _go_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type == "method_declaration":
        name = _generic_name(node, src)
        receiver = node.child_by_field_name("receiver")
        type_node = None
        if receiver is not None:
            for param in receiver.named_children:
                type_node = param.child_by_field_name("type")
                if type_node is not None:
                    break
        if type_node is not None and name:
            name = f"{_base_type_name(type_node, src)}.{name}"
        return _Def(_METHOD, name, node)
    if node.type == "type_declaration":
        specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
        name = _generic_name(specs[0], src) if len(specs) == 1 else None
        return _Def(_CLASS, name, node)
    return None


def _rust_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type == "impl_item":
        type_node = node.child_by_field_name("type")
        name = _base_type_name(type_node, src) if type_node is not None else None
        return _Def(_CLASS, name, node)
    if node.type == "mod_item":
        if node.child_by_field_name("body") is None:
            return None
        return _Def(_NAMESPACE, _generic_name(node, src), node)
    return None


def _c_custom(node: Node, src: bytes) -> _Def | str | None:
    t = node.type
    if t in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
        if node.child_by_field_name("body") is None:
            return None
        return _Def(_CLASS, _generic_name(node, src), node)
    if t == "type_definition":
        inner = node.child_by_field_name("type")
        if inner is None or inner.child_by_field_name("body") is None:
            return None
        declarator = node.child_by_field_name("declarator")
        name = _declarator_name(declarator, src) if declarator is not None else None
        return _Def(_CLASS, name or _generic_name(inner, src), node)
    if t == "declaration":
        # `class Foo { ... } foo;` / `struct S { ... };` parsed as a declaration
        inner = node.child_by_field_name("type")
        if (
            inner is not None
            and inner.type in ("struct_specifier", "union_specifier", "class_specifier")
            and inner.child_by_field_name("body") is not None
        ):
            return _Def(_CLASS, _generic_name(inner, src), node)
        return None
    if t == "template_declaration":
        for child in reversed(node.named_children):
            found = _classify_with(_SPECS["cpp"], child, src)
            if isinstance(found, _Def):
                return found
        return None
    return None


def _kotlin_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type == "function_declaration":
        name = None
        receiver = None
        for child in node.named_children:
            if child.type == "receiver_type":
                receiver = _base_type_name(child, src)
            elif child.type == "simple_identifier":
                name = _text(child, src)
                break
        if receiver and name:
            name = f"{receiver}.{name}"
        return _Def(_FUNCTION, name, node)
    return None


_ELIXIR_FUNCS = frozenset({"def", "defp", "defmacro", "defmacrop", "defguard", "defguardp", "defn"})
_ELIXIR_FUNC_HEADS = frozenset({"defdelegate", "defoverridable"})
_ELIXIR_MODULES = frozenset({"defmodule", "defprotocol", "defimpl"})
_ELIXIR_ATTACHED = frozenset({"doc", "spec", "impl", "deprecated", "decorate", "tag", "typedoc"})


def _elixir_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type != "call":
        return None
    target = node.child_by_field_name("target")
    if target is None or target.type != "identifier":
        return None
    keyword = _text(target, src)
    if keyword not in _ELIXIR_FUNCS and keyword not in _ELIXIR_MODULES:
        return None
    arguments = next((c for c in node.named_children if c.type == "arguments"), None)
    first = arguments.named_children[0] if arguments is not None and arguments.named_children else None
    name = None
    while first is not None and name is None:
        if first.type == "binary_operator":  # `def f(x) when is_integer(x)`
            first = first.child_by_field_name("left")
        elif first.type == "call":
            inner = first.child_by_field_name("target")
            name = _text(inner, src) if inner is not None else None
            break
        else:
            name = _text(first, src)
    if keyword in _ELIXIR_MODULES:
        return _Def(_NAMESPACE, name, node)
    return _Def(_FUNCTION, name, node)


def _elixir_attach(node: Node, src: bytes) -> bool:
    if node.type != "unary_operator":
        return False
    operand = node.child_by_field_name("operand")
    if operand is None or operand.type != "call":
        return False
    target = operand.child_by_field_name("target")
    return target is not None and _text(target, src) in _ELIXIR_ATTACHED


def _r_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type != "binary_operator":
        return None
    rhs = node.child_by_field_name("rhs")
    lhs = node.child_by_field_name("lhs")
    operator = node.child_by_field_name("operator")
    op = _text(operator, src) if operator is not None else ""
    if op in ("<-", "<<-", "=") and rhs is not None and rhs.type == "function_definition":
        return _Def(_FUNCTION, _text(lhs, src) if lhs is not None else None, node)
    if op in ("->", "->>") and lhs is not None and lhs.type == "function_definition":
        return _Def(_FUNCTION, _text(rhs, src) if rhs is not None else None, node)
    return None


def _callee_name(node: Node, src: bytes) -> str | None:
    """Julia: the called name inside a signature (`foo(x)::T where T` -> foo)."""
    stack = [node]
    for _ in range(12):
        if not stack:
            return None
        current = stack.pop(0)
        if current.type == "call_expression":
            callee = current.named_children[0] if current.named_children else None
            return _text(callee, src) if callee is not None else None
        if current.type == "identifier" and current is not node:
            return _text(current, src)
        stack.extend(current.named_children[:2])
    return None


def _julia_custom(node: Node, src: bytes) -> _Def | str | None:
    t = node.type
    if t in ("function_definition", "macro_definition"):
        signature = next((c for c in node.named_children if c.type == "signature"), None)
        name = _callee_name(signature, src) if signature is not None else None
        return _Def(_FUNCTION, name, node)
    if t == "assignment":
        # `f(x) = 2x`, `g(x::T) where {T} = x`: a call on the left makes it a function
        lhs = node.named_children[0] if node.named_children else None
        if lhs is not None and (
            lhs.type == "call_expression"
            or (
                lhs.type in ("where_expression", "typed_expression")
                and any(c.type == "call_expression" for c in lhs.named_children)
            )
        ):
            return _Def(_FUNCTION, _callee_name(lhs, src), node)
        return None
    if t in ("struct_definition", "abstract_definition", "primitive_definition"):
        head = next((c for c in node.named_children if c.type == "type_head"), None)
        name = _base_type_name(head, src).split("<:")[0].strip() if head is not None else None
        return _Def(_CLASS, name, node)
    if t == "module_definition":
        return _Def(_NAMESPACE, _generic_name(node, src), node)
    return None


def _dart_custom(node: Node, src: bytes) -> _Def | str | None:
    t = node.type
    if t in ("function_signature", "method_signature", "declaration"):
        inner = node
        if t != "function_signature":
            signature = next(
                (
                    c
                    for c in node.named_children
                    if c.type.endswith("_signature") and c.type != "function_type"
                ),
                None,
            )
            if signature is None:
                return None
            inner = signature
            if t == "declaration" and "constructor" not in inner.type:
                return None
        names = [_text(c, src) for c in inner.children_by_field_name("name")]
        if not names:
            names = [_text(c, src) for c in inner.named_children if c.type == "identifier"]
        if inner.type in ("function_signature", "getter_signature", "setter_signature"):
            names = names[-1:]
        return _Def(_FUNCTION, ".".join(names) or None, node)
    if t in ("mixin_declaration", "extension_declaration", "class_definition", "enum_declaration"):
        return _Def(_CLASS, _generic_name(node, src), node)
    return None


def _haskell_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type == "instance":
        name = node.child_by_field_name("name")
        patterns = node.child_by_field_name("patterns")
        parts = [_text(n, src) for n in (name, patterns) if n is not None]
        return _Def(_CLASS, " ".join(parts) or None, node)
    return None


def _hcl_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type != "block":
        return None
    parts: list[str] = []
    for child in node.named_children:
        if child.type == "identifier":
            parts.append(_text(child, src))
        elif child.type == "string_lit":
            parts.append(_text(child, src).strip('"'))
        elif child.type in ("block_start", "body"):
            break
    return _Def(_BLOCK, ".".join(parts) or None, node)


def _lua_custom(node: Node, src: bytes) -> _Def | str | None:
    t = node.type
    if t == "function_declaration":
        name_node = node.child_by_field_name("name")
        name = _text(name_node, src) if name_node is not None else None
        if name_node is not None and name_node.type == "method_index_expression" and name:
            return _Def(_METHOD, name.replace(":", "."), node)
        return _Def(_FUNCTION, name, node)
    if t in ("assignment_statement", "variable_declaration"):
        statement = node
        if t == "variable_declaration":
            assignment = next((c for c in node.named_children if c.type == "assignment_statement"), None)
            if assignment is None:
                return None
            statement = assignment
        variables = next((c for c in statement.named_children if c.type == "variable_list"), None)
        values = next((c for c in statement.named_children if c.type == "expression_list"), None)
        if (
            variables is not None
            and values is not None
            and values.named_child_count == 1
            and values.named_children[0].type == "function_definition"
        ):
            return _Def(_FUNCTION, _text(variables, src), node)
    return None


def _php_custom(node: Node, src: bytes) -> _Def | str | None:
    if node.type == "namespace_definition":
        return _TRANSPARENT if node.child_by_field_name("body") is not None else None
    return None


def _classify_with(spec: _Spec, node: Node, src: bytes) -> _Def | str | None:
    if spec.custom is not None:
        found = spec.custom(node, src)
        if found is not None:
            return found
    t = node.type
    if t in spec.wrappers:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        candidates = [inner] if inner is not None else list(reversed(node.named_children))
        for child in candidates:
            found = _classify_with(spec, child, src)
            if isinstance(found, _Def):
                return found
        return None
    role = spec.roles.get(t)
    if role is None:
        return None
    if role in (_TRANSPARENT, _FLATTEN):
        return role
    return _Def(role, _generic_name(node, src), node)


def _roles(
    function: str = "",
    method: str = "",
    cls: str = "",
    namespace: str = "",
    transparent: str = "",
    flatten: str = "",
) -> dict[str, str]:
    """Node type -> role, from space-separated node type names per role."""
    roles: dict[str, str] = {}
    for role, types in (
        (_FUNCTION, function),
        (_METHOD, method),
        (_CLASS, cls),
        (_NAMESPACE, namespace),
        (_TRANSPARENT, transparent),
        (_FLATTEN, flatten),
    ):
        roles.update(dict.fromkeys(types.split(), role))
    return roles


_C_PREPROC = "preproc_if preproc_ifdef preproc_else preproc_elif preproc_elifdef"
_JS_FUNCTIONS = "function_declaration generator_function_declaration method_definition function_signature"

_SPECS: dict[str, _Spec] = {
    "python": _Spec(
        _roles(function="function_definition", cls="class_definition"),
        wrappers=frozenset({"decorated_definition"}),
    ),
    "javascript": _Spec(
        _roles(function=_JS_FUNCTIONS, cls="class_declaration abstract_class_declaration"),
        custom=_js_custom,
    ),
    "typescript": _Spec(
        _roles(
            function=_JS_FUNCTIONS,
            cls="class_declaration abstract_class_declaration interface_declaration"
            " type_alias_declaration enum_declaration",
        ),
        custom=_js_custom,
    ),
    "java": _Spec(
        _roles(
            function="method_declaration constructor_declaration compact_constructor_declaration",
            cls="class_declaration interface_declaration enum_declaration record_declaration"
            " annotation_type_declaration",
        )
    ),
    "go": _Spec(_roles(function="function_declaration"), custom=_go_custom),
    "rust": _Spec(
        _roles(
            function="function_item function_signature_item macro_definition",
            cls="struct_item enum_item union_item trait_item type_item",
        ),
        custom=_rust_custom,
    ),
    "c": _Spec(_roles(function="function_definition", flatten=_C_PREPROC), custom=_c_custom),
    "cpp": _Spec(
        _roles(
            function="function_definition",
            flatten=_C_PREPROC,
            transparent="namespace_definition linkage_specification",
        ),
        custom=_c_custom,
    ),
    "csharp": _Spec(
        _roles(
            function="method_declaration constructor_declaration destructor_declaration"
            " operator_declaration conversion_operator_declaration",
            cls="class_declaration struct_declaration interface_declaration enum_declaration"
            " record_declaration record_struct_declaration",
            transparent="namespace_declaration",
        )
    ),
    "ruby": _Spec(
        _roles(
            function="method singleton_method",
            cls="class",
            namespace="module",
            transparent="singleton_class",
        )
    ),
    "php": _Spec(
        _roles(
            function="function_definition method_declaration",
            cls="class_declaration interface_declaration trait_declaration enum_declaration",
        ),
        custom=_php_custom,
    ),
    "kotlin": _Spec(
        _roles(
            function="function_declaration secondary_constructor",
            cls="class_declaration object_declaration companion_object",
        ),
        custom=_kotlin_custom,
    ),
    "scala": _Spec(
        _roles(
            function="function_definition function_declaration",
            cls="class_definition object_definition trait_definition enum_definition",
        )
    ),
    "swift": _Spec(
        _roles(
            function="function_declaration init_declaration deinit_declaration"
            " protocol_function_declaration subscript_declaration",
            cls="class_declaration protocol_declaration",
        )
    ),
    "bash": _Spec(_roles(function="function_definition")),
    "lua": _Spec({}, custom=_lua_custom),
    "haskell": _Spec(
        _roles(
            function="function signature bind",
            cls="data_type newtype class type_synomym type_family data_family",
            flatten="declarations",
        ),
        custom=_haskell_custom,
    ),
    "elixir": _Spec({}, custom=_elixir_custom, attach=_elixir_attach),
    "r": _Spec({}, custom=_r_custom),
    "dart": _Spec({}, custom=_dart_custom, pair_body=True),
    "julia": _Spec({}, custom=_julia_custom, attach=lambda node, src: node.type == "string_literal"),
    "solidity": _Spec(
        _roles(
            function="function_definition modifier_definition constructor_definition"
            " fallback_receive_definition",
            cls="contract_declaration interface_declaration library_declaration"
            " struct_declaration enum_declaration",
        )
    ),
    "proto": _Spec(_roles(method="rpc", cls="message enum service")),
    "hcl": _Spec(_roles(flatten="body"), custom=_hcl_custom),
    "perl": _Spec(_roles(function="subroutine_declaration_statement")),
}
_SPECS["tsx"] = _SPECS["typescript"]
for _alias, _target in _SPEC_ALIASES.items():
    _SPECS[_alias] = _SPECS[_target]

_HASH_COMMENT = ("#",)
_SLASH_COMMENT = ("//", "/*", "*")
_LINE_COMMENTS: dict[str, tuple[str, ...]] = {
    "python": _HASH_COMMENT,
    "ruby": _HASH_COMMENT,
    "bash": _HASH_COMMENT,
    "perl": _HASH_COMMENT,
    "r": _HASH_COMMENT,
    "elixir": _HASH_COMMENT,
    "julia": _HASH_COMMENT,
    "hcl": ("#", "//"),
    "haskell": ("--",),
    "lua": ("--",),
    **{
        language: _SLASH_COMMENT
        for language in (
            "c",
            "cpp",
            "cuda",
            "arduino",
            "csharp",
            "dart",
            "go",
            "java",
            "javascript",
            "kotlin",
            "php",
            "proto",
            "rust",
            "scala",
            "solidity",
            "swift",
            "tsx",
            "typescript",
        )
    },
}

# Structural languages: no definitions, but parse errors are still descended into.
_STRUCTURAL_SPEC = _Spec(roles={})


# ---------------------------------------------------------------------------------------------
# The syntax-aware chunker
# ---------------------------------------------------------------------------------------------

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
    definition: _Def
    item: _Item
    symbol: str | None


class _TreeChunker:
    """Walks one parse tree; all rows are 0-based, ranges inclusive."""

    def __init__(
        self,
        language: str,
        spec: _Spec,
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
        self.comment_prefixes = _LINE_COMMENTS.get(language, ())
        self._classified: dict[int, _Def | str | None] = {}

    # -- helpers ---------------------------------------------------------------------------

    def classify(self, node: Node) -> _Def | str | None:
        key = node.id
        if key not in self._classified:
            if node.type == "ERROR":
                self._classified[key] = _FLATTEN
            else:
                self._classified[key] = _classify_with(self.spec, node, self.src)
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

    def header_rows(self, definition: _Def) -> tuple[int, ...]:
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
        for a, b in _window_ranges(start, end, self.max_lines, 0):
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
            if found == _FLATTEN:
                yield from self.expand(node.named_children, prefix, context, in_class)
            elif found == _TRANSPARENT:
                header = (node.start_point.row,) if self.header_only_row(node) else ()
                yield from self.expand(self.kids(node), prefix, context + header, in_class)
            elif isinstance(found, _Def) and found.role == _NAMESPACE and self.holds_types(found):
                name = _clean_name(found.name)
                yield from self.expand(
                    self.kids(found.core),
                    (*prefix, name) if name else prefix,
                    context + self.header_rows(found),
                    False,
                )
            else:
                yield _Item(node, prefix, context, in_class)

    def holds_types(self, definition: _Def) -> bool:
        for child in self.kids(definition.core):
            found = self.classify(child)
            if isinstance(found, _Def) and found.role in _CONTAINER_ROLES:
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
            if not isinstance(found, _Def):
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
                if isinstance(self.classify(items[j].node), _Def):
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
            name = _clean_name(found.name)
            symbol = ".".join((*item.prefix, name)) if name else None
            if units and start <= units[-1].end:
                units[-1].end = max(units[-1].end, end)
            elif (
                units
                and symbol is not None
                and units[-1].symbol == symbol
                and found.role in (_FUNCTION, _METHOD)
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
        if role == _FUNCTION:
            kind = KIND_METHOD if item.in_class else KIND_FUNCTION
        elif role == _METHOD:
            kind = KIND_METHOD
        elif role == _BLOCK:
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
        if role in _CONTAINER_ROLES:
            prefix = (*item.prefix, _clean_name(definition.name) or "?")
            members = list(self.expand(kids, prefix, inner_context, role == _CLASS))
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
        if isinstance(found, _Def):
            name = _clean_name(found.name)
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


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_LIST_OR_QUOTE = re.compile(r" {0,3}(?:[-+*>]|\d+[.)])(?:\s|$)")


def _markdown_headings(lines: list[str]) -> list[tuple[int, int, str]]:
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


def _rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
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


def _chunk_document(
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


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _windows(language: str, lines: list[str], window_lines: int, window_overlap: int) -> list[ChunkDraft]:
    out: list[ChunkDraft] = []
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    first = 0
    while first <= last and not lines[first].strip():
        first += 1
    if first > last:
        return out
    for a, b in _window_ranges(first, last, window_lines, window_overlap):
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


def chunk_file(
    path: str,
    data: bytes,
    *,
    max_lines: int = 120,
    min_lines: int = 3,
    window_lines: int = 60,
    window_overlap: int = 10,
) -> list[ChunkDraft]:
    """Cut one file into chunks (see the module docstring); never raises on odd input.

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
    language = _sniff_language(path, data) or "text"
    try:
        if language == "markdown":
            return _chunk_document(language, lines, _markdown_headings(lines), max_lines)
        if language == "rst":
            return _chunk_document(language, lines, _rst_headings(lines), max_lines)
        spec = _SPECS.get(language)
        if spec is None and language in STRUCTURAL_LANGUAGES:
            spec = _STRUCTURAL_SPEC
        parser = _parser(language) if spec is not None else None
        if spec is not None and parser is not None:
            drafts = _chunk_tree(language, spec, parser, data, lines, max_lines, min_lines)
            if drafts is not None:
                return drafts
    except RecursionError:
        pass
    except Exception:  # a grammar bug must not stop indexing; windows still cite
        pass
    return _windows(language, lines, window_lines, window_overlap)


def _chunk_tree(
    language: str,
    spec: _Spec,
    parser: Parser,
    data: bytes,
    lines: list[str],
    max_lines: int,
    min_lines: int,
) -> list[ChunkDraft] | None:
    # Rows only depend on b"\n", so the raw bytes (minus a BOM) parse to the decoded lines'
    # numbering even when the file is not valid UTF-8.
    src = data[3:] if data.startswith(_BOM) else data
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
