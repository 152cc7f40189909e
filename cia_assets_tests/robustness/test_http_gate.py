"""The chat app against an attacker and an unlucky operator (issue 18 items 2, 4, 5): a real
uvicorn server on a real socket, with a stand-in OpenAI-compatible model so that /healthz can
be ready without a model here.

- Nothing but the pages and probes answers without a token: /metrics and /openapi.json
  included; `chat.metrics_listen` is the token-free address for a scraper.
- A body above `chat.max_request_bytes` is refused before it is read (Content-Length or
  chunked), and a request without a valid token is refused before its body is read.
- A malformed cia.yaml written while the app runs keeps it answering on the last valid
  config, reports the error (file and key) on /healthz, and the fix is picked up.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from cia_assets.config import CiaConfig
from cia_assets_tests.support.fakes import fake_openai
from cia_assets_tests.support.net import free_port, running_app, start_cia_serve
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

pytestmark = pytest.mark.robustness

TOKEN = "robust-token-0123456789"
LIMIT = 8192


@dataclass(frozen=True)
class Served:
    base: str
    port: int
    config: CiaConfig

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def _chat_settings(**extra: object) -> dict[str, object]:
    return {
        "port": free_port(),
        "tokens": [{"name": "eng", "token": TOKEN, "repos": ["*"]}],
        "max_request_bytes": LIMIT,
        **extra,
    }


@pytest.fixture
def remote_model() -> Iterator[str]:
    with fake_openai(lambda _request: "OK [1].", model="remote-coder") as remote:
        yield remote.base_url


@pytest.fixture
def served(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo], remote_model: str
) -> Iterator[Served]:
    from cia_assets.lib.serving.endpoint import deploy_endpoint

    repo = make_repo("payments", SAMPLE_FILES)
    config = write_config(
        [{"url": repo.url, "id": "payments"}],
        llm={"engine": "openai", "base_url": remote_model, "model": "remote-coder"},
        chat=_chat_settings(),
    )
    deploy_endpoint(config)  # the live endpoint /healthz checks: the stand-in model
    with running_app(config.config_path, config.chat.port) as base:
        yield Served(base=base, port=config.chat.port, config=config)


def _raw_request(port: int, head: str, body_parts: Iterable[bytes] = (), timeout_s: float = 10) -> str:
    """Send `head` (the request line and headers), then `body_parts` while the server has not
    answered; the status line and headers of its answer. A server that waits for a body it
    was promised but never sent times out here (socket.timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        sock.setblocking(False)
        received = b""
        deadline = time.monotonic() + timeout_s
        for part in body_parts:
            with contextlib.suppress(BlockingIOError):
                received += sock.recv(65536)
            if received:
                break  # answered before the body ended: the rest is never sent
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                break
        sock.setblocking(True)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.decode("latin-1")


def test_metrics_and_the_openapi_document_need_a_token(served: Served) -> None:
    for path in ("/metrics", "/openapi.json", "/api/repos", "/v1/models"):
        refused = httpx.get(f"{served.base}{path}")
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "authentication_error"
        assert "payments" not in refused.text
        assert httpx.get(f"{served.base}{path}", headers=served.auth("wrong-token-000")).status_code == 401
    metrics = httpx.get(f"{served.base}/metrics", headers=served.auth())
    assert metrics.status_code == 200 and "cia_question_seconds" in metrics.text
    document = httpx.get(f"{served.base}/openapi.json", headers=served.auth())
    assert document.status_code == 200 and "/v1/chat/completions" in document.json()["paths"]
    for docs in ("/docs", "/redoc"):  # pages a browser would open without a token: none
        assert httpx.get(f"{served.base}{docs}").status_code in (401, 404)
    # The pages and probes stay open: they hold no code.
    for path in ("/", "/livez", "/healthz", "/source/payments/" + "a" * 40 + "/app.py"):
        assert httpx.get(f"{served.base}{path}").status_code == 200, path


def test_an_oversized_body_is_refused_before_it_is_read(served: Served) -> None:
    # Promised 100 MB and sent none of it: answered at once, nothing read or buffered.
    head = (
        "POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Authorization: Bearer {TOKEN}\nContent-Length: {100 * 1024 * 1024}\n"
    )
    assert _raw_request(served.port, head).startswith("HTTP/1.1 413")
    # Chunked, with no length to check: refused as soon as the limit is passed.
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(10_000):  # 10 MB if it were all read
            sent.append(1024)
            yield b"400\r\n" + b"x" * 1024 + b"\r\n"
            time.sleep(0.002)

    head = (
        "POST /api/ask HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        f"Authorization: Bearer {TOKEN}\nTransfer-Encoding: chunked\n"
    )
    assert _raw_request(served.port, head, chunks()).startswith("HTTP/1.1 413")
    assert sum(sent) < 20 * LIMIT  # it stopped reading at the limit, not at the end
    # Within the limit, the same route works.
    answered = httpx.post(
        f"{served.base}/v1/chat/completions",
        headers=served.auth(),
        json={"model": "cia", "messages": [{"role": "user", "content": "What does app.py do?"}]},
        timeout=60,
    )
    assert answered.status_code != 413


def test_a_request_without_a_valid_token_is_refused_before_its_body_is_read(served: Served) -> None:
    for authorization in ("", f"Authorization: Bearer not-{TOKEN}\n"):
        head = (
            "POST /api/feedback HTTP/1.1\nHost: x\nContent-Type: application/json\n"
            f"{authorization}Content-Length: {LIMIT}\n"
        )
        assert _raw_request(served.port, head).startswith("HTTP/1.1 401"), authorization
    # And a malformed body from a caller without a token is a 401, not a 422 that parsed it.
    bad = httpx.post(
        f"{served.base}/api/feedback", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 401


def test_a_config_typo_keeps_the_app_serving_on_the_last_valid_config(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    path = served.config.config_path
    valid = path.read_text()
    caplog.set_level(logging.ERROR, logger="cia_assets.config")
    path.write_text(valid + "chat:\n  port: [unclosed\n")
    time.sleep(0.01)  # a new mtime

    health = httpx.get(f"{served.base}/healthz")
    assert health.status_code == 200  # still ready: every replica would fail the same way
    body = health.json()
    assert body["status"] == "degraded"
    [problem] = body["problems"]
    assert problem.startswith("configuration not applied: ") and str(path) in problem
    assert "not valid YAML" in problem
    # Every route keeps answering on the last valid config, the token included.
    assert httpx.get(f"{served.base}/api/repos", headers=served.auth()).json()["repos"] == ["payments"]
    assert httpx.get(f"{served.base}/metrics", headers=served.auth()).status_code == 200
    assert httpx.get(f"{served.base}/livez").status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == "cia_assets.config"]
    assert len(logged) == 1 and str(path) in logged[0] and "last valid configuration" in logged[0]

    # A valid file naming a bad key: the key is named.
    raw = yaml.safe_load(valid)
    raw["chat"]["max_request_bytes"] = "lots"
    path.write_text(yaml.safe_dump(raw))
    problem = httpx.get(f"{served.base}/healthz").json()["problems"][0]
    assert "chat.max_request_bytes" in problem

    # Fixed, with a rotated token: picked up without a restart.
    raw["chat"]["max_request_bytes"] = LIMIT
    raw["chat"]["tokens"] = [{"name": "eng", "token": "rotated-token-987654", "repos": ["*"]}]
    path.write_text(yaml.safe_dump(raw))
    health = httpx.get(f"{served.base}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and "problems" not in health.json()
    assert httpx.get(f"{served.base}/api/repos", headers=served.auth()).status_code == 401
    assert (
        httpx.get(f"{served.base}/api/repos", headers=served.auth("rotated-token-987654")).status_code == 200
    )


def test_cia_serve_exposes_metrics_without_a_token_only_on_the_metrics_address(
    write_config: Callable[..., CiaConfig], remote_model: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    config = write_config(
        [],
        llm={"engine": "openai", "base_url": remote_model, "model": "remote-coder"},
        chat=_chat_settings(metrics_listen=f"127.0.0.1:{metrics_port}"),
    )
    port = config.chat.port
    process = start_cia_serve(config.config_path, port)
    try:
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "cia_question_seconds" in scraped.text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
