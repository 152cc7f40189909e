"""The `cia` console script as people and our scripts call it, in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets_tests.conftest import SAMPLE_FILES, GitRepo

CIA = str(Path(sys.executable).with_name("cia"))


def cia(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CIA_CONFIG",)}
    return subprocess.run([CIA, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


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
    assert json.loads(only_billing.stdout)[0]["url"] is None  # file:// remote: no web URL

    # The Dagster runs are in the instance the UI reads.
    assert any((tmp_path / "dagster_home").iterdir())

    plain = cia("search", "render invoice", "--config", str(config.config_path))
    assert plain.returncode == 0
    assert "billing:invoice.py#L1-L2" in plain.stdout


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


def test_dev_serves_the_ui_with_sensors_running(
    write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    import signal
    import socket
    import time
    import urllib.request

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    port, chat_port, llm_port = free_port(), free_port(), free_port()
    config = write_config(
        [{"url": "file:///nonexistent/ghost.git"}],
        chat={"port": chat_port, "tokens": [{"name": "t", "token": "test-token-123"}]},
        llm={"port": llm_port},
    )
    env = {k: v for k, v in os.environ.items() if k != "CIA_CONFIG"}
    process = subprocess.Popen(
        [CIA, "dev", "--config", str(config.config_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert process.poll() is None, "cia dev exited early"
                assert time.monotonic() < deadline, "the UI did not come up in 120 s"
                time.sleep(1)
        query = (
            '{ sensorsOrError(repositorySelector: {repositoryName: "__repository__", '
            'repositoryLocationName: "cia_assets"}) { ... on Sensors { results { name '
            "sensorState { status } } } } }"
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            sensors = json.load(response)["data"]["sensorsOrError"]["results"]
        assert {s["name"]: s["sensorState"]["status"] for s in sensors} == {
            "repo_change_sensor": "RUNNING",
            "indexing_automation": "RUNNING",
            "feedback_sensor": "RUNNING",
        }
        assert (tmp_path / "dagster_home" / "workspace.yaml").exists()  # config outside a checkout
        # The chat app comes up beside the UI, with the model server it needs.
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{chat_port}/healthz", timeout=2) as response:
                    health = json.load(response)
                if health["endpoint"] is not None:
                    break
            except OSError:
                pass
            assert process.poll() is None, "cia dev exited early"
            assert time.monotonic() < deadline, "the chat app did not come up"
            time.sleep(1)
        assert health["endpoint"]["engine"] == "llama_cpp"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # code servers left behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Stopping the chat app stopped the model server it started (its own session, so only
    # the app could have stopped it).
    left = subprocess.run(["pgrep", "-f", f"llama_cpp.server.*--port {llm_port}"], capture_output=True)
    assert left.returncode == 1, left.stdout
