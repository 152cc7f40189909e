"""Indexing benchmark on a real repository (run on demand: `make bench`).

Builds a git repo from an installed package's source tree (default: pip, 400+ .py files),
then measures through real Dagster materializations:
  1. the whole index (snapshot -> chunks -> embeddings -> collection) in chunks/s, against
     the bare embedding throughput of the same model on the same chunk texts;
  2. a one-file commit re-index against the full build;
  3. hybrid search latency p50/p95 at 10k and 100k chunks (the real chunks' vectors and
     lexical vectors replicated across synthetic repos), store-only and end to end.

    .venv/bin/python -m cia_assets_tests.bench.bench_indexing [--package pip] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
from cia_assets.lib.indexing.embeddings import packaged_model_dir
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", default="pip")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cia-bench-"))
    os.environ["DAGSTER_HOME"] = str(root / "dagster")
    Path(os.environ["DAGSTER_HOME"]).mkdir()
    report: dict[str, Any] = {"package": args.package}
    try:
        repo = make_source_repo(args.package, root)
        report["py_files"] = sum(1 for _ in repo.rglob("*.py"))
        model_dir = packaged_model_dir(root / "models")
        config_path = root / "cia.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(root / "data"),
                    "codebases": [{"url": f"file://{repo}", "id": args.package}],
                    "embedding": {"path": str(model_dir)},
                }
            )
        )
        config = load_config(config_path)
        instance = dg.DagsterInstance.ephemeral()

        started = time.perf_counter()
        full = materialize_repo(config, instance, args.package)
        full_seconds = time.perf_counter() - started
        chunks_meta = asset_metadata(full, "code_chunks")
        embed_meta = asset_metadata(full, "chunk_embeddings")
        report.update(
            files=chunks_meta["files"],
            chunks=chunks_meta["chunks"],
            skipped=chunks_meta["skipped"],
            full_index_seconds=round(full_seconds, 1),
            full_index_chunks_per_s=round(int(chunks_meta["chunks"]) / full_seconds, 1),  # type: ignore[arg-type]
            embed_stage_seconds=embed_meta["seconds"],
        )

        chunks = indexing.read_chunks(DataLayout(config.data_dir).chunks(args.package))
        embedder = Project(config).embedder
        texts = sorted({c.embedding_text for c in chunks}, key=len)
        started = time.perf_counter()
        for start in range(0, len(texts), 256):
            embedder.embed(texts[start : start + 256])
        bare = time.perf_counter() - started
        report["bare_embedding_texts_per_s"] = round(len(texts) / bare, 1)
        report["whole_index_vs_bare_embedding"] = round(
            (int(chunks_meta["chunks"]) / full_seconds) / (len(texts) / bare),
            3,  # type: ignore[arg-type]
        )

        target = next(p for p in sorted(repo.rglob("*.py")) if p.stat().st_size > 2000)
        target.write_text(target.read_text() + "\n\ndef bench_added_function(x):\n    return x * 2\n")
        git(repo, "commit", "-q", "-am", "one-file change")
        started = time.perf_counter()
        incremental = materialize_repo(config, instance, args.package)
        one_file_seconds = time.perf_counter() - started
        report.update(
            one_file_reindex_seconds=round(one_file_seconds, 2),
            one_file_reindex_mode=asset_metadata(incremental, "qdrant_collection")["mode"],
            one_file_embedded=asset_metadata(incremental, "chunk_embeddings")["embedded"],
            one_file_vs_full=round(one_file_seconds / full_seconds, 4),
        )

        print(json.dumps(report, indent=2), file=sys.stderr, flush=True)
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
                        id=str(__import__("uuid").UUID(int=i + 1)),
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


if __name__ == "__main__":
    main()
