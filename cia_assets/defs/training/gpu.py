"""The GPU path of `lora_adapter`: the trainer pod, launched and followed through Pipes."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_k8s.client import DagsterK8sError

from cia_assets.config import CiaConfig
from cia_assets.defs.resources import KubernetesResource
from cia_assets.lib.learning.gpu_pod import (
    training_command,
    training_extras,
    training_pod_meta,
    training_pod_spec,
)


class GpuTrainingError(RuntimeError):
    """The pod ran but did not report an adapter."""


@dataclass(frozen=True)
class GpuTrainingResult:
    adapter_dir: Path
    losses: list[tuple[int, float]]
    final_loss: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def train_on_gpu(
    context: dg.AssetExecutionContext,
    config: CiaConfig,
    kubernetes: KubernetesResource,
    *,
    train_path: Path,
    output_dir: Path,
) -> GpuTrainingResult:
    """Run the trainer pod to completion; its loss messages and final report come back
    through the pod's log stream (a pod that fails fails the step, with its logs)."""
    deadline = config.training.gpu.deadline_seconds
    started = time.monotonic()
    try:
        invocation = kubernetes.pipes_client().run(
            context=context,
            image=config.training.gpu.image,
            command=training_command(),
            namespace=config.training.gpu.namespace,
            base_pod_meta=training_pod_meta(),
            base_pod_spec=training_pod_spec(config),
            extras=training_extras(config, train_path=str(train_path), output_dir=str(output_dir)),
        )
    except DagsterK8sError as error:
        # dagster-k8s reports only the killed container; the pod's own reason is gone with it.
        if time.monotonic() - started >= deadline:
            raise GpuTrainingError(
                f"the trainer pod ran longer than training.gpu.deadline_seconds ({deadline} s) and "
                "Kubernetes stopped it (activeDeadlineSeconds); raise the deadline or train fewer steps"
            ) from error
        raise
    losses = [
        (int(message["step"]), float(message["loss"]))
        for message in invocation.get_custom_messages()
        if isinstance(message, dict) and "loss" in message
    ]
    reported = invocation.get_results()
    if not reported:
        raise GpuTrainingError("the trainer pod finished without reporting an adapter")
    metadata = {key: value.value for key, value in reported[-1].metadata.items()}  # type: ignore[union-attr]
    adapter_dir = Path(str(metadata["adapter_dir"]))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise GpuTrainingError(f"the trainer pod reported {adapter_dir}, which holds no adapter here")
    if not losses and isinstance(metadata.get("losses"), str):
        losses = [(int(s), float(v)) for s, v in json.loads(str(metadata["losses"]))]
    final = metadata.get("final_loss")
    return GpuTrainingResult(
        adapter_dir=adapter_dir,
        losses=losses,
        final_loss=float(final) if isinstance(final, int | float) else None,
        metadata=metadata,
    )
