"""The long-lived handles of one cia.yaml in one process: the vector store, the embedding model
and the embedding cache.

Whoever owns a process's lifetime makes one `Project` and passes it down: a CLI command, the chat
app and the MCP server (through `AssistantService`'s answerer), a Dagster run (the resources in
`defs/resources.py` own one each, opened in `setup_for_execution` and closed in teardown). So a
process holds one handle on its embedded store and loads the model once, with no module-level
state to reach around.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cia_assets.config import CiaConfig
from cia_assets.lib.indexing.embeddings import (
    PACKAGED_MODEL,
    Embedder,
    EmbeddingCache,
    EmbeddingModelError,
    choose_precision,
    model_architecture,
    packaged_model_dir,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from cia_assets.lib.vectorstore.base import VectorStore

# `vector_store.url: ":memory:"` is qdrant-client's in-process engine, which speaks the server's
# API (the tests of the server backend use it). The location names one engine per process, as
# SQLite's ":memory:" would if it were shared: every Project of the process must see the same
# collections, so it is the one handle kept here, and never closed. A server URL gets a client
# per Project.
IN_PROCESS_ENGINE = ":memory:"
_IN_PROCESS: list[QdrantClient | None] = [None]
_IN_PROCESS_LOCK = threading.Lock()


class Project:
    """Opens each handle on first use (a command that only reads chunk files never loads the
    model) and closes the store in `close`; usable as a context manager."""

    def __init__(self, config: CiaConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._store: VectorStore | None = None
        self._embedder: Embedder | None = None
        self._embedding_cache: EmbeddingCache | None = None

    @property
    def store(self) -> VectorStore:
        with self._lock:
            if self._store is None:
                self._store = open_vector_store(self.config)
            return self._store

    @property
    def embedder(self) -> Embedder:
        """Loading costs about a second and 100+ MB: once per project."""
        with self._lock:
            if self._embedder is None:
                self._embedder = open_embedder(self.config)
            return self._embedder

    @property
    def embedding_cache(self) -> EmbeddingCache:
        with self._lock:
            if self._embedding_cache is None:
                self._embedding_cache = EmbeddingCache(self.config.layout.embedding_cache)
            return self._embedding_cache

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> Project:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def open_vector_store(config: CiaConfig) -> VectorStore:
    """A new handle on the configured store; a process keeps one, through its `Project`."""
    settings = config.vector_store
    if settings.backend == "embedded":
        from cia_assets.lib.vectorstore.embedded import EmbeddedVectorStore

        return EmbeddedVectorStore(config.vector_store_path)
    from qdrant_client import QdrantClient

    from cia_assets.lib.vectorstore.server import ServerVectorStore

    if settings.url == IN_PROCESS_ENGINE:
        with _IN_PROCESS_LOCK:
            engine = _IN_PROCESS[0]
            if engine is None:
                engine = _IN_PROCESS[0] = QdrantClient(location=IN_PROCESS_ENGINE)
            return ServerVectorStore(engine, owns_client=False)
    client = QdrantClient(location=settings.url, api_key=settings.api_key, timeout=60)
    return ServerVectorStore(client)


def drop_in_process_engine() -> None:
    """Forget the process's in-memory engine and its collections (each test starts empty)."""
    with _IN_PROCESS_LOCK:
        engine, _IN_PROCESS[0] = _IN_PROCESS[0], None
    if engine is not None:
        engine.close()


def embedding_model_dir(config: CiaConfig) -> Path:
    if config.embedding.path is not None:
        return config.embedding.path
    if config.embedding.model != PACKAGED_MODEL:
        raise EmbeddingModelError(
            f"{config.config_path}: embedding.model {config.embedding.model!r} needs embedding.path "
            "(a local folder with model.onnx); only the packaged "
            f"{PACKAGED_MODEL!r} works without one, since no model hub is contacted"
        )
    return packaged_model_dir(config.layout.models)


def open_embedder(config: CiaConfig) -> Embedder:
    """A newly loaded embedding model; a process keeps one, through its `Project`."""
    settings = config.embedding
    model_dir = embedding_model_dir(config)
    precision = choose_precision(settings.precision, model_dir)
    return Embedder(
        settings.model,
        model_dir,
        batch_size=settings.batch_size,
        threads=settings.threads,
        precision=precision,
        architecture=model_architecture(model_dir),
    )
