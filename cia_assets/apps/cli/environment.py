"""What every `cia` command sets up before it runs: cia.yaml read and exported as $CIA_CONFIG, and
DAGSTER_HOME prepared, so Dagster, its sensors and the child processes see the same project."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from cia_assets.config import CONFIG_ENV_VAR, CiaConfig, load_config


def _load(args: argparse.Namespace) -> CiaConfig:
    config = load_config(args.config)
    # Dagster resources, sensors and child processes read the same file through this.
    os.environ[CONFIG_ENV_VAR] = str(config.config_path)
    return config


def prepare_dagster_home(config: CiaConfig) -> Path:
    """$DAGSTER_HOME if set, else <data_dir>/dagster, holding the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or config.data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    template = config.config_path.parent / "dagster.yaml"
    target = home / "dagster.yaml"
    if template.exists() and (not target.exists() or target.read_bytes() != template.read_bytes()):
        shutil.copyfile(template, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
