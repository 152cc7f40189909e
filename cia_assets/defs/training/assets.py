"""The LoRA adapter: trained on the training split, tracked and registered in MLflow."""

import json
from dataclasses import asdict

import dagster as dg

from cia_assets.defs.datasets.assets import training_dataset
from cia_assets.defs.repos.partitions import OWNERS
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
    from cia_assets.lib.learning.lora_cpu import LoraParams, TrainingError, train_lora_cpu
    from cia_assets.lib.serving.llm_server import model_file

    config = cia.load()
    layout = cia.layout()
    settings = config.training
    try:
        dataset = artifacts.require_current(layout.datasets / "training", "training_dataset")
    except FileNotFoundError as error:
        raise dg.Failure(description=str(error)) from error
    params = LoraParams(
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        max_seq_tokens=settings.max_seq_tokens,
        r=settings.lora_r,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        seed=settings.seed,
    )
    version, folder = artifacts.new_version(layout.adapters)
    train_path, eval_path = dataset.path / "train.jsonl", dataset.path / "eval.jsonl"

    def report_loss(step: int, loss: float) -> None:
        context.log.info(f"step {step}/{params.max_steps}: loss {loss:.4f}")

    if settings.backend == "cpu":
        base_model = model_file(config)
        try:
            run = train_lora_cpu(
                base_gguf=base_model,
                train_path=train_path,
                eval_path=eval_path,
                output_dir=folder,
                params=params,
                on_loss=report_loss,
                threads=config.llm.threads,
            )
        except TrainingError as error:
            raise dg.Failure(description=str(error)) from error
        adapter_dir, gguf_path, losses = run.adapter_dir, run.gguf_path, run.losses
        base_name = run.base_model
        metrics = {
            "final_train_loss": losses[-1][1] if losses else None,
            "eval_loss_base": run.eval_loss_base,
            "eval_loss_adapter": run.eval_loss_adapter,
            "train_seconds": run.seconds,
        }
        examples, skipped = run.train_examples, run.skipped_too_long
    else:
        from cia_assets.defs.training.gpu import GpuTrainingError, train_on_gpu

        try:
            result = train_on_gpu(
                context, config, kubernetes, train_path=train_path, output_dir=folder / "peft"
            )
        except GpuTrainingError as error:
            raise dg.Failure(description=str(error)) from error
        adapter_dir, gguf_path, losses = result.adapter_dir, None, result.losses
        base_name = settings.gpu.base_model
        metrics = {
            "final_train_loss": result.final_loss,
            "train_seconds": result.metadata.get("train_seconds"),
        }
        examples, skipped = int(result.metadata.get("train_examples", 0)), 0

    registry = mlflow.registry()
    run_params = {
        **asdict(params),
        "backend": settings.backend,
        "base_model": base_name,
        "dataset_version": dataset.version,
        "train_examples": examples,
    }
    tags = {
        "dataset_version": dataset.version,
        "adapter_version": version,
        "backend": settings.backend,
        "base_model": base_name,
        "peft_dir": str(adapter_dir),
    }
    if gguf_path is not None:
        tags["gguf_path"] = str(gguf_path)
    run_id, source = registry.log_training(
        run_name=f"lora-{version}",
        params=run_params,
        losses=losses,
        metrics=metrics,
        adapter_dir=adapter_dir,
        tags=tags,
    )
    registered = registry.register(
        run_id=run_id,
        source=source,
        tags=tags,
        description=f"LoRA r={params.r} on {base_name}, {examples} examples, training set {dataset.version}",
    )
    (folder / "training.json").write_text(
        json.dumps({"registered_version": registered.version, "run_id": run_id, "losses": losses, **metrics})
    )
    return dg.MaterializeResult(
        metadata={
            "registered_model": registered.name,
            "model_version": registered.version,
            "alias": "challenger",
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": registry.uri,
            "backend": settings.backend,
            "base_model": base_name,
            "dataset_version": dataset.version,
            "train_examples": examples,
            "skipped_too_long": skipped,
            "steps": params.max_steps,
            "final_train_loss": dg.MetadataValue.float(float(losses[-1][1])) if losses else None,
            "eval_loss_base": metrics.get("eval_loss_base"),
            "eval_loss_adapter": metrics.get("eval_loss_adapter"),
            "loss_curve": dg.MetadataValue.json([{"step": s, "loss": round(v, 4)} for s, v in losses]),
            "adapter_dir": dg.MetadataValue.path(str(adapter_dir)),
            "gguf_path": dg.MetadataValue.path(str(gguf_path)) if gguf_path else "none",
        },
        data_version=dg.DataVersion(f"{registered.name}:{registered.version}"),
    )
