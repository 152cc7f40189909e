"""The GPU path of `lora_adapter`, offline: the trainer pod's spec against the Kubernetes
schema, and `PipesK8sClient.run` end to end against a local fake Kubernetes API server whose
pod runs the real pod script's Pipes reporting (with a tiny trainer: unsloth needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout
from cia_assets_tests.support.fake_kubernetes import trainer_pod_as_submitted
from cia_assets_tests.support.fake_trainer_pod import publish_training_set, train_in_fake_cluster

K8S_VERSION = "1.34.0"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _gpu_config(write_config: Callable[..., CiaConfig], **gpu: object) -> CiaConfig:
    return write_config(
        [],
        training={
            "backend": "gpu",
            "max_steps": 3,
            "gpu": {"image": "registry.example.com/cia/trainer:0.1.0", "base_model": "/models/qwen", **gpu},
        },
    )


def test_trainer_pod_spec_is_valid_and_lands_on_the_gpu_node(write_config: Callable[..., CiaConfig]) -> None:
    config = _gpu_config(write_config)
    pod = trainer_pod_as_submitted(config)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == "registry.example.com/cia/trainer:0.1.0"
    assert container["command"] == ["python", "-m", "pods.train_lora_unsloth"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True and mounts["models"]["mountPath"] == "/models"
    assert mounts["data"]["mountPath"] == str(config.data_dir) and not mounts["data"].get("readOnly")
    claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in spec["volumes"]}
    assert claims["data"]["claimName"] == "cia-data" and claims["models"]["readOnly"] is True
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 6 * 3600
    # Nothing secret in the spec: the pod needs no credentials.
    assert all("secretKeyRef" not in json.dumps(e) for e in container["env"])

    shared = _gpu_config(write_config, gpu_resource="nvidia.com/gpu.shared", service_account="trainer")
    shared_pod = trainer_pod_as_submitted(shared)
    kubernetes_validate.validate(shared_pod, K8S_VERSION, strict=True)
    assert shared_pod["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu.shared": "1",
        "memory": "16Gi",
    }
    assert shared_pod["spec"]["serviceAccountName"] == "trainer"


def test_the_pod_script_imports_without_its_gpu_stack() -> None:
    # The image runs `python -m pods.train_lora_unsloth` from /opt/cia, with only the folder copied.
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pods.train_lora_unsloth as m, pods.train_retrieval_adapter as r; "
            "print(m.run_pod.__name__, r.run_pod.__name__)",
        ],
        cwd=REPO_ROOT / "cia_assets",
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "trainer.Dockerfile").read_text()
    assert "COPY cia_assets/pods ./pods" in dockerfile and "WORKDIR /opt/cia" in dockerfile
    assert '"sentence-transformers==' in dockerfile  # the retrieval adapter's trainer


def test_lora_adapter_trains_in_a_pod_through_pipes_and_is_registered(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry

    config = _gpu_config(write_config)
    dataset = publish_training_set(config)
    result, cluster = train_in_fake_cluster(config, "ok", tmp_path)
    assert result.success
    [pod] = cluster.created
    assert pod["metadata"]["namespace"] == "cia"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(r.startswith("DELETE /api/v1/namespaces/cia/pods/") for r in cluster.requests)
    metadata = {
        k: v.value for k, v in result.asset_materializations_for_node("lora_adapter")[0].metadata.items()
    }
    assert metadata["backend"] == "gpu" and metadata["base_model"] == "/models/qwen"
    assert metadata["loss_curve"] == [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.0},
        {"step": 3, "loss": 0.6667},
    ]
    assert metadata["train_examples"] == 2 and metadata["gguf_path"] == "none"
    adapter_dir = Path(str(metadata["adapter_dir"]))
    assert adapter_dir.parent.parent == DataLayout(config.data_dir).adapters
    assert (
        json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "/models/qwen"
    )
    registry = AdapterRegistry(config)
    version = registry.by_alias("challenger")
    assert version is not None and version.version == metadata["model_version"]
    assert version.peft_dir == str(adapter_dir) and version.gguf_path is None
    assert version.tags["dataset_version"] == dataset.name
    assert len(registry.client.get_metric_history(str(version.run_id), "train_loss")) == 3


def test_a_failed_trainer_pod_fails_the_step_and_registers_nothing(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry

    config = _gpu_config(write_config)
    publish_training_set(config)
    result, _ = train_in_fake_cluster(config, "fail", tmp_path)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "CUDA out of memory (fake)" in str(failure.event_specific_data)
    assert AdapterRegistry(config).by_alias("challenger") is None


def test_a_trainer_that_leaves_a_thread_running_still_ends_its_pod(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry

    # Without the pod script ending its own process, the stray thread keeps the pod alive until
    # the deadline kills it and the step fails.
    config = _gpu_config(write_config, deadline_seconds=60)
    publish_training_set(config)
    result, cluster = train_in_fake_cluster(config, "stray-thread", tmp_path)
    [pod] = cluster.pods.values()
    assert pod.process.returncode == 0 and not pod.deadline_exceeded
    assert result.success
    assert AdapterRegistry(config).by_alias("challenger") is not None


def test_a_hung_trainer_pod_is_stopped_at_its_deadline_and_registers_nothing(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry

    config = _gpu_config(write_config, deadline_seconds=2)
    publish_training_set(config)
    result, cluster = train_in_fake_cluster(config, "hang", tmp_path)
    [body] = cluster.created
    assert body["spec"]["activeDeadlineSeconds"] == 2
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "training.gpu.deadline_seconds (2 s)" in str(failure.event_specific_data)
    assert AdapterRegistry(config).by_alias("challenger") is None
