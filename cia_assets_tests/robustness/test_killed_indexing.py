"""kill -9 of `cia index --full` in each phase of indexing (chunking, embedding, publishing)
leaves search answering from the last complete index, and the next `cia index` completes
(a probe of the red-team pass that held; kept so that it keeps holding)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets_tests.support.cli import CIA
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

pytestmark = pytest.mark.robustness

QUERY = "check permission for a payment action"
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
# Enough files that each phase lasts long enough to be killed in.
MANY_FILES: dict[str, str | bytes | None] = {
    f"ledger/rule_{n}.py": f'def ledger_rule_{n}(entry):\n    """Ledger rule {n}: rounds entry {n}."""\n'
    f"    return round(entry.amount * {n}, 2)\n"
    for n in range(300)
}


def _search(config: CiaConfig, env: dict[str, str]) -> list[tuple[str, int, int]]:
    done = subprocess.run(
        [CIA, "search", "--config", str(config.config_path), "--json", "-k", "3", QUERY],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [(hit["path"], hit["line_start"], hit["line_end"]) for hit in json.loads(done.stdout)]


def _kill_when_step_starts(config: CiaConfig, env: dict[str, str], home: Path, step: str) -> None:
    process = subprocess.Popen(
        [CIA, "index", "--full", "--config", str(config.config_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        os.environ["DAGSTER_HOME"] = str(home)
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and process.poll() is None:
                started = [
                    record.event_log_entry.step_key
                    for run in instance.get_runs(limit=1)
                    for record in instance.get_records_for_run(
                        run.run_id, of_type=dg.DagsterEventType.STEP_START
                    ).records
                ]
                if step in started:
                    break
                time.sleep(0.05)
            assert process.poll() is None, f"cia index ended before {step} started"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def test_search_answers_from_the_last_complete_index_whatever_phase_indexing_is_killed_in(
    write_config: Callable[..., CiaConfig],
    make_repo: Callable[..., GitRepo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo("payments", {**SAMPLE_FILES, **MANY_FILES})
    config = write_config([{"url": repo.url, "id": "payments"}])
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    first = subprocess.run(
        [CIA, "index", "--config", str(config.config_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = _search(config, env)
    assert before and before[0][0] == "payments/auth.py", before

    for step in ("code_chunks", "chunk_embeddings", "qdrant_collection"):
        _kill_when_step_starts(config, env, home, step)
        assert _search(config, env) == before, f"killed in {step}"

    # The next run completes, and its index serves.
    again = subprocess.run(
        [CIA, "index", "--full", "--config", str(config.config_path)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert _search(config, env) == before
