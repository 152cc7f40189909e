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
from types import TracebackType
from typing import TYPE_CHECKING

from cia_assets.config import CiaConfig
from cia_assets.lib.indexing.embedding_models import EmbeddingModel, active_model, model_by_id
from cia_assets.lib.indexing.embeddings import Embedder, EmbeddingCache, choose_precision, model_architecture

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from cia_assets.lib.retrieval.rerank import LlmReranker
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
        self._embedders: dict[str, Embedder] = {}
        self._embedding_cache: EmbeddingCache | None = None
        self._reranker: LlmReranker | None = None
        self._reranker_made = False

    @property
    def store(self) -> VectorStore:
        with self._lock:
            if self._store is None:
                self._store = open_vector_store(self.config)
            return self._store

    @property
    def embedder(self) -> Embedder:
        """The active model (what the next index run embeds with), looked up on every use: a
        promotion made while this process runs applies to its next run. Loading costs about a
        second and 100+ MB: once per model and project."""
        return self._embedder_of(active_model(self.config))

    @property
    def loaded_embedders(self) -> tuple[str, ...]:
        """The embedding models this project has loaded so far, by model id."""
        with self._lock:
            return tuple(self._embedders)

    def embedder_for(self, model_id: str) -> Embedder:
        """The model an index was built with (its index state's `model_id`), which embeds the
        questions asked of that index."""
        with self._lock:
            loaded = self._embedders.get(model_id)
        return loaded or self._embedder_of(model_by_id(self.config, model_id))

    def _embedder_of(self, model: EmbeddingModel) -> Embedder:
        with self._lock:
            if model.model_id not in self._embedders:
                self._embedders[model.model_id] = open_embedder(self.config, model)
            return self._embedders[model.model_id]

    @property
    def embedding_cache(self) -> EmbeddingCache:
        with self._lock:
            if self._embedding_cache is None:
                self._embedding_cache = EmbeddingCache(self.config.layout.embedding_cache)
            return self._embedding_cache

    @property
    def reranker(self) -> LlmReranker | None:
        """The LLM that re-ranks file searches (`retrieval.reranker`), None when it is off."""
        with self._lock:
            if not self._reranker_made:
                from cia_assets.lib.serving.model_endpoints import reranker_of

                self._reranker, self._reranker_made = reranker_of(self.config), True
            return self._reranker

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


def open_embedder(config: CiaConfig, model: EmbeddingModel | None = None) -> Embedder:
    """A newly loaded embedding model, by default the active one (`embedding_models`); a
    process keeps one per model, through its `Project`."""
    settings = config.embedding
    model = model or active_model(config)
    precision = choose_precision(settings.precision, model.model_dir)
    return Embedder(
        model.model_id,
        model.model_dir,
        batch_size=settings.batch_size,
        threads=settings.threads,
        precision=precision,
        architecture=model_architecture(model.model_dir),
    )
