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
  structural languages (JSON, short YAML, ...), cut at syntax boundaries when large.
- "section": a Markdown / reStructuredText section (symbol = heading path "Install > From source"),
  or a top-level entry of a config file longer than 30 lines (YAML key or document, TOML table,
  INI section, make rule; symbol = its name: "llm", "tool.ruff", "Deployment web", "run";
  `chunking.config_files`).
- "window": fixed line windows, for files without a grammar (or a failed parse).

Every line holding something other than whitespace and closing punctuation (`}`, `);`, `end`,
`#endif`, ...) is in at least one chunk; chunks never overlap except "window" chunks.
"""

from __future__ import annotations

from cia_assets.lib.indexing.chunking.decode import classify_file, decode_source, split_lines
from cia_assets.lib.indexing.chunking.dispatch import chunk_file
from cia_assets.lib.indexing.chunking.kinds import CHUNK_KINDS
from cia_assets.lib.indexing.chunking.languages import (
    SUPPORTED_LANGUAGES,
    detect_language,
    supported_languages,
)

__all__ = [
    "CHUNK_KINDS",
    "SUPPORTED_LANGUAGES",
    "chunk_file",
    "classify_file",
    "decode_source",
    "detect_language",
    "split_lines",
    "supported_languages",
]
