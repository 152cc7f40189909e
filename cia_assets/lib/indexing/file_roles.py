"""What a file is for (source, test, doc, vendored), from its path, and what a question wants.

Users index whole repositories: tests, docs, changelogs and vendored packages stay searchable,
but an explanation of how something works should be read from the code that does it, and
tests that mention a name crowd its definition out of a small model's context.
"""

from __future__ import annotations

import re
from typing import Literal

Role = Literal["source", "test", "doc", "vendored"]

_TEST_DIRS = frozenset({"test", "tests", "testing", "__tests__", "spec", "specs", "e2e", "fixtures"})
# A test package named after its project (`cia_assets_tests/`, `tests_unit/`): its helpers and
# fakes are test code too, not only its test_*.py files.
_TEST_DIR_NAME = re.compile(r"^(.+_tests?|tests?_.+)$")
_TEST_NAME = re.compile(r"^(test_.*|conftest\.py|.*(_test|_tests|\.test|\.spec|_spec|Test|Tests)\.\w+)$")
_DOC_DIRS = frozenset({"doc", "docs", "documentation", "examples", "changelog", "changes", "news"})
_DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".markdown")
_VENDOR_DIRS = frozenset({"vendor", "vendored", "_vendor", "third_party", "thirdparty", "node_modules"})

# Words that say the question is about the tests or the docs themselves.
_WANTS_TESTS = re.compile(r"\b(tests?|tested|testing|fixtures?|pytest|unittest|spec|coverage)\b", re.I)
_WANTS_DOCS = re.compile(
    r"\b(docs?|documentation|documented|readme|changelog|install(ed|ing|ation)?|tutorial|guide)\b", re.I
)


def file_role(path: str) -> Role:
    parts = path.split("/")
    folders = {part.lower() for part in parts[:-1]}
    name = parts[-1]
    # A top-level packages/ is a monorepo's own code; one inside a package is vendored
    # (requests/packages/urllib3).
    if folders & _VENDOR_DIRS or "packages" in (part.lower() for part in parts[1:-1]):
        return "vendored"
    if folders & _TEST_DIRS or any(_TEST_DIR_NAME.match(f) for f in folders) or _TEST_NAME.match(name):
        return "test"
    if name.lower().endswith(_DOC_SUFFIXES) or folders & _DOC_DIRS:
        return "doc"
    return "source"


def wanted_roles(question: str) -> frozenset[Role]:
    """The roles an answer to `question` should be read from first."""
    roles: set[Role] = {"source"}
    if _WANTS_TESTS.search(question):
        roles.add("test")
    if _WANTS_DOCS.search(question):
        roles.add("doc")
    return frozenset(roles)
