"""The GPU paths of `lora_adapter` and `retrieval_adapter`: the trainer pod, launched and
followed through Pipes."""

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_k8s.client import DagsterK8sError

from cia_assets.config import CiaConfig
from cia_assets.defs.resources import KubernetesResource
from cia_assets.lib.core.fsio import write_jsonl_atomic
from cia_assets.lib.learning.gpu_pod import (
    RETRIEVAL_TRAINER_MODULE,
    TRAINER_MODULE,
    retrieval_training_extras,
    training_command,
    training_extras,
    training_pod_meta,
    training_pod_spec,
)
from cia_assets.lib.learning.retrieval_adapter import Fit, weights_digest


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
    invocation = _run_trainer_pod(
        context,
        config,
        kubernetes,
        TRAINER_MODULE,
        training_extras(config, train_path=str(train_path), output_dir=str(output_dir)),
    )
    losses, metadata = _pod_report(invocation, "an adapter")
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


def _pod_report(invocation: Any, what: str) -> tuple[list[tuple[int, float]], dict[str, Any]]:
    """The loss messages a trainer pod sent through Pipes, and its final report's metadata."""
    losses = [
        (int(message["step"]), float(message["loss"]))
        for message in invocation.get_custom_messages()
        if isinstance(message, dict) and "loss" in message
    ]
    reported = invocation.get_results()
    if not reported:
        raise GpuTrainingError(f"the trainer pod finished without reporting {what}")
    return losses, {key: value.value for key, value in reported[-1].metadata.items()}


def _run_trainer_pod(
    context: dg.AssetExecutionContext,
    config: CiaConfig,
    kubernetes: KubernetesResource,
    module: str,
    extras: dict[str, Any],
) -> Any:
    """`python -m <module>` in the trainer image on the GPU node, followed to its end."""
    deadline = config.training.gpu.deadline_seconds
    started = time.monotonic()
    try:
        return kubernetes.pipes_client().run(
            context=context,
            image=config.training.gpu.image,
            command=training_command(module),
            namespace=config.training.gpu.namespace,
            base_pod_meta=training_pod_meta(),
            base_pod_spec=training_pod_spec(config),
            extras=extras,
        )
    except DagsterK8sError as error:
        # dagster-k8s reports only the killed container; the pod's own reason is gone with it.
        if time.monotonic() - started >= deadline:
            raise GpuTrainingError(
                f"the trainer pod ran longer than training.gpu.deadline_seconds ({deadline} s) and "
                "Kubernetes stopped it (activeDeadlineSeconds); raise the deadline or train fewer steps"
            ) from error
        raise


def fit_retrieval_adapter_on_gpu(
    context: dg.AssetExecutionContext, config: CiaConfig, kubernetes: KubernetesResource
) -> Fit:
    """The `fit` of `learning.retrieval_adapter` as a pod on the GPU node: the triples and the
    base model go to the data volume (mounted at the same path in the pod), the pod trains with
    the same function the CPU path runs in process, and its loss comes back through Pipes."""

    def fit(
        rows: Sequence[dict[str, str]],
        base_model: Path,
        output_dir: Path,
        params: dict[str, Any],
        on_loss: Callable[[int, float], None],
    ) -> str:
        triples_path = output_dir.parent / "triples.jsonl"
        write_jsonl_atomic(triples_path, rows)
        # The packaged model lives in this image's site-packages; the pod reads a copy on the
        # data volume, made once per version of its weights (an upgraded package gets its own).
        digest = weights_digest(base_model / "model.safetensors")[:16]
        on_volume = config.layout.retrieval_adapters / f"base-{digest}"
        if not (on_volume / "model.safetensors").is_file():
            staging = on_volume.with_name(f".{on_volume.name}.staging")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(base_model, staging)
            os.replace(staging, on_volume)
        invocation = _run_trainer_pod(
            context,
            config,
            kubernetes,
            RETRIEVAL_TRAINER_MODULE,
            retrieval_training_extras(
                triples_path=str(triples_path),
                base_model=str(on_volume),
                output_dir=str(output_dir),
                params=params,
            ),
        )
        losses, metadata = _pod_report(invocation, "a model")
        if not (output_dir / "model.safetensors").is_file():
            raise GpuTrainingError(f"the trainer pod reported no model in {output_dir}")
        for step, loss in losses:
            on_loss(step, loss)
        return str(metadata.get("device", "gpu"))

    return fit
