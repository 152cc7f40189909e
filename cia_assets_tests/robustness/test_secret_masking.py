"""Secrets in indexed code are not shown to people (issue 18 item 6): search results (Python,
MCP's `search_code`), an answer's sources and text, and the source view show <REDACTED>
where a key, token or password stands, lines kept; `retrieval.mask_secrets: false` (a
deployment's choice) shows them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import httpx
import pytest

from cia_assets.config import CiaConfig
from cia_assets_tests.support.fakes import fake_openai
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.mcp_client import run_client
from cia_assets_tests.support.net import free_port, running_app
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo
from cia_assets_tests.support.secrets import SECRET_FILES, SECRETS, leaked

pytestmark = pytest.mark.robustness

TOKEN = "mask-token-0123456789"


def _echo_the_prompt(request: dict[str, Any]) -> str:
    """A model that repeats the code it was shown: what reaches it is what an answer can say."""
    return "The code shows [1]: " + " ".join(str(m.get("content", "")) for m in request["messages"])


@pytest.fixture
def secret_repo(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> Iterator[Callable[..., CiaConfig]]:
    """A config factory over one indexed repo holding planted secrets, answered by the echo."""
    from cia_assets.lib.serving.endpoint import deploy_endpoint

    repo = make_repo("payments", {**SAMPLE_FILES, **SECRET_FILES})
    with fake_openai(_echo_the_prompt, model="echo") as echo:

        def configure(**retrieval: object) -> CiaConfig:
            config = write_config(
                [{"url": repo.url, "id": "payments"}],
                llm={"engine": "openai", "base_url": echo.base_url, "model": "echo"},
                answering={"abstain_not_found_odds": 0, "abstain_unsupported_odds": 0},
                retrieval=retrieval,
                chat={"port": free_port(), "tokens": [{"name": "eng", "token": TOKEN, "repos": ["*"]}]},
            )
            deploy_endpoint(config)
            return config

        materialize_repo(configure(), dg.DagsterInstance.ephemeral(), "payments")
        yield configure


QUERIES = (
    "AWS access key GitHub token Stripe key database password",
    "signing key PEM",
    "ledger database password",
)


def _search_texts(config: CiaConfig) -> str:
    from cia_assets.lib.core.project import Project
    from cia_assets.lib.retrieval.search import search_code

    with Project(config) as project:
        return "\n".join(hit.text for q in QUERIES for hit in search_code(project, q, k=10))


def test_search_results_are_masked_unless_the_deployment_turns_it_off(
    secret_repo: Callable[..., CiaConfig],
) -> None:
    shown = _search_texts(secret_repo())
    assert "<REDACTED>" in shown and "SIGNING_SALT" in shown  # found, and masked
    assert leaked(shown) == []
    assert set(leaked(_search_texts(secret_repo(mask_secrets=False)))) == set(SECRETS)


def test_mcp_search_code_shows_no_secret(secret_repo: Callable[..., CiaConfig]) -> None:
    config = secret_repo()
    out = run_client(config.config_path, TOKEN, [("search_code", {"query": q, "k": 10}) for q in QUERIES])
    texts = []
    for error, text, _ in out["results"]:
        assert not error, text
        texts += [hit["text"] for hit in json.loads(text)["hits"]]
    joined = "\n".join(texts)
    assert "<REDACTED>" in joined and leaked(joined) == []


def test_answers_their_sources_and_the_source_view_show_no_secret(
    secret_repo: Callable[..., CiaConfig],
) -> None:
    from cia_assets.lib.sources.git_sync import read_snapshot

    config = secret_repo()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_app(config.config_path, config.chat.port) as base:
        question = {"question": "Which AWS key and database password are used?"}
        streamed = httpx.post(f"{base}/api/ask", headers=auth, json=question, timeout=60).text
        assert "event: final" in streamed and "<REDACTED>" in streamed  # the code was shown, masked
        assert leaked(streamed) == []
        snapshot = read_snapshot(config.layout.snapshot("payments"))
        assert snapshot is not None
        sha = snapshot.commit_sha
        for path, source in SECRET_FILES.items():
            view = httpx.get(f"{base}/api/source/payments/{sha}/{path}", headers=auth)
            assert view.status_code == 200, path
            lines = view.json()["lines"]
            assert len(lines) == len(str(source).split("\n"))  # the same lines, for citations
            assert leaked("\n".join(lines)) == [], path
