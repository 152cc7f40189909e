"""The answer harness (`cia eval-answers`): its metrics on hand-made answers, its question
sets and their errors, and one run through the real path (a temp repo indexed at its commit,
the packaged SmolLM2 served by llama.cpp, answers streamed by `Answerer.stream`)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cia_assets.config import CONFIG_ENV_VAR, CiaConfig
from cia_assets.lib.answering.answer import Answer, AnswerDelta, AnswerError, AnswerSources
from cia_assets.lib.answering.citations import Citation
from cia_assets.lib.evaluation.answers import (
    LATENCIES,
    AnswerCase,
    AnswerEvalError,
    AnswerReport,
    CaseRow,
    accepted_forms,
    ask_case,
    cites_reference,
    explanation_text,
    identifier_recall,
    load_answer_cases,
    load_sets,
    names_identifier,
    normalize_path,
    parse_repo_dirs,
    path_matches,
    percentile,
    reference_identifiers,
    score_answer,
    select_cases,
    summarize,
)
from cia_assets.lib.indexing.file_roles import asks_how_to
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import GitRepo

SETS = Path(__file__).parents[1] / "bench" / "answer_sets"
REPO_ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = {
    "questions", "real", "absent", "errors", "cite_hit", "cite_hit_cases", "ref_identifier_recall",
    "recall_cases", "grounded_rate", "grounding_checked", "ungrounded", "abstention",
    "false_abstention", "answered_rate", "words", "faithfulness", "answer_relevancy",
    *(f"{name}_{p}" for name in LATENCIES for p in ("p50", "p95")),
}  # fmt: skip


def _citation(path: str, n: int = 1) -> Citation:
    return Citation(n=n, repo="r", path=path, line_start=1, line_end=5, url=None, commit_sha="c" * 40)


def _answer(
    text: str,
    paths: tuple[str, ...] = (),
    *,
    not_found: bool = False,
    ungrounded: list[str] | None = None,
    checked: int | None = None,
    note: str = "",
) -> Answer:
    citations = [_citation(path, n) for n, path in enumerate(paths, start=1)]
    sources = "Sources:\n" + "\n".join(f"[{c.n}] r:{c.path}#L1-L5" for c in citations)
    body = text if not_found else f"{text}\n\n{note + chr(10) + chr(10) if note else ''}{sources}"
    extra: dict[str, Any] = {}
    if checked is not None:
        extra = {"ungrounded": ungrounded or [], "grounding_checked": checked, "grounding_note": note}
    return Answer(
        answer=body, citations=citations, model="m", trace_id="t" * 32, not_found=not_found,
        contexts=["def f(): pass"], **extra,
    )  # fmt: skip


def _case(
    case_id: str = "c1", *, absent: bool = False, reference: str = "", files: tuple[str, ...] = ()
) -> AnswerCase:
    return AnswerCase(
        case_id=case_id, repo="acme/pay", commit=None, question="q?",
        reference="" if absent else reference, reference_files=() if absent else files, absent=absent,
    )  # fmt: skip


def _row(case_id: str, *, absent: bool = False, **values: Any) -> CaseRow:
    return CaseRow(
        case_id=case_id, repo=values.pop("repo", "acme/pay"), commit="c" * 40, model="m", absent=absent,
        question="q?", reference_files=[], **values,
    )  # fmt: skip


# --- identifiers of a reference and their recall ---------------------------------------------


def test_reference_identifiers_keep_code_names_and_drop_words_paths_and_snippets() -> None:
    reference = (
        "`LeapSeconds.auto_open()` (lines 1197-1198 in `iers.py`) compares `self.expires` with "
        "`good_enough`; `TestDefaultAutoOpen.setup_method()` sets it up, `get_bbox(renderer)` and "
        "`@admin.display` and `.set_xlim()` too. Not identifiers: `content`, `shape`, `e`, `None`, "
        "`self`, `src/sqlfluff/core/linter.py`, `test_variable.py:148`, `if x > 1: break`, "
        "`reversible = False`, `False, {}`, `--dialect`, `$name`. Again `good_enough`, and `Linter`.\n"
        "```python\nnot_in_fence = `Hidden`\n```\n"
    )
    assert reference_identifiers(reference) == [
        "LeapSeconds.auto_open",
        "self.expires",
        "good_enough",
        "TestDefaultAutoOpen.setup_method",
        "get_bbox",
        "admin.display",
        "set_xlim",
        "Linter",
    ]
    assert reference_identifiers("no backticks at all") == []


def test_an_identifier_is_named_by_itself_or_its_last_dotted_part_case_sensitively() -> None:
    assert accepted_forms("Foo.bar") == ("Foo.bar", "bar")
    assert accepted_forms("good_enough") == ("good_enough",)
    assert names_identifier("it calls `bar()` first", "Foo.bar")
    assert names_identifier("see Foo.bar.", "Foo.bar")
    assert names_identifier("obj.bar is used", "Foo.bar")  # the last part, after another object
    assert not names_identifier("it calls Bar()", "Foo.bar")  # case-sensitive
    assert not names_identifier("foobar and bar_baz and bar2", "Foo.bar")  # not inside a longer name
    assert not names_identifier("the good enough value", "good_enough")
    recall, named = identifier_recall(
        "`auto_open` breaks once `expires` passes good_enough",
        ["LeapSeconds.auto_open", "good_enough", "Linter"],
    )
    assert (recall, named) == (0.6667, ["LeapSeconds.auto_open", "good_enough"])
    assert identifier_recall("anything", []) == (None, [])


# --- cited files against reference files ------------------------------------------------------


def test_reference_paths_are_normalized_and_matched_by_trailing_segments() -> None:
    assert normalize_path("./src/sqlfluff/cli/formatters.py") == "src/sqlfluff/cli/formatters.py"
    assert normalize_path("/workspace/conan/internal/api/uploader.py") == "conan/internal/api/uploader.py"
    assert (
        normalize_path("/src/sqlfluff/core/parser/grammar/sequence.py")
        == "src/sqlfluff/core/parser/grammar/sequence.py"
    )
    cited = "src/sqlfluff/core/parser/grammar/sequence.py"
    assert path_matches(cited, "./src/sqlfluff/core/parser/grammar/sequence.py")
    assert path_matches(cited, "sequence.py")  # SWE-QA names some files by their name only
    assert path_matches(cited, "grammar/sequence.py")
    assert path_matches(cited, "checkout/src/sqlfluff/core/parser/grammar/sequence.py")
    assert not path_matches(cited, "quence.py")  # a segment boundary, not any suffix
    assert not path_matches(cited, "src/sqlfluff/core/parser/sequence.py")
    assert not path_matches("sequence.py", "src/sqlfluff/core/parser/grammar/sequence.py")  # no folder
    assert not path_matches(cited, "")
    assert cites_reference([cited, "README.md"], ["dialect_ansi.py", "/grammar/sequence.py"]) is True
    assert cites_reference(["README.md"], ["dialect_ansi.py"]) is False
    assert cites_reference([], ["dialect_ansi.py"]) is False
    assert cites_reference([cited], []) is None  # nothing to hit: not counted


def test_the_explanation_is_the_answer_without_its_sources_list() -> None:
    text = "Sources: are listed below.\nIt works [1].\n\nSources:\n[1] r:a.py#L1-L5\n[2] https://x/b.py#L3\n"
    assert explanation_text(text) == "Sources: are listed below.\nIt works [1]."
    assert (
        explanation_text("No list here.\nSources:\nnot a source line")
        == "No list here.\nSources:\nnot a source line"
    )


# --- scoring one answer -----------------------------------------------------------------------


def test_score_answer_reads_citations_identifiers_words_and_grounding() -> None:
    case = _case(
        reference="`authorize_refund` checks `user.role` in `auth.py`.", files=("./payments/auth.py",)
    )
    answer = _answer(
        "According to [1], `authorize_refund` allows managers.",
        ("payments/auth.py", "payments/auth.py", "docs/x.md"),
        ungrounded=["role_of"],
        checked=3,
    )
    row = score_answer(
        case, answer, model="m", commit="c" * 40, sources_ms=5.0, first_token_ms=9.0, total_ms=20.0
    )
    assert row.cited_files == ["payments/auth.py", "docs/x.md"]
    assert row.cite_hit is True
    assert row.identifiers == ["authorize_refund", "user.role"]
    assert (row.recall, row.named) == (0.5, ["authorize_refund"])
    assert row.words == 6  # the explanation only, not the Sources list
    assert (row.sources_ms, row.first_token_ms, row.total_ms) == (5.0, 9.0, 20.0)
    assert "contexts" not in row.to_json() and row.to_json()["case_id"] == "c1"
    assert (row.ungrounded, row.grounding_checked) == (["role_of"], 3)

    # A "not found" answer names nothing (its text echoes the question) and cites nothing.
    lost = score_answer(
        case,
        _answer("Not found: no source answering “`authorize_refund`”", not_found=True),
        model="m",
        commit=None,
    )
    assert (lost.not_found, lost.cite_hit, lost.recall, lost.words) == (True, False, 0.0, 0)
    absent = score_answer(_case("a1", absent=True), _answer("x", not_found=True), model="m", commit=None)
    assert (absent.cite_hit, absent.recall, absent.identifiers) == (None, None, [])


def test_the_grounding_note_is_not_part_of_the_scored_explanation() -> None:
    case = _case(reference="`make_refund` and `authorize_refund`.", files=("auth.py",))
    note = "Not in the sources: `make_refund`."
    answer = _answer(
        "`authorize_refund` decides.", ("auth.py",), ungrounded=["make_refund"], checked=2, note=note
    )
    assert note in answer.answer
    row = score_answer(case, answer, model="m", commit=None)
    assert row.named == ["authorize_refund"] and row.words == 2


# --- summaries --------------------------------------------------------------------------------


def test_percentiles_interpolate_between_closest_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(v) for v in range(1, 11)], 95) == pytest.approx(9.55)
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)  # never beyond the largest value


def test_summary_accounts_abstention_hits_recall_grounding_and_latency() -> None:
    rows = [
        _row("r1", cite_hit=True, recall=1.0, words=10, total_ms=100.0, first_token_ms=40.0, sources_ms=10.0,
             ungrounded=["x"], grounding_checked=4),
        _row("r2", cite_hit=False, recall=0.5, words=30, total_ms=300.0, first_token_ms=60.0, sources_ms=20.0,
             ungrounded=[], grounding_checked=4),
        _row("r3", cite_hit=False, recall=0.0, not_found=True, total_ms=50.0, first_token_ms=50.0,
             sources_ms=30.0, ungrounded=[], grounding_checked=0),
        _row("r4", cite_hit=None, recall=None, words=20, total_ms=200.0, first_token_ms=80.0),  # no reference
        _row("a1", absent=True, not_found=True, total_ms=30.0, first_token_ms=30.0, sources_ms=5.0),
        _row("a2", absent=True, words=50, total_ms=400.0, first_token_ms=70.0, sources_ms=15.0),
        _row("e1", error="the endpoint failed", total_ms=1.0),
    ]  # fmt: skip
    summary = summarize(rows)
    assert set(summary) == METRIC_KEYS
    assert (summary["questions"], summary["real"], summary["absent"], summary["errors"]) == (7, 4, 2, 1)
    assert (summary["cite_hit"], summary["cite_hit_cases"]) == (0.3333, 3)
    assert (summary["ref_identifier_recall"], summary["recall_cases"]) == (0.5, 3)
    assert summary["abstention"] == 0.5  # a1 of a1, a2
    assert summary["false_abstention"] == 0.25  # r3 of r1..r4
    assert summary["answered_rate"] == 0.75
    assert (summary["grounded_rate"], summary["grounding_checked"], summary["ungrounded"]) == (0.875, 8, 1)
    assert summary["words"] == 27.5  # answered ones only: r1, r2, r4, a2
    assert summary["total_ms_p50"] == 150.0  # the errored question's time is not a latency
    assert summary["sources_ms_p50"] == 15.0  # r4 had no sources event
    assert summary["first_token_ms_p95"] == pytest.approx(77.5)
    assert summary["faithfulness"] is None and summary["answer_relevancy"] is None

    empty = summarize([_row("a", absent=True, not_found=True)])
    assert empty["cite_hit"] is None and empty["false_abstention"] is None and empty["answered_rate"] is None
    assert empty["grounded_rate"] is None and empty["abstention"] == 1.0 and empty["words"] is None
    judged = summarize([_row("j1", faithfulness=0.5, answer_relevancy=1.0), _row("j2", faithfulness=1.0)])
    assert (judged["faithfulness"], judged["answer_relevancy"]) == (0.75, 1.0)


def test_report_groups_by_model_and_repo_and_prints_a_table(tmp_path: Path) -> None:
    report = AnswerReport(
        rows=[
            _row("r1", cite_hit=True, recall=1.0, words=5, total_ms=10.0, first_token_ms=5.0),
            _row(
                "r2", repo="other/x", cite_hit=False, recall=0.0, words=5, total_ms=20.0, first_token_ms=6.0
            ),
            dataclasses.replace(_row("r1", cite_hit=False, words=3, total_ms=30.0), model="big"),
        ]
    )
    summaries = report.summaries()
    assert list(summaries) == ["m", "big"]
    assert list(summaries["m"]) == ["acme/pay", "other/x", "all"]
    assert summaries["m"]["all"]["cite_hit"] == 0.5 and summaries["big"]["all"]["cite_hit"] == 0.0
    table = report.table().splitlines()
    assert table[0].split()[:3] == ["model", "repo", "real"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["m", "acme/pay"], ["m", "other/x"], ["m", "all"], ["big", "acme/pay"],
    ]  # fmt: skip
    out = tmp_path / "rows" / "rows.jsonl"
    report.write_rows(out)
    assert [json.loads(line)["model"] for line in out.read_text().splitlines()] == ["m", "m", "big"]
    assert set(report.to_json()) == {
        "models",
        "skipped",
        "index",
        "index_timings",
        "judge",
        "judge_failures",
        "cases",
    }


# --- asking through the stream, timed ---------------------------------------------------------


class _FakeAnswerer:
    """Streams what the answering path would, advancing a fake clock between events."""

    def __init__(self, events: list[tuple[float, Any]], error: Exception | None = None) -> None:
        self.events, self.error = events, error
        self.now = 0.0
        self.requests: list[Any] = []

    def stream(self, request: Any) -> Iterator[Any]:
        self.requests.append(request)
        for at, event in self.events:
            self.now = at
            yield event
        if self.error is not None:
            self.now += 0.25
            raise self.error


def _sources_event() -> AnswerSources:
    return AnswerSources(sources=[])


def test_ask_case_times_the_sources_the_first_text_and_the_final_answer() -> None:
    final = _answer("`authorize_refund` decides [1].", ("payments/auth.py",))
    fake = _FakeAnswerer(
        [(0.2, _sources_event()), (0.3, AnswerDelta("")), (0.5, AnswerDelta("`authorize")),
         (0.6, AnswerDelta("_refund` decides [1].")), (0.9, final)]
    )  # fmt: skip
    case = _case(reference="`authorize_refund`", files=("payments/auth.py",))
    row = ask_case(fake, case, "acme__pay", model="m", commit="c" * 40, clock=lambda: fake.now)  # type: ignore[arg-type]
    assert (row.sources_ms, row.first_token_ms, row.total_ms, row.streamed) == (200.0, 500.0, 900.0, True)
    assert row.cite_hit is True and row.recall == 1.0 and row.error is None
    request = fake.requests[0]
    assert (request.question, request.grant.repos, request.repos, request.interface) == (
        "q?", ("acme__pay",), None, "eval",
    )  # fmt: skip
    assert request.history == ()
    # A follow-up is asked with the conversation before it, as an API client sends it.
    conversation = (
        {"role": "user", "content": "What is a refund?"},
        {"role": "assistant", "content": "Money back."},
    )
    follow_up = _FakeAnswerer([(0.1, _sources_event()), (0.2, final)])
    ask_case(follow_up, dataclasses.replace(case, history=conversation), "acme__pay", model="m", commit=None,
             clock=lambda: follow_up.now)  # type: ignore[arg-type]  # fmt: skip
    assert follow_up.requests[0].history == conversation

    # Nothing streamed (a "not found"): the first text a user reads is the final answer.
    quiet = _FakeAnswerer([(0.1, _sources_event()), (0.4, _answer("Not found", not_found=True))])
    row = ask_case(quiet, case, "acme__pay", model="m", commit=None, clock=lambda: quiet.now)  # type: ignore[arg-type]
    assert (row.sources_ms, row.first_token_ms, row.total_ms, row.streamed) == (100.0, 400.0, 400.0, False)

    failing = _FakeAnswerer([(0.1, _sources_event())], AnswerError("the model endpoint failed"))
    row = ask_case(failing, case, "acme__pay", model="m", commit=None, clock=lambda: failing.now)  # type: ignore[arg-type]
    assert row.error == "the model endpoint failed" and row.total_ms == 350.0
    assert summarize([row])["errors"] == 1


def test_the_judge_scores_answered_real_questions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from cia_assets.lib.evaluation import answer_quality
    from cia_assets.lib.evaluation.answers import score_with_judge

    seen: list[Any] = []

    def fake_score(samples: Any, judge: Any, embedder: Any, *, metrics: Any, concurrency: int) -> Any:
        seen.append((list(samples), tuple(metrics)))
        return answer_quality.QualityReport(
            metrics=tuple(metrics),
            scores=[
                {"faithfulness": 0.5, "answer_relevancy": 0.9},
                {"faithfulness": None, "answer_relevancy": 0.7},
            ],
            errors=[{}, {"faithfulness": "TimeoutError: judge"}],
            means={"faithfulness": 0.5, "answer_relevancy": 0.8},
            failures={"faithfulness": 1, "answer_relevancy": 0},
        )

    monkeypatch.setattr(answer_quality, "score_answers", fake_score)
    rows = [
        _row("r1", answer="It works [1].\n\nSources:\n[1] r:a.py#L1-L5", contexts=["code a"]),
        _row("r2", answer="Also [1].\n\nSources:\n[1] r:b.py#L1-L5", contexts=["code b"]),
        _row("r3", not_found=True, answer="Not found"),
        _row("a1", absent=True, answer="An answer to an absent question"),
        _row("e1", error="failed"),
    ]
    report = AnswerReport(rows=rows)
    judge = answer_quality.JudgeEndpoint(
        base_url="http://judge/v1", model="judge-7b", api_key=None, timeout_s=5
    )
    score_with_judge(report, judge, embedder=object())
    samples, metrics = seen[0]
    assert metrics == ("faithfulness", "answer_relevancy")
    assert [(s.answer, s.contexts) for s in samples] == [
        ("It works [1].", ["code a"]),
        ("Also [1].", ["code b"]),
    ]
    assert (rows[0].faithfulness, rows[0].answer_relevancy, rows[1].faithfulness) == (0.5, 0.9, None)
    assert rows[1].judge_errors == {"faithfulness": "TimeoutError: judge"}
    assert report.judge == "judge-7b@http://judge/v1" and report.judge_failures["faithfulness"] == 1
    summary = report.summaries()["m"]["all"]
    assert (summary["faithfulness"], summary["answer_relevancy"]) == (0.5, 0.8)
    assert "faithful" in report.table().splitlines()[0]


def test_sources_come_from_repo_dirs_or_configured_codebases(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    from cia_assets.config import load_config
    from cia_assets.lib.evaluation.answers import source_from_dir, sources_for

    repo = make_repo("tool", {"a.py": "x = 1\n"})
    repo.git("checkout", "-q", "-b", "release")
    only_on_release = repo.commit({"b.py": "y = 2\n"}, "release only")
    repo.git("checkout", "-q", "main")
    assert source_from_dir("acme/tool", repo.path, [None]).branch == "main"
    # The set pins a commit that only another branch has: that branch is mirrored.
    source = source_from_dir("acme/tool", repo.path, [only_on_release[:7]], include=("*.py",))
    assert (source.branch, source.url, source.include) == ("release", str(repo.path.resolve()), ("*.py",))
    with pytest.raises(AnswerEvalError, match="no such directory"):
        source_from_dir("acme/tool", tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(AnswerEvalError, match="not a git repository"):
        source_from_dir("acme/tool", tmp_path / "plain")
    repo.git("checkout", "-q", "--detach", "main")
    assert source_from_dir("acme/tool", repo.path, [only_on_release]).branch == "release"
    with pytest.raises(AnswerEvalError, match="HEAD is detached and no branch holds"):
        source_from_dir("acme/tool", repo.path, [None])
    repo.git("checkout", "-q", "main")

    (tmp_path / "cia.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"codebases:\n  - url: {repo.path}\n    id: tool\n    exclude: ['*.md']\n"
    )
    config = load_config(tmp_path / "cia.yaml")
    cases = [
        AnswerCase("c1", "acme/tool", None, "q?", "`f`.", ()),
        AnswerCase("c2", "other/thing", None, "q?", "`f`.", ()),
        AnswerCase("c3", "tool", None, "q?", "", (), absent=True),
    ]
    sources = sources_for(config, cases, {})
    assert set(sources) == {"acme/tool", "tool"}  # other/thing has none: its cases are skipped
    assert (sources["acme/tool"].repo, sources["acme/tool"].exclude) == ("acme/tool", ("*.md",))
    assert sources["tool"].url == str(repo.path.resolve()) and sources["tool"].repo_id == "tool"
    given = sources_for(config, cases, {"other/thing": repo.path}, include=["*.py"])
    assert given["other/thing"].include == ("*.py",) and given["other/thing"].branch == "main"
    with pytest.raises(AnswerEvalError, match="--repo-dir nope/x: no selected question is about it"):
        sources_for(config, cases, {"nope/x": repo.path})


def test_a_model_that_cannot_be_served_fails_before_anything_is_indexed(
    make_repo: Callable[..., GitRepo], tmp_path: Path, model_dir: Path
) -> None:
    from cia_assets.config import load_config
    from cia_assets.lib.evaluation.answers import AnswerHarness, ModelChoice, source_from_dir

    repo = make_repo("tool", {"a.py": "def f():\n    return 1\n"})
    (tmp_path / "cia.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\ncodebases:\n  - url: {repo.path}\n"
        f"embedding:\n  path: {model_dir}\nllm:\n  model_path: {tmp_path / 'missing.gguf'}\n"
    )
    config = load_config(tmp_path / "cia.yaml")
    harness = AnswerHarness(config, tmp_path / "work")
    cases = [AnswerCase("c1", "acme/tool", None, "What does f return?", "`f` returns 1.", ("a.py",))]
    sources = {"acme/tool": source_from_dir("acme/tool", repo.path)}
    with pytest.raises(AnswerEvalError, match=r"model .*missing\.gguf is not a file"):
        harness.run(cases, sources, [ModelChoice()])
    assert not (tmp_path / "work" / "chunks").exists()
    with pytest.raises(AnswerEvalError, match="a model is named twice"):
        harness.run(cases, sources, [ModelChoice(), ModelChoice(config.llm.model)])
    assert harness.run([], sources).rows == []


# --- question sets ----------------------------------------------------------------------------


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"id": "q1", "repo": "acme/pay", "commit": "abc1234", "question": "How?", "reference_answer": "`f`.",
        "reference_files": ["pay.py"]}  # fmt: skip


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", r"bad\.jsonl:2: not JSON"),
        ('["a list"]', r"bad\.jsonl:2: expected a JSON object, got list"),
        ({**GOOD, "id": "q2", "question": ""}, r"bad\.jsonl:2: 'question' is missing"),
        ({k: v for k, v in GOOD.items() if k != "repo"} | {"id": "q2"}, r"bad\.jsonl:2: 'repo' is missing"),
        (
            {**GOOD, "id": "q2", "reference_answer": ""},
            r"bad\.jsonl:2: case q2: 'reference_answer' is missing",
        ),
        (
            {**GOOD, "id": "q2", "reference_files": "pay.py"},
            r"bad\.jsonl:2: case q2: 'reference_files' must be",
        ),
        ({**GOOD, "id": "q2", "commit": 7}, r"bad\.jsonl:2: case q2: 'commit' must be"),
        ({**GOOD, "id": "q2", "absent": "yes"}, r"bad\.jsonl:2: case q2: 'absent' must be"),
        ({**GOOD, "id": "q2", "absent": True}, r"bad\.jsonl:2: case q2 is absent .* but has a reference"),
        (GOOD, r"bad\.jsonl:2: id 'q1' already used on line 1"),
        ({**GOOD, "id": "q2", "history": "What is it?"}, r"bad\.jsonl:2: case q2: 'history' must be a list"),
        (
            {**GOOD, "id": "q2", "history": [{"role": "user", "content": "What is it?"}, {"role": "tool"}]},
            r"bad\.jsonl:2: case q2: 'history' message 2 must be",
        ),
    ],
)
def test_bad_rows_are_named_by_file_and_line(tmp_path: Path, row: Any, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(AnswerEvalError, match=message):
        load_answer_cases(path)


def test_sets_load_absent_questions_and_select_per_repo(tmp_path: Path) -> None:
    main = _write(
        tmp_path / "qa.jsonl", [GOOD, "", {**GOOD, "id": "q2"}, {**GOOD, "id": "q3", "repo": "other/x"}]
    )
    absent = _write(
        tmp_path / "absent.jsonl",
        [{"id": "a1", "repo": "acme/pay", "commit": None, "question": "Kafka?"},
         {"id": "a2", "repo": "acme/pay", "question": "S3?", "absent": True, "reference_files": []}],
    )  # fmt: skip
    cases = load_sets([main], [absent])
    assert [(c.case_id, c.absent, c.commit) for c in cases] == [
        ("q1", False, "abc1234"), ("q2", False, "abc1234"), ("q3", False, "abc1234"),
        ("a1", True, None), ("a2", True, None),
    ]  # fmt: skip
    assert cases[0].reference_files == ("pay.py",) and cases[3].reference == ""
    assert [c.case_id for c in select_cases(cases, limit=1)] == ["q1", "q3", "a1"]
    assert [c.case_id for c in select_cases(cases, repos=["acme/pay"], limit=2)] == ["q1", "q2", "a1", "a2"]
    assert [c.case_id for c in select_cases(cases, ids=["q2", "a2"])] == ["q2", "a2"]
    with pytest.raises(AnswerEvalError, match="--ids: no such case"):
        select_cases(cases, ids=["nope"])

    with pytest.raises(AnswerEvalError, match=r"absent\.jsonl: id 'q1' is also used in .*qa\.jsonl"):
        load_sets([main], [_write(tmp_path / "absent.jsonl", [{"id": "q1", "repo": "r", "question": "?"}])])
    says_real = _write(tmp_path / "absent2.jsonl", [{**GOOD, "id": "z", "absent": False}])
    with pytest.raises(AnswerEvalError, match=r"absent2\.jsonl:1: case z says absent: false"):
        load_sets([], [says_real])
    with pytest.raises(AnswerEvalError, match=r"missing\.jsonl: cannot read"):
        load_answer_cases(tmp_path / "missing.jsonl")
    assert parse_repo_dirs(["acme/pay=/src/pay.git"]) == {"acme/pay": Path("/src/pay.git")}
    with pytest.raises(AnswerEvalError, match="expected OWNER/NAME=PATH"):
        parse_repo_dirs(["acme/pay"])


def test_the_shipped_sets_load_and_their_references_are_in_this_repo() -> None:
    follow_ups = load_answer_cases(SETS / "cia_followups_qa.jsonl")
    assert len(follow_ups) >= 12
    for case in follow_ups:  # the question before it, and CIA's answer to that
        assert [turn["role"] for turn in case.history] == ["user", "assistant"], case.case_id
        assert set(case.reference_files) <= set(_tracked_files()), case.case_id
    usage = load_answer_cases(SETS / "cia_usage_qa.jsonl")  # "How do I ...?": docs and config
    assert len(usage) >= 10
    for case in usage:
        assert case.reference_files and set(case.reference_files) <= _tracked_files(), case.case_id
        code = "\n".join((REPO_ROOT / path).read_text() for path in case.reference_files)
        assert all(names_identifier(code, name) for name in reference_identifiers(case.reference)), (
            case.case_id
        )
    # How-to questions about features CIA does not have: what an answer that reads the docs
    # and config for how-to questions must still decline.
    absent_usage = load_sets([], [SETS / "cia_usage_absent.jsonl"])
    assert len(absent_usage) >= 10
    assert all(c.absent and c.repo == "cia" and asks_how_to(c.question) for c in absent_usage)
    cases = load_sets([SETS / "cia_qa.jsonl"], [SETS / "absent_features.jsonl"])
    real = [c for c in cases if not c.absent]
    absent = [c for c in cases if c.absent]
    assert len(real) >= 12 and {c.repo for c in real} == {"cia"} and all(c.commit is None for c in real)
    per_repo = {repo: sum(1 for c in absent if c.repo == repo) for repo in {c.repo for c in absent}}
    assert per_repo["sqlfluff/sqlfluff"] >= 10 and per_repo["conan-io/conan"] >= 10 and per_repo["cia"] >= 12
    assert {c.commit for c in absent if c.repo == "sqlfluff/sqlfluff"} == {"db9801b"}
    assert {c.commit for c in absent if c.repo == "conan-io/conan"} == {"52f43d9"}
    tracked = _tracked_files()
    for case in real:
        assert case.reference_files and set(case.reference_files) <= tracked, case.case_id
        code = "\n".join((REPO_ROOT / path).read_text() for path in case.reference_files)
        identifiers = reference_identifiers(case.reference)
        assert len(identifiers) >= 4, case.case_id
        # Every identifier a reference names is in its files: a rename makes the set stale.
        stale = [name for name in identifiers if not names_identifier(code, name)]
        assert not stale, (case.case_id, stale)


def _tracked_files() -> set[str]:
    return set(
        subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    )


# --- end to end: a temp repo, the real answering path, the packaged model ----------------------

PAYMENTS = {
    "payments/auth.py": (
        '"""Authorization for the payments service."""\n\n\n'
        "def authorize_refund(user, amount):\n"
        '    """A refund is authorized when the user is a manager or the amount is under 50."""\n'
        "    if user.role == 'manager':\n"
        "        return True\n"
        "    return amount < 50\n"
    ),
    "payments/ledger.py": (
        "def transfer_between_accounts(ledger, source, target, amount):\n"
        '    """Move an amount from one account balance to another."""\n'
        "    ledger[source] -= amount\n"
        "    ledger[target] += amount\n"
    ),
}


def test_eval_answers_indexes_asks_through_the_answering_path_and_reports_every_metric(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cia_assets.apps.cli import main
    from cia_assets.lib.serving.llm_server import packaged_gguf

    repo = make_repo("payments", PAYMENTS)
    head = repo.git("rev-parse", "HEAD")
    config = write_config(
        [{"url": repo.url, "id": "live"}],
        llm={"model": "SmolLM2-135M-Instruct", "model_path": str(packaged_gguf()), "port": free_port(),
             "context_tokens": 2048, "max_answer_tokens": 48},
    )  # fmt: skip
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config.config_path))  # `main` sets it; restored after
    qa = _write(
        tmp_path / "qa.jsonl",
        [{"id": "refund", "repo": "acme/payments", "commit": head[:7],
          "question": "When is a refund authorized?",
          "reference_answer": "`authorize_refund` in `payments/auth.py` returns True when `user.role` is "
                              "'manager', else when the amount is under 50.",
          "reference_files": ["./payments/auth.py"]},
         {"id": "old", "repo": "acme/payments", "commit": "0" * 12, "question": "How are funds moved?",
          "reference_answer": "`transfer_between_accounts`.", "reference_files": ["payments/ledger.py"]},
         {"id": "elsewhere", "repo": "other/repo", "commit": None, "question": "Anything?",
          "reference_answer": "`x_y`.", "reference_files": []}],
    )  # fmt: skip
    absent = _write(
        tmp_path / "absent.jsonl",
        [{"id": "kafka", "repo": "acme/payments", "commit": head[:7], "absent": True,
          "question": "How is the Kafka consumer for invoice events configured?"}],
    )  # fmt: skip
    out = tmp_path / "rows.jsonl"
    args = ["eval-answers", str(qa), "--absent", str(absent), "--repo-dir", f"acme/payments={repo.path}",
            "--config", str(config.config_path), "--out", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)

    assert report["skipped"] == {
        "old": f"commit {'0' * 12} is not on branch 'main' of {repo.path.resolve()}",
        "elsewhere": "no source for repo other/repo: give --repo-dir other/repo=PATH "
        "(a local clone or bare git dir that has the commit)",
    }
    assert "skipped old:" in captured.err
    assert list(report["models"]) == ["SmolLM2-135M-Instruct"]
    per_repo = report["models"]["SmolLM2-135M-Instruct"]
    assert list(per_repo) == ["acme/payments", "all"]
    summary = per_repo["all"]
    assert set(summary) == METRIC_KEYS
    assert (summary["questions"], summary["real"], summary["absent"], summary["errors"]) == (2, 1, 1, 0)
    for share in ("cite_hit", "ref_identifier_recall", "abstention", "false_abstention", "answered_rate"):
        assert summary[share] is not None and 0.0 <= summary[share] <= 1.0, (share, summary)
    assert summary["answered_rate"] == round(1 - summary["false_abstention"], 4)
    assert (summary["cite_hit_cases"], summary["recall_cases"]) == (1, 1)
    assert 0 < summary["first_token_ms_p50"] <= summary["total_ms_p95"]
    assert summary["total_ms_p50"] <= summary["total_ms_p95"] < 300_000
    # The sources event comes before any text.
    assert summary["sources_ms_p50"] is not None and summary["sources_ms_p95"] <= summary["total_ms_p95"]
    assert summary["grounding_checked"] is not None and summary["grounding_checked"] >= 0
    assert summary["grounded_rate"] is None or 0.0 <= summary["grounded_rate"] <= 1.0
    assert summary["faithfulness"] is None and report["judge"] is None  # no judge: no ragas
    assert "cases" not in report  # the rows went to --out
    assert report["index"][f"acme/payments@{head[:12]}"]["files"] == 2

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["case_id"], r["absent"], r["commit"]) for r in rows] == [
        ("refund", False, head),
        ("kafka", True, head),
    ]
    refund = rows[0]
    assert refund["error"] is None and refund["answer"] and refund["answer_model"] == "SmolLM2-135M-Instruct"
    assert refund["identifiers"] == ["authorize_refund", "user.role"]
    assert refund["cite_hit"] == any(path == "payments/auth.py" for path in refund["cited_files"])
    assert refund["not_found"] or refund["cited_files"]
    assert re.fullmatch(r"[0-9a-f]{32}", refund["trace_id"])
    # Each row says what the abstention bars were compared with, for calibrating them.
    asked_model = [r for r in rows if r["not_found_reason"] not in ("no code", "only tests")]
    assert asked_model and all(isinstance(r["supported"], bool) for r in asked_model)
    assert all(r["not_found_odds"] is not None and r["not_found_odds"] >= 0 for r in asked_model)
    # ... and which blocks the model read: a miss is the retrieval's or the model's.
    # (The harness indexes acme/payments under the repo id acme__payments.)
    assert any(block.startswith("acme__payments:payments/auth.py#L") for block in refund["context_blocks"])
    # The harness worked in its own data dir: the live index was never made or moved.
    assert not (config.data_dir / "index").exists()
    assert (config.data_dir / "answer-eval" / "index" / "acme__payments.json").exists()


def test_a_packaged_judge_is_served_locally_for_the_judging_only(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`--judge`: the judge's model gets a local server of its own once the answers are in,
    its replies held to each schema, and the server is gone afterwards. ragas itself is
    replaced here by one real request to that server (the tiny model takes 20-60 s a sample;
    `test_answer_quality` runs ragas for real)."""
    import httpx
    import openai

    from cia_assets.lib.evaluation import answer_quality
    from cia_assets.lib.evaluation.answers import AnswerHarness, PackagedJudge, source_from_dir
    from cia_assets.lib.evaluation.answers import harness as harness_module
    from cia_assets.lib.serving.llm_server import packaged_gguf

    repo = make_repo("payments", PAYMENTS)
    config = write_config(
        [{"url": repo.url, "id": "live"}],
        llm={"model": "SmolLM2-135M-Instruct", "model_path": str(packaged_gguf()), "port": free_port(),
             "context_tokens": 2048, "max_answer_tokens": 32},
    )  # fmt: skip
    judged: dict[str, Any] = {}

    def judge_with_one_request(
        samples: Any, judge: Any, embedder: Any, *, metrics: Any, concurrency: int
    ) -> Any:
        client = openai.OpenAI(base_url=judge.base_url, api_key="unused")
        reply = client.chat.completions.create(
            model=judge.model, messages=[{"role": "user", "content": "Say yes."}], max_tokens=4
        )
        judged.update(
            judge=judge, reply=reply.choices[0].message.content, samples=len(samples), concurrency=concurrency
        )
        return answer_quality.QualityReport(
            metrics=tuple(metrics),
            scores=[{"faithfulness": 0.5, "answer_relevancy": 0.25} for _ in samples],
            errors=[{} for _ in samples],
            means={},
            failures={},
        )

    monkeypatch.setattr(answer_quality, "score_answers", judge_with_one_request)
    # Only answers are judged, and the tiny model mostly says "not found": the question is
    # answered by hand (the answering model's server still starts and stops as in a run).
    answered = _row("refund", answer="`authorize_refund` allows managers [1].", not_found=False)
    monkeypatch.setattr(harness_module, "ask_case", lambda *args, **kwargs: answered)
    cases = [
        AnswerCase("refund", "acme/payments", None, "When is a refund authorized?",
                   "`authorize_refund` allows managers.", ("payments/auth.py",)),
    ]  # fmt: skip
    sources = {"acme/payments": source_from_dir("acme/payments", repo.path)}
    harness = AnswerHarness(config, tmp_path / "work")
    with pytest.raises(AnswerEvalError, match="judge No-Such-Model"):
        harness.run(cases, sources, judge=PackagedJudge("No-Such-Model"))
    assert not (tmp_path / "work" / "chunks").exists()  # refused before any indexing

    report = harness.run(cases, sources, judge=PackagedJudge("SmolLM2-135M-Instruct"))
    row = report.rows[0]
    judge = judged["judge"]
    assert judged["samples"] == 1 and judged["reply"] is not None
    assert judged["concurrency"] == 1  # the local server has one slot
    assert judge.schema_grammar and judge.model == "SmolLM2-135M-Instruct"
    assert judge.base_url.startswith("http://127.0.0.1:")
    assert (row.faithfulness, row.answer_relevancy) == (0.5, 0.25)
    assert report.judge == f"SmolLM2-135M-Instruct@{judge.base_url}"
    with pytest.raises(httpx.TransportError):  # the judge's server stopped with the judging
        httpx.get(f"{judge.base_url}/models", timeout=2)
