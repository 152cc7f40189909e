"""Both vector store backends against one contract, plus what only the embedded one must do
(readers in other processes, switches under concurrent search, view housekeeping), and the
lexical encoder's golden behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from cia_assets.lib.indexing import lexical
from cia_assets.lib.vectorstore.base import (
    CollectionExists,
    CollectionNotFound,
    IndexedPoint,
    SparseVector,
    VectorStore,
)
from cia_assets.lib.vectorstore.embedded import SEALED_FILE, CollectionPublished, EmbeddedVectorStore
from cia_assets.lib.vectorstore.server import ServerVectorStore

DIM = 8
NO_SPARSE = SparseVector(indices=[], values=[])

# (repo, path, text): every text has its own distinctive identifier, so a lexical query
# for one of them matches that document only.
DOCS: list[tuple[str, str, str]] = [
    ("alpha", "src/config.py", "def parse_config_file(path):\n    return load_yaml(path)"),
    ("alpha", "src/server.py", "class HTTPServerError(Exception):\n    status = 500"),
    ("alpha", "src/db.py", "def open_connection_pool(dsn):\n    return Pool(dsn)"),
    ("beta", "src/widgets.py", "def frobnicate_widget(widget):\n    widget.spin()"),
    ("beta", "lib/cache.py", "class LruCache:\n    def evict_oldest(self): ..."),
    ("beta", "lib/render.ts", "export function renderTemplate(tpl: string) {}"),
    ("gamma", "lib/users.py", "def get_user_id(request):\n    return request.user.id"),
    ("gamma", "lib/billing.go", "func ComputeInvoiceTotal(lines []Line) int64 {}"),
    ("gamma", "docs/readme.md", "Quarterly reconciliation happens in the ledger module"),
]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


DENSE = unit_vectors(len(DOCS), seed=7)


def point_id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


def doc_points(generation: int = 0) -> list[IndexedPoint]:
    return [
        IndexedPoint(
            id=point_id(path),
            dense=DENSE[i].tolist(),
            sparse=lexical.encode_document(f"{path}\n{text}"),
            payload={"repo_id": repo, "path": path, "text": text, "generation": generation},
        )
        for i, (repo, path, text) in enumerate(DOCS)
    ]


def generation_points(generation: int, n: int) -> list[IndexedPoint]:
    vectors = unit_vectors(n, seed=100 + generation)
    return [
        IndexedPoint(
            id=point_id("gen", generation, i),
            dense=vectors[i].tolist(),
            sparse=lexical.encode_document(f"chunk_{i} shared_token generation_{generation}"),
            payload={"repo_id": "alpha", "path": f"f{i}.py", "generation": generation},
        )
        for i in range(n)
    ]


def paths(hits: list[Any]) -> list[str]:
    return [h.payload["path"] for h in hits]


@pytest.fixture(params=["embedded", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    backend: VectorStore
    if request.param == "embedded":
        backend = EmbeddedVectorStore(tmp_path / "qdrant")
    else:
        backend = ServerVectorStore(QdrantClient(":memory:"))
    yield backend
    backend.close()


@pytest.fixture
def published(store: VectorStore) -> VectorStore:
    """DOCS in collection `docs-1`, published as alias `docs`."""
    store.create_collection("docs-1", DIM)
    store.upsert("docs-1", doc_points())
    assert store.publish("docs", "docs-1") is None
    return store


# --- the shared contract ---------------------------------------------------------------


def test_create_upsert_count_scroll(store: VectorStore) -> None:
    store.create_collection("c1", DIM)
    assert store.count("c1") == 0
    assert "c1" in store.list_collections()
    with pytest.raises(CollectionExists):
        store.create_collection("c1", DIM)

    points = doc_points()
    store.upsert("c1", points[:4])
    store.upsert("c1", points[4:])
    store.upsert("c1", points[:2])  # same ids again: replaced, not duplicated
    assert store.count("c1") == len(DOCS)
    scrolled = dict(store.scroll("c1", batch_size=4))
    assert scrolled == {p.id: p.payload for p in points}


def test_exact_identifier_ranks_first_even_when_dense_points_elsewhere(published: VectorStore) -> None:
    # The dense query is exactly another document's vector, so dense alone ranks
    # src/server.py first; the identifier must still win through the lexical side.
    hits = published.search("docs", DENSE[1].tolist(), lexical.encode_query("frobnicateWidget"), 5)
    assert paths(hits)[0] == "src/widgets.py"
    hits = published.search("docs", DENSE[1].tolist(), lexical.encode_query("get_user_id"), 5)
    assert paths(hits)[0] == "lib/users.py"
    assert hits[0].id == point_id("lib/users.py")
    assert hits[0].payload["repo_id"] == "gamma"
    assert hits[0].score > hits[1].score


def test_dense_neighbour_ranks_first_without_lexical_match(published: VectorStore) -> None:
    query = (DENSE[4] + 0.05 * DENSE[0]).tolist()
    for sparse in (lexical.encode_query("zyzzyva quuxbaz"), NO_SPARSE):
        hits = published.search("docs", query, sparse, 3)
        assert paths(hits)[0] == "lib/cache.py"
        assert len(hits) == 3


def test_filters_by_repo_and_path(published: VectorStore) -> None:
    query, sparse = DENSE[0].tolist(), lexical.encode_query("parse_config_file")
    hits = published.search("docs", query, sparse, 10, filters={"repo_id": "beta"})
    assert sorted(paths(hits)) == ["lib/cache.py", "lib/render.ts", "src/widgets.py"]
    hits = published.search("docs", query, sparse, 10, filters={"repo_id": ["alpha", "gamma"]})
    assert len(hits) == 6
    assert {h.payload["repo_id"] for h in hits} == {"alpha", "gamma"}
    assert paths(hits)[0] == "src/config.py"
    hits = published.search("docs", query, sparse, 10, filters={"repo_id": "alpha", "path": ["src/db.py"]})
    assert paths(hits) == ["src/db.py"]
    assert published.search("docs", query, sparse, 10, filters={"repo_id": "nobody"}) == []


def test_lexical_list_alone_scores_by_bm25(published: VectorStore) -> None:
    # "widget" occurs twice in widgets.py (tf saturates, so more than once counts more) and
    # nowhere else; "user" only in users.py: scores are BM25 mass, not ranks.
    hits = published.search_lexical("docs", lexical.encode_query("widget spin user"), 10)
    assert paths(hits) == ["src/widgets.py", "lib/users.py"]
    assert hits[0].score > hits[1].score > 0
    assert (
        published.search_lexical("docs", lexical.encode_query("widget"), 10, filters={"repo_id": "gamma"})
        == []
    )
    assert published.search_lexical("docs", NO_SPARSE, 10) == []
    with pytest.raises(CollectionNotFound):
        published.search_lexical("nope", lexical.encode_query("widget"), 10)


def test_delete_where(store: VectorStore) -> None:
    store.create_collection("c1", DIM)
    store.upsert("c1", doc_points())
    store.delete_where("c1", "path", ["src/config.py", "lib/users.py", "no/such/file.py"])
    store.delete_where("c1", "path", [])
    assert store.count("c1") == len(DOCS) - 2
    payloads = [payload for _, payload in store.scroll("c1")]
    assert {p["path"] for p in payloads} == {path for _, path, _ in DOCS} - {"src/config.py", "lib/users.py"}
    assert all("text" in p for p in payloads)


def test_publish_switches_alias_and_returns_previous(published: VectorStore) -> None:
    store = published
    assert store.resolve_alias("docs") == "docs-1"
    assert store.resolve_alias("other") is None
    store.create_collection("docs-2", DIM)
    store.upsert("docs-2", doc_points(generation=2)[:3])
    assert store.publish("docs", "docs-2") == "docs-1"
    assert store.resolve_alias("docs") == "docs-2"
    hits = store.search("docs", DENSE[0].tolist(), NO_SPARSE, 10)
    assert {h.payload["generation"] for h in hits} == {2}
    assert len(hits) == 3
    store.drop_collection("docs-1")
    store.drop_collection("docs-1")  # already gone: no-op
    assert "docs-1" not in store.list_collections()
    assert store.count("docs") == 3


def test_open_for_update_then_publish(published: VectorStore) -> None:
    store = published
    target = store.open_for_update("docs")
    in_place = isinstance(store, ServerVectorStore)
    assert (target == "docs-1") is in_place

    store.delete_where(target, "path", ["src/widgets.py"])
    changed = doc_points(generation=2)[0]  # an existing id with new payload
    added = IndexedPoint(
        id=point_id("src/new.py"),
        dense=DENSE[3].tolist(),
        sparse=lexical.encode_document("def frobnicate_gadget(): ..."),
        payload={"repo_id": "beta", "path": "src/new.py", "generation": 1},
    )
    store.upsert(target, [changed, added])
    assert store.count(target) == len(DOCS)

    before = store.search("docs", DENSE[3].tolist(), lexical.encode_query("frobnicate"), 20)
    if in_place:
        assert "src/new.py" in paths(before)  # the server applies updates in place
    else:
        # Readers stay on the published, complete old collection until publish.
        assert paths(before)[0] == "src/widgets.py"
        assert "src/new.py" not in paths(before)
        assert {h.payload["generation"] for h in before} == {0}

    assert store.publish("docs", target) == "docs-1"
    after = store.search("docs", DENSE[3].tolist(), lexical.encode_query("frobnicate"), 20)
    assert paths(after)[0] == "src/new.py"
    assert "src/widgets.py" not in paths(after)
    by_path = {h.payload["path"]: h.payload["generation"] for h in after}
    assert by_path[changed.payload["path"]] == 2
    # Points the update did not touch are left as they were (not rewritten: see pipeline).
    assert by_path["src/server.py"] == 0
    if not in_place:
        store.drop_collection("docs-1")
        assert store.count("docs") == len(DOCS)


def test_unknown_alias_is_a_clear_error(store: VectorStore) -> None:
    with pytest.raises(CollectionNotFound, match="no-such-alias") as caught:
        store.search("no-such-alias", [0.1] * DIM, lexical.encode_query("anything"), 5)
    assert isinstance(caught.value, KeyError)
    with pytest.raises(CollectionNotFound):
        store.open_for_update("no-such-alias")
    assert store.resolve_alias("no-such-alias") is None


# --- embedded only ---------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedVectorStore]:
    store = EmbeddedVectorStore(tmp_path / "qdrant")
    yield store
    store.close()


def test_published_collection_is_immutable(embedded: EmbeddedVectorStore) -> None:
    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points())
    embedded.publish("docs", "docs-1")
    with pytest.raises(CollectionPublished):
        embedded.upsert("docs-1", doc_points(generation=1))
    with pytest.raises(CollectionPublished):
        embedded.delete_where("docs-1", "path", ["src/db.py"])
    assert embedded.count("docs-1") == len(DOCS)


def test_search_a_collection_before_publish(embedded: EmbeddedVectorStore) -> None:
    # What a build's smoke test does: search the new collection by name, unpublished.
    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points())
    hits = embedded.search("docs-1", DENSE[0].tolist(), lexical.encode_query("HTTPServerError"), 3)
    assert paths(hits)[0] == "src/server.py"


READER_SCRIPT = """
import json, os, sys
from pathlib import Path
from cia_assets.lib.vectorstore.embedded import EmbeddedVectorStore
from cia_assets.lib.vectorstore.base import SparseVector

store = EmbeddedVectorStore(Path(sys.argv[1]))
for line in sys.stdin:
    command = line.strip()
    if command == "search":
        hits = store.search("docs", [1.0] * 8, SparseVector([], []), 100)
        generations = sorted({h.payload["generation"] for h in hits})
        print(json.dumps({"generations": generations, "hits": len(hits)}), flush=True)
    elif command == "crash":
        os._exit(0)  # no close(): leaves a stale view behind
    else:
        break
store.close()
"""


class Reader:
    """A store in another process, driven line by line."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER_SCRIPT, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def search(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("search\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"reader died: {self.process.communicate()[1]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def finish(self, command: str = "quit") -> None:
        _, stderr = self.process.communicate(f"{command}\n", timeout=30)
        assert self.process.returncode == 0, stderr


def test_reader_in_another_process_during_update(embedded: EmbeddedVectorStore, tmp_path: Path) -> None:
    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points(generation=1))
    embedded.publish("docs", "docs-1")
    target = embedded.open_for_update("docs")  # this process now holds a writer shard open
    embedded.delete_where(target, "path", ["src/db.py"])
    embedded.upsert(target, [p for p in doc_points(generation=2) if p.payload["path"] != "src/db.py"])

    reader = Reader(tmp_path / "qdrant")
    try:
        assert reader.search() == {"generations": [1], "hits": len(DOCS)}
        embedded.publish("docs", target)
        embedded.drop_collection("docs-1")  # the reader's open view of it loses its source
        assert reader.search() == {"generations": [2], "hits": len(DOCS) - 1}
    finally:
        reader.finish()
    assert sorted(os.listdir(tmp_path / "qdrant" / "views")) == sorted(
        p.name for p in (tmp_path / "qdrant" / "views").glob("*.lock")
    )


def test_view_survives_drop_of_its_collection(embedded: EmbeddedVectorStore, tmp_path: Path) -> None:
    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points())
    embedded.publish("docs", "docs-1")
    other = EmbeddedVectorStore(tmp_path / "qdrant")  # stands in for another process
    try:
        view = other._acquire_view("docs-1")  # an in-flight search holds it
        embedded.drop_collection("docs-1")
        assert not (tmp_path / "qdrant" / "collections" / "docs-1").exists()
        request = other._query_request(DENSE[2].tolist(), NO_SPARSE, 3, None, 100)
        hits = view.shard.query(request)
        assert hits[0].payload["path"] == "src/db.py"
        other._release_view(view)
        assert not view.path.exists()  # no alias points at it any more: removed on release
    finally:
        other.close()


def test_searches_never_fail_during_rebuilds(embedded: EmbeddedVectorStore, tmp_path: Path) -> None:
    n_points, rebuilds = 24, 5
    embedded.create_collection("gen-0", DIM)
    embedded.upsert("gen-0", generation_points(0, n_points))
    embedded.publish("live", "gen-0")
    # Half the threads share the rebuilding instance, half another instance on the same
    # root: the latter sees switches only through aliases.json, like another process.
    other = EmbeddedVectorStore(tmp_path / "qdrant")
    stop = threading.Event()
    errors: list[BaseException] = []
    results: list[tuple[set[int], int]] = []
    results_lock = threading.Lock()
    seen_generation = {generation: threading.Event() for generation in range(rebuilds + 1)}

    def hammer(store: EmbeddedVectorStore, seed: int) -> None:
        rng = np.random.default_rng(seed)
        sparse = lexical.encode_query("shared_token chunk_3")
        while not stop.is_set():
            try:
                hits = store.search("live", rng.standard_normal(DIM).tolist(), sparse, n_points + 10)
            except BaseException as err:  # every failure counts, whatever its type
                errors.append(err)
                return
            generations = {h.payload["generation"] for h in hits}
            with results_lock:
                results.append((generations, len(hits)))
            for generation in generations:
                seen_generation[generation].set()
            # A breath between searches: eight threads in a tight loop starve the main
            # thread of the GIL (every syscall it makes waits for the switch interval).
            time.sleep(0.001)

    threads = [threading.Thread(target=hammer, args=(embedded if i % 2 else other, i)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(1, rebuilds + 1):
            name = f"gen-{generation}"
            embedded.create_collection(name, DIM)
            embedded.upsert(name, generation_points(generation, n_points))
            previous = embedded.publish("live", name)
            assert previous == f"gen-{generation - 1}"
            # Drop the old collection only once readers have moved on (as indexing does
            # in practice, where rebuilds are minutes apart): searches still in flight on
            # it must finish on their views, and every generation gets searched.
            assert seen_generation[generation].wait(timeout=20), f"no search reached {name}"
            embedded.drop_collection(previous)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        other.close()

    assert not errors, errors[:3]
    assert len(results) > 100
    assert all(count == n_points for _, count in results), "a search saw an incomplete collection"
    assert all(len(generations) == 1 for generations, _ in results), "a search mixed collections"
    seen = set().union(*(generations for generations, _ in results))
    assert seen == set(range(rebuilds + 1))
    # Only the rebuilding instance's view of the final generation may remain.
    leftover = [p.name for p in (tmp_path / "qdrant" / "views").iterdir() if p.is_dir()]
    assert len(leftover) <= 1
    assert all(f"-gen-{rebuilds}-" in name for name in leftover)


def test_views_are_cleaned_up(embedded: EmbeddedVectorStore, tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    views = root / "views"

    def view_dirs() -> list[str]:
        return sorted(p.name for p in views.iterdir() if p.is_dir())

    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points())
    embedded.publish("docs", "docs-1")
    embedded.search("docs", DENSE[0].tolist(), NO_SPARSE, 3)
    assert len(view_dirs()) == 1 and "docs-1" in view_dirs()[0]

    # A switch retires the old view: the next search opens one of the new target and
    # the old one is closed and removed.
    embedded.create_collection("docs-2", DIM)
    embedded.upsert("docs-2", doc_points(generation=2))
    embedded.publish("docs", "docs-2")
    embedded.search("docs", DENSE[0].tolist(), NO_SPARSE, 3)
    assert len(view_dirs()) == 1 and "docs-2" in view_dirs()[0]

    # A process that dies without close() leaves its view; the next store to open a
    # view (or to start) removes it, since nobody holds that view's owner lock any more.
    reader = Reader(root)
    assert reader.search()["hits"] == len(DOCS)
    assert len(view_dirs()) == 2
    reader.finish("crash")
    late = EmbeddedVectorStore(root)
    try:
        assert len(view_dirs()) == 1 and "docs-2" in view_dirs()[0]
    finally:
        late.close()

    # A live reader's view is left alone by cleaners.
    reader = Reader(root)
    try:
        reader.search()
        EmbeddedVectorStore(root).close()
        assert len(view_dirs()) == 2
        assert reader.search()["hits"] == len(DOCS)
    finally:
        reader.finish()

    embedded.close()
    assert view_dirs() == []
    assert not list(views.glob("*.lock"))


def test_views_never_write_into_a_published_collection(embedded: EmbeddedVectorStore, tmp_path: Path) -> None:
    embedded.create_collection("docs-1", DIM)
    embedded.upsert("docs-1", doc_points())
    embedded.publish("docs", "docs-1")
    collection = tmp_path / "qdrant" / "collections" / "docs-1"
    assert (collection / SEALED_FILE).is_file()

    def state() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(collection)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in collection.rglob("*")
            if p.is_file()
        }

    before = state()
    for _ in range(2):  # open, search and close a view twice
        embedded.search("docs", DENSE[0].tolist(), lexical.encode_query("cache"), 3)
        embedded.create_collection("tmp", DIM)
        embedded.publish("docs", "tmp")  # retires and closes the view of docs-1
        embedded.publish("docs", "docs-1")
        embedded.drop_collection("tmp")
    assert embedded.open_for_update("docs")  # copying reads only, too
    assert state() == before


# --- lexical ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("HTTPServerError", ["httpservererror", "http", "server", "error"]),
        ("get_user_id", ["get_user_id", "get", "user", "id"]),
        ("XMLHttpRequest", ["xmlhttprequest", "xml", "http", "request"]),
        ("getHTTP2Response", ["gethttp2response", "get", "http", "response"]),
        ("CONSTANT_VALUE = 42", ["constant_value", "constant", "value", "42"]),
        ("src/http-server/main.py", ["src", "http", "server", "main", "py"]),
        ("os.path.join(base, name)", ["os", "path", "join", "base", "name"]),
        ("def __init__(self): return None", ["__init__", "init"]),
        ("self.parseJSON2Yaml(x)", ["parsejson2yaml", "parse", "json", "yaml"]),
        ("where is the user created", ["user", "created"]),
        ("user user", ["user", "user"]),
        ("café_Owner", ["café_owner", "café", "owner"]),
        ("x = y + 1; v2", ["v2"]),
        ("", []),
    ],
)
def test_code_tokens(text: str, tokens: list[str]) -> None:
    assert lexical.code_tokens(text) == tokens


GOLDEN_INDICES = {"get_user_id": 1055752763, "get": 2101030512, "user": 227792457, "id": 1060726608}


def test_encoding_is_stable_across_processes() -> None:
    # Fixed expectations: if these change, every existing index silently stops matching.
    assert {token: lexical.token_index(token) for token in GOLDEN_INDICES} == GOLDEN_INDICES
    assert lexical.encode_query("get_user_id") == SparseVector(
        indices=sorted(GOLDEN_INDICES.values()), values=[1.0] * 4
    )
    # Another interpreter with another hash seed encodes the same way.
    script = (
        "from cia_assets.lib.indexing import lexical;"
        "v = lexical.encode_document('HTTPServerError x get_user_id');"
        "print(v.indices, v.values)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    here = lexical.encode_document("HTTPServerError x get_user_id")
    assert other.stdout.strip() == f"{here.indices} {here.values}"


def test_document_weights_are_saturated_term_frequencies() -> None:
    vector = lexical.encode_document("alpha alpha beta")
    weights = dict(zip(vector.indices, vector.values, strict=True))
    alpha, beta = weights[lexical.token_index("alpha")], weights[lexical.token_index("beta")]
    assert alpha > beta > 0
    assert alpha < lexical.BM25_K1 + 1  # saturates below k1 + 1
    assert vector.indices == sorted(set(vector.indices))
    long_doc = lexical.encode_document("beta " + "filler " * 400)
    long_weights = dict(zip(long_doc.indices, long_doc.values, strict=True))
    assert long_weights[lexical.token_index("beta")] < beta  # length-normalised


def test_query_is_one_per_distinct_token() -> None:
    vector = lexical.encode_query("user user getUser")
    assert vector.values == [1.0] * len(vector.indices)
    assert len(vector.indices) == 3  # user, getuser, get


def test_hash_collisions_are_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lexical, "token_index", lambda token: 7 if token in ("foo", "bar") else 3)
    assert lexical.encode_query("foo bar baz") == SparseVector(indices=[3, 7], values=[1.0, 2.0])


@pytest.mark.parametrize(
    ("query", "identifiers"),
    [
        ("refundDeadlineDays", ["refunddeadlinedays"]),
        ("where is check_permission called", ["check_permission"]),
        ("TokenValidator.validate and HTTPServer", ["tokenvalidator", "httpserver"]),
        ("Ledger transfer", []),  # plain words: nothing the other lists could split apart
        ("", []),
    ],
)
def test_exact_identifier_query_keeps_only_whole_compound_identifiers(
    query: str, identifiers: list[str]
) -> None:
    encoded = lexical.encode_identifiers(query)
    assert encoded.indices == sorted(lexical.token_index(t) for t in identifiers)
    assert encoded.values == [1.0] * len(identifiers)


@pytest.mark.parametrize("backend", ["embedded", "server"])
def test_exact_identifier_list_ranks_the_defining_chunk_first(backend: str, tmp_path: Path) -> None:
    """A chunk that shares the identifier's parts and is the dense favourite loses to the
    chunk holding the exact identifier once the exact list joins the fusion."""
    from qdrant_client import QdrantClient

    store: VectorStore = (
        EmbeddedVectorStore(tmp_path)
        if backend == "embedded"
        else ServerVectorStore(QdrantClient(":memory:"))
    )
    store.create_collection("c", 2)
    texts = {
        "readme": "Refunds: the refund deadline is a number of days, see refund.ts",
        "definition": "function refundDeadlineDays(country) { return 14 }",
        "other": "function unrelated() {}",
    }
    dense = {"readme": [1.0, 0.0], "definition": [0.0, 1.0], "other": [0.7, 0.7]}
    store.upsert(
        "c",
        [
            IndexedPoint(str(uuid.UUID(int=i + 1)), dense[name], lexical.encode_document(text), {"n": name})
            for i, (name, text) in enumerate(texts.items())
        ],
    )
    store.publish("a", "c")
    query = "refundDeadlineDays"
    without = store.search("a", [1.0, 0.0], lexical.encode_query(query), 3)
    assert without[0].payload["n"] == "readme"  # the trap: dense first, lexical second
    with_exact = store.search(
        "a", [1.0, 0.0], lexical.encode_query(query), 3, exact=lexical.encode_identifiers(query)
    )
    assert with_exact[0].payload["n"] == "definition"
    store.close()
