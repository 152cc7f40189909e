"""How fast llama.cpp reads a prompt under each server setting that changes it, side by side
in one run on the packaged default model (what the first token of an answer waits for).

    .venv/bin/python -m cia_assets_tests.bench.bench_prefill [--tokens 1300] [--repeats 2]

The prompt is code from this repository (about what an answer's context holds). Each setting
loads the model afresh and reads the same tokens `--repeats` times from an empty cache; the
first read also pays for touching the logits buffer (`logits_all` keeps a context x vocabulary
array), so the report gives every read. Settings: `logits_all` (log-probabilities, which the
NOT FOUND odds and the re-ranker need; llama-cpp-python's server default), the same
log-probabilities from the last token's logits only (`last_token_logits`, what CIA's server
runs), `flash_attn`, the batch sizes, and the weights (`bf16`: the packaged model's bf16
copy, `llm.precision`). Each setting also writes `--decode` tokens after its last read, at the
speed an answer streams.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SETTINGS = [
    {"last_token_logits": True, "flash_attn": True, "n_batch": 512, "n_ubatch": 512},
    {"last_token_logits": True, "flash_attn": True, "n_batch": 512, "n_ubatch": 512, "bf16": True},
    {"logits_all": True, "flash_attn": False, "n_batch": 512, "n_ubatch": 512},
    {"logits_all": True, "flash_attn": True, "n_batch": 512, "n_ubatch": 512},
    {"logits_all": False, "flash_attn": False, "n_batch": 512, "n_ubatch": 512},
    {"logits_all": False, "flash_attn": True, "n_batch": 512, "n_ubatch": 512},
    {"logits_all": True, "flash_attn": True, "n_batch": 2048, "n_ubatch": 2048},
]


def main() -> None:
    from llama_cpp import Llama

    from cia_assets.lib.serving.idle_llama_server import last_token_logits_llama
    from cia_assets.lib.serving.packaged_models import bf16_copy, installed_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen2.5-Coder-0.5B-Instruct")
    parser.add_argument("--tokens", type=int, default=1300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode", type=int, default=64, help="tokens written after the prompt")
    parser.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS (default: all)")
    args = parser.parse_args()
    gguf = str(installed_path(args.model))
    source = (Path(__file__).resolve().parents[2] / "cia_assets/lib/answering/answerer.py").read_text()
    rows = []
    for setting in [SETTINGS[i] for i in args.only] if args.only else SETTINGS:
        options = {key: value for key, value in setting.items() if key not in ("last_token_logits", "bf16")}
        model_class = last_token_logits_llama() if setting.get("last_token_logits") else Llama
        weights = str(bf16_copy(args.model)) if setting.get("bf16") else gguf
        llm = model_class(model_path=weights, n_ctx=4096, n_threads=args.threads, verbose=False, **options)
        tokens = llm.tokenize(source.encode())[: args.tokens]
        reads = []
        for _ in range(args.repeats):
            llm.reset()
            started = time.perf_counter()
            llm.eval(tokens)
            reads.append(round(time.perf_counter() - started, 2))
        started = time.perf_counter()
        for written, _ in enumerate(llm.generate(tokens, temp=0), start=1):
            if written == args.decode:
                break
        decode = round(args.decode / (time.perf_counter() - started), 1)
        rows.append({**setting, "tokens": len(tokens), "read_s": reads, "decode_tokens_per_s": decode})
        print(json.dumps(rows[-1]), flush=True)
        del llm
    print(json.dumps({"model": args.model, "threads": args.threads, "settings": rows}, indent=2))


if __name__ == "__main__":
    main()
