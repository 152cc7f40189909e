"""The README's run path, end to end, as a newcomer meets it: `make run` is `cia index` then
`cia dev` (the Dagster UI and daemon, and the chat app with its model server), on a fresh
DAGSTER_HOME made from the repo's own dagster.yaml, then one question over HTTP, then Ctrl-C.

Nothing here is an ephemeral instance: this is the test that fails when the root
dagster.yaml, the workspace, the daemon's sensors or the chat app's start break `make run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from cia_assets.defs.runs.sensors import run_worker_pid
from cia_assets_tests.support.cli import CIA
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token-for-the-run-path"
START_TIMEOUT_S = 300


def test_make_run_indexes_serves_answers_and_stops_cleanly(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    payments = make_repo("payments", dict(SAMPLE_FILES))
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copyfile(PROJECT / name, project / name)
    ui_port, chat_port, model_port = free_port(), free_port(), free_port()
    # A user's cia.yaml: nothing set but the repo, the ports and a token.
    (project / "cia.yaml").write_text(
        yaml.safe_dump(
            {
                "data_dir": ".cia",
                "codebases": [{"url": payments.url, "id": "payments"}],
                "llm": {"port": model_port},
                "chat": {"port": chat_port, "tokens": [{"name": "local", "token": TOKEN}]},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CIA_CONFIG")}
    home = project / ".cia" / "dagster"
    log = (tmp_path / "cia-dev.log").open("wb")

    indexed = subprocess.run(
        [CIA, "index", "--json"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert indexed.returncode == 0, indexed.stderr
    summary = json.loads(indexed.stdout)["repos"][0]
    assert summary["sha"] == payments.git("rev-parse", "HEAD") and summary["chunks"] > 0
    assert (home / "dagster.yaml").read_bytes() == (PROJECT / "dagster.yaml").read_bytes()

    # A run killed mid-way (kill -9) must not hold a slot of the run queue once the daemon runs.
    killed = subprocess.Popen(
        [CIA, "index", "--full"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_run = _wait_for_run_of(home, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)

    # Its own process group, as a terminal gives a foreground job: Ctrl-C reaches all of it.
    dev = subprocess.Popen(
        [CIA, "dev", "--port", str(ui_port)],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    try:
        ui = f"http://127.0.0.1:{ui_port}"
        chat = f"http://127.0.0.1:{chat_port}"
        _wait_until(lambda: _get(f"{ui}/server_info") is not None, "the Dagster UI's /server_info", dev, log)
        _wait_until(lambda: _healthy(chat), "the chat app's /healthz", dev, log)

        # The daemon runs the sensors: each has ticked, none failed, and the repo sensor's
        # first tick found the commit `cia index` had just indexed (nothing re-snapshotted).
        ticks = _wait_until(
            lambda: _sensor_ticks(ui, ("repo_change_sensor", "dead_run_sweep", "served_endpoint_sync")),
            "the daemon's first tick of every sensor",
            dev,
            log,
        )
        assert all(tick["status"] != "FAILURE" for tick in ticks.values()), ticks
        assert ticks["repo_change_sensor"]["runIds"] == [], "the indexed commit was snapshotted again"

        answer = httpx.post(
            f"{chat}/v1/chat/completions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"model": "cia", "messages": [{"role": "user", "content": "How is a token validated?"}]},
            timeout=300,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["choices"][0]["message"]["content"].strip()
        citations = body["cia"]["citations"]
        assert citations and all(c["repo"] == "payments" for c in citations), body["cia"]

        endpoint = json.loads((project / ".cia" / "serving" / "endpoint.json").read_text())
        model_pid = endpoint["pid"]
        assert _alive(model_pid)

        # The UI tells the truth: the on-demand model server shows on served_endpoint's page,
        # and the run killed above no longer counts as in progress.
        _wait_until(
            lambda: _asset_materialized(home, "served_endpoint"), "served_endpoint's record", dev, log
        )
        _wait_until(
            lambda: _run_status(home, killed_run) == "FAILURE", "the killed run marked failed", dev, log
        )

        tree = _descendants(dev.pid)
        assert model_pid in tree  # the model server is part of what Ctrl-C must stop
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            raise AssertionError(f"cia dev did not stop on SIGINT:\n{_tail(log)}") from None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.5)
    left = {pid: _cmdline(pid) for pid in tree if _alive(pid)}
    assert left == {}, f"processes left behind after Ctrl-C: {left}"


def _get(url: str) -> httpx.Response | None:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


def _healthy(chat: str) -> bool:
    response = _get(f"{chat}/healthz")
    return response is not None and response.json().get("status") == "ok"


def _sensor_ticks(ui: str, names: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
    """The newest tick of each sensor, through the UI's GraphQL API; None until all ticked."""
    query = """
    query { sensorsOrError(repositorySelector: {repositoryLocationName: "cia_assets",
                                                repositoryName: "__repository__"}) {
      ... on Sensors { results { name sensorState { status ticks(limit: 1) { status runIds } } } }
    } }"""
    try:
        response = httpx.post(f"{ui}/graphql", json={"query": query}, timeout=10)
        sensors = response.json()["data"]["sensorsOrError"]["results"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None
    ticks = {}
    for sensor in sensors:
        if sensor["name"] in names:
            assert sensor["sensorState"]["status"] == "RUNNING", sensor
            if sensor["sensorState"]["ticks"]:
                ticks[sensor["name"]] = sensor["sensorState"]["ticks"][0]
    return ticks if set(ticks) == set(names) else None


def _instance(home: Path) -> Any:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _wait_for_run_of(home: Path, process: subprocess.Popen[bytes]) -> str:
    import dagster as dg

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "cia index ended before it could be killed"
        if (home / "dagster.yaml").exists():
            with _instance(home) as instance:
                for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                    if run_worker_pid(instance, run.run_id) == process.pid:
                        return str(run.run_id)
        time.sleep(0.3)
    raise AssertionError("cia index --full never started its run")


def _run_status(home: Path, run_id: str) -> str:
    with _instance(home) as instance:
        return str(instance.get_run_by_id(run_id).status.value)


def _asset_materialized(home: Path, asset: str) -> bool:
    import dagster as dg

    with _instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event is not None


def _wait_until(check: Callable[[], Any], what: str, dev: subprocess.Popen[bytes], log: Any) -> Any:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise AssertionError(f"cia dev exited with {dev.returncode} waiting for {what}:\n{_tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{_tail(log)}")


def _tail(log: Any, lines: int = 60) -> str:
    log.flush()
    return "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-lines:])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    from cia_assets.lib.serving.llm_server import process_alive

    return process_alive(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"
