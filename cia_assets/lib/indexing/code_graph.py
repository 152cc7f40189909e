"""A repo's code graph, ranked like Aider's repo map: personalised PageRank over files.

Nodes are files; a file that uses a name links to the files that define it, and a Python
file links to the modules it imports (`indexing.code_symbols` reads both from tree-sitter).
Edge weights follow Aider's repo map: the square root of the uses, a name defined in many
files (`get`, `run`) or a private one weighs a tenth, a long compound name (`send_request`,
`HTTPAdapter`) ten times. PageRank personalised on the files a question's search found (and
the files it names) spreads their rank to the code they depend on, so the module a matching
test exercises, or the callee of a matching caller, rises (see `search._search_repo`).

The graph is built when the chunks are (`write_code_graph`), so a question pays only the
power iteration: a sparse matrix-vector product per step.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from cia_assets.lib.core.fsio import read_by_version, write_jsonl_atomic
from cia_assets.lib.indexing.code_symbols import SYMBOLS_FORMAT, FileSymbols
from cia_assets.lib.indexing.file_roles import file_role

DAMPING = 0.85
ITERATIONS = 30
TOLERANCE = 1e-6
# Aider's multipliers (aider/repomap.py): names defined in more files than this say little.
COMMON_NAME_DEFINERS = 5
IMPORT_WEIGHT = 1.0
_COMPOUND = re.compile(r"^(?=.*[a-z])(?:.*_.*|.*[a-z][A-Z].*)$")
# Dotted-module candidates beyond this many files are too vague to link (`utils`).
MAX_MODULE_MATCHES = 3


@dataclass(frozen=True)
class CodeGraph:
    files: tuple[str, ...]
    # Column-stochastic transition matrix: column j holds file j's out-edges, normalised.
    transition: sparse.csc_matrix
    dangling: np.ndarray  # bool per file: no out-edges (its rank is spread by personalisation)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {path: i for i, path in enumerate(self.files)}

    def rank(self, seeds: Mapping[str, float]) -> dict[str, float]:
        """Personalised PageRank from `seeds` (file -> weight); files not in the graph are
        ignored, no seed in it ranks nothing."""
        index = self.index
        personal = np.zeros(len(self.files))
        for path, weight in seeds.items():
            position = index.get(path)
            if position is not None and weight > 0:
                personal[position] += weight
        total = personal.sum()
        if total <= 0:
            return {}
        personal /= total
        ranks = personal.copy()
        for _ in range(ITERATIONS):
            leaked = ranks[self.dangling].sum()
            updated = DAMPING * (self.transition @ ranks + leaked * personal) + (1 - DAMPING) * personal
            done = np.abs(updated - ranks).sum() < TOLERANCE
            ranks = updated
            if done:
                break
        return {self.files[i]: float(ranks[i]) for i in np.flatnonzero(ranks > 0)}


def build_code_graph(symbols: Iterable[FileSymbols]) -> CodeGraph:
    nodes = sorted(symbols, key=lambda s: s.path)
    files = tuple(node.path for node in nodes)
    index = {path: i for i, path in enumerate(files)}
    definers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.defines:
            definers.setdefault(name, []).append(i)
    modules = _module_files(files)
    weights: dict[tuple[int, int], float] = {}
    for i, node in enumerate(nodes):
        for name, uses in node.references.items():
            targets = definers.get(name)
            if not targets:
                continue
            weight = _name_multiplier(name, len(targets)) * math.sqrt(uses)
            for j in targets:
                if j != i:
                    weights[(i, j)] = weights.get((i, j), 0.0) + weight
        for module in node.imports:
            for path in modules.get(module, ()):
                j = index[path]
                if j != i:
                    weights[(i, j)] = weights.get((i, j), 0.0) + IMPORT_WEIGHT
    size = len(files)
    if weights:
        sources, targets_, values = zip(*((i, j, w) for (i, j), w in weights.items()), strict=True)
        adjacency = sparse.csc_matrix(
            (np.asarray(values), (np.asarray(targets_), np.asarray(sources))), shape=(size, size)
        )
    else:
        adjacency = sparse.csc_matrix((size, size))
    out_weight = np.asarray(adjacency.sum(axis=0)).ravel()
    dangling = out_weight == 0
    scale = sparse.diags(np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, out_weight)))
    return CodeGraph(files=files, transition=sparse.csc_matrix(adjacency @ scale), dangling=dangling)


def _name_multiplier(name: str, definer_count: int) -> float:
    multiplier = 1.0
    if len(name) >= 8 and _COMPOUND.match(name):
        multiplier *= 10.0
    if name.startswith("_"):
        multiplier *= 0.1
    if definer_count > COMMON_NAME_DEFINERS:
        multiplier *= 0.1
    return multiplier


def _module_files(files: Iterable[str]) -> dict[str, list[str]]:
    """Dotted module name -> the Python files it can be: `pkg.mod` is `pkg/mod.py`,
    `src/pkg/mod.py` or `pkg/mod/__init__.py`; any leading folders may be dropped, since a
    layout's `src/` or `lib/` is not part of the import name."""
    by_module: dict[str, list[str]] = {}
    for path in files:
        if not path.endswith((".py", ".pyi")):
            continue
        stem = path.rsplit(".", 1)[0]
        if stem.endswith("/__init__"):
            stem = stem[: -len("/__init__")]
        segments = stem.split("/")
        for start in range(len(segments)):
            by_module.setdefault(".".join(segments[start:]), []).append(path)
    return {module: paths for module, paths in by_module.items() if len(paths) <= MAX_MODULE_MATCHES}


# --- storage ---------------------------------------------------------------------------


def write_symbols(path: Path, symbols: Iterable[FileSymbols]) -> None:
    write_jsonl_atomic(path, (node.to_json() for node in symbols))


def read_symbols(path: Path) -> dict[str, FileSymbols]:
    """path -> symbols of the last chunked snapshot; records of an older format are dropped
    (their files are read again)."""
    if not path.exists():
        return {}
    found: dict[str, FileSymbols] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            data = json.loads(line)
            if data.get("format") == SYMBOLS_FORMAT:
                node = FileSymbols.from_json(data)
                found[node.path] = node
    return found


def read_source_definers(path: Path) -> dict[str, tuple[str, ...]]:
    """name -> the source files (not tests, docs or vendored copies) that define it, from the
    symbols file at `path`; read once per version of the file."""
    return read_by_version(path, _source_definers) or {}


def _source_definers(path: Path) -> dict[str, tuple[str, ...]]:
    by_name: dict[str, list[str]] = {}
    for node in read_symbols(path).values():
        if file_role(node.path) == "source":
            for name in node.defines:
                by_name.setdefault(name, []).append(node.path)
    return {name: tuple(paths) for name, paths in by_name.items()}


def write_code_graph(path: Path, graph: CodeGraph) -> None:
    """Atomically, as readers load it while an index update runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    matrix = graph.transition.tocoo()
    np.savez(
        partial,
        files=np.asarray(graph.files, dtype=object).astype(str),
        rows=matrix.row.astype(np.int32),
        cols=matrix.col.astype(np.int32),
        values=matrix.data.astype(np.float64),
        dangling=graph.dangling,
    )
    os.replace(partial, path)


def read_code_graph(path: Path) -> CodeGraph | None:
    """The graph at `path`, loaded once per version of the file; None when there is none."""
    return read_by_version(path, _load_code_graph)


def _load_code_graph(path: Path) -> CodeGraph:
    with np.load(path, allow_pickle=False) as stored:
        files = tuple(str(name) for name in stored["files"])
        size = len(files)
        transition = sparse.csc_matrix(
            (stored["values"], (stored["rows"], stored["cols"])), shape=(size, size)
        )
        return CodeGraph(files=files, transition=transition, dangling=stored["dangling"].astype(bool))
