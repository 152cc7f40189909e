"""The layout's rules, checked as `make lint` checks them: `lib/` stays Dagster-free and `defs/`
never reaches into `apps/` (import-linter's contracts in pyproject.toml), and no module grows past
~600 lines without saying why at its top."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "cia_assets"
MAX_MODULE_LINES = 600
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(PACKAGE, root / "cia_assets", ignore=shutil.ignore_patterns("__pycache__", "target"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_import_contracts_hold_and_fail_on_a_forbidden_import(package_copy: Path) -> None:
    kept = _lint_imports(package_copy)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "2 kept, 0 broken" in kept.stdout

    lib_module = package_copy / "cia_assets" / "lib" / "core" / "records.py"
    defs_module = package_copy / "cia_assets" / "defs" / "serving" / "checks.py"
    lib_text, defs_text = lib_module.read_text(), defs_module.read_text()
    try:
        lib_module.write_text(lib_text + "\nimport dagster  # noqa\n")
        defs_module.write_text(defs_text + "\nfrom cia_assets.apps import mcp  # noqa\n")
        broken = _lint_imports(package_copy)
    finally:
        lib_module.write_text(lib_text)
        defs_module.write_text(defs_text)
    assert broken.returncode != 0
    assert "0 kept, 2 broken" in broken.stdout
    assert "cia_assets.lib.core.records -> dagster" in broken.stdout
    assert "cia_assets.defs.serving.checks -> cia_assets.apps.mcp" in broken.stdout


def _long_modules(package: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES whose docstring does not say why they are long."""
    found = []
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text().count("\n")
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_MODULE_LINES and "longer than" not in docstring.lower():
            found.append(f"{path.relative_to(package.parent)} ({lines} lines)")
    return found


def test_no_module_is_long_without_saying_why(tmp_path: Path) -> None:
    assert _long_modules(PACKAGE) == []
    # The check itself: a long module without a reason is named.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text('"""Big."""\n' + "x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "pkg" / "explained.py").write_text(
        '"""Longer than 600 lines: one table."""\n' + "x = 1\n" * (MAX_MODULE_LINES + 1)
    )
    assert _long_modules(tmp_path / "pkg") == [f"pkg/big.py ({MAX_MODULE_LINES + 2} lines)"]
