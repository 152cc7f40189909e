"""The GPU training pod's spec, built from cia.yaml's `training.gpu` (pure: unit-tested against
the Kubernetes schema). Like a Job template in a Helm chart: the GPU limit makes the scheduler
pick a GPU node (or a time-sliced share of one, with `nvidia.com/gpu.shared`), the node selector
and tolerations let it land on the tainted GPU node group, the data volume is mounted at the
same path as in Dagster's pods, and base models come read-only from the model cache."""

from __future__ import annotations

from typing import Any

from cia_assets.config import CiaConfig

TRAINER_MODULE = "pods.train_lora_unsloth"
RETRIEVAL_TRAINER_MODULE = "pods.train_retrieval_adapter"
CONTAINER = "trainer"
RUN_AS = 10001  # the trainer image's non-root user


def training_command(module: str = TRAINER_MODULE) -> list[str]:
    return ["python", "-m", module]


def training_pod_meta() -> dict[str, Any]:
    """The `base_pod_meta` for PipesK8sClient: the labels NetworkPolicies select the pod by."""
    return {"labels": {"app.kubernetes.io/part-of": "cia", "app.kubernetes.io/component": CONTAINER}}


def training_pod_spec(config: CiaConfig) -> dict[str, Any]:
    """The `base_pod_spec` for PipesK8sClient (it adds the image, command and Pipes env)."""
    gpu = config.training.gpu
    limits = {gpu.gpu_resource: str(gpu.gpu_count), "memory": gpu.memory}
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": gpu.data_claim}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": str(config.data_dir)},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if gpu.model_cache_claim:
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": gpu.model_cache_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": gpu.model_cache_mount, "readOnly": True})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": gpu.deadline_seconds,
        "nodeSelector": dict(gpu.node_selector),
        "tolerations": [dict(t) for t in gpu.tolerations],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "resources": {"limits": limits, "requests": {**limits, "cpu": gpu.cpu}},
                "env": [
                    # Base models come from the read-only cache: no hub access at run time.
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {"name": "HF_HOME", "value": "/tmp/hf"},
                ],
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    if gpu.service_account:
        spec["serviceAccountName"] = gpu.service_account
    return spec


def training_extras(config: CiaConfig, *, train_path: str, output_dir: str) -> dict[str, Any]:
    """What the pod script reads from Pipes extras."""
    settings = config.training
    return {
        "train_path": train_path,
        "output_dir": output_dir,
        "base_model": settings.gpu.base_model,
        "load_in_4bit": settings.gpu.load_in_4bit,
        "params": {
            "max_steps": settings.max_steps,
            "learning_rate": settings.learning_rate,
            "batch_size": settings.batch_size,
            "max_seq_tokens": settings.max_seq_tokens,
            "r": settings.lora_r,
            "alpha": settings.lora_alpha,
            "dropout": settings.lora_dropout,
            "seed": settings.seed,
        },
    }


def retrieval_training_extras(
    *, triples_path: str, base_model: str, output_dir: str, params: dict[str, Any]
) -> dict[str, Any]:
    """What `pods.train_retrieval_adapter` reads from Pipes extras."""
    return {
        "triples_path": triples_path,
        "base_model": base_model,
        "output_dir": output_dir,
        "params": params,
    }
