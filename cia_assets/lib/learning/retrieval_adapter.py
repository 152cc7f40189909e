"""A retrieval adapter: the embedding model fine-tuned on the indexed repos' own history.

Each descriptive commit message (the same commits the history benchmark mines, see
`evaluation.retrieval.mine_commit_cases`) is paired with the chunks it changed, as they were in
the commit's parent (what a search for that message should have found), and with a hard
negative: the chunk of another file of the same kind that shares the most words with the
message. all-MiniLM-L6-v2 (22 M parameters) is trained on these triples with
sentence-transformers' multiple-negatives ranking loss (every other pair of the batch is a
negative too), on CPU, and exported like the packaged model (`embeddings.export_model_folder`).

Training reads only commits reachable from `before` (a commit the evaluation starts after),
so the benchmark that decides whether the adapter is used never scores a commit it trained
on (see `defs/training` and `cia_assets_tests/bench/bench_retrieval_adapter.py`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cia_assets.lib.evaluation.retrieval import mine_commit_cases
from cia_assets.lib.indexing import chunking, lexical
from cia_assets.lib.indexing.embeddings import (
    ADAPTER_RECORD,
    PACKAGED_MODEL,
    PACKAGED_MODEL_MAX_TOKENS,
    export_model_folder,
)
from cia_assets.lib.indexing.file_roles import file_role
from cia_assets.lib.sources.git_sync import RepoMirror

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@", re.M)
# Chunks of one commit used as positives: a commit touching a long function twice is one
# lesson, not ten.
POSITIVES_PER_COMMIT = 2
# Files tried for a commit's hard negative.
NEGATIVE_CANDIDATE_FILES = 4


class RetrievalAdapterError(RuntimeError):
    """The adapter cannot be trained as asked; the message says why."""


@dataclass(frozen=True)
class Triple:
    query: str  # the commit message
    positive: str  # a changed chunk's embedding text (path, scope, code), as the index embeds it
    negative: str  # another file's chunk that shares words with the message
    repo: str
    commit: str


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_triples: int = 3000
    seed: int = 0


@dataclass(frozen=True)
class TrainedAdapter:
    model_dir: Path  # a folder `Embedder` loads (ONNX and sentence-transformers files)
    model_id: str  # names its vectors in caches and collections: the weights' digest
    triples: int
    seconds: float
    settings: TrainingSettings
    device: str = "cpu"
    losses: tuple[tuple[int, float], ...] = ()


def _embedding_text(path: str, context: str, text: str) -> str:
    # The same text `Chunk.embedding_text` gives the model at indexing time.
    header = path if not context else f"{path}\n{context}"
    return f"{header}\n{text}"


def changed_old_lines(mirror: RepoMirror, parent: str, commit: str, path: str) -> list[tuple[int, int]]:
    """1-based inclusive line ranges of `path` at `parent` that `commit` changed; a pure
    insertion counts as the line it follows."""
    diff = mirror.repo.git.diff("-U0", "--no-color", "--no-ext-diff", parent, commit, "--", path)
    ranges = []
    for match in _HUNK.finditer(diff):
        start, count = int(match.group(1)), int(match.group(2) or "1")
        ranges.append((max(start, 1), max(start, 1) + max(count, 1) - 1))
    return ranges


def mine_triples(
    mirror: RepoMirror,
    before: str,
    *,
    repo: str,
    include: tuple[str, ...] = ("**",),
    exclude: tuple[str, ...] = (),
    max_commits: int = 2000,
    seed: int = 0,
) -> list[Triple]:
    """Training triples from the descriptive commits reachable from `before` (itself included)."""
    rng = random.Random(f"{seed}:{repo}")
    cases = mine_commit_cases(
        mirror,
        before,
        repo=repo,
        include=include,
        exclude=exclude,
        max_cases=max_commits,
        scan_commits=20_000,
    )
    triples: list[Triple] = []
    for case in cases:
        commit = mirror.repo.git.rev_parse(case.case_id.rsplit("@", 1)[-1])
        positives = _changed_chunks(mirror, case.base_commit, commit, case.gold_files)
        if not positives:
            continue
        negative = _hard_negative(
            mirror, case.base_commit, case.query, case.gold_files, include, exclude, rng
        )
        if negative is None:
            continue
        triples.extend(
            Triple(query=case.query, positive=text, negative=negative, repo=repo, commit=commit)
            for text in positives[:POSITIVES_PER_COMMIT]
        )
    return triples


def _changed_chunks(mirror: RepoMirror, parent: str, commit: str, paths: Sequence[str]) -> list[str]:
    texts = []
    for path in paths:
        data = mirror.read_file(parent, path)
        if data is None:
            continue
        changed = changed_old_lines(mirror, parent, commit, path)
        for draft in chunking.chunk_file(path, data):
            if any(draft.line_start <= end and start <= draft.line_end for start, end in changed):
                texts.append(_embedding_text(path, draft.context, draft.text))
    return texts


def _hard_negative(
    mirror: RepoMirror,
    parent: str,
    query: str,
    gold: Sequence[str],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    rng: random.Random,
) -> str | None:
    """The chunk, among a few other source files of the gold files' kind, that shares the most
    code tokens with the message: close enough to confuse, and not the answer."""
    suffixes = {Path(path).suffix for path in gold}
    others = [
        tracked.path
        for tracked in mirror.tracked_files(parent, include, exclude)
        if tracked.path not in gold
        and Path(tracked.path).suffix in suffixes
        and file_role(tracked.path) == "source"
    ]
    if not others:
        return None
    wanted = set(lexical.code_tokens(query))
    best: tuple[int, str] | None = None
    for path in rng.sample(others, min(NEGATIVE_CANDIDATE_FILES, len(others))):
        data = mirror.read_file(parent, path)
        if data is None:
            continue
        for draft in chunking.chunk_file(path, data):
            shared = len(wanted & set(lexical.code_tokens(draft.text)))
            if best is None or shared > best[0]:
                best = (shared, _embedding_text(path, draft.context, draft.text))
    return best[1] if best else None


# Trains a sentence-transformers folder on triple rows: (rows, base model folder, output
# folder, params, loss callback). In process on CPU (`pods.train_retrieval_adapter.fit`), or a
# pod on the GPU node running the same function (`defs/training/gpu.py`).
Fit = Callable[[Sequence[dict[str, str]], Path, Path, dict[str, Any], Callable[[int, float], None]], str]


def train_retrieval_adapter(
    base_model: Path,
    triples: Sequence[Triple],
    target: Path,
    settings: TrainingSettings | None = None,
    *,
    fit: Fit | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> TrainedAdapter:
    """Fine-tune the sentence-transformers model at `base_model` on `triples` with `fit`
    (default: in this process, on CPU) and export it to `target` (replaced whole), named by a
    digest of its weights."""
    settings = settings or TrainingSettings()
    if not triples:
        raise RetrievalAdapterError(
            "no training triples: no descriptive commit changed an indexed source file"
        )
    if fit is None:
        from cia_assets.pods.train_retrieval_adapter import fit as fit_in_process

        fit = fit_in_process
    started = time.perf_counter()
    chosen = list(triples)
    random.Random(settings.seed).shuffle(chosen)
    chosen = chosen[: settings.max_triples]
    rows = [{"anchor": t.query, "positive": t.positive, "negative": t.negative} for t in chosen]
    params = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "warmup_ratio": settings.warmup_ratio,
        "seed": settings.seed,
        "max_seq_tokens": PACKAGED_MODEL_MAX_TOKENS,
    }
    losses: list[tuple[int, float]] = []

    def on_loss(step: int, loss: float) -> None:
        losses.append((step, loss))

    target.parent.mkdir(parents=True, exist_ok=True)
    # On the data volume beside the target: a pod writes the trained folder there.
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.train.", dir=target.parent))
    try:
        progress(f"training on {len(chosen)} triples")
        device = fit(rows, base_model, work / "model", params, on_loss)
        digest = weights_digest(work / "model" / "model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        export_model_folder(work / "model", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    adapter = TrainedAdapter(
        model_dir=target,
        model_id=f"cia-retrieval-adapter-{digest[:16]}",
        triples=len(chosen),
        seconds=round(time.perf_counter() - started, 1),
        settings=settings,
        device=device,
        losses=tuple(losses),
    )
    record = {**asdict(adapter), "model_dir": str(target), "base_model": PACKAGED_MODEL}
    (target / ADAPTER_RECORD).write_text(json.dumps(record, indent=1))
    return adapter


def weights_digest(path: Path) -> str:
    """sha256 of a weights file: what names a trained adapter (and a base model's copy)."""
    digest = hashlib.sha256()
    with path.open("rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
