"""Records that cross pipeline stages: chunker -> embedder -> vector store -> search -> answer.

`SourceSpan` is the one home of "lines of a file of a repo": search hits, context blocks,
citations, source previews, synthetic sources, training sources and evaluation cases are all
spans (they subclass it), `label` is the one way to write one (`repo:path#L10-L42`) and
`source_url` the one way to link to one.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

# typing_extensions' TypedDict: pydantic (the MCP tools' output schemas) needs it before 3.12.
from typing_extensions import TypedDict

# Point ids must be stable across runs so an unchanged chunk keeps its id (and an
# incremental update only touches what changed); uuid5 gives Qdrant-valid ids.
_POINT_NAMESPACE = uuid.UUID("6f1c2d1e-8b7a-4c55-9f0e-3d2c1b0a9e8f")


def utc_now() -> str:
    """The time records are stamped with: UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class SourceSpanJson(TypedDict):
    """A span as the APIs return it (the MCP tools' results and the JSON of every answer)."""

    repo: str
    path: str
    line_start: int
    line_end: int


@dataclass(frozen=True, kw_only=True)
class SourceSpan:
    """Lines `line_start`..`line_end` (1-based, inclusive) of `path` in the repo `repo`.

    Keyword-only, so subclasses add their own fields (a commit, a score, the text) in any order.
    """

    repo: str
    path: str
    line_start: int
    line_end: int

    @property
    def label(self) -> str:
        """`repo:path#L10-L42`: how a span is written where there is no link (the CLI, traces,
        a not-found answer's list of what was read)."""
        return f"{self.repo}:{self.path}#L{self.line_start}-L{self.line_end}"

    @property
    def file_key(self) -> str:
        """`repo:path`: the file a span is in (the train/eval split is by file)."""
        return f"{self.repo}:{self.path}"

    def overlaps(self, other: SourceSpan) -> bool:
        return (
            self.repo == other.repo
            and self.path == other.path
            and self.line_start <= other.line_end
            and self.line_end >= other.line_start
        )

    def span_json(self) -> SourceSpanJson:
        return {
            "repo": self.repo,
            "path": self.path,
            "line_start": self.line_start,
            "line_end": self.line_end,
        }


@dataclass(frozen=True, kw_only=True)
class LinkedSpan(SourceSpan):
    """A span at a commit, with where it opens: the repo's web UI when it has one (`web_url`),
    else the chat app's source page (`chat_url`); `url` is the link (see `source_url`)."""

    commit_sha: str
    web_url: str | None
    chat_url: str | None = None

    @property
    def url(self) -> str | None:
        return source_url(
            self.web_url,
            self.commit_sha,
            self.path,
            self.line_start,
            self.line_end,
            repo=self.repo,
            chat_url=self.chat_url,
        )


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk as the chunker cuts it from one file, before repo/commit are attached.

    `context` is the enclosing scope a reader needs to understand a fragment (file path is
    added later): e.g. "class Foo(Base):" for a method, or the function signature for the
    second half of a split function. It is prepended to the embedded text, never to the
    cited lines.
    """

    line_start: int  # 1-based, inclusive
    line_end: int  # 1-based, inclusive
    text: str  # exactly lines line_start..line_end of the decoded file
    language: str
    kind: str  # function | method | class | module | section | window | ...
    symbol: str | None = None  # qualified name where known, e.g. "Foo.bar"
    context: str = ""


@dataclass(frozen=True)
class Chunk:
    """One retrievable unit of code with everything a citation needs."""

    repo_id: str
    path: str
    line_start: int
    line_end: int
    language: str
    kind: str
    symbol: str | None
    commit_sha: str
    content_hash: str  # sha256 of `text` (the cited lines)
    text: str
    context: str = ""
    web_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chunk_id(self) -> str:
        return str(
            uuid.uuid5(
                _POINT_NAMESPACE,
                f"{self.repo_id}\0{self.path}\0{self.line_start}\0{self.line_end}\0{self.content_hash}",
            )
        )

    @property
    def embedding_text(self) -> str:
        """What the embedding model and the lexical vector see: path and scope, then code."""
        header = self.path if not self.context else f"{self.path}\n{self.context}"
        return f"{header}\n{self.text}"

    @property
    def embedding_key(self) -> str:
        """Cache key of the embedding: identical text is never embedded twice."""
        return sha256_text(self.embedding_text)

    @property
    def url(self) -> str | None:
        return source_url(self.web_url, self.commit_sha, self.path, self.line_start, self.line_end)

    @property
    def span(self) -> SourceSpan:
        # Stored chunks keep their `repo_id` field name: it is the on-disk and payload format.
        return SourceSpan(
            repo=self.repo_id, path=self.path, line_start=self.line_start, line_end=self.line_end
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(**data)


def source_url(
    web_url: str | None,
    commit_sha: str,
    path: str,
    line_start: int,
    line_end: int,
    *,
    repo: str | None = None,
    chat_url: str | None = None,
) -> str | None:
    """The one link to lines of a file at a commit, for every citation and search hit.

    On the repo's web UI when it has one (`<web_url>/blob/<sha>/<path>#L10-L42`), else on the
    chat app's own source page (`<chat_url>/source/<repo>/<sha>/<path>#L10-L42`, see
    `chat.public_url`). None only where neither is known (records made outside a config)."""
    lines = f"#L{line_start}-L{line_end}"
    quoted = quote(path, safe="/")
    if web_url:
        return f"{web_url.rstrip('/')}/blob/{commit_sha}/{quoted}{lines}"
    if chat_url and repo:
        return f"{chat_url.rstrip('/')}/source/{quote(repo, safe='')}/{commit_sha}/{quoted}{lines}"
    return None
