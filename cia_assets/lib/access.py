"""Who may see which repos: every HTTP and MCP request carries a token from cia.yaml.

A token maps to a set of repos, like a Kubernetes ServiceAccount bound to namespaces;
retrieval only ever opens the collections of the repos a grant names, so a chunk of another
repo can reach neither a search result, nor an answer's context, nor a citation. The CLI
needs no token: whoever can read the data dir already holds every indexed chunk, so it acts
as the data dir's owner (like kubectl with the cluster-admin kubeconfig on the node).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cia_assets.config import CiaConfig


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


def authorize(config: CiaConfig, token: str | None) -> Grant:
    """The grant of `token`; raises AccessDenied for a missing or unknown one."""
    if not token:
        raise AccessDenied("a token is required (Authorization: Bearer <token>)")
    for entry in config.chat.tokens:
        # Constant-time comparison, so response timing does not leak a token's prefix.
        if hmac.compare_digest(entry.token.encode(), token.encode()):
            repos = (
                config.repo_ids if "*" in entry.repos else [r for r in config.repo_ids if r in entry.repos]
            )
            return Grant(name=entry.name, repos=tuple(repos))
    raise AccessDenied("unknown token")
