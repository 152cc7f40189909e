"""Versioned artifact folders with a `current.json` pointer, like image tags and a release
pointer: each materialization writes a new folder, and only a complete one is made current
(atomically), so a failed run never leaves a half-written dataset or adapter in use."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cia_assets.lib.core.fsio import write_json_atomic
from cia_assets.lib.core.records import utc_now

POINTER = "current.json"


@dataclass(frozen=True)
class ArtifactVersion:
    version: str
    path: Path
    summary: dict[str, Any]


def new_version(root: Path) -> tuple[str, Path]:
    """A fresh folder under `root`, named so versions sort by creation time."""
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    path = root / version
    path.mkdir(parents=True)
    return version, path


def publish(root: Path, version: str, summary: dict[str, Any]) -> ArtifactVersion:
    """Make a complete version current."""
    path = root / version
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such version to publish")
    write_json_atomic(root / POINTER, {"version": version, "published_at": utc_now(), "summary": summary})
    return ArtifactVersion(version=version, path=path, summary=summary)


def current(root: Path) -> ArtifactVersion | None:
    """The published version, or None when nothing was published yet."""
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text(encoding="utf-8"))
    return ArtifactVersion(
        version=data["version"], path=root / data["version"], summary=data.get("summary", {})
    )


def require_current(root: Path, what: str) -> ArtifactVersion:
    found = current(root)
    if found is None or not found.path.is_dir():
        raise FileNotFoundError(f"no {what} has been published under {root}: materialize it first")
    return found


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
