"""Who may see which repos: every HTTP and MCP request carries a token from cia.yaml.

A token maps to a set of repos, like a Kubernetes ServiceAccount bound to namespaces;
retrieval only ever opens the collections of the repos a grant names, so a chunk of another
repo can reach neither a search result, nor an answer's context, nor a citation. The CLI
needs no token: whoever can read the data dir already holds every indexed chunk, so it acts
as the data dir's owner (like kubectl with the cluster-admin kubeconfig on the node).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cia_assets.config import AccessToken, CiaConfig


class AccessDenied(PermissionError):
    """The token is missing or unknown, or asks for a repo it may not see."""


@dataclass(frozen=True)
class Grant:
    """What one token may see."""

    name: str
    repos: tuple[str, ...]

    def select(self, requested: Sequence[str] | None) -> list[str]:
        """The repos to search: all granted ones, or the requested ones if all are granted."""
        if not requested:
            return list(self.repos)
        refused = [repo for repo in requested if repo not in self.repos]
        if refused:
            raise AccessDenied(f"token {self.name!r} may not read repo(s): {', '.join(refused)}")
        return list(dict.fromkeys(requested))


# The owner's grant name, as traces record it (`token_name`, Langfuse's user id) next to
# the names of chat.tokens entries.
OWNER_GRANT_NAME = "owner"


def owner_grant(config: CiaConfig) -> Grant:
    """Every configured repo, for the person at the shell who owns the data dir (the CLI)."""
    return Grant(name=OWNER_GRANT_NAME, repos=tuple(config.repo_ids))


LOCAL_TOKEN_NAME = "local"


def accepted_tokens(config: CiaConfig) -> tuple[AccessToken, ...]:
    """cia.yaml's `chat.tokens`; with none listed (a minimal cia.yaml), one token for every
    repo, made once at random into the data dir, so the chat app and MCP are usable and
    still closed: whoever can read the data dir can read every indexed chunk anyway."""
    if config.chat.tokens:
        return config.chat.tokens
    path = config.layout.local_token
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
        # A hard link appears whole and fails if it exists: two first starts keep one token.
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    token = path.read_text().strip()
    return (AccessToken(name=LOCAL_TOKEN_NAME, token=token, repos=("*",)),)


def authorize(config: CiaConfig, token: str | None) -> Grant:
    """The grant of `token`; raises AccessDenied for a missing or unknown one."""
    if not token:
        raise AccessDenied("a token is required (Authorization: Bearer <token>)")
    for entry in accepted_tokens(config):
        # Constant-time comparison, so response timing does not leak a token's prefix.
        if hmac.compare_digest(entry.token.encode(), token.encode()):
            repos = (
                config.repo_ids if "*" in entry.repos else [r for r in config.repo_ids if r in entry.repos]
            )
            return Grant(name=entry.name, repos=tuple(repos))
    raise AccessDenied("unknown token")
