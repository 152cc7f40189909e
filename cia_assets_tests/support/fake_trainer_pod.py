"""Stands in for the trainer container: the real pod script (`cia_assets.pods.train_lora_unsloth
.run_pod`, its Pipes reporting and process exit included) with a tiny trainer instead of unsloth,
which needs a GPU. `CIA_FAKE_TRAINER=fail` makes the training raise, like an out-of-memory pod;
`stray-thread` leaves a thread running after training, like torch compile workers; `hang` never
finishes training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cia_assets.config import CiaConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import DataLayout
from cia_assets.pods.train_lora_unsloth import run_pod

if TYPE_CHECKING:
    import dagster as dg

    from cia_assets_tests.support.fake_kubernetes import FakeKubernetes

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_trainer(extras: dict[str, Any], on_loss: Callable[[int, float], None]) -> dict[str, Any]:
    mode = os.environ.get("CIA_FAKE_TRAINER")
    if mode == "fail":
        raise RuntimeError("CUDA out of memory (fake)")
    if mode == "hang":
        time.sleep(3600)
    if mode == "stray-thread":
        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    rows = Path(extras["train_path"]).read_text().splitlines()
    for step in range(1, int(extras["params"]["max_steps"]) + 1):
        on_loss(step, round(2.0 / step, 4))
    output = Path(extras["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "adapter_config.json").write_text(
        json.dumps({"r": extras["params"]["r"], "base_model_name_or_path": extras["base_model"]})
    )
    (output / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return {"train_examples": len(rows)}


def trainer_pod(mode: str) -> Callable[[dict[str, Any], dict[str, str]], subprocess.Popen[str]]:
    """The fake Kubernetes API's runner: each created pod runs this module in `mode`."""

    def run(pod: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cia_assets_tests.support.fake_trainer_pod"],
            env={**os.environ, **env, "CIA_FAKE_TRAINER": mode},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return run


def retrieval_trainer_pod(pod: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    """The fake Kubernetes API's runner for the retrieval adapter's pods: the real pod script,
    training for real (on CPU here: sentence-transformers needs no GPU)."""
    module = pod["spec"]["containers"][0]["command"][-1]
    return subprocess.Popen(
        [sys.executable, "-m", f"cia_assets.{module}"],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def publish_training_set(config: CiaConfig) -> Path:
    """A published `training_dataset` version, as the asset leaves it."""
    root = DataLayout(config.data_dir).datasets / "training"
    version, folder = artifacts.new_version(root)
    example = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a [1]"}]}
    artifacts.write_jsonl(folder / "train.jsonl", [example, example])
    artifacts.write_jsonl(folder / "eval.jsonl", [example])
    artifacts.publish(root, version, {})
    return folder


def train_in_fake_cluster(
    config: CiaConfig, mode: str, workdir: Path
) -> tuple[dg.ExecuteInProcessResult, FakeKubernetes]:
    """`lora_adapter` materialized with its real resources, the Kubernetes API being the fake
    one whose pods run this module in `mode`. The kubeconfig's namespace is `default`, so the
    trainer's namespace can only come from the config. (Imported here: the pods run this module,
    and need none of it.)"""
    import dagster as dg

    from cia_assets.defs.resources import KubernetesResource, build_resources
    from cia_assets.defs.training.assets import lora_adapter
    from cia_assets_tests.support.fake_kubernetes import fake_kubernetes

    with fake_kubernetes(trainer_pod(mode)) as cluster:
        kubeconfig = cluster.kubeconfig(workdir / "kubeconfig", "default")
        resources: dict[str, Any] = {
            **build_resources(str(config.config_path)),
            "kubernetes": KubernetesResource(kubeconfig_file=str(kubeconfig), poll_interval=0.2),
        }
        result = dg.materialize(
            [lora_adapter], instance=dg.DagsterInstance.ephemeral(), resources=resources, raise_on_error=False
        )
    return result, cluster


if __name__ == "__main__":
    run_pod(trainer=tiny_trainer)
