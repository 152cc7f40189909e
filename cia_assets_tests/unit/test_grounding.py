"""The checks around generation, without a model: grounding of backticked names and quoted
code, retrieval evidence for abstaining, file roles for the context's order, and the
conversation a follow-up carries."""

from __future__ import annotations

import pytest

from cia_assets.lib.answering.citations import ContextBlock
from cia_assets.lib.answering.context import (
    condensed_question,
    explanation_order,
    only_tests_or_vendored,
    previous_question,
    retrieval_query,
)
from cia_assets.lib.answering.generation import first_token_odds, starts_not_found
from cia_assets.lib.answering.grounding import (
    UNGROUNDED_MARK,
    attribute,
    check_blocks,
    check_grounding,
    evidence,
    inline_spans,
    mark_ungrounded,
    mostly_ungrounded,
    named_code,
    question_terms,
    quoted_lines,
)
from cia_assets.lib.answering.prompts import PACKAGED_PROMPT
from cia_assets.lib.indexing.file_roles import asks_for_tests, asks_how_to, file_role, wanted_roles
from cia_assets.lib.retrieval.query_plan import QueryPlan, defines_in, definition_names
from cia_assets.lib.retrieval.search import CodeHit

AUTH = (
    "def authorize_refund(user, amount):\n"
    '    """A refund is authorized when the user is a manager or the amount is under 50."""\n'
    "    if user.role == 'manager':\n"
    "        return True\n"
    "    return amount < 50\n"
)
LEDGER = "def transfer_between_accounts(ledger, source, target, amount):\n    ledger[source] -= amount\n"


def test_backticked_names_and_quoted_lines_are_looked_up_in_the_cited_code() -> None:
    answer = (
        "`authorize_refund` returns `True` for a `user.role` of `'manager'` [1], and "
        "`authorize_refund()` checks `amount < 50` otherwise [1].\n"
        "```python\n    if user.role == 'manager':\n        return True\n```\n"
    )
    grounding = check_grounding(answer, [AUTH], [AUTH, LEDGER])
    assert grounding.ungrounded == [] and grounding.uncited == []
    # Spans (repeats once) plus the one quoted line long enough to prove something.
    assert inline_spans(answer) == [
        "authorize_refund",
        "True",
        "user.role",
        "'manager'",
        "authorize_refund()",
        "amount < 50",
    ]
    assert quoted_lines(answer) == ["if user.role == 'manager':", "return True"]
    assert grounding.checked == 8 and grounding.rate == 1.0


def test_an_invented_identifier_or_line_is_ungrounded_and_marked() -> None:
    answer = "`authorize_refund` calls `check_fraud_score` first [1].\n```\nscore = fraud(user)\n```"
    grounding = check_grounding(answer, [AUTH], [AUTH, LEDGER])
    assert grounding.ungrounded == ["`check_fraud_score`", "score = fraud(user)"]
    marked, note = mark_ungrounded(answer, grounding)
    assert f"`check_fraud_score`{UNGROUNDED_MARK}" in marked
    assert "`authorize_refund`" + UNGROUNDED_MARK not in marked
    assert "check_fraud_score" in note and "score = fraud(user)" in note
    # Found in the context but not in what the answer cites: grounded, reported as uncited.
    uncited = check_grounding("`transfer_between_accounts` moves money [1].", [AUTH], [AUTH, LEDGER])
    assert uncited.ungrounded == [] and uncited.uncited == ["`transfer_between_accounts`"]
    assert mark_ungrounded("text", uncited) == ("text", "")
    assert mostly_ungrounded(grounding)  # two of its three are invented
    assert mostly_ungrounded(check_grounding("`LruCache.put` calls `move_to_end` [1].", [AUTH], [AUTH]))
    assert not mostly_ungrounded(check_grounding("`authorize_refund` calls `move_to_end`.", [AUTH], [AUTH]))


def test_file_paths_count_as_grounded_names_and_markers_are_not_checked() -> None:
    grounding = check_grounding(
        "See `payments/auth.py` [1] and `[1]`.", [AUTH], [AUTH], paths=["payments/auth.py"]
    )
    assert grounding.checked == 1 and grounding.ungrounded == []


def test_a_block_header_naming_a_method_cut_from_its_class_grounds_that_name() -> None:
    # The class line is cut off; the header (`ResolvedGrouper.__post_init__`) is what says whose
    # method the model is reading, so the name is grounded by it, and only by it.
    def block(symbol: str | None) -> ContextBlock:
        return ContextBlock(
            n=1, repo="r", path="xarray/core/groupby.py", line_start=317, line_end=320,
            commit_sha="a" * 40, web_url=None, language="python", symbol=symbol,
            text="    def __post_init__(self) -> None:\n        raise ValueError('labels')",
        )  # fmt: skip

    answer = "`ResolvedGrouper.__post_init__` raises `ValueError` [1]."
    headed = block("ResolvedGrouper.__post_init__")
    assert check_blocks(answer, [headed], [headed]).ungrounded == []
    bare = block(None)
    assert check_blocks(answer, [bare], [bare]).ungrounded == ["`ResolvedGrouper.__post_init__`"]


def test_citations_are_inferred_from_the_blocks_an_unmarked_answer_names() -> None:
    assert attribute("`transfer_between_accounts` moves `amount`.", [AUTH, LEDGER]) == [1, 0]
    assert attribute("Nothing named here.", [AUTH, LEDGER]) == []
    # Small models often write names without backticks: code-shaped words count too.
    assert attribute("The transfer_between_accounts function moves money.", [AUTH, LEDGER]) == [1]
    assert attribute("It calls authorize_refund(user) for managers.", [AUTH, LEDGER]) == [0]
    assert attribute("A manager may refund.", [AUTH, LEDGER]) == []  # plain words prove nothing
    # A docstring retold, across its line break and in other case, is a passage of that block
    # (first: it shares the most), and of AUTH's ("is authorized when the user is a manager");
    # seven words in a row are not.
    docstring = 'def ledger_refund(amount):\n    """Refunds are authorized when the user is a\n'
    docstring += '    manager."""\n'
    retold = "Refunds are authorized when the user is a manager, or for small amounts."
    assert attribute(retold, [AUTH, LEDGER, docstring]) == [2, 0]
    assert attribute("Refunds are authorized when the user is wealthy.", [AUTH, docstring]) == []
    # Asked "where", a small model names a source's file and lines instead of its number.
    paths = ["payments/auth.py", "payments/ledger.py"]
    where = "The check is in `payments/ledger.py` lines 1-4."
    assert attribute(where, [AUTH, LEDGER]) == []
    assert attribute(where, [AUTH, LEDGER], paths=paths) == [1]
    assert attribute("It lives in ledger.py.", [AUTH, LEDGER], paths=paths) == [1]
    assert attribute("See `auth.py`.", [AUTH, LEDGER], paths=paths) == [0]
    # Another folder's file of the same name, or a name that only ends like it, is not it.
    assert attribute("See `billing/auth.py` and myauth.py.", [AUTH, LEDGER], paths=paths) == []


def test_evidence_is_the_share_of_the_questions_terms_in_the_retrieved_code() -> None:
    assert question_terms("How is authorization implemented in the payments service?") == [
        "authoriz",
        "payment",
    ]
    blocks = [("payments/auth.py", AUTH), ("payments/ledger.py", LEDGER)]
    present = evidence("When is a refund authorized for a manager?", blocks)
    assert present.coverage == 1.0 and present.missing == []
    absent = evidence("How are invoices emailed to customers over SMTP?", blocks)
    assert absent.coverage == 0.0 and set(absent.missing) == {"invoic", "email", "custom", "smtp"}
    partial = evidence("Which manager transfers the ledger balance?", blocks)
    assert partial.terms == ["manag", "transf", "ledg", "balance"]
    assert partial.missing == ["balance"] and partial.coverage == 0.75
    assert partial.best_block == 0.5  # "manager" is in one file, "transfer" and "ledger" in the other
    assert evidence("How does it work?", blocks).coverage == 1.0  # nothing distinctive to miss


def test_code_a_question_names_and_finds_in_the_retrieved_code_is_evidence_of_its_subject() -> None:
    assert named_code(
        "What is the semantic meaning of the 'fill_value' argument in _getitem_with_mask of the "
        "VariableSubclassobjects class, and how does DataTree.from_dict use `Dataset.update()`, "
        "e.g. in the U.S.?"
    ) == [
        "fill_value",
        "Dataset.update",
        "_getitem_with_mask",
        "VariableSubclassobjects",
        "DataTree.from_dict",
    ]
    assert (
        named_code("How is authorization implemented in the payments service? Where is `[n]` checked?") == []
    )
    blocks = [("payments/auth.py", AUTH), ("payments/ledger.py", LEDGER)]
    # Words of how a question is framed are in no code: the named function is.
    framed = evidence(
        "What architectural role does the delegation pattern in authorize_refund play for consistency?",
        blocks,
    )
    assert framed.coverage < 0.65 and framed.named_found == ["authorize_refund"]
    assert framed.supports_answer(0.65)
    # Named code the retrieved blocks lack does not count (case matters: code is spelled exactly).
    invented = evidence("How does Authorize_Refund call PaymentGateway.charge?", blocks)
    assert invented.named == ["Authorize_Refund", "PaymentGateway.charge"] and invented.named_found == []
    assert not invented.supports_answer(0.65)
    # At least half the named code must be there: one repo class beside an absent feature is not.
    half = evidence("How does transfer_between_accounts publish to KafkaProducer and SlackWebhook?", blocks)
    assert half.named_found == ["transfer_between_accounts"] and not half.supports_answer(0.65)
    assert evidence("When is a refund authorized for a manager?", blocks).supports_answer(0.65)
    assert not evidence("How are invoices emailed to customers over SMTP?", blocks).supports_answer(0.65)
    # A dotted name needs every part: `charge` alone is not `PaymentGateway.charge`.
    charge = [("pay.py", "def charge(amount):\n    return amount\n")]
    assert evidence("How does PaymentGateway.charge retry?", charge).named_found == []
    assert evidence(
        "How does Gateway.charge retry?", [("pay.py", "class Gateway:\n    def charge(self): ...")]
    ).named_found == ["Gateway.charge"]
    # Quotes mark plain words too; dunders and literals are in any code.
    assert named_code("How do \"payments\" use `__init__`, `None` and 'fill_value'?") == ["fill_value"]
    # A special method its class qualifies is one definition; on a value it names none.
    assert named_code("Why does ResolvedGrouper.__post_init__ call self.__class__ or func.__name__?") == [
        "ResolvedGrouper.__post_init__"
    ]
    dunders = "Does `RST.__init__` call __init__ of self.__class__?"
    assert definition_names(dunders) == {"rst.__init__"}
    # The search reads the same names from the question's plan (worked out once a search).
    assert QueryPlan.of(dunders).definitions == {"rst.__init__"}
    # A file name is matched whole: `ledger.py` is in the paths, `billing.py` nowhere.
    assert evidence("What does ledger.py do?", blocks).named_found == ["ledger.py"]
    assert evidence("What does billing.py do?", blocks).named_found == []


def test_the_odds_of_not_found_against_the_likeliest_other_first_token() -> None:
    from math import log

    assert first_token_odds(
        [("The", log(0.4)), ("NOT", log(0.08)), (" Not", log(0.02)), ("In", log(0.3))]
    ) == (pytest.approx(0.25))
    assert first_token_odds([("The", log(0.9))]) == 0.0
    assert first_token_odds([("NOT", log(0.99))]) == float("inf")


def test_the_first_token_that_starts_not_found() -> None:
    assert [starts_not_found(t) for t in ("NOT", " Not", "not", "NOT FOUND", " NOT_FOUND")] == [True] * 4 + [
        False
    ]
    assert [starts_not_found(t) for t in ("Note", "No", "The", "N", "`")] == [False] * 5


def test_file_roles_and_what_a_question_wants() -> None:
    assert file_role("cia_assets/lib/answering/answerer.py") == "source"
    assert file_role("cia_assets_tests/test_answering.py") == "test"
    assert file_role("cia_assets_tests/support/repos.py") == "test"  # a test package's helpers
    assert file_role("tests_unit/helpers.py") == "test"
    assert file_role("contest/scoring.py") == "source" and file_role("latest/app.py") == "source"
    assert file_role("src/app/auth_test.go") == "test"
    assert file_role("tests/conftest.py") == "test"
    assert file_role("docs/user/quickstart.rst") == "doc"
    assert file_role("README") == "doc" and file_role("LICENSE.rst") == "doc"
    # Changelogs by name, with or without a suffix, and in towncrier-style folders; never a
    # module that happens to share the name.
    changelogs = ("HISTORY.rst", "ChangeLog", "NEWS", "doc/whats-new.rst")
    assert [file_role(p) for p in changelogs] == ["changelog"] * 4
    assert file_role("docs/changes/1234.bugfix.rst") == "changelog"
    assert file_role("app/history.py") == "source" and file_role("news.py") == "source"
    assert file_role("requests/packages/urllib3/util.py") == "vendored"
    # astropy's vendored libraries, C and Python.
    assert file_role("cextern/cfitsio/ChangeLog") == "vendored"
    assert file_role("astropy/extern/ply/lex.py") == "vendored"
    assert file_role("sympy/external/gmpy.py") == "source"  # sympy's own adapters
    assert file_role("sympy/parsing/latex/_antlr/latexparser.py") == "generated"
    assert file_role("test/fixtures/sqlite/create_table_generated.sql") == "test"
    assert file_role("api/user_pb2.py") == "generated" and file_role("web/package-lock.json") == "generated"
    configs = ("pyproject.toml", "deploy/values.yaml", "Makefile", "configure", "CMakeLists.txt")
    assert [file_role(p) for p in configs] == ["config"] * 5
    assert file_role("cia_assets/config.py") == "source" and file_role("setup.py") == "source"
    assert file_role("packages/web/src/index.ts") == "source"  # a monorepo's own code
    assert file_role("web/node_modules/left-pad/index.js") == "vendored"
    assert wanted_roles("How is a refund authorized?") == {"source"}
    assert wanted_roles("Where is authorize_refund tested?") == {"source", "test"}
    assert wanted_roles("What does the README say about installation?") == {"source", "doc"}
    assert wanted_roles("What changed in the changelog for 2.0?") == {"source", "changelog"}
    assert wanted_roles("Which config file sets the re-ranker?") == {"source", "config"}
    assert wanted_roles("How do I configure the re-ranker?") == {"source", "config", "doc"}
    assert wanted_roles("Which third-party parser is bundled?") == {"source", "vendored"}


@pytest.mark.parametrize(
    ("question", "asks"),
    [
        ("Where is the invoice export tested?", True),
        ("How is the cache eviction tested?", True),
        ("Where is it tested that a crash keeps the old index?", True),
        ("Which tests check the login redirect?", True),
        ("What unit tests cover the billing cycle?", True),
        ("Where are the tests for the parser?", True),
        ("Is authorize_refund tested", True),
        ("Is there a test for the invoice export?", True),
        ("Are there any unit tests for the parser?", True),
        ("Where are the e2e tests for login?", True),
        ("Is the parser tested anywhere?", True),
        ("Where do we test the billing cycle?", True),
        ("Where's the test for the invoice export?", True),
        ("Is the redirect covered by tests?", True),
        ("Show me the tests for the parser", True),
        # SWE-QA's questions that mention tests on their way to the code (their references
        # are the source files), and a plain one.
        (
            "What is the relationship between the expiration threshold computed in the test "
            "initialization method and the early-exit optimization tested across multiple test methods?",
            False,
        ),
        ("What attributes must be implemented by the object type tested in the test class?", False),
        ("What is the mechanism by which the test suite that exercises the plugin enforces it?", False),
        ("Why does the test class that verifies mask assignment check memory sharing?", False),
        ("How is a refund authorized?", False),
    ],
)
def test_a_question_asking_for_tests_is_told_from_one_mentioning_them(question: str, asks: bool) -> None:
    assert asks_for_tests(question) is asks


@pytest.mark.parametrize(
    ("question", "asks"),
    [
        ("How do I add a new payment provider?", True),
        ("How can I turn off the audit log of refunds?", True),
        ("How to point the ledger at a staging database?", True),
        ("Can I use a different currency formatter?", True),
        ("How should we rotate the webhook secrets?", True),
        # How the code works, not how to use it (SWE-QA's kinds), or a how-to clause later on.
        ("How does the invoice exporter pick the currency?", False),
        ("How is a refund authorized?", False),
        ("What does make deploy do?", False),
        ("Where are refunds sent to the bank, and how do I stop that?", False),
    ],
)
def test_a_how_to_question_wants_the_docs_and_config_too(question: str, asks: bool) -> None:
    assert asks_how_to(question) is asks
    assert ({"doc", "config"} <= wanted_roles(question)) is asks


def _hit(path: str, score: float, symbol: str | None = None, text: str = "x") -> CodeHit:
    return CodeHit(
        repo="r", path=path, line_start=1, line_end=5, symbol=symbol, language="python", score=score,
        commit_sha="s" * 40, web_url=None, text=text, kind="function",
    )  # fmt: skip


def _order(hits: list[CodeHit], question: str, *, by_role: bool = True) -> list[CodeHit]:
    """The answerer's ordering, with the names it takes from the question."""
    return explanation_order(hits, question, definition_names(question), by_role=by_role)


def test_an_explanation_reads_source_files_before_tests_and_docs_unless_asked() -> None:
    hits = [
        _hit("tests/test_auth.py", 0.9),
        _hit("README.md", 0.8),
        _hit("auth.py", 0.7),
        _hit("ledger.py", 0.6),
    ]
    ordered = [h.path for h in _order(hits, "How is a refund authorized?")]
    assert ordered == ["auth.py", "ledger.py", "tests/test_auth.py", "README.md"]
    asked = [h.path for h in _order(hits, "How is refund authorization tested?")]
    assert asked == ["tests/test_auth.py", "auth.py", "ledger.py", "README.md"]


def test_an_explanation_reads_the_definitions_the_question_names_first_in_any_file() -> None:
    hits = [
        _hit("core/variable.py", 0.9, "Variable.copy"),
        _hit("core/indexing.py", 0.8, "VectorizedIndexer"),
        _hit("tests/test_variable.py", 0.7, "VariableSubclassobjects._assertIndexedLikeNDArray"),
        _hit("core/variable.py", 0.6, "Variable._getitem_with_mask"),
        _hit("tests/test_indexing.py", 0.5, "test_getitem_with_mask"),
    ]
    question = (
        "What does expected_dtype do in _assertIndexedLikeNDArray, and how does _getitem_with_mask mask?"
    )
    ordered = [(h.path, h.symbol) for h in _order(hits, question)]
    assert ordered == [
        ("tests/test_variable.py", "VariableSubclassobjects._assertIndexedLikeNDArray"),
        ("core/variable.py", "Variable._getitem_with_mask"),
        ("core/variable.py", "Variable.copy"),
        ("core/indexing.py", "VectorizedIndexer"),
        ("tests/test_indexing.py", "test_getitem_with_mask"),  # a use, not the definition
    ]
    # A method defined inside a class chunked whole is found in the chunk's code.
    lru = _hit(
        "backends/lru_cache.py", 0.1, "LRUCache", "class LRUCache:\n    def _enforce_size_limit(self, n):\n"
    )
    caller = _hit("backends/file_manager.py", 0.9, "CachingFileManager", "self._cache._enforce_size_limit(3)")
    ordered = _order([caller, lru], "When does _enforce_size_limit evict?")
    assert [h.path for h in ordered] == ["backends/lru_cache.py", "backends/file_manager.py"]
    # Without the role rule (prefer_source_files: false) definitions still come first.
    test_first = [_hit("tests/test_lru.py", 0.9), caller, lru]
    ordered = _order(test_first, "When does _enforce_size_limit evict?", by_role=False)
    assert [h.path for h in ordered] == [
        "backends/lru_cache.py",
        "tests/test_lru.py",
        "backends/file_manager.py",
    ]
    # A dotted name's method counts only beside its class: any `def update` is not `Dataset.update`.
    assert defines_in("class Dataset:\n    def update(self, other): ...", {"dataset.update"})
    assert not defines_in("def update(self, other): ...", {"dataset.update"})
    # The methods of a class the question names are part of its definition.
    method = _hit("core/indexing.py", 0.1, "DaskIndexingAdapter.__getitem__")
    ordered = _order([caller, method], "Where does DaskIndexingAdapter call map_blocks?")
    assert [h.path for h in ordered] == ["core/indexing.py", "backends/file_manager.py"]


def test_a_follow_up_is_one_question_that_names_the_question_it_follows() -> None:
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "When is a refund authorized?"},
        {"role": "assistant", "content": "Managers may [1].\n\nSources:\n[1] https://x/a.py#L1-L5"},
        {"role": "user", "content": ""},
    ]
    previous = previous_question(history, limit=4)
    assert previous == "When is a refund authorized?"
    assert (
        retrieval_query("Where is it tested?", previous)
        == "Where is it tested?\nWhen is a refund authorized?"
    )
    asked = condensed_question("Where is it tested?", previous)
    assert asked == "When is a refund authorized? Where is it tested?"
    # The model reads one question, as for any other: no earlier answer, whose markers name
    # another question's sources (given back without them, it taught the model not to cite).
    messages = PACKAGED_PROMPT.render("[1] a.py", asked)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"].endswith(asked) and "Managers may" not in str(messages)
    # Only the last `limit` messages count; none: every question stands alone.
    assert previous_question(history, limit=1) is None
    assert previous_question(history, limit=0) is None
    assert condensed_question("Where is it tested?", None) == "Where is it tested?"


def _block(path: str) -> ContextBlock:
    return ContextBlock(
        n=1, repo="r", path=path, line_start=1, line_end=5, commit_sha="s" * 40, web_url=None,
        language="python", symbol=None, text="x",
    )  # fmt: skip


def test_a_context_of_tests_only_is_no_implementation_to_explain() -> None:
    # "the payments service" exists only as a test fixture: that is not its implementation.
    fixtures = [_block("tests/test_answering.py"), _block("cia_assets_tests/conftest.py")]
    assert only_tests_or_vendored(fixtures, "How is authorization implemented in the payments service?")
    assert not only_tests_or_vendored(fixtures, "How is the payments service tested?")
    assert not only_tests_or_vendored([*fixtures, _block("payments/auth.py")], "How is authorization done?")
    assert only_tests_or_vendored([_block("requests/packages/urllib3/util.py")], "How are retries done?")
    assert not only_tests_or_vendored([_block("README.md")], "How do I configure it?")  # docs answer that
