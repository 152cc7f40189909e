"""Builds the project's long-lived objects from the config, once per process.

The CLI, the Dagster resources and (later) the chat app all open the vector store and the
embedder through here, so one process never holds two handles on the same embedded store
and never loads the same model twice.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.indexing.embeddings import (
    PACKAGED_MODEL,
    Embedder,
    EmbeddingCache,
    EmbeddingModelError,
    load_embedder,
    packaged_model_dir,
)
from cia_assets.lib.vectorstore.base import VectorStore

_STORES: dict[tuple[str, str], VectorStore] = {}
_STORES_LOCK = threading.Lock()


def open_vector_store(config: CiaConfig) -> VectorStore:
    settings = config.vector_store
    key = (settings.backend, settings.url or str(config.vector_store_path))
    with _STORES_LOCK:
        if key not in _STORES:
            if settings.backend == "embedded":
                from cia_assets.lib.vectorstore.embedded import EmbeddedVectorStore

                _STORES[key] = EmbeddedVectorStore(config.vector_store_path)
            else:
                from qdrant_client import QdrantClient

                from cia_assets.lib.vectorstore.server import ServerVectorStore

                # `location` takes a server URL, or ":memory:" for qdrant-client's in-process
                # engine, which speaks the same API (used by the tests of this backend).
                client = QdrantClient(location=settings.url, api_key=settings.api_key, timeout=60)
                _STORES[key] = ServerVectorStore(client)
        return _STORES[key]


def close_vector_stores() -> None:
    with _STORES_LOCK:
        for store in _STORES.values():
            store.close()
        _STORES.clear()


def embedding_model_dir(config: CiaConfig) -> Path:
    if config.embedding.path is not None:
        return config.embedding.path
    if config.embedding.model != PACKAGED_MODEL:
        raise EmbeddingModelError(
            f"{config.config_path}: embedding.model {config.embedding.model!r} needs embedding.path "
            "(a local folder with model.onnx); only the packaged "
            f"{PACKAGED_MODEL!r} works without one, since no model hub is contacted"
        )
    return packaged_model_dir(DataLayout(config.data_dir).models)


def open_embedder(config: CiaConfig) -> Embedder:
    return load_embedder(
        config.embedding.model,
        embedding_model_dir(config),
        batch_size=config.embedding.batch_size,
        threads=config.embedding.threads,
    )


def open_embedding_cache(config: CiaConfig) -> EmbeddingCache:
    return EmbeddingCache(DataLayout(config.data_dir).embedding_cache)
