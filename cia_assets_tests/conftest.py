from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.core.project import close_vector_stores
from cia_assets.lib.indexing.embeddings import packaged_model_dir

TINY_MODEL = "SmolLM2-135M-Instruct"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
}


@dataclass
class GitRepo:
    """A real git repository in a temp dir, cloned by the code under test over file://."""

    path: Path

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **GIT_ENV},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def write(self, files: dict[str, str | bytes | None]) -> None:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)

    def commit(self, files: dict[str, str | bytes | None], message: str = "change") -> str:
        self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[str, dict[str, str | bytes | None]], GitRepo]:
    def make(name: str, files: dict[str, str | bytes | None]) -> GitRepo:
        repo = GitRepo(tmp_path / "remotes" / name)
        repo.path.mkdir(parents=True)
        repo.git("init", "-q", "-b", "main")
        repo.commit(files, "initial")
        return repo

    return make


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model exported to ONNX once for the whole session (about 10 s)."""
    return packaged_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def write_config(tmp_path: Path, model_dir: Path) -> Callable[..., CiaConfig]:
    def write(codebases: list[dict[str, object]], **overrides: object) -> CiaConfig:
        raw: dict[str, object] = {
            "data_dir": str(tmp_path / "data"),
            "codebases": codebases,
            "embedding": {"path": str(model_dir)},
        }
        raw.update(overrides)
        # Mechanics (endpoints, runs, the learning loop) on the tiny SmolLM2: the packaged
        # default model is exercised end to end in test_answering and test_run_path.
        llm = overrides.get("llm")
        raw["llm"] = {"model": TINY_MODEL, **(llm if isinstance(llm, dict) else {})}
        path = tmp_path / "cia.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)

    return write


@pytest.fixture(autouse=True)
def _isolated_stores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    close_vector_stores()


SAMPLE_FILES: dict[str, str | bytes | None] = {
    "payments/auth.py": (
        '"""Authorization for the payments service."""\n'
        "\n"
        "ROLES = {'admin', 'clerk'}\n"
        "\n"
        "\n"
        "def check_permission(user, action):\n"
        '    """Return True when the user may perform the action on a payment."""\n'
        "    if user.role == 'admin':\n"
        "        return True\n"
        "    return action in user.grants\n"
        "\n"
        "\n"
        "class TokenValidator:\n"
        '    """Validates signed API tokens."""\n'
        "\n"
        "    def __init__(self, secret):\n"
        "        self.secret = secret\n"
        "\n"
        "    def validate(self, token):\n"
        "        return token.signature == sign(token.body, self.secret)\n"
    ),
    "payments/ledger.go": (
        "package payments\n"
        "\n"
        "// Ledger keeps the balance of every account.\n"
        "type Ledger struct {\n"
        "\tbalances map[string]int64\n"
        "}\n"
        "\n"
        "// Transfer moves an amount between two accounts.\n"
        "func (l *Ledger) Transfer(from, to string, amount int64) error {\n"
        "\tl.balances[from] -= amount\n"
        "\tl.balances[to] += amount\n"
        "\treturn nil\n"
        "}\n"
    ),
    "web/refund.ts": (
        "export function computeRefundAmount(total: number, fee: number): number {\n"
        "  return Math.max(0, total - fee);\n"
        "}\n"
    ),
    "README.md": (
        "# Payments\n\nProcesses card payments.\n\n## Refunds\n\nRefunds are computed in web/refund.ts.\n"
    ),
}


def indexing_assets() -> list[object]:
    from cia_assets.defs.indexing import assets as indexing_assets_module
    from cia_assets.defs.indexing import checks
    from cia_assets.defs.repos.assets import git_repo_snapshots

    return [
        git_repo_snapshots,
        indexing_assets_module.code_chunks,
        indexing_assets_module.chunk_embeddings,
        indexing_assets_module.qdrant_collection,
        checks.points_match_chunks,
        checks.lines_exist_at_snapshot,
        checks.smoke_search_finds_symbol,
    ]


def materialize_repo(
    config: CiaConfig,
    instance: dg.DagsterInstance,
    repo_id: str,
    *,
    full_rebuild: bool = False,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    from cia_assets.defs.repos.partitions import repos_partitions
    from cia_assets.defs.resources import build_resources

    if repo_id not in instance.get_dynamic_partitions(repos_partitions.name):
        instance.add_dynamic_partitions(repos_partitions.name, [repo_id])
    run_config = {"ops": {"qdrant_collection": {"config": {"full_rebuild": full_rebuild}}}}
    return dg.materialize(
        indexing_assets(),  # type: ignore[arg-type]
        instance=instance,
        resources=build_resources(str(config.config_path)),
        partition_key=repo_id,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def asset_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        if materialization.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
