"""The learning loop's pure parts, table-driven: secret redaction, teacher replies, sampling,
the train/eval split, retrieval metrics, the promotion verdict and the rollout plan (with a
real MLflow registry in SQLite)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.core.records import Chunk, SourceSpan, sha256_text
from cia_assets.lib.evaluation.heldout import EvalCase, Verdict, promotion_verdict, retrieval_metrics
from cia_assets.lib.learning.redaction import PLACEHOLDER, redact, shannon_entropy
from cia_assets.lib.learning.synthetic import (
    SourceRef,
    SyntheticPair,
    cites_only_its_source,
    parse_pair,
    sample_chunks,
)
from cia_assets.lib.learning.training_data import build_split, eval_files, golden_example, renumber


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('AWS_KEY = "AKIAIOSFODNN7EXAMPLE"', "AKIAIOSFODNN7EXAMPLE"),
        ('token = "ghp_R7b2Xk9QmV4tL1sN8wE3yU6iO0pA5zD2cF7h"', "ghp_R7b2Xk9QmV4tL1sN8wE3yU6iO0pA5zD2cF7h"),
        ('slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"', "AbCdEfGhIjKlMnOpQrStUvWx"),
        ('password = "hunter2-is-not-a-password"', "hunter2-is-not-a-password"),
        ('url = "postgres://admin:S3cr3tP4ss@db:5432/x"', "S3cr3tP4ss"),
        (
            "salt = q8ZtV3mK1xR7pW2sL9nB4cF6hJ0dG5yA  # unquoted, unknown format",
            "q8ZtV3mK1xR7pW2sL9nB4cF6hJ0dG5yA",
        ),
        ('digest = "5f2b8c9d0e1a3b4c6d7e8f90a1b2c3d4e5f60718"', "5f2b8c9d0e1a3b4c6d7e8f90a1b2c3d4e5f60718"),
    ],
)
def test_redaction_removes_known_formats_keywords_and_high_entropy(line: str, secret: str) -> None:
    result = redact(f"import os\n{line}\nprint(1)")
    assert secret not in result.text
    assert PLACEHOLDER in result.text.splitlines()[1]
    assert result.text.splitlines()[0] == "import os" and result.count >= 1
    assert {f.line for f in result.findings} == {2}


def test_redaction_keeps_code_and_line_numbers() -> None:
    code = (
        "def test_embedding_cache_reuses_vectors_between_runs(self):\n"
        "    return self.cache.get_or_compute_embeddings_for_chunk_texts(chunks)\n"
        'URL = "https://github.com/pallets/flask/blob/main/src/flask/app.py"\n'
        "KEY = '''-----BEGIN OPENSSH PRIVATE KEY-----\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "-----END OPENSSH PRIVATE KEY-----'''\n"
        "after = 1\n"
    )
    result = redact(code)
    lines = result.text.split("\n")
    assert len(lines) == len(code.split("\n"))  # citations to later lines stay right
    assert lines[:3] == code.split("\n")[:3]  # identifiers and URLs are not secrets
    assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" not in result.text
    assert lines[6] == "after = 1"
    assert [f.kind for f in result.findings] == ["Private Key"]


@pytest.mark.robustness  # issue 18 item 6: what masking shows, and what it must not blank
def test_a_private_key_without_its_end_line_masks_its_body_and_no_more() -> None:
    """A test that writes only a key's header, or a chunk cut inside a key: the lines that
    look like the key's body are masked, and the code after it is kept (masking to the end
    of the text blanked the rest of the function in search results and answers)."""
    header_only = (
        "def test_an_ssh_key_is_used(tmp_path):\n"
        '    (tmp_path / "deploy").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\\n")\n'
        "    auth = GitAuth.of(config.codebases[0])\n"
        '    assert "BatchMode=yes" in git_env(auth)["GIT_SSH_COMMAND"]\n'
    )
    lines = redact(header_only, filename="tests/test_git.py").text.split("\n")
    assert lines[1] == '    (tmp_path / "deploy").write_text("<REDACTED>'
    assert lines[2:] == header_only.split("\n")[2:]

    # A full line, a shorter one, and the last one with its padding.
    body = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj", "MzEfYyjiWA4R4/M2", "AbC="]
    cut = "PEM = (\n    '-----BEGIN PRIVATE KEY-----\\n'\n" + "".join(f"    '{line}\\n'\n" for line in body)
    cut += ")\nsigned = sign(PEM)\n"
    result = redact(cut, filename="keys.py")
    assert not any(line in result.text for line in body)
    assert result.text.split("\n")[-3:] == [")", "signed = sign(PEM)", ""]
    assert len(result.text.split("\n")) == len(cut.split("\n"))

    # Java's concatenated literal with Windows line ends and an unpadded short last line; code
    # with spaces and `=` after it is no key body.
    java = (
        'String key = "-----BEGIN RSA PRIVATE KEY-----\\n"\r\n'
        '    + "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMx\\n"\r\n'
        '    + "GP1R0pWZ0Be\\n";\r\n'
        "int after = 1;\r\n"
    )
    masked = redact(java, filename="Keys.java").text
    assert "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMx" not in masked and "GP1R0pWZ0Be" not in masked
    assert masked.endswith("int after = 1;\r\n")
    # A header-only literal, code, then a whole key: the code between them stays.
    both = (
        "a = '-----BEGIN RSA PRIVATE KEY-----'\ndef keep_me():\n    return 1\n"
        'k = """-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1Lf\n-----END RSA PRIVATE KEY-----"""\n'
    )
    result = redact(both, filename="keys.py")
    assert result.text.split("\n")[1:3] == ["def keep_me():", "    return 1"]
    assert "MIIEowIBAAKCAQEAu1SU1Lf" not in result.text
    assert [f.line for f in result.findings] == [1, 4]


@pytest.mark.robustness  # found when searches ran during a re-index: masking raced itself
def test_redaction_from_many_threads_at_once_finds_what_one_thread_finds() -> None:
    text = (
        'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
        'password = "hunter2-is-not-a-password"\n'
        'token = "ghp_R7b2Xk9QmV4tL1sN8wE3yU6iO0pA5zD2cF7h"\n'
        "def check_permission(user):\n"
        "    return user.is_admin\n"
    )
    expected = redact(text, filename="settings.py")
    results: list[object] = []
    # Switching threads every few bytecodes makes the interleavings that a loaded server hits
    # now and then happen within a second here (detect-secrets' global settings broke then).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def scan() -> None:
            for _ in range(25):
                try:
                    results.append(redact(text, filename="settings.py"))
                except Exception as error:
                    results.append(error)

        threads = [threading.Thread(target=scan) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    failures = [result for result in results if result != expected]
    assert len(results) == 100 and failures == [], failures[:3]


def test_shannon_entropy() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            '{"question": "What is X?", "answer": "According to [1], X."}',
            ("What is X?", "According to [1], X."),
        ),
        ('Here:\n```json\n{"question": " What  is X?", "answer": "A [1]"}\n```', ("What is X?", "A [1]")),
        ('{"question": "", "answer": "A [1]"}', None),
        ('{"q": "x"}', None),
        ("not json", None),
    ],
)
def test_parse_teacher_replies(reply: str, expected: tuple[str, str] | None) -> None:
    assert parse_pair(reply) == expected


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("According to [1], it adds.", True),
        ("It adds [ 1 ].", True),
        ("It adds.", False),
        ("See [1] and [2].", False),
    ],
)
def test_answers_must_cite_only_their_source(answer: str, ok: bool) -> None:
    assert cites_only_its_source(answer) is ok


def _chunk(repo: str, path: str, language: str, kind: str, lines: int = 10) -> Chunk:
    text = "\n".join(f"line {i} of {path}" for i in range(lines))
    return Chunk(repo, path, 1, lines, language, kind, None, "a" * 40, sha256_text(text), text)


def test_sampling_spreads_over_repos_languages_and_kinds() -> None:
    chunks = [_chunk("big", f"src/m{i}.py", "python", "function") for i in range(50)]
    chunks += [
        _chunk("big", "cmd/main.go", "go", "function"),
        _chunk("small", "web/a.ts", "typescript", "class"),
    ]
    chunks += [_chunk("small", "tiny.py", "python", "function", lines=2)]
    picked = sample_chunks(chunks, 4, seed=1, min_lines=4, max_lines=5)
    assert {(c.repo_id, c.language) for c in picked} >= {
        ("big", "go"),
        ("small", "typescript"),
        ("big", "python"),
    }
    assert all(c.line_end - c.line_start + 1 <= 5 and len(c.text.split("\n")) <= 5 for c in picked)
    assert "tiny.py" not in {c.path for c in picked}
    assert picked == sample_chunks(chunks, 4, seed=1, min_lines=4, max_lines=5)  # reproducible


def test_eval_files_are_stable_and_both_sides_are_used() -> None:
    keys = [f"r:f{i}.py" for i in range(40)]
    held = eval_files(keys, 0.25, seed=7)
    assert 4 <= len(held) <= 18
    assert held == eval_files(list(reversed(keys)), 0.25, seed=7)
    # A file keeps its side when the set grows.
    assert held <= eval_files([*keys, "r:new.py"], 0.25, seed=7) | {"r:new.py"}
    assert len(eval_files(["r:a.py", "r:b.py"], 0.01, seed=7)) == 1
    assert len(eval_files(["r:a.py", "r:b.py"], 0.99, seed=7)) == 1


def test_renumber_and_golden_examples_reread_their_sources() -> None:
    assert renumber("According to [2], x [3]. Also [9].", {2: 1, 3: 2}) == "According to [1], x [2]. Also ."
    sha = "b" * 40
    files = {("pay", sha, "auth.py"): [f"line {i}" for i in range(1, 21)]}

    def read(repo: str, commit: str | None, path: str) -> list[str] | None:
        return files.get((repo, commit or sha, path))

    row = {
        "question": "How are tokens checked?",
        "answer": "According to [3], tokens are signed.",
        "citations": [
            {"n": 3, "repo": "pay", "path": "auth.py", "line_start": 5, "line_end": 7,
             "url": f"https://git.example.com/pay/blob/{sha}/auth.py#L5-L7"},
        ],
    }  # fmt: skip
    example = golden_example(row, read)
    assert example is not None
    assert example.answer == "According to [1], tokens are signed."
    assert example.sources[0].text == "line 5\nline 6\nline 7" and example.sources[0].language == "python"
    gone = {**row, "citations": [{**row["citations"][0], "line_end": 99}]}  # type: ignore[dict-item]
    assert golden_example(gone, read) is None
    # A repo without a web UI links to the chat app's source page: its commit is read too.
    older = "c" * 40
    files[("pay", older, "auth.py")] = [f"old {i}" for i in range(1, 21)]
    link = f"http://127.0.0.1:8600/source/pay/{older}/auth.py#L5-L7"
    local = {**row, "citations": [{**row["citations"][0], "url": link}]}  # type: ignore[dict-item]
    at_older = golden_example(local, read)
    assert at_older is not None and at_older.sources[0].text == "old 5\nold 6\nold 7"


def _pair(index: int) -> SyntheticPair:
    path = f"pkg/mod_{index}.py"
    return SyntheticPair(
        question=f"What does f_{index} do?",
        answer=f"According to [1], `f_{index}` adds {index}.",
        source=SourceRef(repo="r", path=path, line_start=1, line_end=2, commit_sha="a" * 40,
                         language="python", kind="function", symbol=f"f_{index}", chunk_id=f"c{index}",
                         url=None),
        source_text=f"def f_{index}(x):\n    return x + {index}",
        teacher="teacher",
        redactions=0,
    )  # fmt: skip


def test_some_training_questions_are_shown_without_their_source_and_answered_not_found() -> None:
    """A teacher writes only answerable questions; the student also sees a share of them
    with other files' sources only, answered NOT FOUND (the xarray round that lacked these
    lost every abstention), in training only, and the other examples do not move."""
    from cia_assets.lib.answering.answer import NOT_FOUND_MARKER
    from cia_assets.lib.answering.prompts import PACKAGED_PROMPT

    pairs = [_pair(i) for i in range(60)]
    plain = build_split(pairs, [], eval_share=0.25, seed=7)
    split = build_split(pairs, [], eval_share=0.25, seed=7, abstention_share=0.25)
    abstaining = [e for e in split.train if e.origin == "abstention"]
    assert 5 <= len(abstaining) <= 20, len(abstaining)
    assert [e for e in split.train if e.origin != "abstention"] == plain.train and split.eval == plain.eval
    assert not [e for e in split.eval if e.origin == "abstention"]
    by_question = {e.question: e for e in plain.train}
    for example in abstaining:
        answered = by_question[example.question]  # the same question, answered where its source shows
        assert example.answer == NOT_FOUND_MARKER and example.cited == ()
        assert example.file_key == answered.file_key  # it stays on its question's side of the split
        shown = {s.file_key for s in example.sources}
        assert len(shown) == 2 and answered.file_key not in shown and not shown & split.eval_files
        row = example.to_json(PACKAGED_PROMPT)
        assert row["messages"][-1] == {"role": "assistant", "content": NOT_FOUND_MARKER}
        assert row["source"] is None and "pkg/mod_" in row["messages"][-2]["content"]
    assert build_split(pairs, [], eval_share=0.25, seed=7, abstention_share=0.0).train == plain.train


def _hit(repo: str, path: str, line_start: int, line_end: int) -> SourceSpan:
    return SourceSpan(repo=repo, path=path, line_start=line_start, line_end=line_end)


def test_retrieval_metrics_score_the_source_file_and_chunk() -> None:
    cases = [
        EvalCase(
            question="q1",
            reference="a",
            repo="r",
            path="a.py",
            line_start=10,
            line_end=20,
            chunk_id=None,
            origin="synthetic",
        ),
        EvalCase(
            question="q2",
            reference="a",
            repo="r",
            path="b.py",
            line_start=1,
            line_end=5,
            chunk_id=None,
            origin="synthetic",
        ),
        EvalCase(
            question="q3",
            reference="a",
            repo="r",
            path="c.py",
            line_start=1,
            line_end=5,
            chunk_id=None,
            origin="synthetic",
        ),
    ]
    results = {
        "q1": [_hit("r", "a.py", 15, 30)],  # file and chunk at rank 1
        "q2": [
            _hit("r", "x.py", 1, 5),
            _hit("r", "b.py", 50, 60),
            _hit("r", "b.py", 3, 4),
        ],  # file 2, chunk 3
        "q3": [_hit("r", "x.py", 1, 5)],  # missed
    }
    metrics = retrieval_metrics(cases, lambda case: results[case.question])
    assert metrics["file_recall@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["file_recall@5"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["chunk_recall@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["file_mrr"] == pytest.approx((1 + 1 / 2) / 3, abs=1e-4)
    assert metrics["chunk_mrr"] == pytest.approx((1 + 1 / 3) / 3, abs=1e-4)


@pytest.mark.parametrize(
    ("challenger", "reference", "passed"),
    [
        (
            {"citation_validity": 0.9, "faithfulness": 0.8},
            {"citation_validity": 0.9, "faithfulness": 0.8},
            True,
        ),
        (
            {"citation_validity": 0.86, "faithfulness": 0.8},
            {"citation_validity": 0.9, "faithfulness": 0.8},
            True,
        ),
        (
            {"citation_validity": 0.8, "faithfulness": 0.9},
            {"citation_validity": 0.9, "faithfulness": 0.8},
            False,
        ),
        (
            {"citation_validity": 0.9, "faithfulness": None},
            {"citation_validity": 0.9, "faithfulness": 0.8},
            False,
        ),
        (
            {"citation_validity": 0.9, "faithfulness": 0.1},
            {"citation_validity": 0.9, "faithfulness": None},
            True,
        ),
    ],
)
def test_promotion_verdict(
    challenger: dict[str, float | None], reference: dict[str, float | None], passed: bool
) -> None:
    verdict = promotion_verdict(
        challenger,
        reference,
        challenger_version="3",
        reference_name="champion",
        max_drops={"citation_validity": 0.05, "faithfulness": 0.05},
    )
    assert verdict.passed is passed
    assert len(verdict.reasons) == 2
    assert Verdict.from_json(json.loads(json.dumps(verdict.to_json()))) == verdict
    assert not promotion_verdict(
        None, reference, challenger_version=None, reference_name="base", max_drops={}
    ).passed


def test_rollout_plan_follows_registry_aliases_and_the_verdict(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry
    from cia_assets.lib.serving.promotion import plan_rollout

    config = write_config([], promotion={"canary_share": 0.25})
    registry = AdapterRegistry(config)
    assert plan_rollout(config, registry).stage == "base"

    def register(name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        run_id, source = registry.log_training(
            run_name=name, params={"r": 8}, losses=[(1, 2.0), (2, 1.5)], metrics={"x": 1.0},
            adapter_dir=folder, tags={},
        )  # fmt: skip
        return registry.register(
            run_id=run_id, source=source, tags={"gguf_path": str(folder / "adapter.gguf")}, description=name
        ).version

    first = register("first")
    assert registry.by_alias("challenger").version == first  # type: ignore[union-attr]
    assert plan_rollout(config, registry).stage == "awaiting-evaluation"

    def publish_verdict(version: str, passed: bool) -> None:
        root = DataLayout(config.data_dir).evaluation
        name, _ = artifacts.new_version(root)
        verdict = Verdict(passed, version, "base", ("because",), {})
        artifacts.publish(root, name, {"verdict": verdict.to_json()})

    publish_verdict(first, passed=False)
    refused = plan_rollout(config, registry)
    assert refused.stage == "refused" and refused.primary.adapter is None and refused.canary is None

    publish_verdict(first, passed=True)
    canary = plan_rollout(config, registry)
    assert canary.stage == "canary" and canary.canary_share == 0.25
    assert canary.canary is not None and canary.canary.adapter_version == first
    assert canary.primary.adapter is None  # the base model keeps 75 %

    promoted = plan_rollout(config.model_copy(update={"promotion": config.promotion.model_copy(
        update={"canary_share": 0.0})}), registry)  # fmt: skip
    assert promoted.stage == "promoted" and promoted.primary.adapter_version == first
    promoted.commit(registry)
    assert registry.by_alias("champion").version == first  # type: ignore[union-attr]
    assert registry.by_alias("challenger") is None
    assert plan_rollout(config, registry).stage == "champion"


def test_citation_metrics_count_failed_answers_against_the_model() -> None:
    from cia_assets.lib.answering.answer import Answer
    from cia_assets.lib.answering.citations import Citation
    from cia_assets.lib.evaluation.heldout import ModelResult

    first = EvalCase(
        question="q1",
        reference="a",
        repo="r",
        path="a.py",
        line_start=1,
        line_end=5,
        chunk_id=None,
        origin="synthetic",
    )
    second = EvalCase(
        question="q2",
        reference="a",
        repo="r",
        path="b.py",
        line_start=1,
        line_end=5,
        chunk_id=None,
        origin="synthetic",
    )
    cited_b = Citation(n=1, repo="r", path="b.py", line_start=1, line_end=5, url=None, commit_sha="c" * 40)
    result = ModelResult(name="challenger v2", model="m")
    result.errors.append("q1: the endpoint failed")  # the first question got no answer
    result.answers.append((second, Answer("According to [1], b.", [cited_b], "m", "t" * 32, False)))
    metrics = result.citation_metrics()
    assert metrics["citation_validity"] == 0.5 and metrics["error_rate"] == 0.5
    assert metrics["cites_source_file"] == 0.5  # the answer is matched to its own question
    assert first.path not in {c.path for _, a in result.answers for c in a.citations}


def test_vllm_loads_a_registered_adapter_by_name_and_answers_under_it(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    from cia_assets.lib.learning.registry import AdapterVersion, spec_for_adapter
    from cia_assets.lib.serving.endpoint import EndpointSpec, choose_endpoint, deploy_endpoint
    from cia_assets_tests.support.fakes import fake_openai

    with fake_openai(lambda request: f"model={request['model']}", model="qwen") as vllm:
        config = write_config([], llm={"engine": "vllm", "base_url": vllm.base_url, "model": "qwen"})
        adapter = AdapterVersion(
            name="cia-code-assistant", version="4", run_id=None, source="file:///x",
            tags={"peft_dir": str(tmp_path / "adapters" / "v4" / "peft")},
        )  # fmt: skip
        spec = spec_for_adapter(EndpointSpec.from_config(config), adapter)
        deploy_endpoint(config, spec=spec)
        assert vllm.adapters == [
            {"lora_name": "cia-code-assistant-v4", "lora_path": str(tmp_path / "adapters" / "v4" / "peft")}
        ]
        record = choose_endpoint(config)
        assert record.request_model == "cia-code-assistant-v4" and record.adapter_version == "4"
        reply = vllm.requests[-1]  # deploy's test completion names the adapter, not the base
        assert reply["model"] == "cia-code-assistant-v4"


def test_the_gate_refuses_answers_that_keep_valid_citations_but_say_the_wrong_thing() -> None:
    """What a challenger trained on corrupted answers writes: the same [1] markers (citation
    validity cannot tell), a citation shuffled to another file and identifiers the sources do
    not hold. Cite-hit, identifier recall and grounded rate drop; the verdict refuses it."""
    from cia_assets.config import PromotionConfig
    from cia_assets.lib.answering.answer import Answer
    from cia_assets.lib.answering.citations import Citation
    from cia_assets.lib.evaluation.heldout import ModelResult
    from cia_assets.lib.evaluation.heldout_run import gated_drops

    cases = [
        EvalCase(question=f"How does {name} work?", reference=f"`{name}` checks `{check}` first [1].",
                 repo="r", path=path, line_start=1, line_end=5, chunk_id=None, origin="synthetic")
        for name, check, path in (("authorize_refund", "Role.MANAGER", "auth.py"),
                                  ("post_entry", "Ledger.balance", "ledger.py"))
    ]  # fmt: skip

    def cite(path: str) -> Citation:
        return Citation(n=1, repo="r", path=path, line_start=1, line_end=5, url=None, commit_sha="c" * 40)

    def answer(text: str, path: str, checked: int, ungrounded: list[str]) -> Answer:
        return Answer(
            text, [cite(path)], "m", "t" * 32, False, grounding_checked=checked, ungrounded=ungrounded
        )

    good, corrupted = ModelResult(name="champion v1", model="m"), ModelResult(name="challenger v2", model="m")
    good.answers += [
        (cases[0], answer("`authorize_refund` checks `Role.MANAGER` [1].", "auth.py", 2, [])),
        (cases[1], answer("`post_entry` checks `Ledger.balance` [1].", "ledger.py", 2, [])),
    ]
    corrupted.answers += [
        (cases[0], answer("`approve_all` skips `Role.ADMIN` [1].", "ledger.py", 2,
                          ["approve_all", "Role.ADMIN"])),
        (cases[1], answer("`post_entry` calls `Ledger.purge` [1].", "ledger.py", 2, ["Ledger.purge"])),
    ]  # fmt: skip
    champion, challenger = good.metrics(), corrupted.metrics()
    assert champion["citation_validity"] == challenger["citation_validity"] == 1.0  # blind to it
    assert (champion["cites_source_file"], challenger["cites_source_file"]) == (1.0, 0.5)
    assert (champion["ref_identifier_recall"], challenger["ref_identifier_recall"]) == (1.0, 0.25)
    assert (champion["grounded_rate"], challenger["grounded_rate"]) == (1.0, 0.25)

    drops = gated_drops(PromotionConfig(), judged=False)  # what rag_eval_results gates on
    verdict = promotion_verdict(
        challenger, champion, challenger_version="2", reference_name="champion", max_drops=drops
    )
    assert not verdict.passed
    failed = {reason.split(":")[0] for reason in verdict.reasons if "below" in reason}
    assert failed == {"cites_source_file", "ref_identifier_recall", "grounded_rate"}
    same = promotion_verdict(
        champion, champion, challenger_version="2", reference_name="champion", max_drops=drops
    )
    assert same.passed


def test_the_fixed_question_set_is_loaded_for_configured_codebases_and_gates_abstention(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    """`evaluation.question_sets`: a set's repo ("owner/name") means the configured codebase of
    that id or last part; others are left out with the reason; a bad row names its file and
    line. A challenger that stops answering "not found" on absent-feature questions is refused
    on abstention (the eval split has no such question), one that keeps it passes."""
    from cia_assets.config import PromotionConfig
    from cia_assets.lib.evaluation.answers.scoring import CaseRow
    from cia_assets.lib.evaluation.answers.sets import AnswerEvalError
    from cia_assets.lib.evaluation.heldout import ModelResult
    from cia_assets.lib.evaluation.heldout_run import gated_drops, load_question_set

    sets = tmp_path / "sets"
    sets.mkdir()
    rows = [
        {"id": "q1", "repo": "acme/payments", "commit": None, "question": "How are refunds authorized?",
         "reference_answer": "`authorize_refund` checks `Role.MANAGER`.", "reference_files": ["auth.py"]},
        {"id": "q2", "repo": "payments", "question": "How is the GraphQL schema stitched?", "absent": True},
        {"id": "q3", "repo": "other/elsewhere", "question": "What does run do?",
         "reference_answer": "It runs.", "reference_files": ["run.py"]},
    ]  # fmt: skip
    (sets / "fixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = write_config(
        [{"url": str(tmp_path / "payments-repo"), "id": "payments"}],
        evaluation={"question_sets": ["sets/fixed.jsonl"]},  # relative to the config file
    )
    assert config.evaluation.question_sets == [sets / "fixed.jsonl"]
    fixed = load_question_set(config)
    assert [(c.case_id, c.repo, c.absent) for c in fixed.cases] == [
        ("q1", "payments", False),
        ("q2", "payments", True),
    ]
    assert fixed.skipped == ("q3: other/elsewhere is not a configured codebase",)

    (sets / "fixed.jsonl").write_text(
        json.dumps(rows[0]) + "\n" + json.dumps({"id": "q9", "repo": "payments"})
    )
    with pytest.raises(AnswerEvalError, match=r"fixed\.jsonl:2: 'question' is missing"):
        load_question_set(config)

    def row(case_id: str, *, absent: bool, not_found: bool, cite_hit: bool | None = None) -> CaseRow:
        return CaseRow(
            case_id=case_id, repo="payments", commit=None, model="m", absent=absent, question="?",
            reference_files=[], cite_hit=cite_hit, recall=None if absent else 1.0, not_found=not_found,
            ungrounded=[], grounding_checked=2,
        )  # fmt: skip

    champion = ModelResult(name="champion v1", model="m")
    champion.set_rows += [row("q1", absent=False, not_found=False, cite_hit=True),
                          row("q2", absent=True, not_found=True)]  # fmt: skip
    invents = ModelResult(name="challenger v2", model="m")
    invents.set_rows += [row("q1", absent=False, not_found=False, cite_hit=True),
                         row("q2", absent=True, not_found=False)]  # fmt: skip
    assert champion.metrics()["set_abstention"] == 1.0 and invents.metrics()["set_abstention"] == 0.0
    assert invents.metrics()["set_cite_hit"] == 1.0 and invents.metrics()["set_false_abstention"] == 0.0
    assert "set_abstention" not in gated_drops(PromotionConfig(), judged=False)
    drops = gated_drops(PromotionConfig(), judged=False, question_set=True)
    verdict = promotion_verdict(
        invents.metrics(), champion.metrics(), challenger_version="2", reference_name="champion",
        max_drops=drops,
    )  # fmt: skip
    assert not verdict.passed
    assert [r.split(":")[0] for r in verdict.reasons if "below" in r] == ["set_abstention"]
    same = promotion_verdict(
        champion.metrics(), champion.metrics(), challenger_version="2", reference_name="champion",
        max_drops=drops,
    )  # fmt: skip
    assert same.passed


def test_a_golden_answer_that_repeats_its_sources_secret_is_stored_without_it() -> None:
    """The source is redacted as the file it is (a YAML password); the answer repeats the value
    in prose, where no detector would see it on its own: it is scrubbed there too."""
    sha = "d" * 40
    config_lines = ["database:", "  host: db.internal", "  password: hunter2hunter2", "  pool: 5"]

    def read(repo: str, commit: str | None, path: str) -> list[str] | None:
        return config_lines if (repo, path) == ("pay", "deploy/config.yaml") else None

    row = {
        "question": "What password does the service use for hunter2hunter2 logins?",
        "answer": "It connects to db.internal with the password hunter2hunter2 [1].",
        "citations": [{"n": 1, "repo": "pay", "path": "deploy/config.yaml", "line_start": 1, "line_end": 4,
                       "url": f"https://git.example.com/pay/blob/{sha}/deploy/config.yaml#L1-L4"}],
    }  # fmt: skip
    example = golden_example(row, read)
    assert example is not None
    assert "hunter2hunter2" not in example.sources[0].text and "host: db.internal" in example.sources[0].text
    assert example.answer == f"It connects to db.internal with the password {PLACEHOLDER} [1]."
    assert "hunter2hunter2" not in example.question


def test_grounded_rate_of_answers_that_name_nothing_checkable() -> None:
    """Nothing named, nothing ungrounded: 1.0 (cite-hit and identifier recall measure what such
    answers leave out); only "not found" answers: not measured."""
    from cia_assets.lib.evaluation.answers.scoring import grounded_rate

    assert grounded_rate(checked=0, ungrounded=0, answered=3) == 1.0
    assert grounded_rate(checked=0, ungrounded=0, answered=0) is None
    assert grounded_rate(checked=4, ungrounded=1, answered=2) == 0.75
