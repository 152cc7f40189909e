from __future__ import annotations

from pathlib import Path

import pytest

from cia_assets.config import ConfigError, derive_web_url, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cia.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data_dir: data\ncodebases:\n  - url: ./repo\n"))
    assert config.data_dir == (tmp_path / "data").resolve()
    codebase = config.codebases[0]
    assert codebase.repo_id == "repo"
    assert codebase.branch == "main"
    assert config.clone_url(codebase) == str((tmp_path / "repo").resolve())
    assert config.vector_store.backend == "embedded"
    assert config.vector_store_path == (tmp_path / "data" / "qdrant").resolve()


@pytest.mark.parametrize(
    ("url", "repo_id", "web_url"),
    [
        (
            "https://gitlab.example.com/pay/payments-service.git",
            "payments-service",
            "https://gitlab.example.com/pay/payments-service",
        ),
        ("git@github.com:acme/billing.git", "billing", "https://github.com/acme/billing"),
        ("ssh://git@git.internal:2222/team/api", "api", "https://git.internal/team/api"),
        ("file:///srv/git/tools.git", "tools", None),
        ("/srv/checkouts/monorepo/", "monorepo", None),
    ],
)
def test_repo_id_and_web_url_derivation(tmp_path: Path, url: str, repo_id: str, web_url: str | None) -> None:
    config = load_config(write(tmp_path, f"data_dir: d\ncodebases:\n  - url: '{url}'\n"))
    assert config.codebases[0].repo_id == repo_id
    assert config.codebases[0].resolved_web_url == web_url
    assert derive_web_url(url) == web_url


def test_explicit_id_and_web_url_win(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "data_dir: d\ncodebases:\n  - {url: ., id: self, web_url: 'https://h/x/'}\n")
    )
    assert config.codebases[0].repo_id == "self"
    assert config.codebases[0].resolved_web_url == "https://h/x"


@pytest.mark.parametrize(
    ("chat", "public_url"),
    [
        ("{}", "http://127.0.0.1:8600"),
        ("{host: cia.internal, port: 9000}", "http://cia.internal:9000"),
        ("{host: 0.0.0.0, port: 8600}", "http://127.0.0.1:8600"),  # a bind-all address opens nowhere
        ("{host: '::1'}", "http://[::1]:8600"),
        ("{host: 0.0.0.0, public_url: 'https://cia.example.com/'}", "https://cia.example.com"),
        ("{public_url: 'https://example.com/tools/cia'}", "https://example.com/tools/cia"),
    ],
)
def test_chat_public_url_defaults_to_where_the_app_listens(
    tmp_path: Path, chat: str, public_url: str
) -> None:
    config = load_config(write(tmp_path, f"data_dir: d\ncodebases: []\nchat: {chat}\n"))
    assert config.chat.resolved_public_url == public_url


def test_env_references_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKEY", "s3cret")
    config = load_config(
        write(
            tmp_path,
            "data_dir: d\ncodebases: []\nvector_store: {backend: server, url: 'http://q:6333', "
            "api_key: '${QKEY}'}\n",
        )
    )
    assert config.vector_store.api_key == "s3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("codebases: []\n", "data_dir: required"),
        ("data_dir: d\n", "codebases: required"),
        ("data_dir: d\ncodebases:\n  - branch: main\n", "codebases[0].url: Field required"),
        ("data_dir: d\ncodebases:\n  - {url: x, colour: red}\n", "codebases[0].colour: Extra inputs"),
        ("data_dir: d\ncodebases: {url: x}\n", "codebases: Input should be a valid"),
        ("data_dir: d\ncodebases:\n  - {url: a/x}\n  - {url: b/x}\n", "repo id 'x' is used by both"),
        ("data_dir: d\ncodebases:\n  - {url: x, id: 'bad id!'}\n", "codebases[0].id"),
        ("data_dir: d\ncodebases: []\nvector_store: {backend: server}\n", "needs 'url'"),
        ("data_dir: d\ncodebases: []\nembedding: {batch_size: 0}\n", "embedding.batch_size"),
        ("data_dir: d\ncodebases: []\nchat: {public_url: cia.example.com}\n", "chat.public_url"),
        (
            "data_dir: d\ncodebases: []\nvector_store: {api_key: '${CIA_TEST_UNSET}'}\n",
            "vector_store.api_key: environment variable CIA_TEST_UNSET is not set",
        ),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("data_dir: [unclosed\n", "not valid YAML"),
    ],
)
@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_malformed_file_names_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert expected in message, message


@pytest.mark.robustness  # a red-team probe that held (issue 18's standing suite)
def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cia_config_env_var_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "data_dir: elsewhere\ncodebases: []\n")
    monkeypatch.setenv("CIA_CONFIG", str(path))
    assert load_config().data_dir == (tmp_path / "elsewhere").resolve()


def test_shipped_config_indexes_this_repository() -> None:
    config = load_config(Path(__file__).parents[2] / "cia.yaml")
    assert config.repo_ids == ["cia"]
    assert Path(config.clone_url(config.codebases[0])) == Path(__file__).parents[2].resolve()
