"""Plain data passed between stages. Stages take and return these; none of them does IO."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ArticleStatus = Literal["ok", "duplicate", "not_article", "too_short", "failed"]
DevelopmentKind = Literal["new_story", "update", "surge"]


def article_id_for(url: str) -> str:
    """Stable id of an article: its canonical URL hashed (so a re-run maps to the same row)."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


@dataclass(slots=True)
class Link:
    """A link to an article found by discovery, with what the feed said about it."""

    url: str
    source_id: str
    via: str  # feed | sitemap | page | article
    title: str | None = None
    published: datetime | None = None
    summary: str | None = None

    @property
    def article_id(self) -> str:
        return article_id_for(self.url)


@dataclass(slots=True)
class SourceDocResult:
    """What discovery got out of one source document (feed, sitemap, section page)."""

    source_id: str
    links: list[Link] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    follow: list[str] = field(default_factory=list)  # further documents to read (sitemap index, feed)
    error: str | None = None
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    latency_ms: float | None = None
    status_code: int | None = None


@dataclass(slots=True)
class FetchResult:
    """One HTTP fetch. `content` is the raw body bytes; `error` is set when nothing usable came."""

    url: str
    final_url: str
    status_code: int | None = None
    content: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    error: str | None = None
    retryable: bool = False
    not_modified: bool = False
    fetched_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.content is not None


@dataclass(slots=True)
class Article:
    """One article as it will be stored; every article ends with exactly one status."""

    id: str
    url: str
    source_id: str
    status: ArticleStatus
    status_reason: str | None = None
    final_url: str | None = None
    canonical_url: str | None = None
    title: str | None = None
    author: str | None = None
    published: datetime | None = None
    sitename: str | None = None
    description: str | None = None
    text: str | None = None
    lang: str | None = None
    lang_confidence: float | None = None
    extractor: str | None = None
    content_hash: str | None = None
    duplicate_of: str | None = None
    story_id: str | None = None
    html: bytes | None = None
    fetched_at: datetime | None = None
    feed_title: str | None = None
    feed_summary: str | None = None
    feed_published: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TopicMatch:
    """An article matched a topic, and why."""

    article_id: str
    topic: str
    score: float
    explanation: dict[str, Any]


@dataclass(slots=True)
class Development:
    """Something new about a story on a tracked topic."""

    id: str
    kind: DevelopmentKind
    story_id: str
    topic: str
    article_id: str
    score: float
    what_is_new: dict[str, Any]
    compared_with: list[dict[str, Any]]
    first_seen: datetime
    source_id: str
    title: str | None = None
    url: str | None = None
    lang: str | None = None


@dataclass(slots=True)
class SourceStats:
    """Per-source figures of one run."""

    links: int = 0
    new: int = 0
    fetched: int = 0
    stored: int = 0
    failed: int = 0
    error: str | None = None
    warnings: int = 0
    skipped: str | None = None


@dataclass(slots=True)
class RunStats:
    """What one run did; printed as the summary and stored in `runs.stats`."""

    run_id: str
    sources: dict[str, SourceStats] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    tagged: int = 0
    developments: int = 0
    alerts_queued: int = 0
    alerts_sent: int = 0
    alerts_pending: int = 0
    alerts_failed: int = 0
    dashboard: str | None = None
    database: str | None = None
    seconds: float = 0.0

    def source(self, sid: str) -> SourceStats:
        return self.sources.setdefault(sid, SourceStats())

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
