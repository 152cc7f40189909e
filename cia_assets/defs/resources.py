"""The one place resources are bound. Values come from cia.yaml (see cia_assets/config.py),
whose path is the only thing a deployment sets ($CIA_CONFIG), like a ConfigMap mount."""

import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource
from dagster_k8s import PipesK8sClient
from pydantic import PrivateAttr

from cia_assets.config import CiaConfig, load_config
from cia_assets.defs.analytics.project import analytics_project
from cia_assets.lib.core.fsio import write_json_atomic
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.project import Project
from cia_assets.lib.indexing.embeddings import Embedder, EmbeddingCache
from cia_assets.lib.learning.registry import AdapterRegistry, quiet_mlflow
from cia_assets.lib.observability.analytics import ANALYTICS_DB, TRACES_SNAPSHOT, analytics_profile
from cia_assets.lib.retrieval.search import repo_embedder
from cia_assets.lib.vectorstore.base import VectorStore


class CiaConfigResource(dg.ConfigurableResource):
    """The project config file. Unset `config_path` means $CIA_CONFIG, then ./cia.yaml."""

    config_path: str | None = None

    def load(self) -> CiaConfig:
        return load_config(self.config_path)

    def layout(self) -> DataLayout:
        return self.load().layout


class _ProjectOwner(dg.ConfigurableResource):
    """Owns a `Project` (the store, model and cache handles) for the run or step: opened on
    first use, closed when execution ends, so no handle outlives the run that needed it."""

    cia: CiaConfigResource
    _project: Project | None = PrivateAttr(default=None)

    def project(self) -> Project:
        if self._project is None:
            self._project = Project(self.cia.load())
        return self._project

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._project is not None:
            self._project.close()
            self._project = None


class VectorStoreResource(_ProjectOwner):
    """Qdrant: the embedded engine or a server, as cia.yaml's `vector_store` says."""

    def open(self) -> VectorStore:
        return self.project().store


class EmbedderResource(_ProjectOwner):
    """The embedding model (loaded once per run or step) and its vector cache."""

    def model(self) -> Embedder:
        """The active model: what this run indexes with."""
        return self.project().embedder

    def for_repo(self, repo_id: str) -> Embedder:
        """The model `repo_id`'s live index was built with, for questions asked of it."""
        return repo_embedder(self.project(), repo_id)

    def cache(self) -> EmbeddingCache:
        return self.project().embedding_cache


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
        # dbt takes connection settings only from a profile: one written for this data dir
        # points the project at its databases, leaving the process environment (shared by every
        # thread of a run) alone. JSON is YAML, so the one atomic writer serves.
        profiles = folder / "profiles"
        write_json_atomic(
            profiles / "profiles.yml", analytics_profile(folder / ANALYTICS_DB, folder / TRACES_SNAPSHOT)
        )
        # The dbt installed beside this Python, whatever PATH the run was started with.
        executable = Path(sys.executable).with_name("dbt")
        return DbtCliResource(
            project_dir=analytics_project,
            profiles_dir=str(profiles),
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
