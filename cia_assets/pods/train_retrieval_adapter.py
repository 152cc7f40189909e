"""Fine-tunes the embedding model (all-MiniLM-L6-v2, 22 M parameters) on commit-history triples:
in a pod on the GPU node, started by the `retrieval_adapter` asset through dagster-k8s Pipes when
`training.retrieval_adapter_backend` is `gpu`, or in process on CPU (the default), where
`lib/learning/retrieval_adapter.py` calls `fit` directly. One training loop, two places to run it.

Pipes extras: `triples_path` (JSONL rows `{"anchor", "positive", "negative"}`, written by the
asset on the data volume), `base_model` (a sentence-transformers folder on that volume),
`output_dir` (where the fine-tuned folder goes) and `params`. The data volume is mounted at the
same path as in Dagster's pods, so paths mean the same on both sides. Every logged loss goes back
as a Pipes custom message; the end, as the materialization's metadata.

Run in the trainer image as `python -m pods.train_retrieval_adapter`; it imports
sentence-transformers and dagster_pipes, never cia_assets.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pipes_trainer import LossCallback, Trainer

# The packaged model was trained on 256-token inputs (its tokenizer file says 512).
MAX_SEQ_TOKENS = 256


def fit(
    rows: Sequence[dict[str, str]],
    base_model: Path,
    output_dir: Path,
    params: dict[str, Any],
    on_loss: LossCallback = lambda step, loss: None,
) -> str:
    """Multiple-negatives ranking loss over (anchor, positive, negative) rows: every other pair
    of a batch is a negative too. Writes the fine-tuned sentence-transformers folder to
    `output_dir` and returns the device it trained on."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import TrainerCallback

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    model = SentenceTransformer(str(base_model), device=device, local_files_only=True)
    model.max_seq_length = int(params.get("max_seq_tokens", MAX_SEQ_TOKENS))
    dataset = Dataset.from_dict(
        {key: [row[key] for row in rows] for key in ("anchor", "positive", "negative")}
    )
    batch_size = int(params["batch_size"])

    class Losses(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:  # fmt: skip
            if logs and "loss" in logs:
                on_loss(int(state.global_step), float(logs["loss"]))

    work = Path(tempfile.mkdtemp(prefix="retrieval-adapter-trainer-"))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work),
        num_train_epochs=int(params["epochs"]),
        per_device_train_batch_size=batch_size,
        learning_rate=float(params["learning_rate"]),
        # A float below 1 is a share of the steps. A run of a few steps gets none: warm-up
        # starts at a learning rate of 0, so one step would leave the weights as they were.
        warmup_steps=float(params["warmup_ratio"]) if len(rows) >= 10 * batch_size else 0,
        # Two triples of one commit in a batch would be each other's false negatives.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to=[],
        use_cpu=not on_gpu,
        seed=int(params["seed"]),
        logging_steps=max(1, len(rows) // batch_size // 10),
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[Losses()],
    )
    try:
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model.save(str(output_dir))
    return device


def train_from_extras(extras: dict[str, Any], on_loss: LossCallback) -> dict[str, Any]:
    rows = [json.loads(line) for line in Path(extras["triples_path"]).read_text().splitlines() if line]
    device = fit(rows, Path(extras["base_model"]), Path(extras["output_dir"]), extras["params"], on_loss)
    return {"triples": len(rows), "device": device}


def report_model(extras: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    model_dir = Path(extras["output_dir"])
    if not (model_dir / "model.safetensors").is_file():
        raise RuntimeError(f"training finished but wrote no model to {model_dir}")
    return {
        "model_dir": {"raw_value": str(model_dir), "type": "path"},
        "triples": summary["triples"],
        "device": summary["device"],
    }


def run_pod(trainer: Trainer = train_from_extras) -> None:
    """The container's entry point (`pipes_trainer.run_pod`: train, report, end the process)."""
    from .pipes_trainer import run_pod as run_trainer_pod

    run_trainer_pod(trainer, report_model)


if __name__ == "__main__":
    run_pod()
