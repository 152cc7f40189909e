"""The one place resources are bound. Values come from cia.yaml (see cia_assets/config.py),
whose path is the only thing a deployment sets ($CIA_CONFIG), like a ConfigMap mount."""

import dagster as dg

from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.embeddings import Embedder, EmbeddingCache
from cia_assets.lib.layout import DataLayout
from cia_assets.lib.project import open_embedder, open_embedding_cache, open_vector_store
from cia_assets.lib.vector_store import VectorStore


class CiaConfigResource(dg.ConfigurableResource):
    """The project config file. Unset `config_path` means $CIA_CONFIG, then ./cia.yaml."""

    config_path: str | None = None

    def load(self) -> CiaConfig:
        return load_config(self.config_path)

    def layout(self) -> DataLayout:
        return DataLayout(self.load().data_dir)


class VectorStoreResource(dg.ConfigurableResource):
    """Qdrant: the embedded engine or a server, as cia.yaml's `vector_store` says."""

    cia: CiaConfigResource

    def open(self) -> VectorStore:
        return open_vector_store(self.cia.load())


class EmbedderResource(dg.ConfigurableResource):
    """The embedding model (loaded once per process) and its vector cache."""

    cia: CiaConfigResource

    def model(self) -> Embedder:
        return open_embedder(self.cia.load())

    def cache(self) -> EmbeddingCache:
        return open_embedding_cache(self.cia.load())


def build_resources(config_path: str | None = None) -> dict[str, dg.ConfigurableResource]:
    cia = CiaConfigResource(config_path=config_path)
    return {
        "cia": cia,
        "vector_store": VectorStoreResource(cia=cia),
        "embedder": EmbedderResource(cia=cia),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
