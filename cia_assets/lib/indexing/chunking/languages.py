"""Which language a file is in: extension, file name and shebang tables, and the language groups.

Language names are tree-sitter-language-pack grammar names, plus "markdown", "rst" and "text" for
documents.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

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


def sniff_language(path: str, data: bytes) -> str | None:
    """`detect_language`, refined by the content: C++ `.h` headers, shebangs of extensionless scripts."""
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
