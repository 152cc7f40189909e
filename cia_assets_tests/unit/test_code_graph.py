"""The code graph: tree-sitter definitions, references and imports, and personalised PageRank."""

from __future__ import annotations

from pathlib import Path

import pytest

from cia_assets.lib.indexing import chunking
from cia_assets.lib.indexing.code_graph import build_code_graph, read_code_graph, write_code_graph
from cia_assets.lib.indexing.code_symbols import FileSymbols, file_symbols

ADAPTERS = b'''"""Transport adapters."""
from .models import PreparedRequest
from . import utils


class HTTPAdapter:
    def send_request(self, request: PreparedRequest) -> str:
        # build_response is named in this comment but only called below
        return utils.build_response(request, "send_request is in a string")
'''
UTILS = b"""def build_response(request, reason):
    return PreparedRequest()
"""
MODELS = b"""class PreparedRequest:
    def prepare_body(self, data):
        return data
"""
TEST_ADAPTERS = b"""from requests.adapters import HTTPAdapter


def test_send():
    assert HTTPAdapter().send_request(None)
"""
FILES = {
    "requests/adapters.py": ADAPTERS,
    "requests/utils.py": UTILS,
    "requests/models.py": MODELS,
    "tests/test_adapters.py": TEST_ADAPTERS,
    "README.md": b"# Requests\n\nHTTPAdapter sends requests.\n",
}


def _symbols(path: str, data: bytes) -> FileSymbols:
    drafts = chunking.chunk_file(path, data)
    return file_symbols(path, "blob", data, drafts[0].language, [(d.kind, d.symbol) for d in drafts])


def test_python_file_symbols_come_from_the_syntax_tree() -> None:
    node = _symbols("requests/adapters.py", ADAPTERS)
    assert set(node.defines) == {"HTTPAdapter", "send_request"}
    # Names used in code count; the file's own definitions do not; a name in a string or a
    # comment is not a use of it.
    assert node.references["PreparedRequest"] == 2
    assert node.references["build_response"] == 1
    assert "send_request" not in node.references
    # Relative imports resolve against the file's package; `from . import utils` names a module.
    assert set(node.imports) == {
        "requests.models",
        "requests.models.PreparedRequest",
        "requests",
        "requests.utils",
    }
    assert FileSymbols.from_json(node.to_json()) == node


def test_pagerank_flows_from_a_test_to_the_code_it_exercises(tmp_path: Path) -> None:
    graph = build_code_graph(_symbols(path, data) for path, data in FILES.items())
    ranks = graph.rank({"tests/test_adapters.py": 1.0})
    # The test imports and calls the adapter, which calls utils and uses models: rank flows
    # along those edges and never to the README, which nothing imports or calls.
    assert ranks["requests/adapters.py"] > ranks["requests/utils.py"] > 0
    assert ranks["requests/models.py"] > 0
    assert "README.md" not in ranks
    assert graph.rank({"unknown.py": 1.0}) == {}

    stored = tmp_path / "graph" / "repo.npz"
    write_code_graph(stored, graph)
    loaded = read_code_graph(stored)
    assert loaded is not None and loaded.files == graph.files
    assert loaded.rank({"tests/test_adapters.py": 1.0}) == pytest.approx(ranks)
    assert read_code_graph(tmp_path / "missing.npz") is None


def test_a_name_defined_in_many_files_weighs_little() -> None:
    many = {f"pkg/m{i}.py": b"def run():\n    return 1\n" for i in range(8)}
    caller = b"from pkg.one import process_payment\n\ndef go():\n    run()\n    process_payment()\n"
    files = {**many, "pkg/one.py": b"def process_payment():\n    return 2\n", "pkg/caller.py": caller}
    graph = build_code_graph(_symbols(path, data) for path, data in files.items())
    ranks = graph.rank({"pkg/caller.py": 1.0})
    assert ranks["pkg/one.py"] > 10 * ranks["pkg/m0.py"]
