"""Nothing secret leaves this machine: every request to a model endpoint off it passes the
egress client (`serving.egress`), which redacts with file-aware detection. A capture server
stands on each path (a remote answering model, the teacher answering evaluation questions,
the judge, the re-ranker; the synthetic teacher is in test_datasets) and receives none of
the planted secrets (support/secrets.py: an AWS key, a GitHub token, a PEM key, passwords in
code, in YAML and in a shell environment), while the code around them still goes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.answering.answer import AskRequest
from cia_assets.lib.answering.citations import format_sources
from cia_assets.lib.answering.context import ContextBlock
from cia_assets.lib.core.access import Grant
from cia_assets.lib.core.project import Project
from cia_assets.lib.learning.redaction import redact
from cia_assets.lib.serving.egress import (
    EgressRefused,
    async_openai_client,
    openai_client,
    redact_request_body,
)
from cia_assets_tests.support.fakes import FakeOpenAI, fake_openai, ragas_judge_reply
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo
from cia_assets_tests.support.secrets import SECRET_FILES, SECRETS, leaked

QUESTIONS = (
    "Which password does the payments service use for the ledger database?",
    "Which AWS access key and GitHub token does the payments service use?",
    "How is the receipt signing key loaded?",
)


def _sent(fake: FakeOpenAI) -> str:
    """Everything the server received, raw and as parsed JSON (unescaped)."""
    return fake.received_text() + json.dumps(fake.requests, ensure_ascii=False)


@pytest.fixture(scope="module")
def secret_repo(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[CiaConfig]:
    from cia_assets.lib.serving.endpoint import stop_local_endpoint

    root = tmp_path_factory.mktemp("egress")
    repo = GitRepo(root / "payments")
    repo.path.mkdir(parents=True)
    repo.git("init", "-q", "-b", "main")
    repo.commit({**SAMPLE_FILES, **SECRET_FILES}, "initial")
    raw = {
        "data_dir": str(root / "data"),
        "codebases": [{"url": repo.url, "id": "payments"}],
        "embedding": {"path": str(model_dir)},
        "llm": {"port": free_port(), "max_answer_tokens": 64},
    }
    path = root / "cia.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments")
    try:
        yield config
    finally:
        stop_local_endpoint(config)


def _blocks() -> list[ContextBlock]:
    return [
        ContextBlock(
            n=n,
            repo="payments",
            path=path,
            line_start=1,
            line_end=str(text).count("\n"),
            commit_sha="0" * 40,
            web_url=None,
            language="",
            symbol=None,
            text=str(text),
        )
        for n, (path, text) in enumerate(SECRET_FILES.items(), start=1)
    ]


# -- the redactor reads each file as its type --------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "line", "kept"),
    [
        ("deploy/config.yaml", "  password: hunter2hunter2", "  password: "),
        (".env", "DB_PASSWORD=s3cretValue99", "DB_PASSWORD="),
        (".env.production", "DB_PASSWORD=s3cretValue99", "DB_PASSWORD="),
        ("deploy/run.sh", "export DB_PASSWORD=s3cretValue99", "export DB_PASSWORD="),
        ("Dockerfile", "ENV DB_PASSWORD=s3cretValue99", "ENV DB_PASSWORD="),
        ("settings.py", 'DB_PASSWORD = "s3cretValue99"', 'DB_PASSWORD = "'),
        (None, "password: hunter2hunter2", "password: "),  # text of no file: read as config too
    ],
)
def test_secrets_are_found_in_each_files_format(filename: str | None, line: str, kept: str) -> None:
    redacted = redact(line, filename=filename)
    assert redacted.count == 1 and redacted.text.startswith(kept) and "<REDACTED>" in redacted.text
    assert not leaked(redacted.text)


@pytest.mark.parametrize("line", ["    password: str", "token = new_token", "api_key = settings.api_key"])
def test_a_name_in_source_code_is_not_a_secret(line: str) -> None:
    assert redact(line, filename="payments/models.py").count == 0


# -- the egress client ---------------------------------------------------------------------------


def test_the_egress_client_redacts_only_what_goes_off_this_machine() -> None:
    prompt = "Answer from the sources.\n\n" + format_sources(_blocks())
    messages = [{"role": "user", "content": prompt}]
    with fake_openai(lambda _: "ok", model="remote") as server:
        for url in (server.base_url, server.off_machine_url):
            client = openai_client(url, api_key="k", timeout_s=10, max_retries=0)
            assert client.chat.completions.create(model="remote", messages=messages).choices  # type: ignore[arg-type]
            client.close()
        local, remote = server.requests
    # On this machine nothing is changed; off it, no secret arrives and the code around does.
    assert local["messages"][0]["content"] == prompt
    sent = json.dumps(remote, ensure_ascii=False)
    assert not leaked(sent) and sent.count("<REDACTED>") >= len(SECRETS)
    for still_there in (
        "def database_url(host):",
        "host: ledger-db.internal",
        "export DB_HOST=ledger-db.internal",
    ):
        assert still_there in remote["messages"][0]["content"]

    async def ask(url: str) -> None:
        async with async_openai_client(url, api_key=None, timeout_s=10, max_retries=0) as client:
            await client.chat.completions.create(model="remote", messages=messages)  # type: ignore[arg-type]

    with fake_openai(lambda _: "ok", model="remote") as server:
        asyncio.run(ask(server.off_machine_url))
    assert server.requests and not leaked(_sent(server))

    with pytest.raises(EgressRefused, match="not JSON"):
        redact_request_body(b"AKIAIOSFODNN7EXAMPLE", "api.example.com")


# -- every path to a model ------------------------------------------------------------------------


def _answer_reply(request: dict[str, Any]) -> str:
    return "The database password is read from `deploy/config.yaml` [1]."


def test_a_remote_answering_model_reads_no_secret(secret_repo: CiaConfig) -> None:
    from cia_assets.lib.answering.answerer import Answerer
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

    with fake_openai(_answer_reply, model="remote-coder") as remote:
        llm = secret_repo.llm.model_copy(
            update={"engine": "openai", "base_url": remote.off_machine_url, "model": "remote-coder"}
        )
        config = secret_repo.model_copy(update={"llm": llm})
        endpoint = EndpointRecord(
            version=1, spec=EndpointSpec.from_config(config), base_url=remote.off_machine_url,
            started_at="2026-12-06T00:00:00Z", origin="deploy",
        )  # fmt: skip
        answerer = Answerer(config, endpoint=endpoint)
        try:
            answers = [
                answerer.ask(AskRequest(question=q, grant=Grant(name="all", repos=("payments",))))
                for q in QUESTIONS
            ]
        finally:
            answerer.close()
    sent = _sent(remote)
    assert remote.requests and not leaked(sent), leaked(sent)
    # The files that hold them were in the prompts, redacted.
    assert "ledger-db.internal" in sent and "<REDACTED>" in sent
    assert all(a.contexts for a in answers)


def test_the_teacher_answering_evaluation_questions_reads_no_secret(secret_repo: CiaConfig) -> None:
    from cia_assets.lib.evaluation.heldout import EvalCase
    from cia_assets.lib.evaluation.heldout_run import answer_with_teacher

    cases = [
        EvalCase(
            repo="payments",
            path="deploy/config.yaml",
            line_start=1,
            line_end=5,
            question=q,
            reference="From deploy/config.yaml.",
            chunk_id=None,
            origin="synthetic",
        )
        for q in QUESTIONS
    ]
    with fake_openai(_answer_reply, model="teacher-large") as teacher:
        datasets = secret_repo.datasets.model_copy(
            update={"teacher": secret_repo.datasets.teacher.model_copy(
                update={"base_url": teacher.off_machine_url, "model": "teacher-large"})}
        )  # fmt: skip
        result = answer_with_teacher(secret_repo.model_copy(update={"datasets": datasets}), cases, (), print)
    assert len(result.answers) == len(cases) and not result.errors
    sent = _sent(teacher)
    assert teacher.requests and not leaked(sent) and "ledger-db.internal" in sent


def test_a_remote_judge_reads_no_secret(secret_repo: CiaConfig, model_dir: Path) -> None:
    from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint, RagSample, score_answers
    from cia_assets.lib.indexing.embeddings import PACKAGED_MODEL, Embedder

    # What an answer's contexts are: its sources as the model was shown them, one block each.
    samples = [
        RagSample(
            question=QUESTIONS[0],
            answer=f"The password is {SECRETS['yaml_password']}, set in `deploy/config.yaml` [1].",
            contexts=[format_sources([block]) for block in _blocks()],
            reference=f"deploy/config.yaml sets password {SECRETS['yaml_password']}.",
        )
    ]
    with fake_openai(ragas_judge_reply, model="judge") as judge:
        endpoint = JudgeEndpoint(judge.off_machine_url, "judge", "k", 30.0)
        report = score_answers(samples, endpoint, Embedder(PACKAGED_MODEL, model_dir, threads=1))
    assert report.scores and judge.requests
    sent = _sent(judge)
    assert not leaked(sent), leaked(sent)
    assert "ledger-db.internal" in sent


def test_a_remote_reranker_reads_no_secret(
    secret_repo: CiaConfig, project_of: Callable[[CiaConfig], Project]
) -> None:
    from cia_assets.lib.retrieval.search import search_files

    with fake_openai(lambda _: "yes", model="reranker") as server:
        retrieval = secret_repo.retrieval.model_copy(
            update={"reranker": secret_repo.retrieval.reranker.model_copy(
                update={"base_url": server.off_machine_url, "model": "reranker"})}
        )  # fmt: skip
        project = project_of(secret_repo.model_copy(update={"retrieval": retrieval}))
        assert project.reranker is not None
        for question in QUESTIONS:
            assert search_files(project, question)
    sent = _sent(server)
    assert server.requests and not leaked(sent), leaked(sent)
    assert "ledger-db.internal" in sent
