"""The fixtures every test may use; the helpers they build on live in `support/`. Each test
is also marked by its folder (`unit`, `integration`, `e2e`), so `-m unit` selects the fast ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cia_assets.config import CiaConfig, load_config
from cia_assets.lib.core.project import Project, drop_in_process_engine
from cia_assets.lib.indexing.embeddings import packaged_model_dir
from cia_assets_tests.support.models import TINY_MODEL
from cia_assets_tests.support.repos import GitRepo

TEST_KINDS = {  # folder -> what its tests need
    "unit": "library code alone, fast",
    "integration": "Dagster runs, vector engines, in-process servers and fakes",
    "e2e": "packaged models served, the CLI as a subprocess, cia dev, Chromium, the learning loop",
}


def pytest_configure(config: pytest.Config) -> None:
    for kind, description in TEST_KINDS.items():
        config.addinivalue_line("markers", f"{kind}: {description}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0] if item.path.is_relative_to(root) else None
        if folder in TEST_KINDS:
            item.add_marker(folder)


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
        # default model is exercised end to end in e2e/test_answering and e2e/test_run_path.
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
    drop_in_process_engine()  # the server backend's tests each start with an empty engine


@pytest.fixture
def project_of() -> Iterator[Callable[[CiaConfig], Project]]:
    """The test's `Project` for a config, as a process's owner makes one: one per config
    (the store opened and the model loaded once), closed when the test ends."""
    opened: dict[int, Project] = {}

    def of(config: CiaConfig) -> Project:
        if id(config) not in opened:
            opened[id(config)] = Project(config)
        return opened[id(config)]

    yield of
    for project in opened.values():
        project.close()
