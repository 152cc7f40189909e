"""The open git mirrors of a config's repos, shared: how every stage reads the lines of a file at
repo@sha:path (the answerer's context blocks and source view, golden examples, evaluation).

Lines are decoded and split exactly as chunking does (`chunking.decode_source`, `split_lines`),
so line N here is line N of every chunk and citation.
"""

from __future__ import annotations

import logging
import threading

from cia_assets.config import CiaConfig
from cia_assets.lib.indexing.chunking import decode_source, split_lines
from cia_assets.lib.sources.git_sync import RepoMirror, read_snapshot

log = logging.getLogger(__name__)


class MirrorPool:
    """One `RepoMirror` per repo, opened on first use and kept (one `git cat-file --batch` each),
    shared by the threads of a process; `close` ends them."""

    def __init__(self, config: CiaConfig) -> None:
        self.config = config
        self.layout = config.layout
        self._mirrors: dict[str, RepoMirror] = {}
        # A mirror's cat-file process answers one request at a time.
        self._lock = threading.Lock()

    def read_lines(self, repo: str, commit_sha: str | None, path: str) -> list[str] | None:
        """The lines of `path` at `commit_sha` (the indexed commit when None); None when the
        repo is not configured, or the commit, file or mirror is not there."""
        try:
            codebase = self.config.codebase(repo)
        except KeyError:
            return None  # a repo removed from cia.yaml
        if commit_sha is None:
            snapshot = read_snapshot(self.layout.snapshot(repo))
            if snapshot is None:
                return None
            commit_sha = snapshot.commit_sha
        with self._lock:
            mirror = self._mirrors.get(repo)
            if mirror is None:
                mirror = RepoMirror(
                    self.layout.mirror(repo), self.config.clone_url(codebase), codebase.branch
                )
                self._mirrors[repo] = mirror
            try:
                data = mirror.read_file(commit_sha, path)
            except Exception as error:  # a missing mirror or commit: the lines cannot be verified
                log.warning("cannot read %s:%s at %s: %s", repo, path, commit_sha[:12], error)
                return None
        if data is None:
            return None
        return split_lines(decode_source(data))

    def close(self) -> None:
        with self._lock:
            for mirror in self._mirrors.values():
                mirror.close()
            self._mirrors.clear()
