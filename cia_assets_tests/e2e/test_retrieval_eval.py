"""The retrieval harness and the query handling it measures, on real repos, the packaged
embedding model and the embedded vector store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core.project import Project
from cia_assets.lib.evaluation.retrieval import (
    RepoSource,
    RetrievalCase,
    RetrievalEvalError,
    RetrievalHarness,
    first_gold_rank,
    is_test_path,
    load_cases,
    mine_commit_cases,
    score,
)
from cia_assets.lib.retrieval.query_plan import QueryPlan, RepoPaths, path_mentions
from cia_assets.lib.retrieval.search import (
    CodeHit,
    FileHit,
    SearchOptions,
    rank_files,
    search_code,
    search_files,
)
from cia_assets.lib.sources.git_sync import RepoMirror
from cia_assets_tests.support.repos import GitRepo

TRACEBACK_REPORT = """URLField throws ValueError instead of ValidationError on clean
forms.URLField( ).clean('////]@N.AN') results in:
    Traceback (most recent call last):
     File "basic_fuzzer.py", line 22, in TestOneInput
     File "/usr/lib/python3/site-packages/django/forms/fields.py", line 151, in clean
     File "django/core/validators.py", line 130, in __call__
Maybe astropy.modeling.separable is also involved, see utils.py and np.array.
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            TRACEBACK_REPORT,
            [
                "basic_fuzzer.py",
                "usr/lib/python3/site-packages/django/forms/fields.py",
                "django/core/validators.py",
                "astropy/modeling/separable",
                "utils.py",
                "np/array",
            ],
        ),
        ("How is a refund authorized?", []),
        ("see src/app/main.ts and the `app.config` module", ["src/app/main.ts", "app/config"]),
        # A bare snake_case word may be a module's name; a call, a path's part or a dotted
        # name's part is not one on its own.
        (
            "How does lora_cpu call load_gguf_model() on xarray.core.duck_array_ops or a/b_c.py?",
            ["lora_cpu", "xarray/core/duck_array_ops", "a/b_c.py"],
        ),
    ],
)
def test_path_mentions(text: str, expected: list[str]) -> None:
    assert list(path_mentions(text)) == expected


def test_mentions_match_repo_files_by_suffix() -> None:
    files = [
        "django/forms/fields.py",
        "django/db/models/fields/__init__.py",
        "django/core/validators.py",
        "astropy/modeling/separable.py",
        "a/utils.py",
        "b/utils.py",
        "c/utils.py",
        "d/utils.py",
    ]
    paths = RepoPaths(files)
    assert paths.named_by(path_mentions(TRACEBACK_REPORT)) == [
        "django/forms/fields.py",
        "django/core/validators.py",
        "astropy/modeling/separable.py",
        # utils.py names four files: too vague to trust; np/array and the user's own
        # basic_fuzzer.py name none.
    ]
    assert paths.named_by(["db/models/fields"]) == ["django/db/models/fields/__init__.py"]
    assert paths.named_by(["fields"]) == []  # one segment, no extension: too vague
    # ... unless snake_case: a module of that name (not a folder, not a function's name)
    modules = RepoPaths(["cia/lib/lora_cpu.py", "cia/file_roles/__init__.py", "cia/sub_pkg/x.py"])
    assert modules.named_by(["lora_cpu", "file_roles", "sub_pkg", "load_gguf_model"]) == [
        "cia/lib/lora_cpu.py",
        "cia/file_roles/__init__.py",
    ]
    assert paths.named_by(["ascii.rst"]) == []  # no such file, and no ascii/rst module here
    assert RepoPaths(["astropy/io/ascii/rst.py"]).named_by(["ascii.rst"]) == ["astropy/io/ascii/rst.py"]


def test_repeated_query_words_weigh_more_and_definitions_are_named() -> None:
    import math

    from cia_assets.lib.indexing import lexical

    weighted = lexical.encode_query("rst header rst rst", repeated_terms_count=True)
    weights = dict(zip(weighted.indices, weighted.values, strict=True))
    assert weights[lexical.token_index("rst")] == pytest.approx(1 + math.log(3))
    assert weights[lexical.token_index("header")] == 1.0
    assert set(lexical.encode_query("rst header rst").values) == {1.0}
    plan = QueryPlan.of("TypeError: RST.__init__() got header_rows; see separability_matrix")
    assert {"rst.__init__", "header_rows", "separability_matrix", "typeerror"} <= set(plan.identifiers)


def test_scores_and_ranks() -> None:
    assert first_gold_rank(["a.py", "a.py", "b.py", "c.py"], ["c.py", "x.py"]) == 3
    assert first_gold_rank(["a.py"], ["c.py"]) is None
    s = score([1, 3, None, 12])
    assert s.acc == {1: 0.25, 5: 0.5, 10: 0.5}
    assert s.mrr == round((1 + 1 / 3 + 1 / 12) / 4, 4)
    assert is_test_path("pkg/tests/test_x.py") and is_test_path("test_x.py") and is_test_path("x/conftest.py")
    assert not is_test_path("pkg/testing_utils.py") and not is_test_path("pkg/contest.py")


def test_bad_case_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text('{"instance_id": "a", "repo": "o/r", "base_commit": "abc", "problem_statement": "x"}\n')
    with pytest.raises(RetrievalEvalError, match=r"cases.jsonl:1: not a retrieval case"):
        load_cases(path)
    path.write_text("{not json\n")
    with pytest.raises(RetrievalEvalError, match=r"cases.jsonl:1: not JSON"):
        load_cases(path)


PAYMENTS_V1: dict[str, str | bytes | None] = {
    "payments/auth.py": (
        "def check_permission(user, action):\n"
        '    """Return True when the user may perform the action."""\n'
        "    return user.role == 'admin' or action in user.grants\n"
    ),
    "payments/ledger.py": (
        "class Ledger:\n"
        '    """Balances of every account."""\n'
        "\n"
        "    def transfer(self, source, target, amount):\n"
        "        self.balances[source] -= amount\n"
        "        self.balances[target] += amount\n"
    ),
    "payments/refunds.py": (
        "REFUND_DEADLINE_DAYS = 30\n"
        "\n"
        "def refund_allowed(order, today):\n"
        '    """A refund is allowed within the deadline after delivery."""\n'
        "    return (today - order.delivered_on).days <= REFUND_DEADLINE_DAYS\n"
    ),
    "tests/test_refunds.py": "def test_refund_allowed():\n    assert refund_allowed\n",
    "README.md": "# Payments\n",
}


def _history(make_repo: Callable[..., GitRepo]) -> tuple[GitRepo, list[str]]:
    repo = make_repo("payments", PAYMENTS_V1)
    first = repo.git("rev-parse", "HEAD")
    second = repo.commit(
        {
            "payments/refunds.py": PAYMENTS_V1["payments/refunds.py"].replace("30", "14")  # type: ignore[union-attr]
            + "\n\ndef refund_amount(order):\n    return order.total - order.fee\n",
            "tests/test_refunds.py": "def test_refund_amount():\n    assert refund_amount\n",
        },
        "Shorten the refund deadline to two weeks and compute partial refund amounts",
    )
    third = repo.commit(
        {"payments/ledger.py": PAYMENTS_V1["payments/ledger.py"] + "\n    def close(self):\n        pass\n"},  # type: ignore[operator]
        "typo",
    )
    fourth = repo.commit(
        {
            "payments/auth.py": PAYMENTS_V1["payments/auth.py"]
            + "\n\ndef is_admin(user):\n    return user.role == 'admin'\n"
        },  # type: ignore[operator]
        "Let administrators bypass the permission check for every payment action\n\nSigned-off-by: A <a@b>",
    )
    return repo, [first, second, third, fourth]


def test_cases_are_mined_from_history(make_repo: Callable[..., GitRepo], tmp_path: Path) -> None:
    repo, commits = _history(make_repo)
    mirror = RepoMirror(tmp_path / "mirror.git", repo.url, "main")
    head = mirror.sync()
    cases = mine_commit_cases(mirror, head, repo="payments", exclude=("*.md",))
    mirror.close()
    # Newest first; the "typo" commit is not descriptive; test files are never gold; the
    # initial commit added files, so there was nothing to find before it.
    assert [(c.base_commit, c.gold_files) for c in cases] == [
        (commits[2], ("payments/auth.py",)),
        (commits[0], ("payments/refunds.py",)),
    ]
    assert cases[0].query == "Let administrators bypass the permission check for every payment action"
    assert cases[0].case_id == f"payments@{commits[3][:12]}"
    assert json.loads(json.dumps(cases[1].to_json()))["gold_files"] == ["payments/refunds.py"]


def test_harness_steps_a_repo_through_its_cases_and_scores_every_retriever(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., object], tmp_path: Path
) -> None:
    repo, commits = _history(make_repo)
    live = write_config([{"url": repo.url, "id": "live"}])
    source = RepoSource(
        repo="acme/payments", url=str(repo.path), branch="main", include=("*.py",), exclude=("tests/*",)
    )
    cases = [
        # Listed newest first: the harness must still index in commit order.
        RetrievalCase(
            "admins",
            "acme/payments",
            commits[2],
            "Let administrators bypass the permission check",
            ("payments/auth.py",),
        ),
        RetrievalCase(
            "deadline",
            "acme/payments",
            commits[0],
            "how many days after delivery can a customer get a refund",
            ("payments/refunds.py",),
        ),
        RetrievalCase(
            "traceback",
            "acme/payments",
            commits[1],
            'Crash:\n  File "/srv/app/payments/ledger.py", line 5, in transfer\nKeyError: balances',
            ("payments/ledger.py",),
        ),
    ]
    retrievers = {
        "chunks": SearchOptions(query_tf=False, mentions=False, definitions=False, file_lexical=False),
        "default": SearchOptions(),
    }
    report = RetrievalHarness(live, tmp_path / "eval").run(cases, {"acme/payments": source}, retrievers)  # type: ignore[arg-type]

    assert [r.case_id for r in report.results] == ["deadline", "traceback", "admins"]
    ranks = {result.case_id: result.ranks for result in report.results}
    assert ranks["traceback"]["default"] == 1  # the file the traceback names
    for result in report.results:
        assert set(result.ranks) == {"chunks", "default", "bm25"}
        assert all(rank is not None and rank <= 2 for rank in result.ranks.values()), result
        assert all("tests/" not in path for path in result.top_files["default"])
    scores = report.scores()
    assert scores["default"]["acme/payments"].cases == 3 and scores["default"]["all"].acc[5] == 1.0
    assert scores["default"]["all"].mrr == round(sum(1 / r["default"] for r in ranks.values()) / 3, 4)
    # The third commit changed one of three files: only it was chunked again.
    assert report.index["acme/payments"]["reused_files"] == 2
    assert report.index["acme/payments"]["chunked_files"] == 1
    timings = report.timing_summary()
    assert {"chunk", "embed", "collection_update", "search[default]", "bm25_build", "bm25_query"} <= set(
        timings
    )
    summary = report.to_json()
    assert summary["scores"]["bm25"]["all"]["cases"] == 3

    # The live index was never touched: its data dir holds no index of the harness's repo.
    assert not (live.data_dir / "index").exists()  # type: ignore[attr-defined]


def test_harness_skips_a_commit_the_branch_does_not_have(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., object], tmp_path: Path
) -> None:
    repo, commits = _history(make_repo)
    live = write_config([{"url": repo.url, "id": "live"}])
    source = RepoSource(repo="acme/payments", url=str(repo.path), branch="main")
    bad = RetrievalCase("bad", "acme/payments", "0" * 40, "anything at all", ("payments/auth.py",))
    harness = RetrievalHarness(live, tmp_path / "eval")  # type: ignore[arg-type]
    good = RetrievalCase("good", "acme/payments", commits[0], "refund deadline", ("payments/refunds.py",))
    report = harness.run([bad, good], {"acme/payments": source}, {"default": SearchOptions()})
    assert [r.case_id for r in report.results] == ["good"]
    assert report.skipped == {"bad": f"base_commit {'0' * 40} is not on branch 'main' of {repo.path}"}
    assert report.to_json()["skipped"] == report.skipped
    with pytest.raises(RetrievalEvalError, match="no source given for repo"):
        harness.run([bad], {}, {"default": SearchOptions()})


def test_named_files_are_searched_and_files_aggregate_their_chunks(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., object],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    import dagster as dg

    from cia_assets_tests.support.materialize import materialize_repo

    repo = make_repo("payments", PAYMENTS_V1)
    config = write_config([{"url": repo.url, "id": "payments"}])
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments")  # type: ignore[arg-type]
    question = 'Traceback:\n  File "/opt/venv/payments/ledger.py", line 5, in transfer\nwhy does it fail?'
    plain = search_files(project_of(config), question, options=SearchOptions(mentions=False))  # type: ignore[arg-type]
    named = search_files(project_of(config), question)  # type: ignore[arg-type]
    assert named[0].path == "payments/ledger.py"
    assert named[0].score > next(f.score for f in plain if f.path == "payments/ledger.py")
    assert search_code(project_of(config), question, k=1)[0].path == "payments/ledger.py"  # type: ignore[arg-type]

    hits = search_code(project_of(config), "refund deadline days", k=5)  # type: ignore[arg-type]
    files = rank_files(hits)
    assert len({f.path for f in files}) == len(files)
    assert [f.score for f in files] == sorted((f.score for f in files), reverse=True)
    assert all(f.score == f.chunks[0].score == max(c.score for c in f.chunks) for f in files)
    assert sum(len(f.chunks) for f in files) == len(hits)

    def scores(question: str, **switches: bool | float) -> dict[tuple[str, str | None], float]:
        found = search_code(project_of(config), question, k=20, options=SearchOptions(**switches))  # type: ignore[arg-type]
        return {(hit.path, hit.symbol): hit.score for hit in found}

    # The chunk defining the named function gains a list; a test that merely calls it does not.
    question = "refund_allowed says no although the order was delivered yesterday"
    with_definitions, without = scores(question), scores(question, definitions=False)
    defining = ("payments/refunds.py", "refund_allowed")
    caller = ("tests/test_refunds.py", "test_refund_allowed")
    assert with_definitions[defining] > without[defining]
    assert with_definitions[caller] == without[caller]
    # The answering context also fetches the chunk by the symbol the question spells.
    fetched = scores(question, fetch_definitions=True)
    assert fetched[defining] > with_definitions[defining]
    assert fetched[caller] == with_definitions[caller]

    # The file holding most of the question's words gains a list, through one of its chunks.
    question = "refund deadline days delivered order today"
    with_mass, without = scores(question), scores(question, file_lexical=False)
    gains = {key: score - without.get(key, 0.0) for key, score in with_mass.items()}
    assert max(gains, key=lambda key: gains[key])[0] == "payments/refunds.py"
    assert len([key for key, gain in gains.items() if gain > 0 and key[0] == "payments/refunds.py"]) == 1

    # The file-role prior: the code gains a list over a test that shares the words, whatever
    # the question says; with roles_from_question, the test gains one when it is asked about.
    question = "where is refund_allowed tested"
    with_roles, without = scores(question), scores(question, role_weight=0.0)
    assert with_roles[defining] > without[defining]
    assert with_roles[caller] == without[caller]
    asked = scores(question, roles_from_question=True)
    assert asked[caller] > without[caller] and asked[defining] > without[defining]
    readme = next(key for key in without if key[0] == "README.md")
    assert asked[readme] == with_roles[readme] == without[readme]


# Source files that all speak of the refund deadline, and the one test of it: the search's
# source prior ranks every one of them above the test.
REFUND_SOURCES = {
    f"payments/refund_{topic}.py": (
        f"def {topic}_refund_deadline(order, today):\n"
        f'    """{doc}"""\n'
        f"    return (today - order.delivered_on).days\n"
    )
    for topic, doc in {
        "notices": "Tell the customer how many days are left before the refund deadline.",
        "reports": "List the orders whose refund deadline passed today.",
        "policy": "Extend the refund deadline of an order by some days.",
        "queue": "Order the refund queue by the deadline of each refund.",
        "audit": "Record who changed a refund deadline and when.",
        "emails": "Remind the customer of the refund deadline by email.",
        "export": "Export each refund with its deadline for accounting.",
        "limits": "Check the refund deadline before a refund is queued.",
        "metrics": "Count refunds requested after the deadline.",
    }.items()
}
REFUND_TEST = {
    "tests/test_refund_deadline.py": (
        "def test_the_refund_deadline_is_thirty_days_after_delivery():\n"
        "    assert refund_allowed(order_delivered(days_ago=30), today())\n"
        "    assert not refund_allowed(order_delivered(days_ago=31), today())\n"
    )
}


REFUND_DOCS: dict[str, str | bytes | None] = {
    "README.md": (
        "# Payments\n\n"
        "## Changing the refund deadline\n\n"
        "The refund deadline is 30 days after delivery. To change it, set `refund_deadline_days`\n"
        "in `payments.yaml` and restart the service.\n"
    ),
    "payments.yaml": "# Days after delivery until the refund deadline.\nrefund_deadline_days: 30\n",
}


def test_an_answer_reads_the_tests_or_docs_a_question_asks_for(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig]
) -> None:
    """The answering path's search follows the roles a question asks for: the refund
    deadline's test for a question about its tests, the README and the config file for one
    about changing the deadline, code for one about how it works. (The search's own default,
    the source prior, ranked the test, the README and the config below every source file that
    shares their words, out of the answer's context.) Worded unlike the questions it holds:
    this repository indexes its tests, and the 0.5B cites a block that echoes a question."""
    import dagster as dg

    from cia_assets.lib.answering.answer import AnswerSources, AskRequest
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.core.access import Grant
    from cia_assets_tests.support.materialize import materialize_repo

    repo = make_repo("payments", {**REFUND_SOURCES, **REFUND_TEST, **REFUND_DOCS})
    config = write_config([{"url": repo.url, "id": "payments"}])
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments")  # type: ignore[arg-type]

    def sources(question: str) -> list[str]:
        # Only the sources event: it comes before any model is asked, so none is needed.
        answerer = Answerer(config)
        events = answerer.stream(AskRequest(question=question, grant=Grant(name="all", repos=("payments",))))
        try:
            first = next(events)
        finally:
            events.close()
            answerer.close()
        assert isinstance(first, AnswerSources)
        return [source.path for source in first.sources]

    assert "tests/test_refund_deadline.py" in sources("Where is the refund deadline tested?")
    how_to = sources("How do I change the refund deadline?")
    assert {"README.md", "payments.yaml"} <= set(how_to), how_to
    explained = sources("How is the refund deadline computed?")
    assert explained and not {"tests/test_refund_deadline.py", "README.md"} & set(explained), explained


def test_file_role_prior_holds_when_repos_are_merged(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., object],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    import dagster as dg

    from cia_assets_tests.support.materialize import materialize_repo

    payments = make_repo("payments", PAYMENTS_V1)
    billing = make_repo(
        "billing",
        {
            "tests/test_refund_window.py": (
                "def test_refund_allowed_after_delivery():\n"
                "    # a refund is allowed within the deadline after delivery\n"
                "    assert refund_allowed(order, today)\n"
            ),
            "billing/invoice.py": "def invoice_total(lines):\n    return sum(x.amount for x in lines)\n",
        },
    )
    config = write_config([{"url": payments.url, "id": "payments"}, {"url": billing.url, "id": "billing"}])
    instance = dg.DagsterInstance.ephemeral()
    for repo_id in ("payments", "billing"):
        materialize_repo(config, instance, repo_id)  # type: ignore[arg-type]

    def scores(**switches: float) -> dict[str, float]:
        found = search_code(
            project_of(config),  # type: ignore[arg-type]
            "is a refund allowed after delivery",
            k=20,
            options=SearchOptions(**switches),  # type: ignore[arg-type]
        )
        assert {hit.repo for hit in found} == {"payments", "billing"}
        return {hit.path: hit.score for hit in found}

    with_roles, without = scores(), scores(role_weight=0.0)
    assert with_roles["payments/refunds.py"] > without["payments/refunds.py"]
    assert with_roles["tests/test_refund_window.py"] == without["tests/test_refund_window.py"]


def test_eval_retrieval_command_measures_a_configured_repo_on_its_own_history(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., object], tmp_path: Path
) -> None:
    from cia_assets_tests.support.cli import cia

    repo, commits = _history(make_repo)
    config = write_config([{"url": repo.url, "id": "payments", "exclude": ["*.md"]}])
    out = cia("eval-retrieval", "--config", str(config.config_path), "--json")  # type: ignore[attr-defined]
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [case["case_id"] for case in report["cases"]] == [
        f"payments@{commits[1][:12]}",
        f"payments@{commits[3][:12]}",
    ]
    assert set(report["scores"]) == {"cia", "bm25"}
    assert report["scores"]["cia"]["payments"]["cases"] == 2
    assert report["timings"]["search[cia]"]["calls"] == 2
    # The live data dir gained only the harness's own folder: no live index was made or moved.
    assert not (config.data_dir / "index").exists()  # type: ignore[attr-defined]
    assert (config.data_dir / "retrieval-eval" / "index" / "payments.json").exists()  # type: ignore[attr-defined]

    plain = cia("eval-retrieval", "--config", str(config.config_path))  # type: ignore[attr-defined]
    assert plain.returncode == 0, plain.stderr
    assert "cia   payments" in plain.stdout and "bm25  payments" in plain.stdout

    empty = make_repo("empty", {"a.py": "x = 1\n"})
    none = write_config([{"url": empty.url, "id": "empty"}])
    refused = cia("eval-retrieval", "--config", str(none.config_path))  # type: ignore[attr-defined]
    assert refused.returncode == 1 and "no descriptive commits" in refused.stderr


def test_harness_runs_against_the_server_backend_in_its_own_collections(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., object],
    tmp_path: Path,
    project_of: Callable[[CiaConfig], Project],
) -> None:

    repo, commits = _history(make_repo)
    # qdrant-client's in-memory engine stands in for a Qdrant server, as in the cluster tests.
    live = write_config(
        [{"url": repo.url, "id": "live"}], vector_store={"backend": "server", "url": ":memory:"}
    )
    source = RepoSource(repo="acme/payments", url=str(repo.path), branch="main", include=("*.py",))
    cases = [
        RetrievalCase(
            "deadline",
            "acme/payments",
            commits[0],
            "refund deadline after delivery",
            ("payments/refunds.py",),
        ),
        RetrievalCase(
            "admins",
            "acme/payments",
            commits[2],
            "administrators bypass the permission check",
            ("payments/auth.py",),
        ),
    ]
    harness = RetrievalHarness(live, tmp_path / "eval")  # type: ignore[arg-type]
    report = harness.run(cases, {"acme/payments": source}, {"default": SearchOptions()})
    assert [r.ranks["default"] for r in report.results] == [1, 1]
    store = project_of(harness.config_for([source])).store
    assert store.resolve_alias("cia-eval-acme__payments") is not None
    assert store.resolve_alias("cia-live") is None  # the live prefix was never written


def test_history_benchmark_asset_reports_per_repo_and_to_mlflow(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., object]
) -> None:
    import dagster as dg

    from cia_assets.defs.evaluation.assets import retrieval_history_benchmark
    from cia_assets.defs.resources import build_resources
    from cia_assets.lib.learning.registry import AdapterRegistry
    from cia_assets_tests.support.materialize import materialize_repo

    repo, _ = _history(make_repo)
    config = write_config([{"url": repo.url, "id": "payments"}], evaluation={"history_cases": 5})
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")  # type: ignore[arg-type]
    result = dg.materialize(
        [retrieval_history_benchmark],
        instance=instance,
        resources=build_resources(str(config.config_path)),  # type: ignore[attr-defined]
    )
    metadata = {
        k: v.value
        for k, v in result.asset_materializations_for_node("retrieval_history_benchmark")[0].metadata.items()
    }
    assert metadata["cases"] == 2 and metadata["skipped"] == 0  # "typo" is not descriptive
    assert metadata["cia/payments/acc@5"] == 1.0
    assert {"bm25/payments/acc@1", "cia/all/mrr", "bm25/all/mrr"} <= set(metadata)
    registry = AdapterRegistry(config)  # type: ignore[arg-type]
    run = registry.client.get_run(str(metadata["mlflow_run_id"]))
    assert run.data.metrics["history_cia_payments_acc_at_5"] == 1.0


def test_the_code_graph_lifts_the_code_that_the_best_files_use(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., object],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    import dagster as dg

    from cia_assets_tests.support.materialize import materialize_repo

    repo = make_repo(
        "billing",
        {
            # The report's words are all in the test; the code it exercises shares none of them.
            "tests/test_invoice.py": (
                "from billing.money import quantize_cents\n\n"
                "def test_invoice_totals_round_half_to_even():\n"
                "    # invoice totals round half to even\n"
                "    assert quantize_cents(2.675) == 2.68\n"
            ),
            "billing/money.py": "def quantize_cents(value):\n    return int(value * 100) / 100\n",
            "billing/customers.py": "class Customer:\n    def __init__(self, name):\n        self.n = name\n",
            "billing/pdf.py": "def render_invoice_page(invoice):\n    return invoice.title\n",
        },
    )
    config = write_config([{"url": repo.url, "id": "billing"}])
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "billing")  # type: ignore[arg-type]
    question = "invoice totals do not round half to even"

    def scores(graph_weight: float) -> dict[str, float]:
        options = SearchOptions(graph_weight=graph_weight, role_weight=0.0)
        found = search_files(project_of(config), question, options=options)  # type: ignore[arg-type]
        return {hit.path: hit.score for hit in found}

    with_graph, without = scores(1.0), scores(0.0)
    gains = {path: with_graph[path] - without.get(path, 0.0) for path in with_graph}
    # PageRank from the best files flows along the test's import and call to `quantize_cents`,
    # and to no file that nothing there uses.
    assert gains["billing/money.py"] > 0
    assert gains["billing/money.py"] > gains.get("billing/customers.py", 0.0)
    assert with_graph["billing/money.py"] > with_graph["billing/customers.py"]


def test_the_llm_reranker_reorders_the_first_files_by_its_yes_likelihood(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    import dagster as dg

    from cia_assets.lib.answering.answer import AnswerSources, AskRequest
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.core.access import owner_grant
    from cia_assets_tests.support.fakes import fake_openai
    from cia_assets_tests.support.materialize import materialize_repo

    repo = make_repo("payments", PAYMENTS_V1)
    question = "refund deadline days after delivery"

    def judge(request: dict[str, object]) -> str:
        prompt = str(request["messages"][-1]["content"])  # type: ignore[index]
        return "yes" if 'path="payments/ledger.py"' in prompt else "no"

    with fake_openai(judge, model="judge") as endpoint:
        reranker = {"base_url": endpoint.base_url, "model": "judge", "files": 5, "weight": 3.0}
        config = write_config([{"url": repo.url, "id": "payments"}], retrieval={"reranker": reranker})
        materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments")
        project = project_of(config)
        plain = [f.path for f in search_files(project, question, options=SearchOptions(rerank=False))]
        assert endpoint.requests == []
        assert plain[0] == "payments/refunds.py" and plain.index("payments/ledger.py") > 0
        reranked = search_files(project, question)
        judged_requests = list(endpoint.requests)
        # An answer's context follows the judge too: its sources come in the judged file order.
        answerer = Answerer(config, project=project)
        events = answerer.stream(AskRequest(question=question, grant=owner_grant(config)))
        first = next(events)
        assert isinstance(first, AnswerSources) and first.sources[0].path == "payments/ledger.py"
        events.close()
        answerer.close()
    # A judge that does not answer (the endpoint is gone) leaves the search's own order.
    assert [f.path for f in search_files(project, question)] == plain
    # Each of the first five files was judged once, the request before the file (a server that
    # caches prompt prefixes reads the request once), with one token's log-probabilities asked,
    # streamed (llama-cpp-python computes every prompt token's log-probabilities otherwise).
    judged = [str(r["messages"][-1]["content"]) for r in judged_requests]  # type: ignore[index]
    assert len(judged) == min(5, len(plain))
    assert all(text.startswith(f"<request>\n{question}\n</request>") for text in judged)
    asked = [(r["max_tokens"], r["logprobs"], r["stream"]) for r in judged_requests]
    assert asked == [(1, True, True)] * len(judged_requests)
    # The file the judge said yes to moves up; the rest keep the search's order.
    paths = [f.path for f in reranked]
    assert paths[0] == "payments/ledger.py"
    assert [p for p in paths if p != "payments/ledger.py"] == [p for p in plain if p != "payments/ledger.py"]
    assert [f.score for f in reranked] == sorted((f.score for f in reranked), reverse=True)


def test_the_reranker_reads_yes_and_no_from_a_real_llama_cpp_server(
    write_config: Callable[..., CiaConfig],
) -> None:
    import openai

    from cia_assets.lib.retrieval.rerank import LlmReranker
    from cia_assets.lib.serving.llm_server import start_llama_server, stop_process

    config = write_config([])
    files = [_file_hit(path, str(text)) for path, text in PAYMENTS_V1.items() if path.endswith(".py")]
    server = start_llama_server(config, log_dir=config.data_dir / "logs")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        judgements = LlmReranker(client, config.llm.model).judge("refund deadline", files)
    finally:
        stop_process(server.pid)
    assert [j.path for j in judgements] == [f.path for f in files]
    assert all(0.0 <= j.yes <= 1.0 for j in judgements)
    # The server's log-probabilities were read: "yes" or "no" was among its first candidates.
    assert any(j.yes != 0.5 for j in judgements)


def _file_hit(path: str, text: str) -> FileHit:
    """A file found by search, represented by one chunk: the whole `text`."""
    chunk = CodeHit(
        repo="payments",
        path=path,
        line_start=1,
        line_end=text.count("\n") or 1,
        symbol=None,
        language="python",
        score=1.0,
        web_url=None,
        kind="module",
        commit_sha="0" * 40,
        text=text,
    )
    return FileHit("payments", path, 1.0, (chunk,))


def test_a_name_in_a_reports_title_lifts_the_file_that_defines_it(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., object],
    project_of: Callable[[CiaConfig], Project],
) -> None:
    import dagster as dg

    from cia_assets_tests.support.materialize import materialize_repo

    repo = make_repo(
        "algebra",
        {
            # The title names `Derivative`; the report's other words are all in kinds.py.
            "algebra/function.py": (
                "class Derivative:\n    def __init__(self, expr, *variables):\n"
                "        self.expr, self.variables = expr, variables\n"
            ),
            "algebra/kinds.py": (
                "# The kind attribute of an expression: a matrix kind, a number kind or the\n"
                "# undefined kind, when the kind of a matrix symbol is not known.\n"
                "def kind_of(expression):\n    return getattr(expression, 'kind', 'undefined kind')\n"
            ),
            "algebra/matrices.py": "class MatrixSymbol:\n    kind = 'matrix kind'\n",
            "algebra/printing.py": "def print_kind(kind):\n    return f'kind: {kind}'\n",
        },
    )
    config = write_config([{"url": repo.url, "id": "algebra"}])
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "algebra")  # type: ignore[arg-type]
    report = (
        "Wrong Derivative kind attribute\n\n"
        "The kind attribute of a matrix symbol is the matrix kind, but the kind of its "
        "derivative is the undefined kind."
    )

    def ranked(title_weight: float) -> list[str]:
        options = SearchOptions(title_weight=title_weight)
        return [hit.path for hit in search_files(project_of(config), report, options=options)]  # type: ignore[arg-type]

    without, with_title = ranked(0.0), ranked(1.0)
    assert without.index("algebra/function.py") > 0
    assert with_title.index("algebra/function.py") < without.index("algebra/function.py")
