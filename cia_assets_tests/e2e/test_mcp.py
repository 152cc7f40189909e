"""`cia mcp` over real stdio with the official `mcp` client: the tools as an agent sees them,
search with exact lines, answers from the packaged model, and tokens: one that may not read
`payments` gets none of it by search, by answer or by citation; a missing, unknown or
revoked one gets an error and no data."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.observability.traces import TraceStore
from cia_assets_tests.support.cli import ANSWER_JSON_KEYS
from cia_assets_tests.support.fakes import fake_openai
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.mcp_client import Call, CancelledCall, run_client
from cia_assets_tests.support.models import TINY_MODEL
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import GitRepo

TOKEN_ALL = "mcp-token-all-0123456789"
TOKEN_BILLING = "mcp-token-billing-0123456789"
PAYMENTS_RULE = "user.role == 'manager'"  # a line only the payments chunk holds

PAYMENTS_FILES: dict[str, str | bytes | None] = {
    "payments/refunds.py": (
        '"""Refund rules of the payments service."""\n'
        "\n"
        "\n"
        "def authorize_refund(user, amount):\n"
        '    """A refund is authorized when the user is a manager or the amount is under 50."""\n'
        f"    if {PAYMENTS_RULE}:\n"
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
BILLING_FILES: dict[str, str | bytes | None] = {
    "billing/invoice.py": (
        "def render_invoice_total(lines):\n"
        '    """The invoice total is the sum of line amounts plus tax."""\n'
        "    return sum(line.amount for line in lines) * 1.2\n"
        "\n"
        "\n"
        "def credit_note_for_refund(invoice, amount):\n"
        '    """A refund is recorded on the invoice as a credit note."""\n'
        "    return {'invoice': invoice.number, 'credit': -amount}\n"
    ),
}


def _write_config(
    path: Path, root: Path, urls: dict[str, str], tokens: list[dict[str, Any]], port: int, **sections: Any
) -> Path:
    """cia.yaml for the repos at `urls`, the tiny packaged model on `port`; `sections` replace
    whole sections (another `llm`, `answering` bars)."""
    raw = {
        "data_dir": str(root / "data"),
        "codebases": [{"url": url, "id": repo} for repo, url in urls.items()],
        "embedding": {"path": str(root / "model")},
        "llm": {"model": TINY_MODEL, "port": port, "max_answer_tokens": 64, "drain_s": 1},
        "chat": {"tokens": tokens},
        **sections,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _remote(root: Path, name: str, files: dict[str, str | bytes | None]) -> GitRepo:
    """A git repo under `root/remotes` with `files` in one commit."""
    repo = GitRepo(root / "remotes" / name)
    repo.path.mkdir(parents=True)
    repo.git("init", "-q", "-b", "main")
    repo.commit(dict(files), "initial")
    return repo


TOKENS = [
    {"name": "all", "token": TOKEN_ALL, "repos": ["*"]},
    {"name": "billing-only", "token": TOKEN_BILLING, "repos": ["billing"]},
]
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "cia.yaml"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[CiaConfig]:
    """Both repos indexed for real, through the Dagster graph."""
    from cia_assets.lib.serving.endpoint import stop_local_endpoint

    root = tmp_path_factory.mktemp("mcp")
    (root / "model").symlink_to(model_dir)
    urls = {
        name: _remote(root, name, files).url
        for name, files in (("payments", PAYMENTS_FILES), ("billing", BILLING_FILES))
    }
    config = load_config(_write_config(root / "cia.yaml", root, urls, TOKENS, free_port()))
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    try:
        instance = dg.DagsterInstance.ephemeral()
        for repo_id in urls:
            materialize_repo(config, instance, repo_id)
        yield config
    finally:
        stop_local_endpoint(config)  # started on demand by the server's first answer
        if old_home is not None:
            os.environ["DAGSTER_HOME"] = old_home


def _trace(config: CiaConfig, trace_id: str) -> dict[str, Any]:
    stored = TraceStore(DataLayout(config.data_dir).traces).get_trace(trace_id)
    assert stored is not None, trace_id
    return stored


def test_tools_search_and_answer_with_a_full_access_token(indexed: CiaConfig) -> None:
    out = run_client(
        indexed.config_path,
        TOKEN_ALL,
        [
            ("search_code", {"query": "authorize_refund", "k": 3}),
            ("search_code", {"query": "invoice total", "repo": "billing", "k": 1}),
            ("ask_codebase", {"question": "When is a refund authorized?"}),
        ],
    )
    tools = out["tools"]
    assert set(tools) == {"search_code", "ask_codebase"}
    search_schema, ask_schema = tools["search_code"].input_schema, tools["ask_codebase"].input_schema
    assert search_schema["required"] == ["query"]
    assert set(search_schema["properties"]) == {"query", "repo", "k"}
    k_spec = search_schema["properties"]["k"]
    assert (k_spec["minimum"], k_spec["maximum"], k_spec["default"]) == (1, 50, 10)
    assert ask_schema["required"] == ["question"] and set(ask_schema["properties"]) == {"question", "repo"}
    for tool in tools.values():
        assert "token may read" in (tool.description or "")  # what the agent reads
        assert all(spec.get("description") for spec in tool.input_schema["properties"].values())
        assert tool.annotations is not None and tool.annotations.read_only_hint

    (error, text, structured), (error2, text2, _), (ask_error, ask_text, ask_structured) = out["results"]
    assert not error, text
    result = json.loads(text)
    assert result == structured  # the same data as text (for any client) and as structured content
    assert result["repos"] == ["payments", "billing"]
    top = result["hits"][0]
    assert (top["repo"], top["path"], top["line_start"], top["line_end"], top["symbol"]) == (
        "payments", "payments/refunds.py", 4, 8, "authorize_refund",
    )  # fmt: skip
    assert top["text"].startswith("def authorize_refund(user, amount):") and PAYMENTS_RULE in top["text"]
    assert top["url"] == (
        f"{indexed.chat.resolved_public_url}/source/payments/{top['commit_sha']}/payments/refunds.py#L4-L8"
    )
    assert len(top["commit_sha"]) == 40 and top["truncated"] is False
    assert not error2, text2
    only = json.loads(text2)
    assert only["repos"] == ["billing"] and [(h["path"], h["line_start"]) for h in only["hits"]] == [
        ("billing/invoice.py", 1)
    ]

    assert not ask_error, ask_text
    answer = json.loads(ask_text)
    assert answer == ask_structured
    assert set(answer) == {*ANSWER_JSON_KEYS, "sources"}
    assert answer["model"] == TINY_MODEL
    # The sources reached the client as a progress notification before the answer returned.
    assert answer["sources"] and {"path", "line_start", "line_end", "symbol", "preview"} <= set(
        answer["sources"][0]
    )
    [(call, arrived, message)] = out["progress"]
    assert call == 2 and arrived < out["returned_at"][2]
    assert message.startswith("Sources:\n[1] ") and answer["sources"][0]["path"] in message
    for citation in answer["citations"]:
        assert set(citation) == {"n", "repo", "path", "line_start", "line_end", "url"}
        assert f"[{citation['n']}]" in answer["answer"]
    assert answer["citations"] or answer["answer"].startswith("Not found in the indexed code")
    trace = _trace(indexed, answer["trace_id"])
    assert (trace["interface"], trace["token_name"]) == ("mcp", "all")
    assert {hit["repo"] for hit in trace["hits"]} == {"payments", "billing"}  # this token reads both


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_a_token_without_payments_gets_none_of_it(indexed: CiaConfig) -> None:
    out = run_client(
        indexed.config_path,
        TOKEN_BILLING,
        [
            ("search_code", {"query": "authorize_refund manager refund", "k": 10}),
            ("search_code", {"query": "authorize_refund", "repo": "payments"}),
            ("search_code", {"query": "authorize_refund", "repo": "no-such-repo"}),
            ("ask_codebase", {"question": "When does authorize_refund authorize a refund?"}),
            ("ask_codebase", {"question": "When is a refund authorized?", "repo": "payments"}),
        ],
    )
    (search_error, search_text, _), denied, unknown, (ask_error, ask_text, _), ask_denied = out["results"]
    assert not search_error, search_text
    found = json.loads(search_text)
    assert found["repos"] == ["billing"] and found["hits"]
    assert {hit["repo"] for hit in found["hits"]} == {"billing"}
    assert PAYMENTS_RULE not in search_text and "payments/" not in search_text
    # Naming a repo outside the grant is an error naming it, whether or not the repo exists.
    assert denied[0] and "may not read repo(s): payments" in denied[1]
    assert unknown[0] and "may not read repo(s): no-such-repo" in unknown[1]
    assert ask_denied[0] and "may not read repo(s): payments" in ask_denied[1]
    for _, text, _ in (denied, unknown, ask_denied):
        assert PAYMENTS_RULE not in text and "refunds.py" not in text

    assert not ask_error, ask_text
    answer = json.loads(ask_text)
    assert all(citation["repo"] == "billing" for citation in answer["citations"]), answer
    assert PAYMENTS_RULE not in answer["answer"] and "payments/" not in answer["answer"]
    assert answer["citations"] or answer["answer"].startswith("Not found in the indexed code")
    # What the model was shown: retrieval never opened the payments collection.
    trace = _trace(indexed, answer["trace_id"])
    assert trace["token_name"] == "billing-only" and trace["repos"] == ["billing"]
    assert trace["hits"] and {hit["repo"] for hit in trace["hits"]} == {"billing"}


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_a_missing_unknown_or_revoked_token_gets_an_error_and_no_data(indexed: CiaConfig) -> None:
    for token, message in ((None, "no token: set CIA_TOKEN"), ("not-a-real-token-123", "unknown token")):
        out = run_client(
            indexed.config_path,
            token,
            [
                ("search_code", {"query": "authorize_refund"}),
                ("ask_codebase", {"question": "What is a refund?"}),
            ],
        )
        assert set(out["tools"]) == {"search_code", "ask_codebase"}  # listing needs no token
        for is_error, text, structured in out["results"]:
            assert is_error and message in text and structured is None
            assert "authorize_refund(" not in text

    # Revoked while the server runs: the next call is refused, without a restart.
    root = indexed.config_path.parent
    urls = {repo: indexed.codebase(repo).url for repo in indexed.repo_ids}
    port = indexed.llm.port
    revocable = _write_config(root / "cia-revocable.yaml", root, urls, TOKENS, port)
    out = run_client(
        revocable,
        TOKEN_BILLING,
        [
            ("search_code", {"query": "render_invoice_total", "k": 1}),
            lambda: _write_config(revocable, root, urls, TOKENS[:1], port),
            ("search_code", {"query": "render_invoice_total", "k": 1}),
        ],
    )
    (before_error, before_text, _), (after_error, after_text, _) = out["results"]
    assert not before_error and json.loads(before_text)["hits"][0]["path"] == "billing/invoice.py"
    assert after_error and "unknown token" in after_text and "invoice" not in after_text


def test_the_token_a_client_presents_never_defines_what_is_accepted(
    indexed: CiaConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = indexed.config_path.parent
    urls = {repo: indexed.codebase(repo).url for repo in indexed.repo_ids}
    port = indexed.llm.port
    # chat.tokens exactly as the shipped cia.yaml writes it (${VAR:-default}, unexpanded) ...
    shipped_tokens = yaml.safe_load(SHIPPED_CONFIG.read_text())["chat"]["tokens"]
    shipped = _write_config(root / "cia-shipped-tokens.yaml", root, urls, shipped_tokens, port)
    # ... and as it used to, on the variable the client's credential comes from.
    legacy_tokens = [{"name": "legacy", "token": "${CIA_TOKEN:-legacy-default-token}", "repos": ["*"]}]
    legacy = _write_config(root / "cia-legacy-tokens.yaml", root, urls, legacy_tokens, port)
    with monkeypatch.context() as patch:
        # Whatever a shell or a client exports as CIA_TOKEN, the shipped file accepts its own.
        patch.setenv("CIA_TOKEN", "abc")
        patch.delenv("CIA_SERVER_TOKEN", raising=False)
        accepted = {shipped: load_config(shipped).chat.tokens[0].token, legacy: "legacy-default-token"}
    assert accepted[shipped] == "cia-local-dev-token"
    calls: list[Call] = [
        ("search_code", {"query": "render_invoice_total", "k": 1}),
        ("search_code", {"query": "authorize_refund", "k": 1}),
    ]
    for config_path in (shipped, legacy):
        # A short one used to fail config validation while loading: no server, "Connection closed".
        for token in ("abc", "client-chosen-token-123"):
            out = run_client(config_path, token, calls)
            assert set(out["tools"]) == {"search_code", "ask_codebase"}  # the server is up
            for is_error, text, structured in out["results"]:  # every call refused, still up
                assert is_error and "unknown token" in text and structured is None, (config_path, text)
                assert "invoice" not in text and "refund" not in text
        valid = run_client(config_path, accepted[config_path], calls)["results"]
        (error, text, _), (error2, text2, _) = valid
        assert not error and json.loads(text)["hits"][0]["path"] == "billing/invoice.py"
        assert not error2 and json.loads(text2)["hits"][0]["path"] == "payments/refunds.py"


def test_a_cancelled_answer_stops_generating_and_the_next_question_is_answered(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's user stops `ask_codebase` (or the client's 60 s timeout passes: MCP clients
    then cancel the call): the answer stops generating. Answers take turns on the model, so an
    answer left running made the next question wait for its end, and held the model meanwhile."""
    long_answer = " ".join(["`render_invoice_total` sums the line amounts [1]."] * 60)  # ~12 s

    def reply(request: dict[str, Any]) -> str:
        question = request["messages"][-1]["content"].rsplit("Question:", 1)[-1]  # after the sources
        return long_answer if "total" in question else "A refund is recorded as a credit note [1]."

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "model").symlink_to(model_dir)
    urls = {"billing": _remote(tmp_path, "billing", BILLING_FILES).url}
    with fake_openai(reply, model="remote-coder", drip_s=0.2) as fake:
        config_path = _write_config(
            tmp_path / "cia.yaml", tmp_path, urls, TOKENS, free_port(),
            # The model behind an OpenAI-compatible endpoint; no odds request before the answer.
            llm={"engine": "openai", "base_url": fake.base_url, "model": "remote-coder"},
            answering={"abstain_not_found_odds": 0.0, "abstain_unsupported_odds": 0.0},
        )  # fmt: skip
        materialize_repo(load_config(config_path), dg.DagsterInstance.ephemeral(), "billing")
        out = run_client(
            config_path,
            TOKEN_ALL,
            [
                CancelledCall("ask_codebase", {"question": "How is the invoice total computed?"}),
                ("ask_codebase", {"question": "How is a refund recorded on an invoice?"}),
            ],
        )
        cancelled, (error, text, _) = out["results"]
        streamed = [r for r in fake.requests if r.get("stream")]
        assert cancelled == (None, "cancelled", None) and len(streamed) == 2
        # The cancelled answer's stream was dropped by its reader, not read to its end.
        assert fake.abandoned_streams == 1
    assert not error, text
    answer = json.loads(text)
    assert answer["answer"].startswith("A refund is recorded as a credit note") and answer["citations"]
