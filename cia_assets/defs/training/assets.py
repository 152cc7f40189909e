"""The LoRA adapter: trained on the training split, tracked and registered in MLflow."""

from pathlib import Path

import dagster as dg

from cia_assets.defs.datasets.assets import training_dataset
from cia_assets.defs.owners import OWNERS
from cia_assets.defs.resources import CiaConfigResource, KubernetesResource, MlflowResource
from cia_assets.lib.core import artifacts

TRAINING_CODE_VERSION = "1"


@dg.asset(
    deps=[training_dataset],
    group_name="training",
    kinds={"pytorch", "mlflow", "kubernetes"},
    owners=OWNERS,
    code_version=TRAINING_CODE_VERSION,
    # GPU steps take turns on the GPU node: the `gpu` pool's limit is the number of (virtual)
    # GPUs, set in dagster.yaml / the Helm values.
    pool="gpu",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    cia: CiaConfigResource,
    mlflow: MlflowResource,
    kubernetes: KubernetesResource,
) -> dg.MaterializeResult:
    """A LoRA adapter for the answering model, trained on the train split of training_dataset,
    registered in MLflow as a new version of `training.registered_model` with the alias
    `challenger` (evaluation decides whether it becomes `champion`).

    Two paths, chosen by `training.backend`: `cpu` trains in-process with peft on the packaged
    SmolLM2-135M and converts the adapter to GGUF for llama.cpp's server; `gpu` runs unsloth
    QLoRA as a Kubernetes pod on the GPU node through dagster-k8s Pipes, reporting its loss back.
    Either way the run's params, loss curve and adapter files are tracked in MLflow.
    """
    from cia_assets.lib.learning.adapter_training import PodTraining, register_adapter, train_adapter
    from cia_assets.lib.learning.lora_cpu import TrainingError

    config = cia.load()
    layout = cia.layout()
    try:
        dataset = artifacts.require_current(layout.training_datasets, "training_dataset")
    except FileNotFoundError as error:
        raise dg.Failure(description=str(error)) from error

    def train_on_gpu_node(train_path: Path, output_dir: Path) -> PodTraining:
        from cia_assets.defs.training.gpu import GpuTrainingError, train_on_gpu

        try:
            return train_on_gpu(context, config, kubernetes, train_path=train_path, output_dir=output_dir)
        except GpuTrainingError as error:
            raise dg.Failure(description=str(error)) from error

    try:
        trained = train_adapter(config, dataset, train_on_gpu=train_on_gpu_node, log=context.log.info)
    except TrainingError as error:
        raise dg.Failure(description=str(error)) from error
    registry = mlflow.registry()
    registration = register_adapter(registry, trained, dataset_version=dataset.version)
    registered = registration.model
    losses, metrics = trained.losses, trained.metrics
    return dg.MaterializeResult(
        metadata={
            "registered_model": registered.name,
            "model_version": registered.version,
            "alias": "challenger",
            "mlflow_run_id": registration.run_id,
            "mlflow_tracking_uri": registry.uri,
            "backend": trained.backend,
            "base_model": trained.base_model,
            "dataset_version": dataset.version,
            "train_examples": trained.train_examples,
            "skipped_too_long": trained.skipped_too_long,
            "steps": trained.params.max_steps,
            "final_train_loss": dg.MetadataValue.float(float(losses[-1][1])) if losses else None,
            "eval_loss_base": metrics.get("eval_loss_base"),
            "eval_loss_adapter": metrics.get("eval_loss_adapter"),
            "loss_curve": dg.MetadataValue.json([{"step": s, "loss": round(v, 4)} for s, v in losses]),
            "adapter_dir": dg.MetadataValue.path(str(trained.adapter_dir)),
            "gguf_path": dg.MetadataValue.path(str(trained.gguf_path)) if trained.gguf_path else "none",
        },
        data_version=dg.DataVersion(f"{registered.name}:{registered.version}"),
    )
