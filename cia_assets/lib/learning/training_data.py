"""The training set: synthetic pairs and golden answers in the chat format the served model
sees at question time (the answering prompt, numbered sources, an answer citing them).

Train and eval are split by source file, so no file feeds both: a model that memorized a file
during training cannot look good on questions about that same file. Each synthetic example
shows its source among `distractors` sources from other files of the same split, in a random
position, so the model learns to pick and cite the right one rather than always [1].

Some training questions are also shown without their source (only other files' chunks, as
RAFT trains on oracle-free contexts), answered with the prompt's `NOT FOUND`: a teacher only
writes answerable questions, and a student trained on nothing else stopped abstaining (xarray,
8 steps: absent-feature questions abstained 1.0 -> 0.0, the gate refused it).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cia_assets.lib.answering.answer import NOT_FOUND_MARKER
from cia_assets.lib.answering.citations import renumber_markers
from cia_assets.lib.answering.prompts import PromptTemplate
from cia_assets.lib.core.records import SourceSpan
from cia_assets.lib.indexing.chunking import detect_language
from cia_assets.lib.learning.redaction import redact, scrub
from cia_assets.lib.learning.synthetic import SyntheticPair, source_block

# The commit in a citation link, on a web UI (`/blob/<sha>/`) or the chat app (`/source/<repo>/<sha>/`).
_BLOB_SHA = re.compile(r"/(?:blob|source/[^/]+)/([0-9a-f]{40})/")


@dataclass(frozen=True, kw_only=True)
class Source(SourceSpan):
    """A source an example shows the model, with its (redacted) text."""

    language: str
    symbol: str | None
    text: str


@dataclass(frozen=True)
class Example:
    """One chat example; `sources[answer_source]` is the one its answer must cite."""

    question: str
    answer: str  # markers refer to positions in `sources` (1-based)
    sources: tuple[Source, ...]
    origin: str  # synthetic | golden | abstention
    cited: tuple[int, ...]  # empty for an abstention: nothing shown answers it
    chunk_id: str | None = None
    about: str | None = None  # the file the question is about, when no source shown is it

    @property
    def file_key(self) -> str:
        return self.sources[self.cited[0] - 1].file_key if self.cited else str(self.about)

    def to_json(self, prompt: PromptTemplate) -> dict[str, Any]:
        blocks = "\n\n".join(
            source_block(s.path, s.line_start, s.line_end, s.language, s.symbol, s.text, n=n)
            for n, s in enumerate(self.sources, start=1)
        )
        messages = [*prompt.render(blocks, self.question), {"role": "assistant", "content": self.answer}]
        return {
            "messages": messages,
            "origin": self.origin,
            "question": self.question,
            "reference": self.answer,
            "file_key": self.file_key,
            "chunk_id": self.chunk_id,
            "source": self.sources[self.cited[0] - 1].span_json() if self.cited else None,
            "contexts": [s.text for s in self.sources],
            "prompt_version": prompt.version,
        }


@dataclass
class TrainingSplit:
    train: list[Example] = field(default_factory=list)
    eval: list[Example] = field(default_factory=list)
    skipped_golden: int = 0

    @property
    def eval_files(self) -> set[str]:
        return {e.file_key for e in self.eval}

    @property
    def train_files(self) -> set[str]:
        return {e.file_key for e in self.train}


def eval_files(file_keys: Sequence[str], eval_share: float, seed: int) -> set[str]:
    """Which files are held out: a stable hash per file (a file stays on its side as the set
    grows), with at least one file on each side when there are two or more."""
    keys = sorted(set(file_keys))

    def fraction(key: str) -> float:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    held = {k for k in keys if fraction(k) < eval_share}
    if len(keys) >= 2 and not held:
        held = {min(keys, key=fraction)}
    if len(keys) >= 2 and held == set(keys):
        held.discard(max(keys, key=fraction))
    return held


def renumber(answer: str, mapping: dict[int, int]) -> str:
    """Rewrite [n] markers by `mapping`; markers not in it are dropped."""
    return renumber_markers(answer, mapping)


def _shown(pair: SyntheticPair) -> Source:
    return Source(
        repo=pair.source.repo,
        path=pair.source.path,
        line_start=pair.source.line_start,
        line_end=pair.source.line_end,
        language=pair.source.language,
        symbol=pair.source.symbol,
        text=pair.source_text,
    )


def synthetic_example(
    pair: SyntheticPair, distractors: Sequence[SyntheticPair], rng: random.Random
) -> Example:
    others = [_shown(d) for d in distractors]
    position = rng.randint(0, len(others))
    sources = [*others[:position], _shown(pair), *others[position:]]
    n = position + 1
    return Example(
        question=pair.question,
        answer=renumber(pair.answer, {1: n}),
        sources=tuple(sources),
        origin="synthetic",
        cited=(n,),
        chunk_id=pair.source.chunk_id,
    )


def abstention_example(pair: SyntheticPair, others: Sequence[SyntheticPair]) -> Example:
    """`pair`'s question shown with other files' sources only, answered as the prompt asks
    when the sources do not show the code: `NOT FOUND`."""
    return Example(
        question=pair.question,
        answer=NOT_FOUND_MARKER,
        sources=tuple(_shown(o) for o in others),
        origin="abstention",
        cited=(),
        about=pair.source.file_key,
    )


ReadLines = Callable[[str, str | None, str], list[str] | None]
"""(repo, commit sha or None for the indexed one, path) -> the file's lines, or None."""


def golden_example(row: dict[str, Any], read_lines: ReadLines) -> Example | None:
    """A positively rated answer, its cited sources re-read from git (the trace keeps only
    their locations). None when a cited file no longer has those lines."""
    citations = sorted(row.get("citations") or [], key=lambda c: int(c["n"]))
    if not citations:
        return None
    sources: list[Source] = []
    mapping: dict[int, int] = {}
    secrets: set[str] = set()
    for citation in citations:
        url = citation.get("url") or ""
        found = _BLOB_SHA.search(url)
        lines = read_lines(citation["repo"], found.group(1) if found else None, citation["path"])
        start, end = int(citation["line_start"]), int(citation["line_end"])
        if lines is None or end > len(lines) or start < 1:
            return None
        if int(citation["n"]) in mapping:
            continue
        redacted = redact("\n".join(lines[start - 1 : end]), filename=citation["path"])
        secrets |= redacted.values
        sources.append(
            Source(
                repo=citation["repo"],
                path=citation["path"],
                line_start=start,
                line_end=end,
                language=detect_language(citation["path"]) or "",
                symbol=None,
                # Stored redacted, as synthetic pairs are: training data may go to a GPU pod
                # or a teacher, and an answer may have quoted what it should not have.
                text=redacted.text,
            )
        )
        mapping[int(citation["n"])] = len(sources)
    # An answer that repeats a source's secret in prose reads as prose on its own: the values
    # found in its sources are scrubbed from it and from the question.
    answer, _ = scrub(redact(renumber(str(row["answer"]), mapping)).text, secrets)
    question, _ = scrub(redact(str(row["question"])).text, secrets)
    return Example(question=question, answer=answer, sources=tuple(sources), origin="golden", cited=(1,))


def build_split(
    pairs: Sequence[SyntheticPair],
    golden: Sequence[Example],
    *,
    eval_share: float,
    seed: int,
    distractors: int = 1,
    abstention_share: float = 0.0,
    skipped_golden: int = 0,
) -> TrainingSplit:
    rng = random.Random(seed)
    abstentions = random.Random(f"{seed}:abstention")  # its own draws: the other examples do not move
    held = eval_files([p.source.file_key for p in pairs] + [g.file_key for g in golden], eval_share, seed)
    split = TrainingSplit(skipped_golden=skipped_golden)
    for pair in pairs:
        in_eval = pair.source.file_key in held
        # Distractors come from the same side of the split, so a held-out file never
        # appears in training even as a wrong source.
        pool = [
            p for p in pairs
            if p.source.file_key != pair.source.file_key and (p.source.file_key in held) == in_eval
        ]  # fmt: skip
        chosen = rng.sample(pool, min(distractors, len(pool)))
        example = synthetic_example(pair, chosen, rng)
        (split.eval if in_eval else split.train).append(example)
        # Training only: the eval split's questions are asked of the real index, where their
        # source is found.
        if not in_eval and pool and abstentions.random() < abstention_share:
            shown = abstentions.sample(pool, min(distractors + 1, len(pool)))
            split.train.append(abstention_example(pair, shown))
    for example in golden:
        files = {s.file_key for s in example.sources}
        if files & held and files - held:
            split.skipped_golden += 1  # its sources straddle the split: it would leak
            continue
        (split.eval if example.file_key in held else split.train).append(example)
    return split
