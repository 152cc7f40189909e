"""User feedback as Langfuse scores: the score's name, shared with the forwarder that sends
the votes, and reading back the scores Langfuse holds (forwarded votes and annotations made
in Langfuse's UI), so retraining can tell when new feedback arrived."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cia_assets.config import LangfuseConfig
from cia_assets.lib.observability.langfuse.client import api_client, http_client, request_options

SCORE_NAME = "user-feedback"
# Where the forwarder puts the voter (the API token's name) in a score's metadata.
VOTER_KEY = "voter"


@dataclass(frozen=True)
class FeedbackVote:
    timestamp: datetime
    trace_id: str | None
    voter: str  # the token's name; an annotation's Langfuse user; else where it came from


def feedback_scores_since(
    settings: LangfuseConfig, since: datetime | None, max_pages: int = 20
) -> list[FeedbackVote]:
    """User-feedback scores in Langfuse newer than `since`: votes from the chat app
    (forwarded) and annotations made in Langfuse's UI. Raises when Langfuse does not answer."""
    http = http_client(settings)
    try:
        api = api_client(settings, http)
        found: list[FeedbackVote] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = api.scores.get_many(
                name=SCORE_NAME,
                limit=100,
                cursor=cursor,
                from_timestamp=since,
                request_options=request_options(settings.timeout_s),
            )
            found += [
                FeedbackVote(s.timestamp, _trace_of(s), _voter(s))
                for s in page.data
                if since is None or s.timestamp > since
            ]
            cursor = getattr(page.meta, "cursor", None)
            if not cursor:
                break
        return found
    finally:
        http.close()


def _voter(score: object) -> str:
    metadata = getattr(score, "metadata", None) or {}
    voter = metadata.get(VOTER_KEY) if isinstance(metadata, dict) else None
    return str(voter or getattr(score, "author_user_id", None) or f"langfuse:{getattr(score, 'source', '')}")


def _trace_of(score: object) -> str | None:
    """The trace a listed score is on: its subject, a trace or an observation in one."""
    subject = getattr(score, "subject", None)
    if getattr(subject, "kind", None) == "trace":
        return str(getattr(subject, "id", None) or "") or None
    return getattr(subject, "trace_id", None)
