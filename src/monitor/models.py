"""Plain data passed between stages. Stages take and return these; none of them does IO."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    """One HTTP fetch. `content` is the body's bytes; `error` is set when nothing usable came.

    `compressed`: `content` is zstd-compressed (monitor.extract.pack_fetched, which the ingest flow
    runs as soon as a batch is fetched); the fetcher itself always returns the raw bytes.
    """

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
    compressed: bool = False

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
    pages_compacted: int = 0  # archive files merged into one at the run's end (monitor.pages.compact)
    seconds: float = 0.0

    def source(self, sid: str) -> SourceStats:
        return self.sources.setdefault(sid, SourceStats())

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


# ---- what novelty and the store exchange -------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(t: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, ordered as the datetimes;
    DuckDB's `epoch_us` of the same TIMESTAMPTZ)."""
    return (t - _EPOCH) // _MICROSECOND


def from_epoch_micros(us: int) -> datetime:
    """The UTC datetime of `epoch_micros` (or of DuckDB's `epoch_us`)."""
    return _EPOCH + timedelta(microseconds=us)


# MinHash LSH layout of article_bands (migration 60): datasketch's optimum for Jaccard 0.8 with 64
# permutations. A band key is the md5 of the band's 44 bytes of the stored signature.
LSH_BANDS, LSH_ROWS = 5, 11


@dataclass(slots=True)
class WindowEntry:
    """One stored article inside the novelty window (what the detector compares against)."""

    article_id: str
    story_id: str | None
    first_seen: datetime
    content_hash: str | None
    minhash: bytes | None
    facts: list[str]
    source_id: str


@dataclass(slots=True)
class StoryRow:
    id: str
    title: str | None
    first_seen: datetime
    last_seen: datetime
    first_article_id: str
    topics: list[str]
    facts: list[str]
    surged: bool
    # facts reported by one outlet only so far: key -> {surface, outlets, article_id}
    pending: dict[str, Any] = field(default_factory=dict)
    # the facts the story's latest development brought (reports of that development are absorbed)
    dev_facts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CandidateQuery:
    """What one batch looks up: its keys and the time ranges each kind of candidate matters in."""

    since: datetime  # window start
    echo_since: datetime  # article-level fact candidates only matter from here (echo test) ...
    until: datetime  # ... to the batch's latest event time
    surge_since: datetime  # story sources before this are reduced to one row per source
    hashes: list[str]
    facts: list[str]
    minhashes: list[bytes]
    # (window df of `facts`, n_docs) -> what a stored story must score to be able to take one of the
    # batch's articles (novelty.story_bounds); None: every window story holding one of `facts`
    story_bounds: Callable[[dict[str, int], int], StoryBounds] | None = None


@dataclass(slots=True)
class StoryBounds:
    """Per batch article (`need`, `cut` by article index): an upper bound of each fact's weight over
    the batch, whether a story is reached through it (`probe`), and the bound a story's summed
    weights must reach. Rows are parallel lists (article, fact, weight, probe)."""

    article: list[int]
    fact: list[str]
    weight: list[float]
    probe: list[bool]
    need: list[float]
    cut: list[float]  # by article: the summed weights of its facts that are not probes


@dataclass(slots=True)
class NoveltyCandidates:
    """The part of the window one batch needs (see Store.novelty_candidates).

    The store's entries carry only their facts that the batch holds (the only ones a decision looks
    up); an entry that shares neither content hash nor MinHash band with the batch comes without them.
    """

    entries: list[WindowEntry] = field(default_factory=list)
    stories: list[StoryRow] = field(default_factory=list)
    df: dict[str, int] = field(default_factory=dict)  # window document frequency of the batch's facts
    n_docs: int = 0  # signatures in the window
    # (story_id, first_seen, source_id) of the candidate stories' window articles
    story_sources: list[tuple[str, datetime, str]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # rows each lookup returned
