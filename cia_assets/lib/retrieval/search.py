"""Hybrid code search across the indexed repos, as the CLI and the answering service use it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cia_assets.config import CiaConfig
from cia_assets.lib.core.fsio import read_by_version
from cia_assets.lib.core.layout import collection_alias
from cia_assets.lib.core.project import Project
from cia_assets.lib.core.records import LinkedSpan, sha256_text
from cia_assets.lib.indexing import lexical
from cia_assets.lib.indexing.code_graph import CodeGraph, read_code_graph, read_source_definers
from cia_assets.lib.indexing.embeddings import Embedder
from cia_assets.lib.indexing.file_roles import Role, file_role, wanted_roles
from cia_assets.lib.indexing.pipeline import collection_models_path, read_collection_models, read_index_state
from cia_assets.lib.retrieval.query_plan import QueryPlan, RepoPaths, defines
from cia_assets.lib.vectorstore.base import SearchHit, SparseVector, VectorStore

MERGE_RRF_K = 60  # as the stores' own fusion
# Files of the lexical-mass list: beyond the first few dozen, RRF adds next to nothing.
LEXICAL_FILES = 30
TITLE_DEFINERS = 2
_TITLE_WORD = re.compile(r"[A-Za-z_]\w{2,}")


class SearchError(RuntimeError):
    """The search cannot run as asked; the message says why."""


@dataclass(frozen=True)
class HybridQuery:
    """A query encoded once for any number of collections."""

    dense: list[float]
    sparse: SparseVector
    exact: SparseVector

    @classmethod
    def encode(cls, embedder: Embedder, text: str) -> HybridQuery:
        return cls(
            dense=embedder.embed_query(text).tolist(),
            sparse=lexical.encode_query(text),
            exact=lexical.encode_identifiers(text),
        )

    def run(
        self,
        store: VectorStore,
        collection: str,
        limit: int,
        filters: dict[str, str | list[str]] | None = None,
    ) -> list[SearchHit]:
        return store.search(collection, self.dense, self.sparse, limit, filters, exact=self.exact)


def search_collection(
    store: VectorStore, embedder: Embedder, collection: str, text: str, limit: int
) -> list[SearchHit]:
    """One collection or alias, e.g. a build being verified before it is published."""
    return HybridQuery.encode(embedder, text).run(store, collection, limit)


@dataclass(frozen=True, kw_only=True)
class CodeHit(LinkedSpan):
    """One retrieved chunk, linked to its lines (see `LinkedSpan`)."""

    symbol: str | None
    language: str
    score: float
    kind: str
    text: str
    context: str = ""

    def to_json(self, with_text: bool = False) -> dict[str, Any]:
        hidden = ("context", "web_url", "chat_url", "kind", "commit_sha", "text")
        data = {key: value for key, value in asdict(self).items() if key not in hidden}
        data["url"] = self.url
        if with_text:
            data.update(kind=self.kind, commit_sha=self.commit_sha, text=self.text)
        return data


@dataclass(frozen=True)
class SearchOptions:
    """How a question becomes retrieval lists; defaults are what the benchmarks chose
    (`cia_assets_tests/bench/bench_retrieval.py` measures every switch)."""

    query_tf: bool = True  # a query word used n times weighs 1 + ln(n) in the lexical list
    mentions: bool = True  # files the text names (tracebacks, paths, modules) get a list
    definitions: bool = True  # chunks defining a symbol the text names get a list
    # Chunks whose symbol is a code name the text spells (`DaskIndexingAdapter`, `Dataset.update`)
    # are fetched by their symbol even when no list found them. The answering context turns it
    # on (README, "Measuring answers"); not measured on the retrieval sets, so off there.
    fetch_definitions: bool = False
    file_lexical: bool = True  # files ranked by the summed BM25 of their chunks get a list
    lexical_depth: int = 500  # chunks read for that file ranking
    candidates: int = 100  # chunks per list before fusion
    # The fused hits of source files get a list of this weight, so tests, docs, changelogs
    # and vendored copies that share a report's words rank below the code. 0 = off.
    role_weight: float = 1.0
    # True: the roles the question asks for (`file_roles.wanted_roles`: source, plus tests or
    # docs when it names them) get that list instead. Commit messages and reports name tests
    # in passing ("fix the failing test"): on the commit set indexed whole it cost 0.022 file
    # Acc@5 and 0.027 MRR, so it is off; the answerer turns it on for a question that asks
    # where something is tested or how to do something (`answering.answerer.QUESTION_ROLES_SEARCH`).
    roles_from_question: bool = False
    # The hits' text is shown to a person (search results): masked per `retrieval.mask_secrets`.
    # The answering path shows context blocks instead, masked when they are built.
    shown: bool = True
    # The files that personalised PageRank over the code graph ranks from the best
    # `graph_seeds` files found so far (and the files the text names) get a list of this
    # weight: candidates expand to the code they use and import (`indexing.code_graph`). 0 = off.
    graph_weight: float = 0.0
    graph_seeds: int = 10
    # The source files that define a name the text's first line (a report's title, a commit's
    # subject) spells as written (`Derivative` in "Wrong Derivative kind attribute"), when at
    # most `TITLE_DEFINERS` do, get a list of this weight. 0 = off. On the 21 SWE-bench issues
    # indexed whole: file Acc@5 0.857 -> 0.905, MRR 0.679 -> 0.703 (README, "Measured").
    title_weight: float = 1.0
    # File searches go through the configured LLM re-ranker (`retrieval.reranker`, off unless
    # configured); False skips it (the benchmarks' ablation).
    rerank: bool = True


@dataclass(frozen=True)
class FileHit:
    repo: str
    path: str
    score: float
    chunks: tuple[CodeHit, ...]  # the file's retrieved chunks, best first


def _fuse(lists: Sequence[tuple[list[SearchHit], float]]) -> list[tuple[SearchHit, float]]:
    """Reciprocal-rank fusion over point ids; one list alone keeps its order."""
    scores: dict[str, float] = {}
    first: dict[str, SearchHit] = {}
    for hits, weight in lists:
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + weight / (MERGE_RRF_K + rank)
            first.setdefault(hit.id, hit)
    ordered = sorted(scores, key=lambda pid: (-scores[pid], first[pid].payload.get("path", ""), pid))
    return [(first[pid], scores[pid]) for pid in ordered]


def _code_hit(hit: SearchHit, score: float, chat_url: str) -> CodeHit:
    p = hit.payload
    return CodeHit(
        repo=p["repo_id"],
        path=p["path"],
        line_start=p["line_start"],
        line_end=p["line_end"],
        symbol=p.get("symbol"),
        language=p["language"],
        score=round(score, 6),
        web_url=p.get("web_url"),
        kind=p["kind"],
        commit_sha=p["commit_sha"],
        text=p.get("text", ""),
        context=p.get("context") or "",
        chat_url=chat_url,
    )


def _repo_paths(state_path: Path) -> RepoPaths | None:
    """The indexed files of a repo, for matching the files a question names; rebuilt only
    when the index state changes (a new commit), not on every question."""
    return read_by_version(state_path, _read_repo_paths)


def _read_repo_paths(state_path: Path) -> RepoPaths | None:
    state = read_index_state(state_path)
    return RepoPaths(state.files) if state else None


def _search_repo(
    config: CiaConfig,
    store: VectorStore,
    alias: str,
    repo: str,
    plan: QueryPlan,
    hybrid: HybridQuery,
    limit: int,
    options: SearchOptions,
) -> list[CodeHit]:
    depth = max(limit, options.candidates)
    lists: list[tuple[list[SearchHit], float]] = [(hybrid.run(store, alias, depth), 1.0)]
    named_files: list[str] = []
    if options.mentions and plan.path_mentions:
        paths = _repo_paths(config.layout.index_state(repo))
        named_files = paths.named_by(plan.path_mentions) if paths else []
        if named_files:
            # One chunk per named file: a traceback names the call chain, and the fix is
            # often elsewhere; a named file earns a place, not a flood of its chunks.
            lists.append((_best_per_file(hybrid.run(store, alias, depth, {"path": named_files})), 1.0))
    if options.fetch_definitions and plan.code_names:
        lists.append((hybrid.run(store, alias, limit, {"symbol": list(plan.code_names)}), 1.0))
    if options.file_lexical and plan.sparse.indices:
        lists.append((_files_by_lexical_mass(store, alias, hybrid, lists, options.lexical_depth), 1.0))
    fused = _fuse(lists)
    if options.definitions and plan.definitions:
        # A report names `separability_matrix` or `URLField`: the chunks that define it
        # (their symbol, not merely a use) are where a fix starts. Candidates come from
        # the lists above, so this only reorders what retrieval already found.
        defining = [hit for hit, _ in fused if defines(hit.payload.get("symbol"), plan.definitions)]
        if defining:
            lists = [*lists, (defining, 1.0)]
            fused = _fuse(lists)
    graph = read_code_graph(config.layout.code_graph(repo)) if options.graph_weight else None
    if graph is not None:
        by_graph = _files_by_graph(graph, fused, named_files, options.graph_seeds)
        if by_graph:
            lists = [*lists, (_represent_files(store, alias, hybrid, lists, by_graph), options.graph_weight)]
            fused = _fuse(lists)
    if options.title_weight:
        title_files = _title_definers(config.layout.code_symbols(repo), plan.text)
        if title_files:
            title_list = _represent_files(store, alias, hybrid, lists, title_files)
            lists = [*lists, (title_list, options.title_weight)]
            fused = _fuse(lists)
    wanted = _wanted_roles(plan, options)
    if wanted:
        of_wanted_roles = [hit for hit, _ in fused if file_role(hit.payload["path"]) in wanted]
        if of_wanted_roles and len(of_wanted_roles) < len(fused):
            fused = _fuse([*lists, (of_wanted_roles, options.role_weight)])
    chat_url = config.chat.resolved_public_url
    return [_code_hit(hit, score, chat_url) for hit, score in fused[:limit]]


def _title_definers(symbols_path: Path, text: str) -> list[str]:
    """The source files defining a name of the text's first line, for names that at most
    TITLE_DEFINERS files define (a plain word such as `kind` is defined everywhere)."""
    definers = read_source_definers(symbols_path)
    title = next((line for line in text.splitlines() if line.strip()), "")
    files: dict[str, None] = {}
    for word in dict.fromkeys(_TITLE_WORD.findall(title)):
        paths = definers.get(word, ())
        if len(paths) <= TITLE_DEFINERS:
            files.update(dict.fromkeys(paths))
    return list(files)


def _wanted_roles(plan: QueryPlan, options: SearchOptions) -> frozenset[Role]:
    """The file roles whose hits get the role list (none when the prior is off)."""
    if not options.role_weight:
        return frozenset()
    return wanted_roles(plan.text) if options.roles_from_question else frozenset({"source"})


def _best_per_file(hits: Iterable[SearchHit]) -> list[SearchHit]:
    """The first (best) hit of each file, in order."""
    best: dict[str, SearchHit] = {}
    for hit in hits:
        best.setdefault(hit.payload["path"], hit)
    return list(best.values())


def _files_by_lexical_mass(
    store: VectorStore,
    alias: str,
    hybrid: HybridQuery,
    lists: Sequence[tuple[list[SearchHit], float]],
    depth: int,
) -> list[SearchHit]:
    """One chunk per file, files ordered by the sum of their chunks' BM25 scores.

    A long report's words are spread over the module that needs the fix: no single chunk
    holds many of them, but their sum over the file does (what BM25 over whole files sees).
    Each file is represented by its best chunk from the other lists, else by its best chunk
    for the query within the file, so the file-level evidence lands on a citable chunk.
    """
    mass: dict[str, float] = {}
    for hit in store.search_lexical(alias, hybrid.sparse, depth, fields=["path"]):
        path = hit.payload["path"]
        mass[path] = mass.get(path, 0.0) + hit.score
    ordered = sorted(mass, key=lambda path: (-mass[path], path))[:LEXICAL_FILES]
    return _represent_files(store, alias, hybrid, lists, ordered)


def _files_by_graph(
    graph: CodeGraph, fused: Sequence[tuple[SearchHit, float]], named_files: Sequence[str], seeds: int
) -> list[str]:
    """Files by personalised PageRank from the best `seeds` files so far, each weighted by
    its fused score, and the named files, each weighted as the best."""
    weights: dict[str, float] = {}
    for hit, score in fused:
        path = hit.payload["path"]
        if path not in weights:
            if len(weights) == seeds:
                break
            weights[path] = score
    top = max(weights.values(), default=1.0)
    for path in named_files:
        weights[path] = max(weights.get(path, 0.0), top)
    ranks = graph.rank(weights)
    return sorted(ranks, key=lambda path: (-ranks[path], path))[:LEXICAL_FILES]


def _represent_files(
    store: VectorStore,
    alias: str,
    hybrid: HybridQuery,
    lists: Sequence[tuple[list[SearchHit], float]],
    ordered: Sequence[str],
) -> list[SearchHit]:
    """One chunk for each of the `ordered` files: its best in `lists`, else its best for the
    query within the file, so file-level evidence lands on a citable chunk."""
    best = {hit.payload["path"]: hit for hit in _best_per_file(hit for hit, _ in _fuse(lists))}
    missing = [path for path in ordered if path not in best]
    if missing:
        for hit in _best_per_file(hybrid.run(store, alias, len(missing) * 4, {"path": missing})):
            best.setdefault(hit.payload["path"], hit)
    return [best[path] for path in ordered if path in best]


def search_code(
    project: Project,
    query: str,
    *,
    repos: Sequence[str] | None = None,
    k: int = 10,
    options: SearchOptions = SearchOptions(),
) -> list[CodeHit]:
    """Top-k chunks for `query` over `repos` (default: all configured and indexed).

    Each repo has its own collection (so repos re-index independently and access control
    is a choice of collections). Within a repo, the store's hybrid list (dense, lexical and
    exact identifiers), the best chunks of files the query names, files ranked by lexical
    mass and the chunks defining symbols it names are fused by reciprocal rank; across
    repos the union is fused again (`merge_across_repos`).
    """
    hits = _search(project, query, repos=repos, limit=k, options=options)[:k]
    if options.shown and project.config.retrieval.mask_secrets:
        hits = masked(hits)
    return hits


def masked(hits: Sequence[CodeHit]) -> list[CodeHit]:
    """The hits with detected secrets in their text (and class context) replaced."""
    from cia_assets.lib.learning.redaction import mask_secrets

    return [
        replace(
            hit,
            text=mask_secrets(hit.text, hit.path),
            context=mask_secrets(hit.context, hit.path) if hit.context else hit.context,
        )
        for hit in hits
    ]


def search_files(
    project: Project,
    query: str,
    *,
    repos: Sequence[str] | None = None,
    k: int = 10,
    options: SearchOptions = SearchOptions(),
) -> list[FileHit]:
    """The files most relevant to `query`, from the chunks of `options.candidates` (see
    `rank_files`), the first ones re-ranked by the configured LLM judge, if any
    (`retrieval.reranker`)."""
    hits = _search(project, query, repos=repos, limit=options.candidates, options=options)
    return _reranked_files(project, query, rank_files(hits), options)[:k]


def rerank_code(
    project: Project, query: str, hits: Sequence[CodeHit], options: SearchOptions = SearchOptions()
) -> list[CodeHit]:
    """`hits` with their files in the configured re-ranker's order (each file's chunks in their
    own order); as they were when no re-ranker is configured."""
    if not (options.rerank and project.reranker):
        return list(hits)
    files = _reranked_files(project, query, rank_files(hits), options)
    place = {(f.repo, f.path): n for n, f in enumerate(files)}
    return sorted(hits, key=lambda hit: place[(hit.repo, hit.path)])


def _reranked_files(
    project: Project, query: str, files: list[FileHit], options: SearchOptions
) -> list[FileHit]:
    reranker = project.reranker if options.rerank else None
    if reranker is None:
        return files
    return reranker.rerank(query, files, project.config.retrieval.reranker.files)


def rank_files(hits: Sequence[CodeHit]) -> list[FileHit]:
    """Files in order of their best chunk. Summing a file's chunks (decayed 0.25 or 0.5)
    was measured too: it favours long files and paid nothing on the retrieval sets."""
    by_file: dict[tuple[str, str], list[CodeHit]] = {}
    for hit in hits:
        by_file.setdefault((hit.repo, hit.path), []).append(hit)
    files = []
    for (repo, path), chunks in by_file.items():
        chunks.sort(key=lambda h: -h.score)
        files.append(FileHit(repo=repo, path=path, score=chunks[0].score, chunks=tuple(chunks)))
    files.sort(key=lambda f: (-f.score, f.repo, f.path))
    return files


@dataclass(frozen=True)
class RepoQuery:
    """A repo's question as its live collection is asked it: in its model's vectors."""

    model_id: str
    query: HybridQuery


def _search(
    project: Project, query: str, *, repos: Sequence[str] | None, limit: int, options: SearchOptions
) -> list[CodeHit]:
    config = project.config
    if not query.strip():
        raise SearchError("the query is empty")
    if limit < 1:
        raise SearchError(f"k must be at least 1, got {limit}")
    for repo in repos or ():
        config.codebase(repo)  # raises KeyError naming an unknown repo
    store = project.store
    wanted = list(repos) if repos else config.repo_ids
    aliases = {repo: collection_alias(config.vector_store.collection_prefix, repo) for repo in wanted}
    live = {repo: store.resolve_alias(alias) for repo, alias in aliases.items()}
    indexed = {repo: alias for repo, alias in aliases.items() if live[repo]}
    if not indexed:
        raise SearchError(f"nothing indexed yet for {', '.join(wanted) or 'any repo'}; run `cia index` first")
    plan = QueryPlan.of(query, repeated_terms_count=options.query_tf)
    # Each collection is asked in the vectors of the model it was built with (see
    # `indexing.embedding_models`): once per model, however many repos share it.
    queries: dict[str, HybridQuery] = {}
    by_repo: dict[str, RepoQuery] = {}
    for repo in indexed:
        embedder = repo_embedder(project, repo, live[repo])
        if embedder.model_id not in queries:
            dense = embedder.embed_query(query).tolist()
            queries[embedder.model_id] = HybridQuery(dense=dense, sparse=plan.sparse, exact=plan.exact)
        by_repo[repo] = RepoQuery(embedder.model_id, queries[embedder.model_id])
    hits: list[CodeHit] = []
    for repo, alias in indexed.items():
        hits.extend(_search_repo(config, store, alias, repo, plan, by_repo[repo].query, limit, options))
    if len(indexed) > 1:
        return merge_across_repos(project, by_repo, hits, _wanted_roles(plan, options), options.role_weight)
    return hits


def repo_embedder(project: Project, repo: str, collection: str | None = None) -> Embedder:
    """The model that embeds questions for `repo`: the one its live collection (`collection`,
    else the alias's) was built with, else the active model (an index not written yet)."""
    state_path = project.config.layout.index_state(repo)
    live = collection or project.store.resolve_alias(
        collection_alias(project.config.vector_store.collection_prefix, repo)
    )
    models = read_by_version(collection_models_path(state_path), read_collection_models) or {}
    model_id = models.get(live or "") or _indexed_model_id(state_path)
    return project.embedder_for(model_id) if model_id else project.embedder


def _indexed_model_id(state_path: Path) -> str | None:
    """The index state's model: for an index built before collections recorded theirs."""
    return read_by_version(state_path, _read_model_id)


def _read_model_id(state_path: Path) -> str | None:
    state = read_index_state(state_path)
    return state.model_id if state else None


def merge_across_repos(
    project: Project,
    queries: Mapping[str, RepoQuery],
    hits: list[CodeHit],
    wanted: frozenset[Role] = frozenset(),
    role_weight: float = 0.0,
) -> list[CodeHit]:
    """One ranking for the hits of several repos' collections.

    RRF scores are built from ranks, so every collection's first hit scores the same: merged
    by score, repos would interleave and ties would go by repo name. The union is fused again
    with evidence that compares across collections: cosine similarity to the query (the
    chunks' vectors come from the embedding cache), the BM25-style overlap of code tokens, and
    the exact identifiers, each ranked over the union and combined with the same RRF; then,
    as within a repo, the hits of the `wanted` file roles get a list of `role_weight`.
    """

    def embedding_text(hit: CodeHit) -> str:
        context = hit.context
        return f"{hit.path}\n{context}\n{hit.text}" if context else f"{hit.path}\n{hit.text}"

    texts = [embedding_text(hit) for hit in hits]
    keys = [sha256_text(text) for text in texts]
    # Each repo's hits are compared with the question in the vectors of that repo's model
    # (the one `_search` asked its collection in).
    models = {repo: queries[repo].model_id for repo in {hit.repo for hit in hits}}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    query_vectors: dict[str, np.ndarray] = {}
    for repo, model_id in models.items():
        if model_id not in vectors:
            repo_keys = [key for key, hit in zip(keys, hits, strict=True) if models[hit.repo] == model_id]
            vectors[model_id] = project.embedding_cache.get_many(model_id, repo_keys)
        query_vector = np.asarray(queries[repo].query.dense, dtype=np.float32)
        query_vectors[repo] = query_vector / (float(np.linalg.norm(query_vector)) or 1.0)

    def cosine(key: str, repo: str) -> float:
        vector = vectors[models[repo]].get(key)
        if vector is None:
            return -1.0  # not cached here: ranked last on this evidence, not dropped
        return float(np.dot(query_vectors[repo], vector) / (float(np.linalg.norm(vector)) or 1.0))

    # The lexical lists do not depend on the model: any repo's query carries them.
    encoded = next(iter(queries.values())).query

    def overlap(terms: SparseVector, text: str) -> float:
        document = lexical.encode_document(text)
        weights = dict(zip(document.indices, document.values, strict=True))
        return sum(weights.get(i, 0.0) * w for i, w in zip(terms.indices, terms.values, strict=True))

    # (values, whether a zero still earns a rank): every hit has a cosine; a hit without a
    # query token or identifier in it gets nothing from those lists, as in the stores.
    evidence = [
        ([cosine(key, hit.repo) for key, hit in zip(keys, hits, strict=True)], True),
        ([overlap(encoded.sparse, text) for text in texts], False),
        ([overlap(encoded.exact, text) for text in texts], False),
    ]
    fused = [0.0] * len(hits)
    for values, zero_counts in evidence:
        order = sorted(range(len(hits)), key=lambda i: -values[i])
        for rank, index in enumerate(order, start=1):
            if zero_counts or values[index] > 0:
                fused[index] += 1.0 / (MERGE_RRF_K + rank)
    if wanted:
        by_fused = sorted(range(len(hits)), key=lambda i: -fused[i])
        in_role = [index for index in by_fused if file_role(hits[index].path) in wanted]
        if in_role and len(in_role) < len(hits):
            for rank, index in enumerate(in_role, start=1):
                fused[index] += role_weight / (MERGE_RRF_K + rank)
    ranked = sorted(range(len(hits)), key=lambda i: (-fused[i], -hits[i].score, hits[i].repo, hits[i].path))
    return [replace(hits[i], score=round(fused[i], 6)) for i in ranked]
