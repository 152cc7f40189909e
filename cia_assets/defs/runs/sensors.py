"""Housekeeping of the Dagster instance's own runs in the embedded default."""

import dagster as dg

# Runs that hold a slot of the queued run coordinator.
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
# Clock ticks round a process's start time; a worker starts before its run reports STARTED.
START_TIME_SLACK_S = 1.0


@dg.sensor(
    name="dead_run_sweep",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dead_run_sweep(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Marks failed the runs whose process is gone (kill -9, out of memory, a closed laptop).

    Dagster's run monitoring (on in dagster.yaml) times out runs that never start, but the
    local run launcher cannot tell whether a started run's process still lives, and `cia index`
    runs in its own process without a launcher at all: a killed run would stay STARTED forever
    and hold one of the queue's two slots, and two of them stop every sensor-launched run.
    Each run's process id is in its first engine event ("Started process for run (pid: N)",
    "Executing steps in process (pid: N)"); a run is dead when no process with that id has
    run since before the run started (a reused id belongs to a newer process)."""
    from dagster._core.launcher import DefaultRunLauncher

    from cia_assets.lib.serving.llm_server import process_start_time

    instance = context.instance
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        # Another launcher (Kubernetes at the cluster scale) checks its own workers.
        return dg.SkipReason("runs are launched by a launcher that monitors its workers")
    failed: list[str] = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        pid = run_worker_pid(instance, run.run_id)
        if pid is None:
            continue  # not started yet: run monitoring's start timeout covers it
        run_started = record.start_time or record.create_timestamp.timestamp()
        process_started = process_start_time(pid)
        if process_started is not None and process_started <= run_started + START_TIME_SLACK_S:
            continue
        instance.report_run_failed(
            run,
            f"The process running this run (pid {pid}) is gone: it was killed or crashed. "
            "Marked failed so that queued runs can start.",
        )
        failed.append(run.run_id)
    if failed:
        context.log.warning(f"marked {len(failed)} run(s) with no process left failed: {', '.join(failed)}")
    return dg.SkipReason(f"{len(failed)} dead run(s) marked failed")


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process id from the run's first engine event that names one."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20)
    for record in records.records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(pid.value)  # type: ignore[arg-type]
    return None
