"""The GPU trainer pod's script (`cia_assets/pods/train_lora_unsloth.py`), run for real with
unsloth on a GPU: its Pipes messages, step times and memory, for deploy/README.md's sizing.

Two steps, because the GPU machine reaches no package index or model hub:

    # here: the training set exactly as the CPU benchmark builds it, the Pipes extras exactly
    # as `lora_adapter` sends them, and each benchmarked model's config and tokenizer
    .venv/bin/python -m cia_assets_tests.bench.bench_gpu_training prepare .gpu
    # there (unsloth and its needs carried as wheels, see the device notes):
    python3 cia_assets_tests/bench/bench_gpu_training.py run .gpu result.json

No weights travel (the packaged SmolLM2 GGUF alone is 98 MB, over what a call carries), so the
models are their real architectures with random weights: step time and memory are those of the
real model; the loss only shows that training moves it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CLUSTER_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "cia.yaml"

# Qwen2.5-Coder-1.5B-Instruct, the cluster's default base model (its published config.json).
QWEN_CODER_1_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def prepare(folder: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from cia_assets.config import load_config, required_env_variables
    from cia_assets.lib.learning.gpu_pod import training_extras
    from cia_assets.lib.serving.llm_server import packaged_gguf
    from cia_assets_tests.bench.bench_learning import _example

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    (folder / "train.jsonl").write_text("".join(json.dumps(_example(rng, n)) + "\n" for n in range(32)))
    gguf = packaged_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    smollm2 = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for name, config in (
        ("smollm2-135m", {**smollm2.to_dict(), "architectures": ["LlamaForCausalLM"]}),
        # The SmolLM2 tokenizer stands in for Qwen's (same ChatML turns); its ids all fall
        # inside Qwen's vocabulary, which stays full size so the compute is Qwen's.
        ("qwen2.5-coder-1.5b", QWEN_CODER_1_5B),
    ):
        model_dir = folder / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
        tokenizer.save_pretrained(model_dir)
    # The trainer reads only the training section; the rest of the cluster's settings need their
    # variables set to load at all.
    for variable in required_env_variables(CLUSTER_CONFIG):
        os.environ.setdefault(variable, "unused-by-the-trainer")
    extras = training_extras(load_config(CLUSTER_CONFIG), train_path="train.jsonl", output_dir="adapter")
    extras["params"]["max_steps"] = 20
    (folder / "extras.json").write_text(json.dumps(extras, indent=1))
    print(f"training set, extras and {len(os.listdir(folder / 'models'))} model configs in {folder}")


def _run_name(model: str, load_in_4bit: bool) -> str:
    return f"{model}-{'4bit' if load_in_4bit else 'bf16'}"


def _materialize_random_weights(model_dir: Path, weights_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(weights_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(weights_dir)


def _train_one(folder: Path, name: str, work: Path, load_in_4bit: bool) -> dict[str, Any]:
    from dagster_pipes import encode_param

    weights = work / "weights" / name
    if not (weights / "config.json").is_file():
        _materialize_random_weights(folder / "models" / name, weights)
    extras = json.loads((folder / "extras.json").read_text())
    run_dir = work / _run_name(name, load_in_4bit)
    run_dir.mkdir(parents=True, exist_ok=True)
    extras.update(
        train_path=str(folder / extras["train_path"]),
        output_dir=str(run_dir / "adapter"),
        base_model=str(weights),
        load_in_4bit=load_in_4bit,
    )
    context = {
        "asset_keys": ["lora_adapter"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": f"bench-{name}",
        "job_name": "learning_loop",
        "retry_number": 0,
        "extras": extras,
    }
    messages = run_dir / "messages.jsonl"
    messages.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2] / "cia_assets"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    arrivals: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.is_set():
            if messages.is_file():
                lines = messages.read_text().splitlines()
                for line in lines[seen:]:
                    message = json.loads(line)
                    if message["method"] == "report_custom_message":
                        arrivals[message["params"]["payload"]["step"]] = time.perf_counter()
                seen = len(lines)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    log = run_dir / "pod.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, __file__, "pod", str(run_dir / "memory.json")],
            env=env,
            stdout=output,
            stderr=output,
        )
        try:
            # A pod that never exits holds its Dagster step forever: seen once, so it is measured.
            returncode: int | None = process.wait(timeout=POD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = None
    elapsed = time.perf_counter() - started
    time.sleep(0.2)
    done.set()
    watcher.join()
    if returncode != 0:
        return {
            "model": name,
            "load_in_4bit": load_in_4bit,
            "failed": "did not exit" if returncode is None else f"exit {returncode}",
            "log_tail": log.read_text()[-3000:],
        }
    reported = [json.loads(line) for line in messages.read_text().splitlines()]
    [materialization] = [m for m in reported if m["method"] == "report_asset_materialization"]
    steps = sorted(arrivals)
    # The first steps include compilation and warm-up; the rest are the steady state.
    step_seconds = [arrivals[b] - arrivals[a] for a, b in itertools.pairwise(steps[2:])]
    memory = json.loads((run_dir / "memory.json").read_text())
    losses = json.loads(materialization["params"]["metadata"]["losses"]["raw_value"])
    return {
        "model": name,
        "load_in_4bit": load_in_4bit,
        "steps": len(steps),
        "batch_size": extras["params"]["batch_size"],
        "examples": materialization["params"]["metadata"]["train_examples"]["raw_value"],
        "step_seconds_p50": round(statistics.median(step_seconds), 3),
        "first_step_seconds": round(arrivals[steps[0]] - started, 1),
        "pod_seconds": round(elapsed, 1),
        "train_seconds": materialization["params"]["metadata"]["train_seconds"]["raw_value"],
        "peak_gpu_memory_gib": memory["peak_reserved_gib"],
        "loss_first_last": [losses[0][1], losses[-1][1]],
        "adapter_files": sorted(p.name for p in (run_dir / "adapter").iterdir()),
        "pipes_methods": sorted({m["method"] for m in reported}),
    }


def pod(memory_file: Path) -> None:
    """The container's entry point as the image runs it, with the peak memory noted after training."""
    import torch
    from pods.train_lora_unsloth import run_pod, train_with_unsloth

    def measured(extras: dict[str, Any], on_loss: Any) -> dict[str, Any]:
        summary = train_with_unsloth(extras, on_loss)
        peak = torch.cuda.max_memory_reserved() / 2**30
        memory_file.write_text(json.dumps({"peak_reserved_gib": round(peak, 2)}))
        return summary

    run_pod(measured)


POD_TIMEOUT_SECONDS = 240
RUNS = (("qwen2.5-coder-1.5b", False), ("qwen2.5-coder-1.5b", True), ("smollm2-135m", True))


def run(folder: Path, result: Path) -> None:
    import torch

    work = Path(os.environ.get("BENCH_WORK", "/tmp/bench-gpu-training"))
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(), "runs": []}
    only = os.environ.get("BENCH_RUNS")  # e.g. "qwen2.5-coder-1.5b-bf16"
    for name, load_in_4bit in RUNS:
        if only and _run_name(name, load_in_4bit) not in only.split(","):
            continue
        outcome = _train_one(folder, name, work, load_in_4bit)
        figures["runs"].append(outcome)
        print(json.dumps(outcome), flush=True)
    result.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "prepare":
        prepare(Path(sys.argv[2]))
    elif command == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    elif command == "pod":
        pod(Path(sys.argv[2]))
    else:
        raise SystemExit(f"unknown command {command!r}: prepare, run or pod")
