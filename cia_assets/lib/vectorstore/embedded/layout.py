"""The embedded store's folder tree: where collections, views, trash and aliases live.

Also the names allowed in it (collections and aliases share one namespace) and the seal
file that marks a collection as published and immutable.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from cia_assets.lib.core.fsio import write_json_atomic

SEALED_FILE = "cia_sealed.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class StoreLayout:
    """The paths under one store root (see the package docstring for the tree)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.collections_dir = root / "collections"
        self.views_dir = root / "views"
        self.trash_dir = root / "trash"
        self.aliases_path = root / "aliases.json"
        self.aliases_lock_path = root / "aliases.lock"

    def make_dirs(self) -> None:
        for directory in (self.collections_dir, self.views_dir, self.trash_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def collection_dir(self, name: str) -> Path:
        check_name(name)
        return self.collections_dir / name

    def is_collection(self, name: str) -> bool:
        return bool(_NAME.fullmatch(name)) and (self.collections_dir / name).is_dir()

    def collection_names(self) -> list[str]:
        return sorted(
            entry.name
            for entry in os.scandir(self.collections_dir)
            if entry.is_dir() and _NAME.fullmatch(entry.name)
        )


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid collection or alias name {name!r} (letters, digits, . _ - only)")


def read_seal(path: Path) -> dict[str, Any] | None:
    """The seal of the collection in `path`, or None while it is not published."""
    try:
        with open(path / SEALED_FILE, encoding="utf-8") as handle:
            data: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        return None
    return data


def write_seal(path: Path, points: int) -> None:
    # A collection dropped meanwhile stays dropped: its seal alone would pass for a collection.
    write_json_atomic(path / SEALED_FILE, {"points": points, "sealed_at": time.time()}, create_folder=False)
