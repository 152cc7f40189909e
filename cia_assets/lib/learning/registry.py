"""LoRA adapters in MLflow: every training run tracked (params, loss curve, adapter files) and
every adapter registered as a new version of one registered model.

Aliases say which version does what, like image tags in a registry: `challenger` is the newest
adapter waiting for its evaluation, `champion` the one that serves. Promotion moves an alias;
nothing is copied. The embedded default keeps tracking and registry in a SQLite file under
data_dir (no server); the cluster points `mlflow.tracking_uri` at the MLflow server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.serving.endpoint import EndpointSpec

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class AdapterVersion:
    """A registered adapter version and where its files are."""

    name: str
    version: str
    run_id: str | None
    source: str  # the MLflow artifact URI of the peft folder
    tags: dict[str, str]

    @property
    def gguf_path(self) -> str | None:
        """The adapter as GGUF for llama.cpp (CPU-trained adapters)."""
        return self.tags.get("gguf_path")

    @property
    def peft_dir(self) -> str | None:
        """The peft folder on the shared data volume (what vLLM loads)."""
        return self.tags.get("peft_dir")

    @property
    def serving_name(self) -> str:
        """The name vLLM serves it under."""
        return f"{self.name}-v{self.version}"


def tracking_uri(config: CiaConfig) -> str:
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    root = config.layout.mlflow
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


class AdapterRegistry:
    """Tracking and registry for one registered model (`training.registered_model`)."""

    def __init__(self, config: CiaConfig) -> None:
        from mlflow.tracking import MlflowClient

        self.config = config
        self.name = config.training.registered_model
        self.uri = tracking_uri(config)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.config.mlflow.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        artifact_location = None
        if self.uri.startswith("sqlite:"):
            # Artifacts beside the SQLite store, not in the working directory.
            artifact_location = (self.config.layout.mlflow / "artifacts").as_uri()
        return str(
            self.client.create_experiment(self.config.mlflow.experiment, artifact_location=artifact_location)
        )

    def log_training(
        self,
        *,
        run_name: str,
        params: dict[str, Any],
        losses: Sequence[tuple[int, float]],
        metrics: dict[str, float | None],
        adapter_dir: Path,
        tags: dict[str, str],
    ) -> tuple[str, str]:
        """Record a finished training run; returns (run_id, artifact URI of the adapter)."""
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            for key, value in params.items():
                self.client.log_param(run_id, key, value)
            for step, loss in losses:
                self.client.log_metric(run_id, "train_loss", loss, step=step)
            for key, metric in metrics.items():
                if metric is not None:
                    self.client.log_metric(run_id, key, float(metric))
            self.client.log_artifacts(run_id, str(adapter_dir), artifact_path="adapter")
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id, f"{run.info.artifact_uri}/adapter"

    def register(self, *, run_id: str, source: str, tags: dict[str, str], description: str) -> AdapterVersion:
        """A new version of the registered model, aliased `challenger`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="LoRA adapters of CIA's answering model (see lora_adapter)"
            )
        version = self.client.create_model_version(
            self.name, source=source, run_id=run_id, tags=tags, description=description
        )
        self.client.set_registered_model_alias(self.name, CHALLENGER, version.version)
        return self._version(version)

    def by_alias(self, alias: str) -> AdapterVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def get(self, version: str) -> AdapterVersion:
        return self._version(self.client.get_model_version(self.name, version))

    def promote(self, version: str) -> None:
        """`version` becomes the champion; it is no longer a challenger."""
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        challenger = self.by_alias(CHALLENGER)
        if challenger is not None and challenger.version == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    def tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    def log_benchmark(self, name: str, metrics: dict[str, float | None], report: Path) -> str:
        """A benchmark that belongs to no adapter (retrieval) as a run of its own."""
        run = self.client.create_run(self.experiment_id(), run_name=name, tags={"kind": name})
        self.log_evaluation(run.info.run_id, metrics, report)
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return str(run.info.run_id)

    def log_evaluation(self, run_id: str | None, metrics: dict[str, float | None], report: Path) -> None:
        """Evaluation figures on the adapter's own training run (one place to compare runs)."""
        if not run_id:
            return
        for key, value in metrics.items():
            if value is not None:
                # MLflow names allow letters, digits and _-. /: "recall@5" becomes "recall_at_5".
                name = re.sub(r"[^A-Za-z0-9_\-. /]", "_", key.replace("@", "_at_"))
                self.client.log_metric(run_id, name, float(value))
        self.client.log_artifact(run_id, str(report), artifact_path="evaluation")

    def _version(self, version: Any) -> AdapterVersion:
        return AdapterVersion(
            name=self.name,
            version=str(version.version),
            run_id=version.run_id,
            source=version.source,
            tags=dict(version.tags or {}),
        )


def quiet_mlflow() -> None:
    """MLflow prints alembic migrations and a telemetry notice on first use; keep logs readable."""
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def spec_for_adapter(base: EndpointSpec, adapter: AdapterVersion | None) -> EndpointSpec:
    """What serves `adapter` on the configured engine: llama.cpp loads its GGUF file, vLLM
    loads its peft folder under a name per version."""
    from cia_assets.lib.serving.endpoint import EndpointError

    if adapter is None:
        return base.with_adapter(None, None)
    if base.engine == "llama_cpp":
        if not adapter.gguf_path:
            raise EndpointError(
                f"adapter {adapter.name} v{adapter.version} has no GGUF file (trained on GPU); "
                "serve it with the vllm engine"
            )
        return base.with_adapter(adapter.gguf_path, adapter.version)
    if base.engine == "vllm":
        return base.with_adapter(adapter.serving_name, adapter.version, adapter.peft_dir)
    raise EndpointError(f"engine {base.engine!r} cannot load LoRA adapters; use llama_cpp or vllm")
