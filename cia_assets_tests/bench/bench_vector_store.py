"""Benchmark of the embedded vector store: build time and hybrid search latency.

    .venv/bin/python cia_assets_tests/bench/bench_vector_store.py 10000
    .venv/bin/python cia_assets_tests/bench/bench_vector_store.py 100000 --hnsw-ef 64

Builds one collection of N random 384-d points with lexical vectors from synthetic
code-like text (`lexical.encode_document`) and citation-sized payloads, publishes it (which
optimizes: builds the HNSW index), then times 200 hybrid queries through the alias, with
and without filters. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cia_assets.lib.indexing import lexical
from cia_assets.lib.vectorstore.base import IndexedPoint, SparseVector
from cia_assets.lib.vectorstore.embedded import EmbeddedVectorStore

DIM = 384
REPOS = [f"repo-{i}" for i in range(5)]
_PARTS_TEXT = (
    "get set update create delete load save parse read write open close find list add remove "
    "user account order payment invoice config settings token session request response client "
    "server handler manager service cache queue event message record file path buffer stream "
    "error exception retry timeout auth permission role policy schema model view controller "
    "index search query result filter sort page batch job task worker thread lock pool"
)
PARTS = _PARTS_TEXT.split()
_KEYWORDS_TEXT = "def return if else for in self import from class try except with as not and or"
KEYWORDS = _KEYWORDS_TEXT.split()


def synthetic_vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """Identifiers in the usual styles: snake_case, camelCase, PascalCase."""
    words: list[str] = []
    for i in range(size):
        parts = [str(p) for p in rng.choice(PARTS, size=int(rng.integers(1, 4)))]
        style = i % 3
        if style == 0:
            words.append("_".join(parts))
        elif style == 1:
            words.append(parts[0] + "".join(p.title() for p in parts[1:]))
        else:
            words.append("".join(p.title() for p in parts))
    return words


def synthetic_chunks(rng: np.random.Generator, vocabulary: list[str], n: int) -> list[str]:
    """n code-like chunks of 10-60 lines; identifiers follow a Zipf law, as in real code."""
    ranks = np.arange(1, len(vocabulary) + 1, dtype=np.float64)
    zipf = (1.0 / ranks) / (1.0 / ranks).sum()
    line_counts = rng.integers(10, 60, size=n)
    total_lines = int(line_counts.sum())
    ids_per_line = rng.integers(1, 6, size=total_lines)
    # One vectorised draw for everything: rng.choice with p= per line costs a cumsum each.
    identifiers = rng.choice(len(vocabulary), size=int(ids_per_line.sum()), p=zipf)
    keywords = rng.integers(len(KEYWORDS), size=total_lines)
    chunks: list[str] = []
    line = cursor = 0
    for count in line_counts:
        out: list[str] = []
        for _ in range(int(count)):
            ids = [vocabulary[i] for i in identifiers[cursor : cursor + int(ids_per_line[line])]]
            cursor += int(ids_per_line[line])
            out.append(f"    {KEYWORDS[int(keywords[line])]} {ids[0]}({', '.join(ids[1:])})")
            line += 1
        chunks.append("\n".join(out))
    return chunks


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("n", type=int, nargs="?", default=10_000, help="number of points")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=100, help="prefetch depth of each list")
    parser.add_argument("--hnsw-ef", type=int, default=None, help="HNSW search breadth (engine default)")
    parser.add_argument("--root", type=Path, default=None, help="store root (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()

    rng = np.random.default_rng(42)
    root = args.root or Path(tempfile.mkdtemp(prefix="cia-bench-"))
    n = args.n

    started = time.perf_counter()
    vocabulary = synthetic_vocabulary(rng, 20_000)
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    texts = synthetic_chunks(rng, vocabulary, n)
    generate_s = time.perf_counter() - started

    started = time.perf_counter()
    sparse = [lexical.encode_document(t) for t in texts]
    encode_s = time.perf_counter() - started
    mean_nnz = statistics.fmean(len(s.indices) for s in sparse)

    paths = [f"src/module_{i // 20}/file_{i % 20}.py" for i in range(2_000)]
    store = EmbeddedVectorStore(root, hnsw_ef=args.hnsw_ef)
    try:
        store.create_collection("bench-1", DIM)
        started = time.perf_counter()
        for start in range(0, n, 1_000):
            batch = []
            for i in range(start, min(n, start + 1_000)):
                line = int(rng.integers(1, 2_000))
                batch.append(
                    IndexedPoint(
                        id=str(uuid.UUID(int=i + 1)),
                        dense=dense[i].tolist(),
                        sparse=sparse[i],
                        payload={
                            "repo_id": REPOS[i % len(REPOS)],
                            "path": paths[i % len(paths)],
                            "line_start": line,
                            "line_end": line + texts[i].count("\n"),
                            "language": "python",
                            "kind": "function",
                            "symbol": texts[i].split("(", 1)[0].split()[-1],
                            "commit_sha": "0" * 40,
                            "text": texts[i],
                        },
                    )
                )
            store.upsert("bench-1", batch)
        upsert_s = time.perf_counter() - started

        started = time.perf_counter()
        store.publish("bench", "bench-1")  # seals: optimize (HNSW build), flush, close
        publish_s = time.perf_counter() - started

        started = time.perf_counter()
        store.search("bench", dense[0].tolist(), sparse[0], 10)  # opens this process's view
        first_search_s = time.perf_counter() - started

        # Queries near a document (noise added) with 2-4 of its tokens, like a user who
        # half-remembers a function.
        queries: list[tuple[list[float], SparseVector]] = []
        for _ in range(args.queries):
            i = int(rng.integers(n))
            near = dense[i] + 0.6 * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
            tokens = lexical.code_tokens(texts[i])
            chosen = rng.choice(len(tokens), size=min(len(tokens), 3), replace=False)
            picked = [tokens[int(j)] for j in chosen]
            queries.append((near.tolist(), lexical.encode_query(" ".join(picked))))

        def timed(run: Callable[[list[float], SparseVector], object]) -> list[float]:
            for q_dense, q_sparse in queries[:20]:
                run(q_dense, q_sparse)  # warm caches
            out = []
            for q_dense, q_sparse in queries:
                t = time.perf_counter()
                run(q_dense, q_sparse)
                out.append((time.perf_counter() - t) * 1000)
            return out

        cases = {
            "hybrid": lambda d, s: store.search("bench", d, s, 10, candidates=args.candidates),
            "hybrid + repo filter": lambda d, s: store.search(
                "bench", d, s, 10, filters={"repo_id": REPOS[1]}, candidates=args.candidates
            ),
            "hybrid + 2-repo filter": lambda d, s: store.search(
                "bench", d, s, 10, filters={"repo_id": REPOS[1:3]}, candidates=args.candidates
            ),
            "hybrid + path filter": lambda d, s: store.search(
                "bench", d, s, 10, filters={"path": paths[:10]}, candidates=args.candidates
            ),
            "dense only": lambda d, s: store.search(
                "bench", d, SparseVector([], []), 10, candidates=args.candidates
            ),
        }
        latencies = {name: timed(run) for name, run in cases.items()}
    finally:
        store.close()
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nN={n:,} dim={DIM} candidates={args.candidates} hnsw_ef={args.hnsw_ef or 'default'}")
    print(f"  generate text+vectors   {generate_s:8.2f} s")
    rate = f"{n / encode_s:,.0f} docs/s, {mean_nnz:.0f} nnz/doc"
    print(f"  encode_document         {encode_s:8.2f} s  ({rate})")
    print(f"  upsert                  {upsert_s:8.2f} s  ({n / upsert_s:,.0f} points/s)")
    print(f"  publish (optimize)      {publish_s:8.2f} s")
    print(f"  first search (view)     {first_search_s * 1000:8.1f} ms")
    print(f"\n  {'query':<24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, values in latencies.items():
        print(f"  {name:<24} {percentile(values, 50):8.2f} {percentile(values, 95):8.2f} {max(values):8.2f}")


if __name__ == "__main__":
    main()
