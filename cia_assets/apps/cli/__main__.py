"""`python -m cia_assets.apps.cli ...`: the `cia` command without its console script (how `cia dev`
starts the chat app beside Dagster)."""

from __future__ import annotations

from cia_assets.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
