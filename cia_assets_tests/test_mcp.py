"""The MCP server over real stdio with the official client: tools, search, answers, and a
token that cannot reach a repo it lacks."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from cia_assets.config import CiaConfig, load_config
from cia_assets_tests.test_answering import (
    BILLING_FILES,
    PAYMENTS_FILES,
    TOKEN_ALL,
    TOKEN_BILLING,
    _free_port,
    _git_repo,
)


@pytest.fixture(scope="module")
def mcp_config(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[CiaConfig]:
    import dagster as dg

    from cia_assets.lib.endpoint import stop_local_endpoint
    from cia_assets_tests.conftest import materialize_repo

    root = tmp_path_factory.mktemp("mcp")
    payments = _git_repo(root, "payments", PAYMENTS_FILES)
    billing = _git_repo(root, "billing", BILLING_FILES)
    path = root / "cia.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "codebases": [{"url": payments.url, "id": "payments"}, {"url": billing.url, "id": "billing"}],
                "embedding": {"path": str(model_dir)},
                "llm": {"port": _free_port(), "max_answer_tokens": 64},
                "chat": {
                    "tokens": [
                        {"name": "all", "token": TOKEN_ALL, "repos": ["*"]},
                        {"name": "billing-only", "token": TOKEN_BILLING, "repos": ["billing"]},
                    ]
                },
            }
        )
    )
    config = load_config(path)
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    try:
        instance = dg.DagsterInstance.ephemeral()
        for repo in ("payments", "billing"):
            materialize_repo(config, instance, repo)
        yield config
    finally:
        stop_local_endpoint(config)
        if old_home is not None:
            os.environ["DAGSTER_HOME"] = old_home


def call_tools(
    config: CiaConfig, token: str | None, calls: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Start `cia mcp` as a client would, list its tools and make the calls."""

    async def run() -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k != "CIA_TOKEN"}
        if token is not None:
            env["CIA_TOKEN"] = token
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "cia_assets.cli", "mcp", "--config", str(config.config_path)],
            env=env,
        )
        out: dict[str, Any] = {"results": []}
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            out["tools"] = {tool.name: tool for tool in (await session.list_tools()).tools}
            for name, arguments in calls:
                result = await session.call_tool(name, arguments)
                text = "".join(getattr(part, "text", "") for part in result.content)
                out["results"].append((result.is_error, text))
        return out

    return anyio.run(run)


def test_tools_are_listed_and_search_finds_the_function(mcp_config: CiaConfig) -> None:
    out = call_tools(mcp_config, TOKEN_ALL, [("search_code", {"query": "authorize_refund", "k": 3})])
    assert set(out["tools"]) == {"search_code", "ask_codebase"}
    schema = (
        out["tools"]["search_code"].input_schema
        if hasattr(out["tools"]["search_code"], "input_schema")
        else out["tools"]["search_code"].inputSchema
    )
    assert schema["required"] == ["query"] and set(schema["properties"]) == {"query", "repo", "k"}
    is_error, text = out["results"][0]
    assert not is_error, text
    hits = json.loads(text)
    assert (hits[0]["repo"], hits[0]["path"], hits[0]["line_start"], hits[0]["line_end"]) == (
        "payments",
        "payments/auth.py",
        4,
        8,
    )
    assert "def authorize_refund" in hits[0]["text"]


def test_a_restricted_token_gets_nothing_of_another_repo(mcp_config: CiaConfig) -> None:
    out = call_tools(
        mcp_config,
        TOKEN_BILLING,
        [
            ("search_code", {"query": "authorize_refund manager refund", "k": 10}),
            ("search_code", {"query": "refund", "repo": "payments"}),
            ("ask_codebase", {"question": "When is a refund authorized by authorize_refund?"}),
        ],
    )
    (search_error, search_text), (denied, denied_text), (ask_error, ask_text) = out["results"]
    assert not search_error and {hit["repo"] for hit in json.loads(search_text)} == {"billing"}
    assert denied and "may not read repo(s): payments" in denied_text
    assert not ask_error, ask_text
    answer = json.loads(ask_text)
    assert set(answer) == {"answer", "citations", "model", "trace_id"}
    assert all(c["repo"] == "billing" for c in answer["citations"])
    assert "payments/" not in answer["answer"]


def test_a_missing_or_unknown_token_gets_an_error(mcp_config: CiaConfig) -> None:
    for token in (None, "not-a-real-token-123"):
        out = call_tools(mcp_config, token, [("search_code", {"query": "refund"})])
        is_error, text = out["results"][0]
        assert is_error and "CIA_TOKEN" in text
