"""The one place resources are bound. Values come from cia.yaml (see cia_assets/config.py),
whose path is the only thing a deployment sets ($CIA_CONFIG), like a ConfigMap mount."""

import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource
from dagster_k8s import PipesK8sClient

from cia_assets.config import CiaConfig, load_config
from cia_assets.defs.analytics.project import analytics_project
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.project import open_embedder, open_embedding_cache, open_vector_store
from cia_assets.lib.indexing.embeddings import Embedder, EmbeddingCache
from cia_assets.lib.learning.registry import AdapterRegistry, quiet_mlflow
from cia_assets.lib.observability.analytics import ANALYTICS_DB, TRACES_SNAPSHOT
from cia_assets.lib.vectorstore.base import VectorStore


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


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and the adapter registry: cia.yaml's `mlflow.tracking_uri` (a server in
    the cluster), else a SQLite store in data_dir."""

    cia: CiaConfigResource

    def registry(self) -> AdapterRegistry:
        quiet_mlflow()
        return AdapterRegistry(self.cia.load())


class AnalyticsDbtResource(dg.ConfigurableResource):
    """dbt for the analytics models, pointed at data_dir/analytics (DuckDB)."""

    cia: CiaConfigResource

    def cli(self) -> DbtCliResource:
        folder = self.cia.layout().analytics
        folder.mkdir(parents=True, exist_ok=True)
        # dbt takes connection settings only from its profile; the profile reads these, so one
        # project works for any data dir (dbt runs as a child process with this environment).
        os.environ["CIA_ANALYTICS_DB"] = str(folder / ANALYTICS_DB)
        os.environ["CIA_TRACES_SNAPSHOT"] = str(folder / TRACES_SNAPSHOT)
        # The dbt installed beside this Python, whatever PATH the run was started with.
        executable = Path(sys.executable).with_name("dbt")
        return DbtCliResource(
            project_dir=analytics_project,
            profiles_dir=str(analytics_project.project_dir),
            dbt_executable=str(executable) if executable.exists() else "dbt",
        )

    def run_folder(self, context: dg.AssetExecutionContext) -> Path:
        """dbt's target and log folder for one step, on the data volume: in the code-location
        image the package is read-only, and per-run folders must not pile up inside it."""
        return self.cia.layout().analytics / "dbt-runs" / f"{context.run.run_id}-{context.op_handle}"


class KubernetesResource(dg.ConfigurableResource):
    """The Kubernetes API that GPU pods are launched through (dagster-k8s Pipes). Unset fields:
    in-cluster credentials when running in a pod, else the default kubeconfig."""

    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    poll_interval: float = 5.0

    def pipes_client(self) -> PipesK8sClient:
        return PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file,
            poll_interval=self.poll_interval,
        )


def build_resources(config_path: str | None = None) -> dict[str, dg.ConfigurableResource]:
    cia = CiaConfigResource(config_path=config_path)
    return {
        "cia": cia,
        "vector_store": VectorStoreResource(cia=cia),
        "embedder": EmbedderResource(cia=cia),
        "mlflow": MlflowResource(cia=cia),
        "dbt": AnalyticsDbtResource(cia=cia),
        "kubernetes": KubernetesResource(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
