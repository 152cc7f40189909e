"""Answering benchmark on the embedded default: time to first token and tokens/s of `cia ask`,
with retrieval and prompt assembly shown apart.

    .venv/bin/python -m cia_assets_tests.bench.bench_answering [--repo PATH] [--questions N]

Indexes a repository (default: this project's own) into a temporary data dir, starts the
packaged default model (Qwen2.5-Coder-0.5B-Instruct) behind llama.cpp's server, asks one
warm-up question (the server then holds the system prompt's KV and reuses that prefix, as it
does in use), then each question once, and prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

QUESTIONS = [
    "How does the embedded vector store switch an alias atomically?",
    "How are citations verified after generation?",
    "Where is the repo id derived from a git URL?",
    "How does the chunker split a large class?",
    "How does the repo change sensor detect new commits?",
    "What happens when a remote git repository is unreachable?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-answer-tokens", type=int, default=160)
    parser.add_argument(
        "--context-share", type=float, default=None, help="answering.context_share (default: the config's)"
    )
    args = parser.parse_args()

    import dagster as dg

    from cia_assets.config import load_config
    from cia_assets.lib.answering.answer import AskRequest
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.core.access import Grant
    from cia_assets.lib.indexing.embeddings import packaged_model_dir
    from cia_assets.lib.serving.endpoint import ensure_endpoint, stop_local_endpoint
    from cia_assets_tests.support.materialize import materialize_repo

    root = Path(tempfile.mkdtemp(prefix="cia-bench-answer-"))
    repo = Path(args.repo).resolve()
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    config_path = root / "cia.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "codebases": [{"url": f"file://{repo}", "id": "bench", "exclude": ["*.lock"]}],
                "embedding": {"path": str(packaged_model_dir(root / "models"))},
                "llm": {"max_answer_tokens": args.max_answer_tokens, "port": 8691},
                **({"answering": {"context_share": args.context_share}} if args.context_share else {}),
            }
        )
    )
    config = load_config(config_path)
    report: dict[str, Any] = {"repo": str(repo), "sha": sha, "context_share": config.answering.context_share}
    started = time.perf_counter()
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "bench")
    report["index_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    record = ensure_endpoint(config)
    report["model_server_start_seconds"] = round(time.perf_counter() - started, 1)
    report["model"] = record.model

    answerer = Answerer(config)
    grant = Grant(name="bench", repos=("bench",))
    rows: list[dict[str, Any]] = []
    try:
        answerer.ask(AskRequest(question="What does this project do?", grant=grant))
        for question in QUESTIONS[: args.questions]:
            started = time.perf_counter()
            answer = answerer.ask(AskRequest(question=question, grant=grant))
            total = (time.perf_counter() - started) * 1000
            timings = answer.timings_ms
            completion = answer.usage.get("completion_tokens") or 0
            first = timings.get("first_token_ms") or total
            decode_ms = max(1.0, total - first)
            rows.append(
                {
                    "question": question,
                    "retrieval_and_prompt_ms": timings.get("retrieval_ms"),
                    "first_token_ms": round(first, 1),
                    "prefill_ms": round(first - (timings.get("retrieval_ms") or 0), 1),
                    "total_ms": round(total, 1),
                    "prompt_tokens": answer.usage.get("prompt_tokens"),
                    "completion_tokens": completion,
                    "decode_tokens_per_s": round(completion / (decode_ms / 1000), 1) if completion else None,
                    "citations": len(answer.citations),
                    "not_found": answer.not_found,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        answerer.close()
        stop_local_endpoint(config)

    def summary() -> dict[str, Any]:
        chosen = rows

        def stat(key: str) -> dict[str, float]:
            values = [float(r[key]) for r in chosen if r[key] is not None]
            return {"p50": round(statistics.median(values), 1), "p95": round(percentile(values, 0.95), 1)}

        return {
            "questions": len(chosen),
            "retrieval_and_prompt_ms": stat("retrieval_and_prompt_ms"),
            "first_token_ms": stat("first_token_ms"),
            "prefill_ms": stat("prefill_ms"),
            "prompt_tokens": stat("prompt_tokens"),
            "decode_tokens_per_s": stat("decode_tokens_per_s"),
            "answers_with_valid_citation": sum(1 for r in chosen if r["citations"]),
        }

    report["summary"] = summary()
    report["rows"] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
