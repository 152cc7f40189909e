"""Keep a bare mirror of each configured repository and read files at an exact commit.

A bare mirror (no work tree) is enough: every file is read from git's object store at the
snapshot's sha, so only tracked files are seen (.gitignore holds by construction), a
symlink is a blob we skip rather than a path we could follow out of the repo, and a failed
fetch leaves the previous snapshot's objects untouched.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import git

from cia_assets.lib.core.fsio import write_json_atomic
from cia_assets.lib.core.records import utc_now

if TYPE_CHECKING:
    from cia_assets.config import CodebaseConfig

GIT_TIMEOUT_S = 300
LS_REMOTE_TIMEOUT_S = 20
_SYMLINK_MODE = "120000"
_SUBMODULE_TYPE = "commit"
# Never let git wait for a password or a host-key prompt: a sensor must not hang.
_NON_INTERACTIVE_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
_USERINFO = re.compile(r"://[^/@\s]*@")


class GitSyncError(RuntimeError):
    """A repository could not be cloned, fetched or read; the message names it."""


# Answers git's prompts from the environment git is started with: the secret lives only in
# that process's environment, never in a URL, a file or an argument list.
_ASKPASS_SCRIPT = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$CIA_GIT_USERNAME" ;;
  *) printf '%s\\n' "$CIA_GIT_PASSWORD" ;;
esac
"""


@dataclass(frozen=True)
class GitAuth:
    """What git needs to sign in to one remote (`codebases[].credentials`), as environment
    variables for the git process."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_key: Path | None = None

    @classmethod
    def of(cls, codebase: CodebaseConfig) -> GitAuth | None:
        """The codebase's credentials, read now (GitSyncError naming the setting when its
        environment variable is unset or its key file is missing); None without any."""
        credentials = codebase.credentials
        if credentials is None:
            return None
        where = f"codebases[{codebase.repo_id}].credentials"
        password = None
        if credentials.password_env:
            password = os.environ.get(credentials.password_env)
            if not password:
                raise GitSyncError(
                    f"{where}.password_env: environment variable {credentials.password_env} is not set"
                )
        if credentials.ssh_key is not None and not credentials.ssh_key.is_file():
            raise GitSyncError(f"{where}.ssh_key: no such file {credentials.ssh_key}")
        return cls(username=credentials.username, password=password, ssh_key=credentials.ssh_key)

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        if self.username or self.password:
            variables["GIT_ASKPASS"] = str(_askpass_script())
            variables["CIA_GIT_USERNAME"] = self.username or ""
            variables["CIA_GIT_PASSWORD"] = self.password or ""
        if self.ssh_key is not None:
            variables["GIT_SSH_COMMAND"] = (
                f"ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {shlex.quote(str(self.ssh_key))}"
            )
        return variables


def _askpass_script() -> Path:
    """The askpass program (it holds no secret), written once per user into the temp dir."""
    folder = Path(tempfile.gettempdir()) / f"cia-git-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    script = folder / "askpass.sh"
    if not script.exists() or script.read_text() != _ASKPASS_SCRIPT:
        staging = folder / f".askpass.{os.getpid()}"
        staging.write_text(_ASKPASS_SCRIPT)
        staging.chmod(0o700)
        os.replace(staging, script)
    return script


def git_env(auth: GitAuth | None) -> dict[str, str]:
    """The environment of a git command that talks to a remote: never waiting for a prompt
    (a sensor must not hang), signed in with `auth`."""
    return {**os.environ, **_NON_INTERACTIVE_ENV, **(auth.env() if auth else {})}


def display_url(url: str) -> str:
    """`url` as it may be shown or stored: without any user info (a credential)."""
    return _USERINFO.sub("://", url)


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    commit_sha: str
    branch: str
    clone_url: str
    web_url: str | None
    file_count: int
    fetched_at: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TrackedFile:
    path: str
    blob_sha: str
    size: int | None  # None: the blob is not in the mirror (a partial or damaged clone)


def remote_head(
    url: str, branch: str, *, auth: GitAuth | None = None, timeout_s: float = LS_REMOTE_TIMEOUT_S
) -> str:
    """The sha `branch` points at on the remote (`git ls-remote`), without fetching."""
    try:
        output = git.cmd.Git().execute(
            ["git", "ls-remote", "--heads", url, f"refs/heads/{branch}"],
            env=git_env(auth),
            kill_after_timeout=timeout_s,
        )
    except git.GitCommandError as error:
        raise GitSyncError(f"{display_url(url)}: git ls-remote failed: {_git_error_text(error)}") from error
    for line in str(output).splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    raise GitSyncError(f"{display_url(url)}: branch {branch!r} not found on the remote")


class RepoMirror:
    """A bare mirror at `path` of one branch of `clone_url`."""

    def __init__(self, path: Path, clone_url: str, branch: str, *, auth: GitAuth | None = None) -> None:
        self.path = path
        self.clone_url = clone_url
        self.branch = branch
        self.auth = auth
        self._repo: git.Repo | None = None

    @property
    def shown_url(self) -> str:
        return display_url(self.clone_url)

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            if not (self.path / "HEAD").exists():
                raise GitSyncError(
                    f"{display_url(self.clone_url)}: no local mirror at {self.path}; sync it first"
                )
            self._repo = git.Repo(self.path)
        return self._repo

    def sync(self) -> str:
        """Clone or fetch; return the branch's sha. On failure the old mirror is intact."""
        ref = f"refs/heads/{self.branch}"
        env = git_env(self.auth)
        try:
            if not (self.path / "HEAD").exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Clone beside the target and rename, so an interrupted clone leaves no
                # half-made mirror behind.
                staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
                try:
                    git.Repo.clone_from(
                        self.clone_url,
                        staging,
                        bare=True,
                        branch=self.branch,
                        single_branch=True,
                        env=env,
                        kill_after_timeout=GIT_TIMEOUT_S,
                    )
                    os.replace(staging, self.path)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            else:
                self.repo.git.execute(
                    ["git", "fetch", "--prune", "--no-tags", self.clone_url, f"+{ref}:{ref}"],
                    env=env,
                    kill_after_timeout=GIT_TIMEOUT_S,
                )
            return self.repo.git.rev_parse(ref)
        except git.GitCommandError as error:
            raise GitSyncError(
                f"{self.shown_url}: could not fetch branch {self.branch!r}: {_git_error_text(error)}"
            ) from error

    def tracked_files(
        self,
        commit_sha: str,
        include: tuple[str, ...] = ("**",),
        exclude: tuple[str, ...] = (),
        *,
        skipped: Counter[str] | None = None,
    ) -> list[TrackedFile]:
        """Regular files at `commit_sha` matching the globs; symlinks and submodules the globs
        select are skipped, and counted in `skipped` ("symlink", "submodule")."""
        output = self.repo.git.ls_tree("-r", "-z", "-l", "--full-tree", commit_sha)
        files: list[TrackedFile] = []
        for entry in output.split("\0"):
            if not entry:
                continue
            meta, _, path = entry.partition("\t")
            mode, object_type, blob_sha, size = meta.split()
            if mode == _SYMLINK_MODE or object_type == _SUBMODULE_TYPE:
                if skipped is not None and path_selected(path, include, exclude):
                    skipped["symlink" if mode == _SYMLINK_MODE else "submodule"] += 1
                continue
            if path_selected(path, include, exclude):
                # `git ls-tree -l` prints "BAD" (or "-") as the size of an object it cannot read.
                known = int(size) if size.isdigit() else None
                files.append(TrackedFile(path=path, blob_sha=blob_sha, size=known))
        return files

    def read_blobs(self, blob_shas: list[str]) -> Iterator[tuple[str, bytes]]:
        """(sha, content) for each blob, through one long-lived `git cat-file --batch`."""
        for blob_sha in blob_shas:
            _, _, _, stream = self.repo.git.stream_object_data(blob_sha)
            yield blob_sha, stream.read()

    def read_file(self, commit_sha: str, path: str) -> bytes | None:
        try:
            _, _, _, stream = self.repo.git.stream_object_data(f"{commit_sha}:{path}")
        except (ValueError, git.GitCommandError):
            return None
        return stream.read()

    def in_branch_history(self, commit_sha: str) -> bool:
        """Whether the branch (as last fetched) contains `commit_sha`: false after a force
        push dropped it, and then git may garbage-collect it."""
        try:
            self.repo.git.merge_base("--is-ancestor", commit_sha, f"refs/heads/{self.branch}")
        except git.GitCommandError:
            return False  # exit 1: not an ancestor; 128: an unknown commit
        return True

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


def path_selected(path: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Globs match the whole repo-relative path; `**` and `*` both cross directories."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in include) and not any(
        fnmatch.fnmatchcase(path, pattern) for pattern in exclude
    )


def snapshot_at(mirror: RepoMirror, commit_sha: str, codebase: CodebaseConfig, clone_url: str) -> Snapshot:
    """The record of `codebase` pinned to `commit_sha`, counting the files it selects there."""
    files = mirror.tracked_files(commit_sha, codebase.include, codebase.exclude)
    return Snapshot(
        repo_id=codebase.repo_id,
        commit_sha=commit_sha,
        branch=codebase.branch,
        clone_url=display_url(clone_url),  # shown in the UI and run logs: no user info
        web_url=codebase.resolved_web_url,
        file_count=len(files),
        fetched_at=utc_now(),
    )


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    write_json_atomic(path, snapshot.to_json())


def read_snapshot(path: Path) -> Snapshot | None:
    if not path.exists():
        return None
    return Snapshot(**json.loads(path.read_text()))


def _git_error_text(error: git.GitCommandError) -> str:
    """git's own message, without the command line (it names the URL) or any user info."""
    text = (error.stderr or error.stdout or "").strip()
    text = text.replace("stderr: ", "").strip(" '\n") or f"git exited with status {error.status}"
    return _USERINFO.sub("://", text)
