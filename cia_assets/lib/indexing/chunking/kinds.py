"""The chunk kinds (`ChunkDraft.kind` values) the chunker emits; see the package docstring."""

from __future__ import annotations

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
