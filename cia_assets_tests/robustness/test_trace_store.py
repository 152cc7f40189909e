"""A damaged or read-only trace store (issue 18 item 7): answers keep coming, the problem is
said (on stderr by `cia ask`, on /healthz by the app), feedback gets a clear 503 instead of a
bare 500, and no answer carries a trace id that was not stored."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from cia_assets.config import CiaConfig
from cia_assets_tests.support.cli import cia
from cia_assets_tests.support.fakes import fake_openai
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.net import free_port, running_app
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

pytestmark = pytest.mark.robustness

TOKEN = "trace-token-0123456789"
QUESTION = "How are funds moved between accounts?"


@pytest.fixture
def indexed(write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]) -> Iterator[CiaConfig]:
    """An indexed repo answered by a stand-in OpenAI-compatible model (fast; what is tested
    is the trace store, not the model)."""
    from cia_assets.lib.serving.endpoint import deploy_endpoint

    repo = make_repo("payments", SAMPLE_FILES)
    with fake_openai(lambda _request: "Funds move in `transfer` [1].", model="remote-coder") as remote:
        config = write_config(
            [{"url": repo.url, "id": "payments"}],
            llm={"engine": "openai", "base_url": remote.base_url, "model": "remote-coder"},
            answering={"abstain_not_found_odds": 0, "abstain_unsupported_odds": 0},
            chat={"port": free_port(), "tokens": [{"name": "eng", "token": TOKEN, "repos": ["*"]}]},
        )
        materialize_repo(config, dg.DagsterInstance.ephemeral(), "payments")
        deploy_endpoint(config)
        yield config


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00not a duckdb file\xff" * 4096)


def _make_unwritable(path: Path) -> None:
    """Read-only for this process: chmod, or for root (whom chmod does not stop) the
    immutable attribute."""
    path.chmod(0o444)
    try:
        with path.open("ab"):
            pass
    except PermissionError:
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make {path} read-only as this user: {done.stderr.decode().strip()}")


def _writable_again(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    path.chmod(0o644)


@pytest.mark.parametrize("damage", ["corrupted", "read-only"])
def test_cia_ask_answers_says_why_it_was_not_recorded_and_hands_out_no_trace_id(
    indexed: CiaConfig, damage: str
) -> None:
    from cia_assets.lib.observability.traces import TraceStore

    store = indexed.layout.traces
    recorded = cia("ask", "--config", str(indexed.config_path), "--json", QUESTION)
    assert recorded.returncode == 0, recorded.stderr
    trace_id = json.loads(recorded.stdout)["trace_id"]
    assert trace_id and TraceStore(store).get_trace(trace_id) is not None
    before = store.read_bytes()

    if damage == "corrupted":
        _corrupt(store)
    else:
        _make_unwritable(store)
    try:
        done = cia("ask", "--config", str(indexed.config_path), "--json", QUESTION)
    finally:
        if damage == "read-only":
            _writable_again(store)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert "transfer" in answer["answer"] and answer["citations"]
    assert answer["trace_id"] is None  # nothing stored, nothing to point at
    assert "answers are not being recorded" in done.stderr and str(store) in done.stderr
    if damage == "read-only":
        assert store.read_bytes() == before  # nothing of it was lost either


def test_the_app_reports_a_damaged_store_and_feedback_gets_a_clear_error(indexed: CiaConfig) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_app(indexed.config_path, indexed.chat.port) as base:
        asked = httpx.post(
            f"{base}/v1/chat/completions",
            headers=auth,
            json={"model": "cia", "messages": [{"role": "user", "content": QUESTION}]},
            timeout=60,
        ).json()
        old_trace = asked["cia"]["trace_id"]
        assert old_trace and httpx.get(f"{base}/healthz").json()["status"] == "ok"

        _corrupt(indexed.layout.traces)
        vote = httpx.post(f"{base}/api/feedback", headers=auth, json={"trace_id": old_trace, "value": "up"})
        assert vote.status_code == 503
        assert vote.json()["error"]["type"] == "service_unavailable"
        assert str(indexed.layout.traces) in vote.json()["error"]["message"]

        again = httpx.post(
            f"{base}/v1/chat/completions",
            headers=auth,
            json={"model": "cia", "messages": [{"role": "user", "content": QUESTION}]},
            timeout=60,
        )
        assert again.status_code == 200
        body = again.json()
        assert "transfer" in body["choices"][0]["message"]["content"]
        assert body["cia"]["trace_id"] is None and body["id"].startswith("chatcmpl-")
        health = httpx.get(f"{base}/healthz").json()
        assert health["status"] == "degraded"
        assert any(p.startswith("answers are not being recorded: ") for p in health["problems"])
