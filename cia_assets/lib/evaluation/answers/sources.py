"""Where each repo of a question set comes from: a `--repo-dir` (a local clone or bare git
dir, mirrored on a branch that holds the set's commits), else a configured codebase.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cia_assets.config import CiaConfig, CodebaseConfig
from cia_assets.lib.evaluation.answers.sets import AnswerCase, AnswerEvalError
from cia_assets.lib.evaluation.retrieval import RepoSource


def source_from_dir(repo: str, path: Path, commits: Iterable[str | None] = (), **globs: Any) -> RepoSource:
    """A repo source for a local clone or bare git dir: the branch its HEAD names, or, when
    that branch lacks one of `commits`, a branch that has them all (main, master first)."""
    location = path.expanduser().resolve()

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(location), *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise AnswerEvalError(
                f"--repo-dir {repo}={path}: {done.stderr.strip() or 'not a git repository'}"
            )
        return done.stdout.strip()

    if not location.exists():
        raise AnswerEvalError(f"--repo-dir {repo}={path}: no such directory")
    try:
        head = git("symbolic-ref", "--quiet", "--short", "HEAD")
    except AnswerEvalError:
        git("rev-parse", "--git-dir")  # not a repository: git's own message
        head = ""  # a detached HEAD: a branch holding the commits must be found
    pinned = [c for c in dict.fromkeys(commits) if c]
    branch = head
    if pinned:
        candidates: set[str] | None = None
        for commit in pinned:
            try:
                listed = git("branch", "--format=%(refname:short)", "--contains", commit)
            except AnswerEvalError:
                listed = ""  # a commit this dir lacks: its cases are skipped, with the reason
            names = {line.strip() for line in listed.splitlines() if line.strip()}
            candidates = names if candidates is None else candidates & names
        if candidates and head not in candidates:
            branch = sorted(candidates, key=lambda b: (b not in ("main", "master"), b))[0]
    if not branch:
        raise AnswerEvalError(
            f"--repo-dir {repo}={path}: HEAD is detached and no branch holds the set's commits"
        )
    return RepoSource(repo=repo, url=str(location), branch=branch, **globs)


def parse_repo_dirs(values: Iterable[str]) -> dict[str, Path]:
    """`owner/name=PATH` arguments, by repo."""
    dirs: dict[str, Path] = {}
    for value in values:
        repo, sep, path = value.partition("=")
        if not sep or not repo.strip() or not path.strip():
            raise AnswerEvalError(f"--repo-dir {value!r}: expected OWNER/NAME=PATH")
        dirs[repo.strip()] = Path(path.strip())
    return dirs


def configured_codebase(config: CiaConfig, repo: str) -> CodebaseConfig | None:
    """The configured codebase a set's repo name means: the one whose id is the name or its
    last part (`cia`, `sqlfluff` for `sqlfluff/sqlfluff`)."""
    configured = {c.repo_id: c for c in config.codebases}
    return configured.get(repo) or configured.get(repo.rsplit("/", 1)[-1])


def sources_for(
    config: CiaConfig,
    cases: Sequence[AnswerCase],
    repo_dirs: Mapping[str, Path],
    *,
    include: Sequence[str] = (),
) -> dict[str, RepoSource]:
    """Where each repo of `cases` comes from: its `--repo-dir` (a local clone or bare git dir;
    `include` globs limit what is indexed of it), else the configured codebase whose id is
    the set's repo name or its last part (`cia`, `sqlfluff` for `sqlfluff/sqlfluff`). Repos
    with neither are left out: the harness skips their cases, saying why."""
    repos = list(dict.fromkeys(c.repo for c in cases))
    unused = sorted(set(repo_dirs) - set(repos))
    if unused:
        raise AnswerEvalError(
            f"--repo-dir {', '.join(unused)}: no selected question is about it "
            f"(repos of the selected questions: {', '.join(repos) or 'none'})"
        )
    sources: dict[str, RepoSource] = {}
    for repo in repos:
        if repo in repo_dirs:
            commits = [c.commit for c in cases if c.repo == repo]
            globs = {"include": tuple(include)} if include else {}
            sources[repo] = source_from_dir(repo, repo_dirs[repo], commits, **globs)
            continue
        codebase = configured_codebase(config, repo)
        if codebase is not None:
            sources[repo] = RepoSource(
                repo=repo,
                url=config.clone_url(codebase),
                branch=codebase.branch,
                include=codebase.include,
                exclude=codebase.exclude,
            )
    return sources
