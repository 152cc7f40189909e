"""The analytics models with the real dbt on DuckDB over a real trace store: golden examples,
failed questions, weekly topics and drift, and dbt's tests as Dagster asset checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from cia_assets.config import CiaConfig
from cia_assets.defs.analytics.project import analytics_project
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.observability.analytics import ANALYTICS_DB, read_failed_questions, read_golden_examples
from cia_assets.lib.observability.traces import TraceStore
from cia_assets_tests.support.traces import trace

WEEK_1 = datetime(2026, 11, 9, 10, tzinfo=UTC)  # Monday of ISO week 46
WEEK_2 = datetime(2026, 11, 17, 10, tzinfo=UTC)  # Tuesday of ISO week 47


def _analytics_assets() -> list[object]:
    from cia_assets.defs.analytics.assets import analytics_models, trace_store_snapshot

    return [trace_store_snapshot, analytics_models]


def _run(config: CiaConfig) -> dg.ExecuteInProcessResult:
    from cia_assets.defs.resources import build_resources

    return dg.materialize(
        _analytics_assets(),  # type: ignore[arg-type]
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(config.config_path)),
        raise_on_error=False,
    )


def _table(config: CiaConfig, sql: str) -> list[tuple[object, ...]]:
    connection = duckdb.connect(str(DataLayout(config.data_dir).analytics / ANALYTICS_DB), read_only=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_golden_failed_topics_and_drift(write_config: Callable[..., CiaConfig]) -> None:
    config = write_config([])
    store = TraceStore(DataLayout(config.data_dir).traces)
    good = trace("How is the refund deadline enforced?", created_at=WEEK_1)
    bad = trace("How is the refund ledger balanced?", created_at=WEEK_1)
    missing = trace(
        "Where is the kafka consumer configured?", created_at=WEEK_2, not_found=True, citations=[]
    )
    broken = trace("How does refund retry work?", created_at=WEEK_2, error="endpoint down")
    mixed = trace("Which kafka topic carries refund events?", created_at=WEEK_2)
    for record in (good, bad, missing, broken, mixed):
        store.add_trace(record)
    for _ in range(3):  # one voter voting again and again is one vote
        store.add_feedback(good.trace_id, "up", voter="alice")
    store.add_feedback(good.trace_id, "up", voter="bob")
    store.add_feedback(mixed.trace_id, "up", voter="alice")
    store.add_feedback(mixed.trace_id, "down", voter="bob")
    # Votes stored before the store kept one per voter: the same voter up three times; their
    # vote through the store then replaces the latest, and only that one counts.
    with duckdb.connect(str(store.path)) as connection:
        for n in range(3):
            connection.execute(
                "INSERT INTO feedback (feedback_id, trace_id, value, source, voter, created_at) "
                "VALUES (?, ?, 1, 'http', 'mallory', ?)",
                [f"legacy{n}", bad.trace_id, WEEK_1],
            )
    store.add_feedback(bad.trace_id, "down", voter="mallory")

    package_files = _files(analytics_project.project_dir)
    result = _run(config)
    assert result.success
    # Nothing written into the installed package: it is read-only in the code-location image.
    assert _files(analytics_project.project_dir) == package_files
    assert list((DataLayout(config.data_dir).analytics / "dbt-runs").glob("*/run_results.json"))
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"trace_store/traces", "trace_store/feedback", "stg_traces", "golden_examples",
            "failed_questions", "weekly_question_topics", "question_drift"} <= materialized  # fmt: skip
    checks = result.get_asset_check_evaluations()
    assert len(checks) >= 10 and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    assert any(
        c.asset_key.to_user_string() == "stg_feedback" and "relationships" in c.check_name for c in checks
    )

    golden = read_golden_examples(DataLayout(config.data_dir))
    # The good answer: up from two voters. The mixed one (one up, one down) is not golden, nor
    # failed; the bad one counts mallory's last vote only (down), not the three ups before it.
    assert [(g["trace_id"], g["upvotes"], g["downvotes"]) for g in golden] == [(good.trace_id, 2, 0)]
    assert golden[0]["citations"][0]["path"] == "a.py" and golden[0]["repos"] == ["payments"]
    failed = {f["trace_id"]: f["reason"] for f in read_failed_questions(DataLayout(config.data_dir))}
    assert failed == {bad.trace_id: "rated_down", missing.trace_id: "not_found", broken.trace_id: "error"}

    topics = _table(
        config, "SELECT week, topic, questions, rank FROM weekly_question_topics ORDER BY week, rank"
    )
    week_1 = [(str(w), t, n) for w, t, n, _ in topics if str(w) == "2026-11-09"]
    assert week_1[0] == ("2026-11-09", "refund", 2)
    assert {t for _, t, _ in week_1} == {"refund", "deadline", "enforced", "ledger", "balanced"}
    drift = _table(
        config,
        "SELECT week, questions, new_terms, questions_with_new_terms, new_topic_share FROM question_drift",
    )
    # Week 2: kafka, consumer, configured, retry, topic, carries, events are new; "refund" is
    # not. Every week-2 question uses at least one new word.
    assert [(str(w), q, n, k, float(s)) for w, q, n, k, s in drift] == [
        ("2026-11-09", 2, 5, 2, 1.0),
        ("2026-11-16", 3, 7, 3, 1.0),
    ]


def test_a_dbt_test_failure_is_a_failed_asset_check(write_config: Callable[..., CiaConfig]) -> None:
    config = write_config([])
    store = TraceStore(DataLayout(config.data_dir).traces)
    record = trace(created_at=WEEK_1)
    store.add_trace(record)
    store.add_feedback(record.trace_id, "up", voter="alice")
    # A vote whose trace is gone (the store's API refuses this; a hand-edited file may not).
    connection = duckdb.connect(str(DataLayout(config.data_dir).traces))
    connection.execute(
        "INSERT INTO feedback (feedback_id, trace_id, value, source, voter, created_at) "
        "VALUES (?, ?, 1, 'x', 'alice', ?)",
        ["orphan", "f" * 32, WEEK_1],
    )
    connection.close()
    result = _run(config)
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [(c.asset_key.to_user_string(), "relationships" in c.check_name) for c in failed] == [
        ("stg_feedback", True)
    ]
