"""Indexing benchmark on a real repository, side by side with the seed stack (`make bench`).

Builds a git repo from an installed package's source tree (default: pip, 400+ .py files),
then, one after the other on this machine, each in its own process (cold embedding cache,
the same ONNX model files, peak RSS per process):
  1. the seed stack: LangChain's Python splitter (1000/100 characters) + fastembed
     all-MiniLM-L6-v2 on the ONNX export + Qdrant (qdrant-client's on-disk local mode);
  2. `cia index`'s graph (snapshot -> chunks -> embeddings -> collection + checks) through real
     Dagster materializations, with `embedding.precision` fp32, then the default (auto: bf16
     on a CPU with bf16 units), reporting files/s and chunks/s and the ratio to the seed stack;
  3. a one-file commit re-indexed incrementally, against the full build;
  4. at 1k, 10k and 100k chunks (the real chunks' vectors and lexical vectors replicated
     across synthetic repos): a one-file update of the collection (copy, delete, write,
     publish, drop the old: what an incremental update does to the store) and hybrid
     search latency p50/p95, store-only and end to end.
Only `.py` files are indexed, as the seed stack reads them.

    .venv/bin/python -m cia_assets_tests.bench.bench_indexing [--package pip] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import yaml

from cia_assets.config import load_config
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.project import Project
from cia_assets.lib.indexing import lexical
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.indexing.embeddings import PACKAGED_MODEL, packaged_model_dir
from cia_assets.lib.vectorstore.base import IndexedPoint
from cia_assets_tests.support.materialize import asset_metadata, materialize_repo
from cia_assets_tests.support.repos import GIT_ENV

QUERIES = [
    "parse a requirement specifier with extras and markers",
    "how are HTTP retries and timeouts configured",
    "where is the wheel cache directory computed",
    "resolve dependency conflicts backtracking",
    "verify hashes of downloaded files",
    "InstallRequirement",
    "read configuration files from environment variables",
    "uninstall a package and remove its files",
    "build an sdist with PEP 517 hooks",
    "format the progress bar during downloads",
]
# In the order they run; `cia` (the default config) runs last and is the one kept for the
# one-file commit and the search benchmark.
STACKS = ("seed", "cia-fp32", "cia")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_source_repo(package: str, root: Path) -> Path:
    source = Path(importlib.import_module(package).__file__ or "").parent
    repo = root / package
    shutil.copytree(source, repo / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "import")
    return repo


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def index_with_seed_stack(repo: Path, model_dir: Path, workdir: Path) -> dict[str, Any]:
    """What the seed projects did: split each .py file with LangChain, embed with fastembed,
    upsert into Qdrant."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastembed import TextEmbedding
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter
    from qdrant_client import QdrantClient, models

    started = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter.from_language(
        Language.PYTHON, chunk_size=1000, chunk_overlap=100
    )
    files = sorted(repo.rglob("*.py"))
    chunks: list[tuple[str, str]] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks += [(str(path.relative_to(repo)), piece) for piece in splitter.split_text(text)]
    model = TextEmbedding(PACKAGED_MODEL, specific_model_path=str(model_dir), threads=os.cpu_count())
    vectors = list(model.embed([text for _, text in chunks]))
    client = QdrantClient(path=str(workdir / "qdrant"))
    client.create_collection(
        "seed", vectors_config=models.VectorParams(size=len(vectors[0]), distance=models.Distance.COSINE)
    )
    for start in range(0, len(chunks), 256):
        client.upsert(
            "seed",
            points=[
                models.PointStruct(id=start + i, vector=vector.tolist(), payload={"path": path, "text": text})
                for i, ((path, text), vector) in enumerate(
                    zip(chunks[start : start + 256], vectors[start : start + 256], strict=True)
                )
            ],
        )
    client.close()
    seconds = time.perf_counter() - started
    return {"files": len(files), "chunks": len(chunks), "seconds": round(seconds, 1)}


def cia_config(repo: Path, model_dir: Path, workdir: Path, precision: str) -> Path:
    config_path = workdir / "cia.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(workdir / "data"),
                "codebases": [{"url": f"file://{repo}", "id": repo.name, "include": ["**/*.py"]}],
                "embedding": {"path": str(model_dir), "precision": precision},
            }
        )
    )
    return config_path


def index_with_cia(
    repo: Path, model_dir: Path, workdir: Path, precision: str, one_file_commit: bool
) -> dict[str, Any]:
    os.environ["DAGSTER_HOME"] = str(workdir / "dagster")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    config = load_config(cia_config(repo, model_dir, workdir, precision))
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    full = materialize_repo(config, instance, repo.name)
    seconds = time.perf_counter() - started
    chunks_meta = asset_metadata(full, "code_chunks")
    embed_meta = asset_metadata(full, "chunk_embeddings")
    report: dict[str, Any] = {
        "files": chunks_meta["files"],
        "chunks": chunks_meta["chunks"],
        "seconds": round(seconds, 1),
        "embedding_precision": embed_meta["precision"],
        "embed_stage_seconds": embed_meta["seconds"],
    }
    if one_file_commit:
        report["peak_rss_mb_full_index"] = peak_rss_mb()
        target = next(p for p in sorted(repo.rglob("*.py")) if p.stat().st_size > 2000)
        target.write_text(target.read_text() + "\n\ndef bench_added_function(x):\n    return x * 2\n")
        git(repo, "commit", "-q", "-am", "one-file change")
        started = time.perf_counter()
        incremental = materialize_repo(config, instance, repo.name)
        one_file_seconds = time.perf_counter() - started
        report.update(
            one_file_reindex_seconds=round(one_file_seconds, 2),
            one_file_reindex_mode=asset_metadata(incremental, "qdrant_collection")["mode"],
            one_file_embedded=asset_metadata(incremental, "chunk_embeddings")["embedded"],
            one_file_vs_full=round(one_file_seconds / seconds, 4),
        )
    return report


def run_stack(stack: str, repo: Path, model_dir: Path, workdir: Path) -> dict[str, Any]:
    """One stack in a process of its own, so each has a cold cache and its own peak RSS."""
    workdir.mkdir(parents=True)
    command = [sys.executable, "-m", __spec__.name if __spec__ else "cia_assets_tests.bench.bench_indexing"]
    command += [
        "--run-stack",
        stack,
        "--repo",
        str(repo),
        "--model-dir",
        str(model_dir),
        "--workdir",
        str(workdir),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {stack} stack failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(stack: str, repo: Path, model_dir: Path, workdir: Path) -> None:
    if stack == "seed":
        report = index_with_seed_stack(repo, model_dir, workdir)
    else:
        precision = "fp32" if stack == "cia-fp32" else "auto"
        report = index_with_cia(repo, model_dir, workdir, precision, one_file_commit=stack == "cia")
    report["peak_rss_mb"] = peak_rss_mb()
    report["files_per_s"] = round(int(report["files"]) / float(report["seconds"]), 2)
    report["chunks_per_s"] = round(int(report["chunks"]) / float(report["seconds"]), 1)
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", default="pip")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--run-stack", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stack:
        child(args.run_stack, args.repo, args.model_dir, args.workdir)
        return

    root = Path(tempfile.mkdtemp(prefix="cia-bench-"))
    report: dict[str, Any] = {"package": args.package, "cpus": os.cpu_count()}
    try:
        repo = make_source_repo(args.package, root)
        report["py_files"] = sum(1 for _ in repo.rglob("*.py"))
        model_dir = packaged_model_dir(root / "models")  # the same model files for every stack
        stacks = {stack: run_stack(stack, repo, model_dir, root / stack) for stack in STACKS}
        seed = stacks["seed"]
        for stack in STACKS[1:]:
            stacks[stack]["files_per_s_vs_seed"] = round(
                stacks[stack]["files_per_s"] / seed["files_per_s"], 2
            )
            stacks[stack]["chunks_per_s_vs_seed"] = round(
                stacks[stack]["chunks_per_s"] / seed["chunks_per_s"], 2
            )
        report["stacks"] = stacks
        print(json.dumps(report, indent=2), file=sys.stderr, flush=True)
        config = load_config(root / "cia" / "cia.yaml")
        chunks = indexing.read_chunks(DataLayout(config.data_dir).chunks(repo.name))
        report["search"] = bench_search(config, chunks, [int(s) for s in args.sizes.split(",")])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


def bench_search(config: Any, chunks: list[Any], sizes: list[int]) -> dict[str, Any]:
    """Replicate the real chunks into N points of synthetic repos and time hybrid search."""
    from cia_assets.lib.vectorstore.embedded import EmbeddedVectorStore

    project = Project(config)
    embedder, cache = project.embedder, project.embedding_cache
    vectors = cache.get_many(embedder.model_id, (c.embedding_key for c in chunks))
    base = [
        (vectors[c.embedding_key], lexical.encode_document(c.embedding_text), indexing.point_payload(c))
        for c in chunks
    ]
    rng = np.random.default_rng(7)
    results: dict[str, Any] = {}
    query_vectors = [(embedder.embed_query(q).tolist(), lexical.encode_query(q)) for q in QUERIES]
    for size in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"cia-bench-store-{size}-"))
        try:
            store = EmbeddedVectorStore(root)
            store.create_collection("bench", len(base[0][0]))
            started = time.perf_counter()
            batch: list[IndexedPoint] = []
            for i in range(size):
                dense, sparse, payload = base[i % len(base)]
                copy = i // len(base)
                noisy = dense + rng.normal(0, 0.01, dense.shape).astype(np.float32) if copy else dense
                batch.append(
                    IndexedPoint(
                        id=str(uuid.UUID(int=i + 1)),
                        dense=noisy.tolist(),
                        sparse=sparse,
                        payload={**payload, "repo_id": f"repo{copy}", "path": f"r{copy}/{payload['path']}"},
                    )
                )
                if len(batch) == 1024:
                    store.upsert("bench", batch)
                    batch = []
            if batch:
                store.upsert("bench", batch)
            upsert_seconds = time.perf_counter() - started
            started = time.perf_counter()
            store.publish("bench-alias", "bench")
            publish_seconds = time.perf_counter() - started
            one_file_update = time_one_file_updates(store, "bench-alias", base[0][2]["path"], base)
            for dense, sparse in query_vectors:  # warm the view
                store.search("bench-alias", dense, sparse, 10)
            latencies: list[float] = []
            filtered: list[float] = []
            for round_ in range(20):
                for dense, sparse in query_vectors:
                    t = time.perf_counter()
                    store.search("bench-alias", dense, sparse, 10)
                    latencies.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    store.search("bench-alias", dense, sparse, 10, {"repo_id": f"repo{round_ % 3}"})
                    filtered.append((time.perf_counter() - t) * 1000)
            end_to_end: list[float] = []
            for query in QUERIES * 3:
                t = time.perf_counter()
                dense = embedder.embed_query(query).tolist()
                store.search("bench-alias", dense, lexical.encode_query(query), 10)
                end_to_end.append((time.perf_counter() - t) * 1000)
            results[str(size)] = {
                "upsert_s": round(upsert_seconds, 1),
                "publish_incl_index_build_s": round(publish_seconds, 1),
                "one_file_update_p50_s": round(statistics.median(one_file_update), 3),
                "one_file_update_max_s": round(max(one_file_update), 3),
                "hybrid_p50_ms": round(statistics.median(latencies), 2),
                "hybrid_p95_ms": round(percentile(latencies, 95), 2),
                "hybrid_repo_filter_p50_ms": round(statistics.median(filtered), 2),
                "hybrid_repo_filter_p95_ms": round(percentile(filtered, 95), 2),
                "with_query_embedding_p50_ms": round(statistics.median(end_to_end), 2),
                "with_query_embedding_p95_ms": round(percentile(end_to_end, 95), 2),
            }
            store.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return results


def time_one_file_updates(
    store: Any, alias: str, path: str, base: list[tuple[Any, Any, dict[str, Any]]], rounds: int = 5
) -> list[float]:
    """What `update_collection` does to the store for a commit touching one file: copy the
    live collection, delete the file's points, write its new ones, publish, drop the old."""
    file_points = [(dense, sparse, payload) for dense, sparse, payload in base if payload["path"] == path]
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        target = store.open_for_update(alias)
        store.delete_where(target, "path", [path])
        store.upsert(
            target,
            [
                IndexedPoint(id=str(uuid.uuid4()), dense=dense.tolist(), sparse=sparse, payload=payload)
                for dense, sparse, payload in file_points
            ],
        )
        previous = store.publish(alias, target)
        if previous and previous != target:
            store.drop_collection(previous)
        seconds.append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    main()
