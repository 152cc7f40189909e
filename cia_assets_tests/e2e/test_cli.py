"""The `cia` console script as people and our scripts call it, in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cia_assets.apps.cli import main
from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.answering.answer import Answer, AnswerDelta, AnswerSources, AskRequest
from cia_assets.lib.answering.citations import Citation, SourcePreview, tidy_answer
from cia_assets.lib.core.access import Grant
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.observability.traces import TraceStore
from cia_assets_tests.support.cli import ANSWER_JSON_KEYS, CIA, cia
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.repos import GIT_ENV, SAMPLE_FILES, GitRepo


def test_index_and_search_json_shapes(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    payments = make_repo("payments", dict(SAMPLE_FILES))
    billing = make_repo("billing", {"invoice.py": "def render_invoice(order):\n    return str(order)\n"})
    config = write_config(
        [
            {"url": payments.url, "web_url": "https://git.example.com/acme/payments"},
            {"url": billing.url},
        ]
    )
    indexed = cia("index", "--config", str(config.config_path), "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert "[1/2] indexing payments" in indexed.stderr and "[2/2] billing:" in indexed.stderr
    summary = json.loads(indexed.stdout)
    by_repo = {entry["repo"]: entry for entry in summary["repos"]}
    assert set(by_repo) == {"payments", "billing"}
    payments_entry = by_repo["payments"]
    assert payments_entry["sha"] == payments.git("rev-parse", "HEAD")
    assert payments_entry["files"] == 4
    assert payments_entry["embedded"] == payments_entry["chunks"] > 0
    assert payments_entry["reused"] == 0
    assert payments_entry["skipped"] == {}

    again = cia("index", "payments", "--config", str(config.config_path), "--json")
    assert again.returncode == 0, again.stderr
    entry = json.loads(again.stdout)["repos"][0]
    assert (entry["embedded"], entry["reused"]) == (0, payments_entry["chunks"])

    found = cia("search", "check_permission", "--config", str(config.config_path), "--json", "-k", "3")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3
    assert set(hits[0]) == {"repo", "path", "line_start", "line_end", "symbol", "language", "score", "url"}
    assert (hits[0]["path"], hits[0]["line_start"], hits[0]["line_end"]) == ("payments/auth.py", 6, 10)
    assert hits[0]["url"] == (
        f"https://git.example.com/acme/payments/blob/{payments_entry['sha']}/payments/auth.py#L6-L10"
    )

    only_billing = cia(
        "search", "check_permission", "--repo", "billing", "--config", str(config.config_path), "--json"
    )
    assert {hit["repo"] for hit in json.loads(only_billing.stdout)} == {"billing"}
    billing_hit = json.loads(only_billing.stdout)[0]
    # A file:// remote has no web UI: the link opens the cited lines on the chat app.
    assert billing_hit["url"] == (
        f"http://127.0.0.1:8600/source/billing/{by_repo['billing']['sha']}/{billing_hit['path']}"
        f"#L{billing_hit['line_start']}-L{billing_hit['line_end']}"
    )

    # The Dagster runs are in the instance the UI reads.
    assert any((tmp_path / "dagster_home").iterdir())

    plain = cia("search", "render invoice", "--config", str(config.config_path))
    assert plain.returncode == 0
    billing_sha = by_repo["billing"]["sha"]
    assert f"http://127.0.0.1:8600/source/billing/{billing_sha}/invoice.py#L1-L2" in plain.stdout


def test_errors_name_the_input(write_config: Callable[..., CiaConfig], tmp_path: Path) -> None:
    config = write_config([{"url": "file:///nonexistent/ghost.git"}])
    unknown = cia("index", "nope", "--config", str(config.config_path))
    assert unknown.returncode == 2
    assert "unknown repo 'nope'" in unknown.stderr and "ghost" in unknown.stderr

    unreachable = cia("index", "--config", str(config.config_path), "--json")
    assert unreachable.returncode == 1
    entry = json.loads(unreachable.stdout)["repos"][0]
    assert entry["repo"] == "ghost"
    assert "could not fetch" in entry["error"]

    not_indexed = cia("search", "anything", "--config", str(config.config_path))
    assert not_indexed.returncode == 2
    assert "nothing indexed yet" in not_indexed.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("data_dir: d\ncodebases:\n  - branch: main\n")
    broken = cia("index", "--config", str(bad))
    assert broken.returncode == 2
    assert f"{bad}: codebases[0].url: Field required" in broken.stderr


def test_dev_outside_a_checkout_points_dagster_at_the_installed_package(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    """`cia dev` itself, inside the checkout, is run end to end in test_run_path.py."""
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from cia_assets.apps.cli import dev_workspace

    config = write_config([{"url": "file:///nonexistent/ghost.git"}])
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    workspace = dev_workspace(config, home)
    assert workspace == home / "workspace.yaml"
    origins = WorkspaceFileTarget(paths=[str(workspace)]).create_origins()
    assert [origin.location_name for origin in origins] == ["cia_assets"]
    (tmp_path / "workspace.yaml").write_text("load_from: []\n")
    assert dev_workspace(config, home) == tmp_path / "workspace.yaml"


# ---- cia ask, as the owner of the data dir or as a token --------------------------------------

BILLING_TOKEN = "billing-only-token-0123"
BILLING_FILES: dict[str, str | bytes | None] = {
    "billing/invoice.py": (
        "def render_invoice_total(lines):\n"
        '    """The invoice total is the sum of line amounts plus tax."""\n'
        "    return sum(line.amount for line in lines) * 1.2\n"
    ),
}


@pytest.fixture(scope="module")
def minimal(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[dict[str, Path]]:
    """Two repos indexed under a cia.yaml with only data_dir and codebases (and the embedding
    path, which only shares the session's ONNX export): no chat section, no token. Beside it,
    the same data dir under a config that adds a restricted token."""
    from cia_assets.lib.serving.endpoint import stop_local_endpoint

    root = tmp_path_factory.mktemp("minimal")
    urls = {}
    for name, files in (("payments", dict(SAMPLE_FILES)), ("billing", BILLING_FILES)):
        repo = GitRepo(root / "remotes" / name)
        repo.path.mkdir(parents=True)
        repo.git("init", "-q", "-b", "main")
        repo.commit(files, "initial")
        urls[name] = repo.url
    raw: dict[str, Any] = {
        "data_dir": str(root / "data"),
        "codebases": [{"url": url} for url in urls.values()],
        "embedding": {"path": str(model_dir)},
    }
    paths = {"minimal": root / "cia.yaml", "tokens": root / "cia-tokens.yaml"}
    paths["minimal"].write_text(yaml.safe_dump(raw))
    tokens = [{"name": "billing-only", "token": BILLING_TOKEN, "repos": ["billing"]}]
    paths["tokens"].write_text(yaml.safe_dump({**raw, "chat": {"tokens": tokens}}))
    config = load_config(paths["minimal"])
    assert config.chat.tokens == ()
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    try:
        instance = dg.DagsterInstance.ephemeral()
        for repo_id in urls:
            materialize_repo(config, instance, repo_id)
        yield paths
    finally:
        stop_local_endpoint(config)  # started on demand by the first answer
        if old_home is not None:
            os.environ["DAGSTER_HOME"] = old_home


def _ask(config_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`cia ask` as a person runs it from a shell, its stdout a pipe; $CIA_TOKEN as given."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CIA_CONFIG", "CIA_TOKEN")}
    environ.update({**GIT_ENV, "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run(
        [CIA, "ask", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=600,
    )


def _traces(config_path: Path) -> list[dict[str, Any]]:
    traces, _ = TraceStore(DataLayout(load_config(config_path).data_dir).traces).pending(limit=1000)
    return traces  # oldest first


def test_ask_needs_no_token_and_prints_the_answer_once_through_a_pipe(minimal: dict[str, Path]) -> None:
    # $CIA_TOKEN is an MCP client's credential: a stale one in the shell changes nothing.
    done = _ask(minimal["minimal"], "When does check_permission allow an action?", CIA_TOKEN="stale-1")
    assert done.returncode == 0, done.stderr
    trace = _traces(minimal["minimal"])[-1]
    assert (trace["interface"], trace["token_name"]) == ("cli", "owner")
    assert trace["repos"] == ["payments", "billing"] and not trace["not_found"], trace
    body, sources = trace["answer"].split("\n\nSources:\n")
    # The streamed text, then only the sources: each exactly once, nothing on stdout twice.
    assert done.stdout.endswith(f"\n\nSources:\n{sources}\n"), done.stdout
    printed_body = done.stdout[: -len(f"\n\nSources:\n{sources}\n")]
    assert tidy_answer(printed_body) == body
    assert done.stdout.count("Sources:") == 1 and done.stdout.count(body[:40]) == 1
    assert body[:40] not in done.stderr

    as_json = _ask(minimal["minimal"], "When does check_permission allow an action?", "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)  # only the JSON on stdout
    assert set(answer) == ANSWER_JSON_KEYS


def test_ask_with_a_token_sees_only_its_repos_and_a_wrong_one_is_refused(minimal: dict[str, Path]) -> None:
    question = "How is the invoice total computed?"
    done = _ask(minimal["tokens"], question, "--json", "--token", BILLING_TOKEN)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert all(citation["repo"] == "billing" for citation in answer["citations"]), answer
    stored = TraceStore(DataLayout(load_config(minimal["tokens"]).data_dir).traces).get_trace(
        answer["trace_id"]
    )
    assert stored is not None
    assert (stored["token_name"], stored["repos"]) == ("billing-only", ["billing"])
    assert {hit["repo"] for hit in stored["hits"]} == {"billing"}

    denied = _ask(minimal["tokens"], question, "--repo", "payments", "--token", BILLING_TOKEN)
    assert denied.returncode == 2 and "may not read repo(s): payments" in denied.stderr
    for config in ("tokens", "minimal"):
        wrong = _ask(minimal[config], question, "--token", "not-a-token-0123")
        assert wrong.returncode == 2, wrong.stderr
        assert wrong.stderr.strip() == "cia: unknown token" and wrong.stdout == ""


class _Stream(io.StringIO):
    """A terminal or a pipe that remembers what had been flushed: what a reader had seen."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.flushed = ""

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        super().flush()
        self.flushed = self.getvalue()


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize("not_found", [False, True], ids=["answer", "not-found"])
def test_ask_flushes_each_delta_then_prints_only_what_the_stream_did_not_show(
    not_found: bool, tty: bool, write_config: Callable[..., CiaConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cia_assets.lib.answering.service

    config = write_config([{"url": "file:///nowhere/payments.git"}])
    monkeypatch.setenv("CIA_CONFIG", str(config.config_path))  # restored after `main` sets it
    out, err = _Stream(tty), _Stream(tty)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    pieces = ["A refund is ", "authorized by ", "a manager [1]."]
    citation = Citation(
        n=1, repo="payments", path="auth.py", line_start=4, line_end=8, url=None, commit_sha="0" * 40
    )
    source = SourcePreview(
        n=1, repo="payments", path="auth.py", line_start=4, line_end=8, symbol="authorize_refund",
        language="python", url=None, commit_sha="0" * 40, preview="def authorize_refund(user, amount):",
    )  # fmt: skip
    final_text = (
        "Not found in the indexed code: no source answering it."
        if not_found
        else "A refund is authorized by a manager [1].\n\nSources:\n[1] payments:auth.py#L4-L8"
    )

    class FakeAnswerer:
        def stream(self, request: AskRequest) -> Iterator[AnswerSources | AnswerDelta | Answer]:
            assert request.grant == Grant(name="owner", repos=("payments",))
            yield AnswerSources([source])
            for position, piece in enumerate(pieces):
                # Where to look is on the terminal before the first word of the explanation.
                assert err.getvalue() == SOURCE_LINE
                # The reader has every earlier delta before the next one is generated.
                assert out.flushed == "".join(pieces[:position])
                yield AnswerDelta(piece)
            assert out.flushed == "".join(pieces)
            yield Answer(
                answer=final_text,
                citations=[] if not_found else [citation],
                model="fake",
                trace_id="t-1",
                not_found=not_found,
            )

    class FakeService:
        trace_problem = None  # the trace store is fine

        def __init__(self, _config: CiaConfig) -> None:
            self.answerer = FakeAnswerer()

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(cia_assets.lib.answering.service, "AssistantService", FakeService)
    assert main(["ask", "When is a refund authorized?", "--config", str(config.config_path)]) == 0
    closing = f"\n\n---\n{final_text}" if not_found else "\n\nSources:\n[1] payments:auth.py#L4-L8"
    assert out.getvalue() == "".join(pieces) + closing + "\n"  # each part once, on stdout
    assert out.flushed == out.getvalue() and err.getvalue() == SOURCE_LINE


SOURCE_LINE = "[1] payments:auth.py#L4-L8 (authorize_refund)\n"


def test_version_and_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        assert exited.value.code == 0
        return capsys.readouterr().out

    assert run("--version") == f"cia {version('cia-assets')}\n"
    top = run("--help")
    assert "examples:" in top and 'cia ask "How is a refund authorized?"' in top and "cia mcp" in top
    dev = run("dev", "--help")
    assert "the Dagster UI's address" in dev and "the Dagster UI's port (default 3000" in dev
    mcp = run("mcp", "--help")
    assert "$CIA_TOKEN" in mcp and '"env": {"CIA_TOKEN": "<a token from chat.tokens>"}' in mcp
    ask = run("ask", "--help")
    assert "data dir's owner" in ask


def test_a_minimal_config_serves_the_chat_app_with_a_token_made_for_its_data_dir(
    write_config: Callable[..., CiaConfig],
) -> None:
    """No chat.tokens in cia.yaml: the app is not left open, nor unusable; it takes one random
    token kept owner-only in the data dir, the one `cia serve` prints in its link."""
    import stat

    from fastapi.testclient import TestClient

    from cia_assets.apps.http.app import create_app
    from cia_assets.lib.core.access import accepted_tokens

    config = write_config([{"url": "file:///nonexistent/ghost.git", "id": "ghost"}])
    assert config.chat.tokens == ()
    made = accepted_tokens(config)
    token_file = DataLayout(config.data_dir).local_token
    assert [(t.name, t.repos) for t in made] == [("local", ("*",))]
    assert token_file.read_text().strip() == made[0].token and len(made[0].token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert accepted_tokens(config) == made  # made once, then read

    client = TestClient(create_app(config.config_path, forward_in_background=False))
    assert client.get("/api/repos").status_code == 401
    assert client.get("/api/repos", headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    granted = client.get("/api/repos", headers={"Authorization": f"Bearer {made[0].token}"})
    assert granted.status_code == 200 and granted.json() == {"token": "local", "repos": ["ghost"]}


def test_configured_tokens_replace_the_data_dirs_token(write_config: Callable[..., CiaConfig]) -> None:
    from cia_assets.lib.core.access import AccessDenied, accepted_tokens, authorize

    config = write_config(
        [{"url": "file:///nonexistent/ghost.git"}], chat={"tokens": [{"name": "t", "token": "configured-1"}]}
    )
    assert [t.name for t in accepted_tokens(config)] == ["t"]
    assert not DataLayout(config.data_dir).local_token.exists()
    with pytest.raises(AccessDenied, match="unknown token"):
        authorize(config, "anything-else")
