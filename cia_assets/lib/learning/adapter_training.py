"""Training a LoRA adapter and registering it in MLflow: the body of the `lora_adapter` asset,
without Dagster.

`training.backend` picks the path: `cpu` trains in this process (`lora_cpu`); `gpu` runs the
trainer pod, which only Dagster launches (dagster-k8s Pipes), so the caller passes that step
in. Either way the run's params, loss curve and adapter files are tracked in MLflow, and the
adapter is registered as the new `challenger`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cia_assets.config import CiaConfig, TrainingConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import EVAL_FILE, TRAIN_FILE
from cia_assets.lib.learning.lora_cpu import LoraParams

if TYPE_CHECKING:
    from cia_assets.lib.learning.registry import AdapterRegistry, AdapterVersion


class PodTraining(Protocol):
    """What the GPU trainer pod reports back (`defs.training.gpu.GpuTrainingResult`)."""

    @property
    def adapter_dir(self) -> Path: ...

    @property
    def losses(self) -> list[tuple[int, float]]: ...

    @property
    def final_loss(self) -> float | None: ...

    @property
    def metadata(self) -> dict[str, Any]: ...


# (train_path, output_dir) -> the pod's report; the GPU path, run by the caller.
GpuTrainer = Callable[[Path, Path], PodTraining]


def lora_params(settings: TrainingConfig) -> LoraParams:
    return LoraParams(
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        max_seq_tokens=settings.max_seq_tokens,
        r=settings.lora_r,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        seed=settings.seed,
    )


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained adapter in its own version folder under data_dir/adapters."""

    version: str
    folder: Path
    backend: str
    params: LoraParams
    adapter_dir: Path  # the peft folder
    gguf_path: Path | None  # the adapter as GGUF for llama.cpp (CPU path)
    losses: list[tuple[int, float]]
    base_model: str
    metrics: dict[str, float | None]
    train_examples: int
    skipped_too_long: int


@dataclass(frozen=True)
class RegisteredAdapter:
    """A trained adapter as tracked (its MLflow run) and registered (its model version)."""

    trained: TrainedAdapter
    run_id: str
    model: AdapterVersion


def train_adapter(
    config: CiaConfig,
    dataset: artifacts.ArtifactVersion,
    *,
    train_on_gpu: GpuTrainer,
    log: Callable[[str], None],
) -> TrainedAdapter:
    """Train on the training set's train split, with the backend `training.backend` names.
    The CPU path raises `TrainingError` when training cannot start or its output cannot be
    written; the GPU path raises what `train_on_gpu` raises."""
    settings = config.training
    params = lora_params(settings)
    version, folder = artifacts.new_version(config.layout.adapters)
    train_path, eval_path = dataset.path / TRAIN_FILE, dataset.path / EVAL_FILE
    if settings.backend == "cpu":
        return _train_on_cpu(config, params, version, folder, train_path, eval_path, log)
    pod = train_on_gpu(train_path, folder / "peft")
    return TrainedAdapter(
        version=version,
        folder=folder,
        backend=settings.backend,
        params=params,
        adapter_dir=pod.adapter_dir,
        gguf_path=None,
        losses=pod.losses,
        base_model=settings.gpu.base_model,
        metrics={"final_train_loss": pod.final_loss, "train_seconds": pod.metadata.get("train_seconds")},
        train_examples=int(pod.metadata.get("train_examples", 0)),
        skipped_too_long=0,
    )


def _train_on_cpu(
    config: CiaConfig,
    params: LoraParams,
    version: str,
    folder: Path,
    train_path: Path,
    eval_path: Path,
    log: Callable[[str], None],
) -> TrainedAdapter:
    from cia_assets.lib.learning.lora_cpu import train_lora_cpu
    from cia_assets.lib.serving.llm_server import model_file

    def report_loss(step: int, loss: float) -> None:
        log(f"step {step}/{params.max_steps}: loss {loss:.4f}")

    run = train_lora_cpu(
        base_gguf=model_file(config),
        train_path=train_path,
        eval_path=eval_path,
        output_dir=folder,
        params=params,
        on_loss=report_loss,
        threads=config.llm.threads,
    )
    return TrainedAdapter(
        version=version,
        folder=folder,
        backend=config.training.backend,
        params=params,
        adapter_dir=run.adapter_dir,
        gguf_path=run.gguf_path,
        losses=run.losses,
        base_model=run.base_model,
        metrics={
            "final_train_loss": run.losses[-1][1] if run.losses else None,
            "eval_loss_base": run.eval_loss_base,
            "eval_loss_adapter": run.eval_loss_adapter,
            "train_seconds": run.seconds,
        },
        train_examples=run.train_examples,
        skipped_too_long=run.skipped_too_long,
    )


def register_adapter(
    registry: AdapterRegistry, trained: TrainedAdapter, *, dataset_version: str
) -> RegisteredAdapter:
    """Track the training run in MLflow (params, loss curve, adapter files), register the adapter
    as a new version aliased `challenger`, and write training.json beside it."""
    run_params = {
        **asdict(trained.params),
        "backend": trained.backend,
        "base_model": trained.base_model,
        "dataset_version": dataset_version,
        "train_examples": trained.train_examples,
    }
    tags = {
        "dataset_version": dataset_version,
        "adapter_version": trained.version,
        "backend": trained.backend,
        "base_model": trained.base_model,
        "peft_dir": str(trained.adapter_dir),
    }
    if trained.gguf_path is not None:
        tags["gguf_path"] = str(trained.gguf_path)
    run_id, source = registry.log_training(
        run_name=f"lora-{trained.version}",
        params=run_params,
        losses=trained.losses,
        metrics=trained.metrics,
        adapter_dir=trained.adapter_dir,
        tags=tags,
    )
    model = registry.register(
        run_id=run_id,
        source=source,
        tags=tags,
        description=(
            f"LoRA r={trained.params.r} on {trained.base_model}, {trained.train_examples} examples, "
            f"training set {dataset_version}"
        ),
    )
    (trained.folder / "training.json").write_text(
        json.dumps(
            {
                "registered_version": model.version,
                "run_id": run_id,
                "losses": trained.losses,
                **trained.metrics,
            }
        )
    )
    return RegisteredAdapter(trained=trained, run_id=run_id, model=model)
