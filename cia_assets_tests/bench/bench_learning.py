"""Learning-loop benchmark on the embedded default (CPU): secret redaction throughput over a
real source tree, the teacher's seconds per synthetic pair, and CPU LoRA training speed on the
student.

    .venv/bin/python -m cia_assets_tests.bench.bench_learning [--source DIR] [--steps N]
        [--student MODEL] [--teacher MODEL] [--pairs N] [--out FILE]

Redaction runs over every text file of DIR (default: this project's cia_assets/). The teacher
(default: the packaged Qwen2.5-Coder-1.5B, the loop's default, on a llama.cpp server of its
own as `synthetic_qa_dataset` runs it) writes `--pairs` question/answer pairs from chunks of
DIR's Python files (0 skips it). Training uses synthetic chat examples of the training set's
shape (a prompt with two numbered sources of 30 lines, the default `datasets.max_chunk_lines`,
and an answer citing one), the default `training.max_seq_tokens` 1536, batch 4, LoRA r 8 on
all projections, on the student (default: the packaged Qwen2.5-Coder-0.5B, the served model;
SmolLM2-135M-Instruct is the tiny one), and prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from cia_assets.lib.learning.redaction import redact


def bench_redaction(source: Path) -> dict[str, Any]:
    suffixes = {".py", ".md", ".yaml", ".yml", ".sql", ".go", ".ts", ".js"}
    # Build output (dbt's target/) is not source.
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix in suffixes and "target" not in p.parts]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    lines = sum(t.count("\n") + 1 for t in texts)
    started = time.perf_counter()
    findings = sum(redact(t).count for t in texts)
    seconds = time.perf_counter() - started
    return {
        "files": len(files),
        "lines": lines,
        "seconds": round(seconds, 2),
        "lines_per_s": round(lines / seconds),
        "findings": findings,
    }


def _example(rng: random.Random, n: int) -> dict[str, Any]:
    from cia_assets.lib.answering.prompts import PACKAGED_PROMPT
    from cia_assets.lib.learning.synthetic import source_block

    blocks = []
    for k in (1, 2):
        code = "\n".join(f"    total += step_{i}(item)  # part {i}" for i in range(29))
        blocks.append(
            source_block(
                f"pkg/mod_{n}_{k}.py", 1, 30, "python", f"f_{n}_{k}", f"def f_{n}_{k}():\n{code}", n=k
            )
        )
    cited = rng.choice([1, 2])
    messages = PACKAGED_PROMPT.render("\n\n".join(blocks), f"What does f_{n}_{cited} compute?")
    answer = f"According to [{cited}], f_{n}_{cited} chains forty compute steps over its values."
    return {"messages": [*messages, {"role": "assistant", "content": answer}]}


def bench_teacher(model: str, source: Path, pairs: int) -> dict[str, Any]:
    from cia_assets.config import ModelEndpointConfig, load_config
    from cia_assets.lib.core.records import Chunk, sha256_text
    from cia_assets.lib.indexing.chunking import chunk_file
    from cia_assets.lib.learning.synthetic import PAIR_SCHEMA, generate_pairs, sample_chunks
    from cia_assets.lib.serving.model_endpoints import model_endpoint

    chunks = [
        Chunk(repo_id="bench", path=str(path.relative_to(source)), line_start=d.line_start,
              line_end=d.line_end, language=d.language, kind=d.kind, symbol=d.symbol,
              commit_sha="0" * 40, content_hash=sha256_text(d.text), text=d.text)
        for path in sorted(source.rglob("*.py"))
        for d in chunk_file(str(path.relative_to(source)), path.read_bytes())
    ]  # fmt: skip
    sample = sample_chunks(chunks, pairs, seed=7, min_lines=4, max_lines=30)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cia.yaml").write_text(f"data_dir: {tmp}/data\ncodebases: []\n")
        config = load_config(Path(tmp) / "cia.yaml")
        started = time.perf_counter()
        with model_endpoint(config, ModelEndpointConfig(model=model), role="teacher") as teacher:
            ready = time.perf_counter()
            report = generate_pairs(
                sample,
                lambda messages: teacher.complete_json(messages, PAIR_SCHEMA),
                teacher_name=teacher.label,
                base64_limit=4.5,
                hex_limit=3.0,
            )
            done = time.perf_counter()
    return {
        "model": model,
        "server_start_s": round(ready - started, 1),
        "requested": len(sample),
        "pairs": len(report.pairs),
        "seconds_per_request": round((done - ready) / max(1, len(sample)), 1),
        "dropped": {
            k: v for k, v in report.counts().items() if k.startswith("dropped") or k == "teacher_errors"
        },
        "example": report.pairs[0].to_json() if report.pairs else None,
    }


def bench_training(steps: int, student: str) -> dict[str, Any]:
    from cia_assets.lib.learning.lora_cpu import LoraParams, train_lora_cpu
    from cia_assets.lib.serving.llm_server import SMOLLM2, packaged_gguf
    from cia_assets.lib.serving.packaged_models import installed_path

    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train = folder / "train.jsonl"
        train.write_text("".join(json.dumps(_example(rng, n)) + "\n" for n in range(32)))
        evaluation = folder / "eval.jsonl"
        evaluation.write_text("".join(json.dumps(_example(rng, 100 + n)) + "\n" for n in range(4)))
        times: list[float] = []
        last = [time.perf_counter()]

        def on_loss(step: int, loss: float) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        params = LoraParams(
            max_steps=steps,
            learning_rate=2e-4,
            batch_size=4,
            max_seq_tokens=1536,
            r=8,
            alpha=16,
            dropout=0.05,
            seed=7,
        )
        started = time.perf_counter()
        base = packaged_gguf() if student == SMOLLM2 else installed_path(student)
        run = train_lora_cpu(
            base_gguf=base, train_path=train, eval_path=evaluation, output_dir=folder / "out",
            params=params, on_loss=on_loss, threads=2,
        )  # fmt: skip
        total = time.perf_counter() - started
        gguf_mb = run.gguf_path.stat().st_size / 1e6 if run.gguf_path else None
    steady = sorted(times[1:]) or times
    return {
        "student": student,
        "steps": steps,
        "train_examples": run.train_examples,
        "skipped_too_long": run.skipped_too_long,
        "seconds_total": round(total, 1),
        "seconds_per_step_p50": round(steady[len(steady) // 2], 2),
        "first_loss": run.losses[0][1] if run.losses else None,
        "last_loss": run.losses[-1][1] if run.losses else None,
        "eval_loss_base": round(run.eval_loss_base or 0, 4),
        "eval_loss_adapter": round(run.eval_loss_adapter or 0, 4),
        "adapter_gguf_mb": round(gguf_mb, 1) if gguf_mb else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "cia_assets")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--student", default="Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--teacher", default="Qwen2.5-Coder-1.5B-Instruct")
    parser.add_argument("--pairs", type=int, default=5, help="synthetic pairs the teacher writes (0: skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"redaction": bench_redaction(args.source)}
    if args.pairs:
        report["teacher"] = bench_teacher(args.teacher, args.source, args.pairs)
    if args.steps:
        report["training"] = bench_training(args.steps, args.student)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
