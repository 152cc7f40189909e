"""Reads the analytics models' tables (built by dbt into data_dir/analytics/analytics.duckdb)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from cia_assets.lib.core.layout import DataLayout

ANALYTICS_DB = "analytics.duckdb"
TRACES_SNAPSHOT = "traces_snapshot.duckdb"  # what the dbt profile attaches as its source


def _rows(layout: DataLayout, table: str) -> list[dict[str, Any]]:
    path = layout.analytics / ANALYTICS_DB
    if not path.is_file():
        return []
    connection = duckdb.connect(str(path), read_only=True)
    try:
        known = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
        ).fetchone()
        if not known or not known[0]:
            return []
        cursor = connection.execute(f"SELECT * FROM {table} ORDER BY created_at, trace_id")
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        connection.close()


def read_golden_examples(layout: DataLayout) -> list[dict[str, Any]]:
    """Answers users rated up (the `golden_examples` model), citations decoded; [] before the
    first analytics run."""
    rows = _rows(layout, "golden_examples")
    for row in rows:
        for key in ("citations", "repos"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    return rows


def read_failed_questions(layout: DataLayout) -> list[dict[str, Any]]:
    """Questions answered with an error, "not found", or rated down (the `failed_questions` model)."""
    return _rows(layout, "failed_questions")


def analytics_profile(database: Path, traces_snapshot: Path) -> dict[str, Any]:
    """The dbt profile of the analytics project for one data dir (the packaged
    `dbt_project/profiles.yml` only serves `dbt parse`, which opens no database)."""
    local = {
        "type": "duckdb",
        "path": str(database),
        "threads": 1,
        "attach": [{"path": str(traces_snapshot), "alias": "traces_snapshot", "read_only": True}],
    }
    return {"cia_analytics": {"target": "local", "outputs": {"local": local}}}
