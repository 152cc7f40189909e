"""QLoRA fine-tuning with unsloth in a pod on the GPU node, started by the `lora_adapter` asset
through dagster-k8s Pipes.

Dagster passes the parameters as Pipes extras (the training set's path, where to write the
adapter, the base model and hyperparameters); the data volume is mounted at the same path as in
Dagster's pods, so paths mean the same on both sides. The script reports every logged loss as
a Pipes custom message and, at the end, the adapter's location and the loss curve as the
asset materialization's metadata; Dagster reads them from the pod's log stream.

Run in the image as `python -m pods.train_lora_unsloth`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .pipes_trainer import LossCallback, Trainer

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_with_unsloth(extras: dict[str, Any], on_loss: LossCallback) -> dict[str, Any]:
    """unsloth QLoRA + trl's SFTTrainer on the assistant turns; returns what it wrote."""
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel
    from unsloth.chat_templates import train_on_responses_only

    params = extras["params"]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=extras["base_model"],
        max_seq_length=params["max_seq_tokens"],
        load_in_4bit=extras.get("load_in_4bit", True),
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=params["r"],
        lora_alpha=params["alpha"],
        lora_dropout=params["dropout"],
        target_modules=TARGET_MODULES,
        use_gradient_checkpointing="unsloth",
        random_state=params["seed"],
    )
    dataset = load_dataset("json", data_files=extras["train_path"], split="train")
    dataset = dataset.map(
        lambda row: {"text": tokenizer.apply_chat_template(row["messages"], tokenize=False)},
        remove_columns=dataset.column_names,
    )

    class Losses(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:  # fmt: skip
            if logs and "loss" in logs:
                on_loss(int(state.global_step), float(logs["loss"]))

    output_dir = Path(extras["output_dir"])
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        args=SFTConfig(
            output_dir=str(output_dir.parent / "trainer"),
            dataset_text_field="text",
            max_length=params["max_seq_tokens"],
            per_device_train_batch_size=params["batch_size"],
            max_steps=params["max_steps"],
            learning_rate=params["learning_rate"],
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=params["seed"],
        ),
        callbacks=[Losses()],
    )
    # The loss counts only what the model should learn to write: the answer with its citations.
    trainer = train_on_responses_only(
        trainer, instruction_part="<|im_start|>user\n", response_part="<|im_start|>assistant\n"
    )
    trainer.train()
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return {"train_examples": len(dataset)}


def report_adapter(extras: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    adapter_dir = Path(extras["output_dir"])
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RuntimeError(f"training finished but wrote no adapter to {adapter_dir}")
    return {
        "adapter_dir": {"raw_value": str(adapter_dir), "type": "path"},
        "train_examples": summary.get("train_examples", 0),
    }


def run_pod(trainer: Trainer = train_with_unsloth) -> None:
    """The container's entry point (`pipes_trainer.run_pod`: train, report, end the process)."""
    from .pipes_trainer import run_pod as run_trainer_pod

    run_trainer_pod(trainer, report_adapter)


if __name__ == "__main__":
    run_pod()
