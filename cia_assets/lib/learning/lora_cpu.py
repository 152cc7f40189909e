"""LoRA fine-tuning on CPU: the embedded default's path of the `lora_adapter` asset.

The base is the student's GGUF (by default the packaged Qwen2.5-Coder-0.5B-Instruct, the
served model), read by transformers (dequantized to float32), so nothing comes from a model
hub. peft adds a LoRA adapter (a few MB of low-rank matrices beside frozen weights: like a
Helm overlay on a base chart), transformers' Trainer runs the steps, and the adapter is saved
twice: as the peft folder (what vLLM serves and MLflow keeps) and converted to GGUF with
llama.cpp's own converter (what llama.cpp's server loads with `--lora_path`). The GPU path
(unsloth in a pod) writes the same peft folder.

Loss is computed on the assistant turn only: the model learns to answer with citations, not
to reproduce the question and the code it was shown.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONVERTER_ENV_HINT = "run `make install`, which unpacks llama.cpp's converter into the venv"


class TrainingError(RuntimeError):
    """Training cannot start or its output cannot be written; the message names the input."""


@dataclass(frozen=True)
class LoraParams:
    max_steps: int
    learning_rate: float
    batch_size: int
    max_seq_tokens: int
    r: int
    alpha: int
    dropout: float
    seed: int


@dataclass(frozen=True)
class TrainingRun:
    adapter_dir: Path  # the peft folder (adapter_config.json + adapter_model.safetensors)
    gguf_path: Path | None  # the adapter as GGUF for llama.cpp (CPU path)
    losses: list[tuple[int, float]]
    train_examples: int
    skipped_too_long: int
    eval_loss_base: float | None
    eval_loss_adapter: float | None
    seconds: float
    base_model: str
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["gguf_path"] = str(self.gguf_path) if self.gguf_path else None
        return data


def read_examples(path: Path) -> list[dict[str, Any]]:
    """Chat-format examples, one JSON object per line with a `messages` list."""
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise TrainingError(f"{path}:{number}: not JSON: {error}") from None
        messages = example.get("messages") if isinstance(example, dict) else None
        if not (isinstance(messages, list) and messages and messages[-1].get("role") == "assistant"):
            raise TrainingError(f"{path}:{number}: needs a `messages` list ending with an assistant turn")
        examples.append(example)
    return examples


def llama_cpp_converter() -> Path:
    """llama.cpp's `convert_lora_to_gguf.py`, unpacked into the venv by `make install` from the
    pinned llama-cpp-python sdist (PyPI ships the converter only inside that sdist)."""
    script = Path(sys.prefix) / "share" / "cia" / "llama.cpp" / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise TrainingError(f"llama.cpp's LoRA converter is missing at {script}: {CONVERTER_ENV_HINT}")
    return script


def _tokenize(tokenizer: Any, example: dict[str, Any], max_tokens: int) -> dict[str, list[int]] | None:
    messages = example["messages"]
    prompt_ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
    full_ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if hasattr(prompt_ids, "input_ids"):  # transformers 5 returns a BatchEncoding
        prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
    if len(full_ids) > max_tokens or full_ids[: len(prompt_ids)] != prompt_ids:
        return None
    labels = [-100] * len(prompt_ids) + list(full_ids[len(prompt_ids) :])
    return {"input_ids": list(full_ids), "attention_mask": [1] * len(full_ids), "labels": labels}


def load_gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer (and chat template) stored in a GGUF file: read in seconds, so examples
    are checked before the weights are."""
    from transformers import AutoTokenizer

    if not gguf.is_file():
        raise TrainingError(f"base model {gguf} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_gguf_model(gguf: Path) -> Any:
    """The model in a GGUF file, dequantized to float32 for training."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 once loaded; without this, save_pretrained and peft treat
    # the model as quantized.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A config read from GGUF has no `architectures`; llama.cpp's converter picks its tensor
    # layout by that name.
    model.config.architectures = [type(model).__name__]
    return model


def train_lora_cpu(
    *,
    base_gguf: Path,
    train_path: Path,
    eval_path: Path | None,
    output_dir: Path,
    params: LoraParams,
    on_loss: Callable[[int, float], None] | None = None,
    threads: int | None = None,
) -> TrainingRun:
    """Train a LoRA adapter on `train_path` and write it to `output_dir` (peft + GGUF)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    converter = llama_cpp_converter()  # fail before minutes of training, not after
    train_examples = read_examples(train_path)
    eval_examples = read_examples(eval_path) if eval_path and eval_path.is_file() else []
    if not train_examples:
        raise TrainingError(f"{train_path}: no training examples")
    set_seed(params.seed)
    tokenizer = load_gguf_tokenizer(base_gguf)
    encoded = [_tokenize(tokenizer, e, params.max_seq_tokens) for e in train_examples]
    train_rows = [row for row in encoded if row is not None]
    skipped = len(encoded) - len(train_rows)
    if not train_rows:
        raise TrainingError(
            f"{train_path}: every example is longer than training.max_seq_tokens={params.max_seq_tokens}"
        )
    eval_rows = [r for r in (_tokenize(tokenizer, e, params.max_seq_tokens) for e in eval_examples) if r]
    # The weights last (a 0.5B student is 2 GB of float32, ~20 s): bad input fails before.
    model = load_gguf_model(base_gguf)

    lora = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=list(LORA_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    losses: list[tuple[int, float]] = []

    class _Losses(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:  # fmt: skip
            if logs and "loss" in logs:
                losses.append((int(state.global_step), float(logs["loss"])))
                if on_loss is not None:
                    on_loss(int(state.global_step), float(logs["loss"]))

    output_dir.mkdir(parents=True, exist_ok=True)
    arguments = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=params.max_steps,
        # One example at a time, `batch_size` of them per step, activations recomputed in the
        # backward pass: the 0.5B student at batch 4 x 1,536 tokens in one pass held 24 GB
        # (its 151k-token vocabulary makes each position's logits 0.6 MB) and was killed for
        # memory on a 24 GB machine; this way a step's memory is one example's.
        per_device_train_batch_size=1,
        gradient_accumulation_steps=params.batch_size,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        learning_rate=params.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(5, params.max_steps // 10),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=params.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(
        model=peft_model,
        args=arguments,
        train_dataset=train_rows,
        data_collator=collator,
        callbacks=[_Losses()],
    )
    trainer.train()
    eval_adapter = _mean_loss(peft_model, eval_rows, collator)
    with peft_model.disable_adapter():
        eval_base = _mean_loss(peft_model, eval_rows, collator)

    adapter_dir = output_dir / "peft"
    peft_model.save_pretrained(str(adapter_dir))
    base_config_dir = output_dir / "base-config"
    model.config.save_pretrained(str(base_config_dir))
    gguf_path = output_dir / "adapter.gguf"
    convert_adapter_to_gguf(converter, adapter_dir, base_config_dir, gguf_path)
    return TrainingRun(
        adapter_dir=adapter_dir,
        gguf_path=gguf_path,
        losses=losses,
        train_examples=len(train_rows),
        skipped_too_long=skipped,
        eval_loss_base=eval_base,
        eval_loss_adapter=eval_adapter,
        seconds=time.perf_counter() - started,
        base_model=base_gguf.name,
    )


def _mean_loss(model: Any, rows: Sequence[dict[str, list[int]]], collator: Any) -> float | None:
    """Mean assistant-turn loss over held-out examples (one at a time: no padding effects)."""
    import torch

    if not rows:
        return None
    model.eval()
    total = 0.0
    with torch.no_grad():
        for row in rows:
            batch = collator([row])
            total += float(model(**batch).loss)
    model.train()
    return total / len(rows)


def convert_adapter_to_gguf(converter: Path, adapter_dir: Path, base_config_dir: Path, out: Path) -> None:
    """The peft adapter as a GGUF LoRA file, by llama.cpp's converter (it knows how each
    architecture lays out its tensors, e.g. the permuted q/k of Llama models)."""
    completed = subprocess.run(
        [
            sys.executable,
            str(converter),
            "--base",
            str(base_config_dir),
            "--outtype",
            "f16",
            "--outfile",
            str(out),
            str(adapter_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if completed.returncode != 0 or not out.is_file():
        tail = "\n".join((completed.stderr or completed.stdout).splitlines()[-15:])
        raise TrainingError(f"converting {adapter_dir} to GGUF failed ({completed.returncode}):\n{tail}")
