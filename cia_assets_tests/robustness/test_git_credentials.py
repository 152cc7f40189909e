"""Credentials of private repositories (issue 18 item 1): a password or token in a repo URL
is refused without being echoed; `credentials.password_env` signs git in to a private HTTP
host (git's own http-backend behind Basic auth) with the secret kept to git's environment:
nothing of it in errors, run logs, snapshot metadata or the mirror's git config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cia_assets.config import CiaConfig, ConfigError, load_config
from cia_assets_tests.support.cli import cia
from cia_assets_tests.support.git_http import bare_copy, private_git_host
from cia_assets_tests.support.materialize import asset_metadata, materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

pytestmark = pytest.mark.robustness

SECRET = "SuperSecretPAT123"


def _everything_dagster_stored(instance: dg.DagsterInstance) -> str:
    """Every event of every run (logs, failures, metadata) and every run's config, as Dagster
    keeps them."""
    parts: list[str] = []
    for run in instance.get_runs():
        parts.append(dg.serialize_value(run))
        parts += [dg.serialize_value(entry) for entry in instance.all_logs(run.run_id)]
    return "\n".join(parts)


@pytest.mark.parametrize(
    "url",
    [
        f"https://deploy:{SECRET}@git.example.com/acme/payments.git",
        "https://deploy:${GIT_PAT}@git.example.com/x.git",
    ],
    ids=["literal", "from-env"],
)
def test_a_password_in_a_repo_url_is_refused_without_being_printed(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_PAT", SECRET)
    path = tmp_path / "cia.yaml"
    path.write_text(yaml.safe_dump({"data_dir": "data", "codebases": [{"url": url, "id": "payments"}]}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "codebases[0].url" in message and "password_env" in message
    assert SECRET not in message
    done = cia("index", "--config", str(path))  # as a user runs it
    assert done.returncode != 0
    assert "codebases[0].url" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_a_private_repo_is_indexed_with_credentials_named_in_cia_yaml(
    write_config: Callable[..., CiaConfig],
    make_repo: Callable[..., GitRepo],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cia_assets.lib.sources.git_sync import GitAuth, remote_head

    source = make_repo("payments-src", SAMPLE_FILES)
    hosted = tmp_path / "hosted"
    hosted.mkdir()
    bare_copy(source.path, hosted, "payments")
    with private_git_host(hosted, username="deploy", password=SECRET) as host:
        url = f"{host.base_url}payments.git"
        codebase = {
            "url": url,
            "id": "payments",
            "credentials": {"username": "deploy", "password_env": "CIA_GIT_PAT"},
        }

        # The variable unset: the error names the setting, not a value.
        config = write_config([codebase])
        instance = dg.DagsterInstance.ephemeral()
        unset = materialize_repo(config, instance, "payments", raise_on_error=False)
        assert not unset.success
        failure = next(e for e in unset.all_events if e.event_type_value == "STEP_FAILURE")
        description = failure.event_specific_data.user_failure_data.description  # type: ignore[union-attr]
        assert "credentials.password_env: environment variable CIA_GIT_PAT is not set" in description
        # Nothing was indexed yet, and it says so (not "the previous snapshot is kept").
        assert "Nothing was indexed for it yet" in description

        # A wrong token: refused by the host, and git's message carries no credential.
        monkeypatch.setenv("CIA_GIT_PAT", "WrongTokenValue999")
        wrong = materialize_repo(config, instance, "payments", raise_on_error=False)
        assert not wrong.success and host.refused > 0
        assert "WrongTokenValue999" not in _everything_dagster_stored(instance)

        # The right one: cloned, chunked, embedded, searchable.
        monkeypatch.setenv("CIA_GIT_PAT", SECRET)
        indexed = materialize_repo(config, instance, "payments")
        snapshot = asset_metadata(indexed, "git_repo_snapshots")
        assert snapshot["clone_url"] == url
        assert asset_metadata(indexed, "code_chunks")["files"] == len(SAMPLE_FILES)
        assert remote_head(url, "main", auth=GitAuth.of(config.codebases[0])) == snapshot["commit_sha"]

    stored = _everything_dagster_stored(instance)
    assert "payments" in stored and SECRET not in stored
    mirror = config.layout.mirror("payments")
    assert SECRET not in (mirror / "config").read_text()
    assert SECRET not in json.dumps(json.loads(config.layout.snapshot("payments").read_text()))


def test_an_ssh_key_named_in_cia_yaml_is_what_git_uses(tmp_path: Path) -> None:
    """(No ssh server runs here: the key path resolves against cia.yaml, a missing one is named,
    and git's ssh command uses that key alone, never prompting.)"""
    from cia_assets.lib.sources.git_sync import GitAuth, GitSyncError, git_env

    path = tmp_path / "cia.yaml"
    codebase = {"url": "git@git.example.com:acme/payments.git", "credentials": {"ssh_key": "keys/deploy"}}
    path.write_text(yaml.safe_dump({"data_dir": "data", "codebases": [codebase]}))
    config = load_config(path)
    with pytest.raises(
        GitSyncError, match=r"codebases\[payments\]\.credentials\.ssh_key: no such file .*keys/deploy"
    ):
        GitAuth.of(config.codebases[0])
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "deploy").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    auth = GitAuth.of(config.codebases[0])
    command = git_env(auth)["GIT_SSH_COMMAND"]
    assert f"-i {tmp_path / 'keys' / 'deploy'}" in command
    assert "BatchMode=yes" in command and "IdentitiesOnly=yes" in command
