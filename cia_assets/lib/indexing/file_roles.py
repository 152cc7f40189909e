"""What a file is for (source, test, doc, changelog, vendored, generated, config), from its path,
and what a question wants.

Users index whole repositories: tests, docs, changelogs and vendored packages stay searchable,
but an explanation of how something works should be read from the code that does it, and
tests that mention a name crowd its definition out of a small model's context.
"""

from __future__ import annotations

import re
from typing import Literal

Role = Literal["source", "test", "doc", "changelog", "vendored", "generated", "config"]

_TEST_DIRS = frozenset({"test", "tests", "testing", "__tests__", "spec", "specs", "e2e", "fixtures"})
# A test package named after its project (`cia_assets_tests/`, `tests_unit/`): its helpers and
# fakes are test code too, not only its test_*.py files.
_TEST_DIR_NAME = re.compile(r"^(.+_tests?|tests?_.+)$")
_TEST_NAME = re.compile(r"^(test_.*|conftest\.py|.*(_test|_tests|\.test|\.spec|_spec|Test|Tests)\.\w+)$")
_DOC_DIRS = frozenset({"doc", "docs", "documentation", "examples"})
_DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".markdown")
# Files a project's readers know by name, with or without a suffix.
_DOC_NAMES = frozenset({"readme", "authors", "contributors", "contributing", "license", "copying", "notice"})
_CHANGELOG_DIRS = frozenset({"changelog", "changes", "news", "whatsnew", "release-notes", "releasenotes"})
_CHANGELOG_NAMES = frozenset({
    "changelog", "changes", "history", "news", "releases", "release-notes", "release_notes", "whats-new",
    "whatsnew",
})  # fmt: skip
# `extern`/`cextern`: astropy's vendored Python and C libraries (cfitsio's ChangeLog and wcslib's
# configure script filled half of an explanation's context there). Not `external`: sympy's
# `sympy/external/` is its own code (the adapters to optional dependencies).
_VENDOR_DIRS = frozenset({
    "vendor", "vendored", "_vendor", "third_party", "thirdparty", "third-party", "3rdparty",
    "node_modules", "bower_components", "extern", "cextern",
})  # fmt: skip
_GENERATED_DIRS = frozenset({"generated", "_generated", "_antlr"})
_GENERATED_NAME = re.compile(
    r"^(.*_pb2(_grpc)?\.pyi?|.*\.pb\.go|.*\.min\.(js|css)|.*[._]generated\.\w+|.*\.g\.dart"
    r"|package-lock\.json|yarn\.lock|pnpm-lock\.yaml|poetry\.lock|uv\.lock|Cargo\.lock|Pipfile\.lock)$"
)
_CONFIG_SUFFIXES = (
    ".cfg", ".ini", ".toml", ".yaml", ".yml", ".json", ".conf", ".properties", ".m4", ".mk", ".cmake",
)  # fmt: skip
_CONFIG_NAMES = frozenset({
    "makefile", "gnumakefile", "makefile.am", "makefile.in", "dockerfile", "configure", "configure.ac",
    "configure.in", "cmakelists.txt", "manifest.in", ".gitignore", ".gitattributes", ".editorconfig",
    ".flake8", ".pylintrc", ".coveragerc", ".dockerignore", ".env.example",
})  # fmt: skip

# Words that say the question is about the tests, docs, changelog, configuration, generated or
# vendored code themselves.
_WANTS: dict[Role, re.Pattern[str]] = {
    "test": re.compile(r"\b(tests?|tested|testing|fixtures?|pytest|unittest|spec|coverage)\b", re.I),
    "doc": re.compile(
        r"\b(docs?|documentation|documented|readme|install(ed|ing|ation)?|tutorial|guide)\b", re.I
    ),
    "changelog": re.compile(r"\b(change ?log|release notes?|what'?s new|changes file)\b", re.I),
    "config": re.compile(
        r"\b(config|configs|configuration|configur(e|ed|es|ing)|ya?ml|toml|ini file|makefile"
        r"|environment variables?|env vars?|deploy\w*|helm|docker\w*|kubernetes|k8s)\b",
        re.I,
    ),
    "generated": re.compile(r"\b(generated|codegen)\b", re.I),
    "vendored": re.compile(r"\b(vendor\w*|bundled|third[- ]party)\b", re.I),
}

# A question that asks for the tests themselves ("where is the redaction tested?", "which tests
# cover the sensor?"), not one that mentions tests on its way to the code ("the early-exit
# optimization tested across multiple test methods": SWE-QA's references for those are the
# source files, and ranking tests up for them cost astropy's questions their cite-hit).
_TEST_KIND = r"((unit|integration|end-to-end|e2e|regression)\s+)?"
_ASKS_FOR_TESTS = re.compile(
    r"\btested(\s+anywhere)?\s*(\?|$)"
    r"|\b(is|are)\s+(it|this|that|they|these|those)\s+tested\b"
    rf"|\b(which|what)\s+{_TEST_KIND}tests?\b"
    rf"|\b(where\s+(are|is)|where's|find|show\s+me)\s+the\s+{_TEST_KIND}tests?\b"
    rf"|\b(is|are)\s+there\s+(a\s+|any\s+)?{_TEST_KIND}tests?\b"
    r"|\bcovered\s+by\s+(a\s+|any\s+)?tests?\b"
    r"|\bwhere\s+(do|does|can)\s+(we|i|you|one)\s+test\b"
    r"|\btests?\s+(that\s+)?(cover|check|exercise)"
    r"|\btest\s+coverage\b",
    re.I | re.M,
)
# A question that asks how to use or set up something, by how it starts ("How do I ...?", "Can
# I ...?"). SWE-QA's questions ("How does X ...") never start so; a clause later in a question
# about something else does not count: "Where does xarray send usage telemetry, and how do I
# opt out of it?" (an absent feature) searched with the docs got an invented setting answered.
_ASKS_HOW_TO = re.compile(
    r"^\W*(how\s+(do|can|should|would|could)\s+(i|we|you|one)|how\s+to|(can|may|could)\s+(i|we))\b", re.I
)


def file_role(path: str) -> Role:
    parts = path.split("/")
    folders = {part.lower() for part in parts[:-1]}
    name = parts[-1]
    lowered = name.lower()
    # Known by name only as text (`HISTORY.rst`, `ChangeLog`), never as code (`history.py`).
    as_text = "." not in lowered or lowered.endswith(_DOC_SUFFIXES)
    stem = lowered.split(".", 1)[0] if as_text else None
    # A top-level packages/ is a monorepo's own code; one inside a package is vendored
    # (requests/packages/urllib3).
    if folders & _VENDOR_DIRS or "packages" in (part.lower() for part in parts[1:-1]):
        return "vendored"
    if folders & _GENERATED_DIRS:
        return "generated"
    if folders & _TEST_DIRS or any(_TEST_DIR_NAME.match(f) for f in folders) or _TEST_NAME.match(name):
        return "test"  # a test fixture named `..._generated.sql` is a test's
    if _GENERATED_NAME.match(name):
        return "generated"
    if lowered in _CONFIG_NAMES:
        return "config"  # before the suffixes: `CMakeLists.txt` is no document
    if stem in _CHANGELOG_NAMES or folders & _CHANGELOG_DIRS:
        return "changelog"
    if lowered.endswith(_DOC_SUFFIXES) or folders & _DOC_DIRS or stem in _DOC_NAMES:
        return "doc"
    if lowered.endswith(_CONFIG_SUFFIXES):
        return "config"
    return "source"


def wanted_roles(question: str) -> frozenset[Role]:
    """The roles an answer to `question` should be read from first: source files, and the
    others only when the question asks about them; a how-to question also wants the docs and
    configuration that say how."""
    roles: set[Role] = {"source"}
    for role, asks in _WANTS.items():
        if asks.search(question):
            roles.add(role)
    if asks_how_to(question):
        roles |= {"doc", "config"}
    return frozenset(roles)


def asks_for_tests(question: str) -> bool:
    """Whether `question` asks where or how something is tested (which the answering search
    then ranks tests for, beside the code)."""
    return bool(_ASKS_FOR_TESTS.search(question))


def asks_how_to(question: str) -> bool:
    """Whether `question` asks how to use or set up something ("How do I add a repository?",
    "How can I turn off masking?"): the docs, the config file and the Makefile say that, and
    the answering search then ranks them beside the code."""
    return bool(_ASKS_HOW_TO.search(question))
