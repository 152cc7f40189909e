"""The repo's dagster.yaml as Dagster itself loads it, and the sweep that keeps its run queue
moving when a run's process is killed."""

from __future__ import annotations

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
from cia_assets.defs.runs.sensors import dead_run_sweep, run_worker_pid
from cia_assets_tests.support.cli import CIA
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
# What the root dagster.yaml looked like when it broke `make run` for everyone: Dagster 1.13
# refuses a run limit in the coordinator's config beside a `concurrency` block.
CONFLICTING_RUN_LIMITS = """
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
concurrency:
  pools:
    default_limit: 1
"""


def instance_from(home: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """Dagster's own loader, as `cia dev` and `cia index` get their instance."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get()


def test_the_project_dagster_yaml_loads_with_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copyfile(PROJECT_DAGSTER_YAML, tmp_path / "dagster.yaml")
    with instance_from(tmp_path, monkeypatch) as instance:
        from dagster._core.run_coordinator import QueuedRunCoordinator

        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        # What the daemon's queue reads (the coordinator's own config is not consulted).
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0


def test_a_dagster_yaml_dagster_refuses_fails_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is real: the file that broke `make run` does not load."""
    (tmp_path / "dagster.yaml").write_text(CONFLICTING_RUN_LIMITS)
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurrent_runs"):
        instance_from(tmp_path, monkeypatch).run_coordinator  # noqa: B018 - loading it is the test


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_a_killed_cia_index_run_is_marked_failed_and_frees_its_slot(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payments = make_repo("payments", dict(SAMPLE_FILES))
    config = write_config([{"url": payments.url}])
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    index = subprocess.Popen(
        [CIA, "index", "--config", str(config.config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with instance_from(home, monkeypatch) as instance:
            run_id = _wait_for_started_run(instance, index)
            sweep_context = dg.build_sensor_context(instance=instance)

            # While its process lives, the run is left alone.
            dead_run_sweep(sweep_context)
            assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED

            index.send_signal(signal.SIGKILL)
            index.wait(timeout=30)
            assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED  # what Dagster leaves

            dead_run_sweep(sweep_context)
            assert _status(instance, run_id) == dg.DagsterRunStatus.FAILURE
            in_progress = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            assert in_progress == 0
            failure = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
            assert "killed or crashed" in (failure[0].event_log_entry.dagster_event.message or "")  # type: ignore[union-attr]
    finally:
        if index.poll() is None:
            index.kill()


def _wait_for_started_run(instance: dg.DagsterInstance, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, "cia index ended before its run could be killed"
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        for run in runs:
            if run_worker_pid(instance, run.run_id) == process.pid:
                return run.run_id
        time.sleep(0.2)
    raise AssertionError("cia index never reported a started run")


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status
