"""User feedback as Langfuse scores: the score's name, shared with the forwarder that sends
the votes, and reading back the scores Langfuse holds (forwarded votes and annotations made
in Langfuse's UI), so retraining can tell when new feedback arrived."""

from __future__ import annotations

from datetime import datetime

from cia_assets.config import LangfuseConfig
from cia_assets.lib.observability.langfuse.client import api_client, http_client, request_options

SCORE_NAME = "user-feedback"


def feedback_scores_since(
    settings: LangfuseConfig, since: datetime | None, max_pages: int = 20
) -> list[datetime]:
    """Timestamps of user-feedback scores in Langfuse newer than `since`: votes from the chat
    app (forwarded) and annotations made in Langfuse's UI. Raises when Langfuse does not answer."""
    http = http_client(settings)
    try:
        api = api_client(settings, http)
        found: list[datetime] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = api.scores.get_many(
                name=SCORE_NAME,
                limit=100,
                cursor=cursor,
                from_timestamp=since,
                request_options=request_options(settings.timeout_s),
            )
            found += [s.timestamp for s in page.data if since is None or s.timestamp > since]
            cursor = getattr(page.meta, "cursor", None)
            if not cursor:
                break
        return found
    finally:
        http.close()
