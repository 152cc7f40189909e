"""Retrieval quality, measured: does search find the files a change really touched?

A case is a text (an issue report, a commit message) written against one commit of a repo,
and the files the fix changed. The harness brings its own index of the repo to each case's
commit through the normal incremental indexing path (cases of a repo in commit order, so
unchanged files keep their chunks and vectors), searches with the text and scores the
distinct files returned: Acc@k (a gold file among the first k) and MRR. A BM25 ranking of
whole files, computed on the same files in the same run, is the baseline beside it.

Cases come from a JSONL set (the SWE-bench / commit-localization format) or are mined from
a repository's own history (commit message -> the files it changed), so a team can measure
retrieval on its own code. The harness works in its own data dir and collection prefix: the
live index is never moved to an old commit.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import git

from cia_assets.config import CiaConfig, CodebaseConfig
from cia_assets.lib.core.layout import DataLayout, collection_alias
from cia_assets.lib.core.project import Project
from cia_assets.lib.indexing import lexical
from cia_assets.lib.indexing import pipeline as indexing
from cia_assets.lib.indexing.embedding_models import active_model
from cia_assets.lib.retrieval.search import SearchOptions, search_files
from cia_assets.lib.sources.git_sync import GitAuth, RepoMirror, path_selected, snapshot_at, write_snapshot

K_VALUES = (1, 5, 10)
# MRR and the BM25 list look this deep; a gold file further down counts as not found.
RANK_DEPTH = 100
TEST_PATH_GLOBS = (
    "tests/*",
    "*/tests/*",
    "test/*",
    "*/test/*",
    "*/testing/tests/*",
    "test_*",
    "*/test_*",
    "*_test.*",
    "*_tests.*",
    "*/conftest.py",
    "conftest.py",
    "*.spec.*",
    "*.test.*",
)
# Subjects that describe no behaviour a user would ask about.
_UNINFORMATIVE_SUBJECT = re.compile(
    r"^(merge|revert|bump|release|prepare|version|typo|fix typo|update changelog|changelog|"
    r"pre-commit|format|lint|style)\b",
    re.IGNORECASE,
)
_TRAILER = re.compile(r"^[A-Za-z-]+: .+$")


class RetrievalEvalError(ValueError):
    """A case set or a repo source cannot be used; the message names which."""


@dataclass(frozen=True)
class RetrievalCase:
    case_id: str
    repo: str  # as the set names it, e.g. "pallets/flask"
    base_commit: str
    query: str
    gold_files: tuple[str, ...]

    @classmethod
    def from_json(cls, row: Mapping[str, Any], where: str) -> RetrievalCase:
        try:
            gold = tuple(row["gold_files"])
            case = cls(
                case_id=str(row["instance_id"]),
                repo=str(row["repo"]),
                base_commit=str(row["base_commit"]),
                query=str(row["problem_statement"]),
                gold_files=gold,
            )
        except (KeyError, TypeError) as error:
            raise RetrievalEvalError(f"{where}: not a retrieval case ({error!r} missing or wrong)") from None
        if not case.query.strip() or not case.gold_files:
            raise RetrievalEvalError(f"{where}: case {case.case_id} has no query text or no gold files")
        return case

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.case_id,
            "repo": self.repo,
            "base_commit": self.base_commit,
            "problem_statement": self.query,
            "gold_files": list(self.gold_files),
        }


def load_cases(path: Path) -> list[RetrievalCase]:
    """Cases of a JSONL set: instance_id, repo, base_commit, problem_statement, gold_files."""
    cases = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RetrievalEvalError(f"{path}:{number}: not JSON ({error.msg})") from None
            cases.append(RetrievalCase.from_json(row, f"{path}:{number}"))
    return cases


def is_test_path(path: str) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in TEST_PATH_GLOBS)


def commit_message_query(message: str) -> str:
    """Subject and body without trailers (Signed-off-by, Co-authored-by, ...)."""
    lines = [line for line in message.strip().splitlines() if not _TRAILER.match(line.strip())]
    return "\n".join(lines).strip()


def mine_commit_cases(
    mirror: RepoMirror,
    head: str,
    *,
    repo: str,
    include: tuple[str, ...] = ("**",),
    exclude: tuple[str, ...] = (),
    max_cases: int = 50,
    min_words: int = 8,
    max_files: int = 3,
    scan_commits: int = 5000,
) -> list[RetrievalCase]:
    """Cases from a repo's own history: each descriptive commit's message is the query and
    the non-test files it modified (as they were in its parent) are the gold files.

    Kept: non-merge commits whose message (trailers removed) has at least `min_words` words
    and does not announce a release, a merge, a typo or formatting fix, and that modify 1 to
    `max_files` selected non-test files that existed before. Newest first, up to `max_cases`.
    """
    output = mirror.repo.git.log(
        head,
        "--no-merges",
        f"--max-count={scan_commits}",
        "--diff-filter=MD",
        "--name-only",
        "--format=%x1e%H%x1f%P%x1f%B%x1f",
    )
    cases: list[RetrievalCase] = []
    for record in output.split("\x1e"):
        if not record.strip():
            continue
        commit_sha, parents, message, names = record.split("\x1f", 3)
        parent_list = parents.split()
        if len(parent_list) != 1:
            continue
        query = commit_message_query(message)
        subject = query.splitlines()[0] if query else ""
        if len(query.split()) < min_words or _UNINFORMATIVE_SUBJECT.match(subject):
            continue
        changed = [name for name in names.split("\n") if name.strip()]
        gold = [path for path in changed if not is_test_path(path) and path_selected(path, include, exclude)]
        if not 1 <= len(gold) <= max_files:
            continue
        cases.append(
            RetrievalCase(
                case_id=f"{repo}@{commit_sha[:12]}",
                repo=repo,
                base_commit=parent_list[0],
                query=query,
                gold_files=tuple(gold),
            )
        )
        if len(cases) >= max_cases:
            break
    return cases


# --- scoring -------------------------------------------------------------------------------


def first_gold_rank(ranked_files: Sequence[str], gold: Iterable[str]) -> int | None:
    """1-based rank of the first gold file among distinct `ranked_files`, None if absent."""
    wanted = set(gold)
    for rank, path in enumerate(dict.fromkeys(ranked_files), start=1):
        if path in wanted:
            return rank
    return None


@dataclass(frozen=True)
class Scores:
    cases: int
    acc: dict[int, float]  # k -> share of cases with a gold file in the first k
    mrr: float

    def to_json(self) -> dict[str, Any]:
        return {"cases": self.cases, **{f"acc@{k}": v for k, v in self.acc.items()}, "mrr": self.mrr}


def score(ranks: Sequence[int | None], k_values: Sequence[int] = K_VALUES) -> Scores:
    n = len(ranks)
    if n == 0:
        return Scores(cases=0, acc=dict.fromkeys(k_values, 0.0), mrr=0.0)
    acc = {k: round(sum(1 for r in ranks if r is not None and r <= k) / n, 4) for k in k_values}
    mrr = round(sum(1.0 / r for r in ranks if r is not None and r <= RANK_DEPTH) / n, 4)
    return Scores(cases=n, acc=acc, mrr=mrr)


# --- BM25 over whole files -----------------------------------------------------------------


class FileBm25:
    """BM25 over whole files (path + content, code-aware tokens): the published baseline.

    Token lists are cached by blob sha, so stepping a repo through commits re-tokenizes
    only the files that changed; the index itself is rebuilt per commit (milliseconds).
    """

    def __init__(self) -> None:
        self._tokens: dict[str, list[str]] = {}
        self._paths: list[str] = []
        self._index: Any = None

    def build(self, mirror: RepoMirror, files: Mapping[str, str]) -> None:
        import bm25s

        missing = [(path, blob) for path, blob in files.items() if blob not in self._tokens]
        contents = dict(mirror.read_blobs([blob for _, blob in missing]))
        for path, blob in missing:
            text = contents[blob].decode("utf-8", errors="replace")
            self._tokens[blob] = lexical.code_tokens(f"{path}\n{text}")
        self._paths = sorted(files)
        corpus = [self._tokens[files[path]] for path in self._paths]
        self._index = bm25s.BM25()
        self._index.index(corpus, show_progress=False)

    def rank(self, query: str, depth: int = RANK_DEPTH) -> list[str]:
        tokens = [t for t in lexical.code_tokens(query) if t in self._index.vocab_dict]
        if not tokens:
            return []
        scores = self._index.get_scores(tokens)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], self._paths[i]))
        return [self._paths[i] for i in order[:depth] if scores[i] > 0]


# --- the harness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoSource:
    """Where the harness clones a set's repo from, and what it indexes of it."""

    repo: str  # the set's repo name, e.g. "pallets/flask"
    url: str  # a git URL or a local path (a bare mirror works)
    branch: str
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()

    @classmethod
    def of_codebase(cls, config: CiaConfig, codebase: CodebaseConfig) -> RepoSource:
        return cls(
            repo=codebase.repo_id,
            url=config.clone_url(codebase),
            branch=codebase.branch,
            include=codebase.include,
            exclude=codebase.exclude,
        )

    @property
    def repo_id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.repo.replace("/", "__"))


@dataclass
class CaseResult:
    case_id: str
    repo: str
    gold_files: tuple[str, ...]
    ranks: dict[str, int | None]  # retriever -> rank of first gold file
    top_files: dict[str, list[str]]  # retriever -> first 10 files


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)  # stage -> seconds per call
    index: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo -> last index stats
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> why it was not run

    def time(self, stage: str, seconds: float) -> None:
        self.timings.setdefault(stage, []).append(seconds)

    def retrievers(self) -> list[str]:
        names: dict[str, None] = {}
        for result in self.results:
            names.update(dict.fromkeys(result.ranks))
        return list(names)

    def scores(self) -> dict[str, dict[str, Scores]]:
        """retriever -> repo (and "all") -> scores."""
        out: dict[str, dict[str, Scores]] = {}
        repos = sorted({r.repo for r in self.results})
        for name in self.retrievers():
            per = {repo: score([r.ranks[name] for r in self.results if r.repo == repo]) for repo in repos}
            per["all"] = score([r.ranks[name] for r in self.results])
            out[name] = per
        return out

    def timing_summary(self) -> dict[str, dict[str, float]]:
        return {
            stage: {
                "calls": len(values),
                "total_s": round(sum(values), 2),
                "p50_ms": round(statistics.median(values) * 1000, 1),
                "p95_ms": round(_p95(values) * 1000, 1),
            }
            for stage, values in self.timings.items()
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "scores": {
                name: {repo: s.to_json() for repo, s in per.items()} for name, per in self.scores().items()
            },
            "timings": self.timing_summary(),
            "index": self.index,
            "skipped": self.skipped,
            "cases": [asdict(r) for r in self.results],
        }


def _p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


class RetrievalHarness:
    """Index a repo at each case's commit, search, score; in a data dir of its own."""

    def __init__(self, base: CiaConfig, workdir: Path) -> None:
        self.base = base
        self.workdir = workdir.resolve()
        self.layout = DataLayout(self.workdir)

    def config_for(self, sources: Sequence[RepoSource]) -> CiaConfig:
        """The project's embedding and store settings, pointed at the harness's own data
        dir and collection prefix, with the sources as codebases."""
        vector_store = self.base.vector_store.model_copy(
            update={
                "collection_prefix": f"{self.base.vector_store.collection_prefix}-eval",
                "path": self.workdir / "vectors" if self.base.vector_store.backend == "embedded" else None,
            }
        )
        # The model the project indexes with now, pinned: the harness's own data dir has no
        # promoted adapter to find.
        active = active_model(self.base)
        embedding = self.base.embedding.model_copy(
            update={"model": active.model_id, "path": active.model_dir, "use_promoted_adapter": False}
        )
        codebases = tuple(
            CodebaseConfig(url=s.url, branch=s.branch, id=s.repo_id, include=s.include, exclude=s.exclude)
            for s in sources
        )
        return self.base.model_copy(
            update={
                "data_dir": self.workdir,
                "codebases": codebases,
                "vector_store": vector_store,
                "embedding": embedding,
            }
        )

    def _mirror(self, config: CiaConfig, source: RepoSource) -> RepoMirror:
        codebase = config.codebase(source.repo_id)
        return RepoMirror(
            self.layout.mirror(source.repo_id),
            config.clone_url(codebase),
            codebase.branch,
            auth=GitAuth.of(codebase),
        )

    def mine(self, source: RepoSource, max_cases: int) -> list[RetrievalCase]:
        """Cases mined from the source's own history (see `mine_commit_cases`)."""
        mirror = self._mirror(self.config_for([source]), source)
        try:
            head = mirror.sync()
            return mine_commit_cases(
                mirror,
                head,
                repo=source.repo,
                include=source.include,
                exclude=source.exclude,
                max_cases=max_cases,
            )
        finally:
            mirror.close()

    def run(
        self,
        cases: Sequence[RetrievalCase],
        sources: Mapping[str, RepoSource],
        retrievers: Mapping[str, SearchOptions],
        *,
        bm25: bool = True,
        progress: Callable[[str], None] = lambda _: None,
    ) -> Report:
        unknown = sorted({c.repo for c in cases} - set(sources))
        if unknown:
            raise RetrievalEvalError(f"no source given for repo(s) {', '.join(unknown)}")
        config = self.config_for([sources[repo] for repo in dict.fromkeys(c.repo for c in cases)])
        report = Report()
        with Project(config) as project:
            for repo in dict.fromkeys(c.repo for c in cases):
                source = sources[repo]
                repo_cases = [c for c in cases if c.repo == repo]
                self._run_repo(project, source, repo_cases, retrievers, bm25, report, progress)
        return report

    def _run_repo(
        self,
        project: Project,
        source: RepoSource,
        cases: Sequence[RetrievalCase],
        retrievers: Mapping[str, SearchOptions],
        bm25: bool,
        report: Report,
        progress: Callable[[str], None],
    ) -> None:
        repo_id = source.repo_id
        mirror = self._mirror(project.config, source)
        started = time.perf_counter()
        head = mirror.sync()
        report.time("git_sync", time.perf_counter() - started)
        ordered, skipped = _in_commit_order(mirror, head, cases)
        for case_id, reason in skipped.items():
            report.skipped[case_id] = reason
            progress(f"{source.repo}: skipping {case_id}: {reason}")
        baseline = FileBm25() if bm25 else None
        try:
            for position, case in enumerate(ordered, start=1):
                meta = self.index_at(project, source, mirror, case.base_commit, report)
                ranks: dict[str, int | None] = {}
                tops: dict[str, list[str]] = {}
                # The first search after an update opens the new collection (tens of ms):
                # an untimed one keeps that out of every retriever's latency.
                search_files(project, case.query, repos=[repo_id], k=1, options=SearchOptions(rerank=False))
                for name, options in retrievers.items():
                    started = time.perf_counter()
                    files = [
                        f.path
                        for f in search_files(
                            project, case.query, repos=[repo_id], k=RANK_DEPTH, options=options
                        )
                    ]
                    report.time(f"search[{name}]", time.perf_counter() - started)
                    ranks[name] = first_gold_rank(files, case.gold_files)
                    tops[name] = files[:10]
                if baseline is not None:
                    started = time.perf_counter()
                    # The published baseline: BM25 over the Python files (whole files).
                    baseline.build(mirror, {p: b for p, b in meta.files.items() if p.endswith(".py")})
                    report.time("bm25_build", time.perf_counter() - started)
                    started = time.perf_counter()
                    files = baseline.rank(case.query)
                    report.time("bm25_query", time.perf_counter() - started)
                    ranks["bm25"] = first_gold_rank(files, case.gold_files)
                    tops["bm25"] = files[:10]
                report.results.append(
                    CaseResult(case.case_id, case.repo, case.gold_files, ranks=ranks, top_files=tops)
                )
                progress(
                    f"{source.repo} {position}/{len(ordered)} {case.case_id}: "
                    + " ".join(f"{name}={rank}" for name, rank in ranks.items())
                )
        finally:
            mirror.close()

    def index_at(
        self, project: Project, source: RepoSource, mirror: RepoMirror, commit: str, report: Report
    ) -> indexing.ChunkSetMeta:
        """The indexing steps of `code_chunks`, `chunk_embeddings` and `qdrant_collection`,
        with the snapshot pinned to `commit` instead of the branch head. Returns what was
        chunked; the step's figures go to `report.index`."""
        config = project.config
        repo_id = source.repo_id
        codebase = config.codebase(repo_id)
        snapshot = snapshot_at(mirror, commit, codebase, config.clone_url(codebase))
        write_snapshot(self.layout.snapshot(repo_id), snapshot)
        started = time.perf_counter()
        meta = indexing.chunk_snapshot(self.layout, snapshot, mirror, codebase, config.chunking)
        report.time("chunk", time.perf_counter() - started)
        chunks = indexing.read_chunks(self.layout.chunks(repo_id))
        embedder = project.embedder
        cache = project.embedding_cache
        embedded = indexing.ensure_embeddings(chunks, embedder, cache)
        report.time("embed", embedded.seconds)
        store = project.store
        update = indexing.update_collection(
            store,
            alias=collection_alias(config.vector_store.collection_prefix, repo_id),
            chunks=chunks,
            chunk_meta=meta,
            model_id=embedder.model_id,
            dense_size=embedder.dim,
            cache=cache,
            state_path=self.layout.index_state(repo_id),
            verify=lambda collection, _: indexing.verify_point_count(store, collection, len(chunks)),
            # Cases sit at commits of any branch, and nothing fetches the mirror during a
            # run, so every commit a point cites stays readable: never a forced rebuild.
            in_branch_history=lambda _commit: True,
        )
        report.time("collection_update", update.seconds)
        report.index[source.repo] = {
            "commit": commit,
            "files": len(meta.files),
            "chunks": len(chunks),
            "chunked_files": meta.chunked_files,
            "reused_files": meta.reused_files,
            "embedded": embedded.embedded,
            "mode": update.mode,
        }
        return meta


def _in_commit_order(
    mirror: RepoMirror, head: str, cases: Sequence[RetrievalCase]
) -> tuple[list[RetrievalCase], dict[str, str]]:
    """Oldest base commit first (topological order of the branch, exact even for commits
    made within one second), and the cases whose base commit the branch does not contain
    (a pull request's own commit in a benchmark set), with the reason."""
    order = mirror.repo.git.rev_list("--topo-order", "--reverse", head).split()
    position = {sha: i for i, sha in enumerate(order)}
    skipped: dict[str, str] = {}
    for case in cases:
        if case.base_commit not in position:
            full = _resolve(mirror, case.base_commit)
            if full not in position:
                skipped[case.case_id] = (
                    f"base_commit {case.base_commit} is not on branch {mirror.branch!r} of {mirror.shown_url}"
                )
                continue
            position[case.base_commit] = position[full]
    usable = [c for c in cases if c.case_id not in skipped]
    return sorted(usable, key=lambda c: (position[c.base_commit], c.case_id)), skipped


def _resolve(mirror: RepoMirror, revision: str) -> str | None:
    try:
        return str(mirror.repo.git.rev_parse("--verify", "--quiet", f"{revision}^{{commit}}"))
    except git.GitCommandError:
        return None
