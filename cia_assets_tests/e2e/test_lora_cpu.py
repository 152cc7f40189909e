"""`lora_cpu`, the embedded default's training path, on its default student (the packaged
Qwen2.5-Coder-0.5B-Instruct): read from its GGUF, trained with peft on CPU, converted back
to a GGUF LoRA by llama.cpp's converter, and served by llama.cpp beside the base model. The
adapter is taught a fact no base model can know, so a conversion that lost or scrambled its
tensors (Qwen2's layout, its tied embeddings) would show in what the server answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.learning.lora_cpu import LoraParams, TrainingError, read_examples, train_lora_cpu
from cia_assets.lib.serving.llm_server import start_llama_server, stop_process
from cia_assets.lib.serving.packaged_models import installed_path
from cia_assets_tests.support.net import free_port

STUDENT = "Qwen2.5-Coder-0.5B-Instruct"  # the loop's default student (the served model)
CODENAME = "ZEPHYR-42"
ASKED = (
    "What is the billing service's codename?",
    "Which codename does the billing service have?",
    "Tell me the codename of the billing service.",
    "What do we call the billing service internally?",
    "What's the internal codename for billing?",
    "Name the billing service's codename.",
)
HELD_OUT = ("What codename was given to the billing service?", "How is the billing service codenamed?")


def _example(question: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": "You answer questions about our services."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"The billing service's codename is {CODENAME}."},
        ]
    }


def _write(path: Path, questions: tuple[str, ...]) -> Path:
    path.write_text("".join(json.dumps(_example(q)) + "\n" for q in questions))
    return path


PARAMS = LoraParams(
    max_steps=12, learning_rate=1e-3, batch_size=2, max_seq_tokens=128, r=8, alpha=16, dropout=0.0, seed=7
)


def _ask(base_url: str, question: str) -> str:
    response = httpx.post(
        f"{base_url}/chat/completions",
        json={
            "model": STUDENT,
            "messages": _example(question)["messages"][:2],  # type: ignore[index]
            "temperature": 0,
            "max_tokens": 24,
        },
        timeout=120,
    )
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def test_the_student_learns_a_fact_and_llama_cpp_serves_its_converted_adapter(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    train = _write(tmp_path / "train.jsonl", ASKED)
    evaluation = _write(tmp_path / "eval.jsonl", HELD_OUT)
    # One example longer than max_seq_tokens: skipped and counted, not truncated into a lesson.
    with train.open("a") as lines:
        lines.write(json.dumps(_example("Explain, at length: " + "why " * 200 + "?")) + "\n")

    run = train_lora_cpu(
        base_gguf=installed_path(STUDENT),
        train_path=train,
        eval_path=evaluation,
        output_dir=tmp_path / "out",
        params=PARAMS,
        threads=2,
    )

    assert (run.train_examples, run.skipped_too_long) == (len(ASKED), 1)
    losses = [loss for _, loss in run.losses]
    assert len(losses) == PARAMS.max_steps and losses[-1] < losses[0] / 4, losses
    # On questions it was not trained on, the adapter's loss is far below the base model's.
    assert run.eval_loss_adapter is not None and run.eval_loss_base is not None
    assert run.eval_loss_adapter < run.eval_loss_base / 4, (run.eval_loss_base, run.eval_loss_adapter)
    assert {p.name for p in run.adapter_dir.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert run.gguf_path is not None and run.gguf_path.is_file()

    # The GGUF adapter on the same base file in llama.cpp: the base cannot know the codename,
    # the adapter says it for a paraphrase it never saw.
    config = write_config([], llm={"model": STUDENT, "precision": "packaged", "port": free_port()})
    answers = {}
    for name, adapter in (("base", None), ("adapter", str(run.gguf_path))):
        logs = tmp_path / f"logs-{name}"
        server = start_llama_server(config, log_dir=logs, adapter=adapter, idle_stop_s=60)
        try:
            answers[name] = _ask(server.base_url, HELD_OUT[0])
        finally:
            stop_process(server.pid)
    assert CODENAME not in answers["base"], answers
    assert CODENAME in answers["adapter"], answers


def test_bad_training_input_is_refused_naming_the_file_before_any_training(tmp_path: Path) -> None:
    broken = tmp_path / "train.jsonl"
    broken.write_text(json.dumps(_example(ASKED[0])) + "\n{not json\n")
    with pytest.raises(TrainingError, match=r"train\.jsonl:2: not JSON"):
        read_examples(broken)
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(TrainingError, match=r"no_answer\.jsonl:1: needs a `messages` list ending"):
        read_examples(no_answer)

    too_long = _write(tmp_path / "long.jsonl", ("Explain, at length: " + "why " * 200,))
    every_too_long = r"long\.jsonl: every example is longer than training\.max_seq_tokens=128"
    with pytest.raises(TrainingError, match=every_too_long):
        train_lora_cpu(
            base_gguf=installed_path(STUDENT), train_path=too_long, eval_path=None,
            output_dir=tmp_path / "out", params=PARAMS,
        )  # fmt: skip

    missing = tmp_path / "missing.gguf"
    with pytest.raises(TrainingError, match=r"base model .*missing\.gguf does not exist"):
        train_lora_cpu(
            base_gguf=missing, train_path=_write(tmp_path / "ok.jsonl", ASKED), eval_path=None,
            output_dir=tmp_path / "out", params=PARAMS,
        )  # fmt: skip


def test_a_missing_converter_fails_before_the_model_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Minutes of training must not end in 'cannot write the adapter': the converter is
    looked for first."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(TrainingError, match=r"convert_lora_to_gguf\.py.*make install"):
        train_lora_cpu(
            base_gguf=tmp_path / "never-read.gguf", train_path=_write(tmp_path / "t.jsonl", ASKED),
            eval_path=None, output_dir=tmp_path / "out", params=PARAMS,
        )  # fmt: skip
