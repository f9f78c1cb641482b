"""DuckDB storage: schema with recorded migrations, bulk idempotent writes, the alert outbox.

Only this module talks to DuckDB. Writes go through Arrow tables (one INSERT per batch) and use
`INSERT OR IGNORE`/`INSERT OR REPLACE` on primary keys, so running the same cycle twice stores nothing
twice. DuckDB errors are translated into StoreError naming the database path.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from monitor.errors import StoreError
from monitor.models import Article, Development, TopicMatch

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial schema",
        """
        CREATE TABLE sources (
            id VARCHAR PRIMARY KEY, url VARCHAR NOT NULL, kind VARCHAR, name VARCHAR,
            etag VARCHAR, last_modified VARCHAR,
            last_polled TIMESTAMPTZ, last_success TIMESTAMPTZ, last_new_article TIMESTAMPTZ,
            consecutive_failures INTEGER DEFAULT 0, last_error VARCHAR,
            polls INTEGER DEFAULT 0, not_modified_polls INTEGER DEFAULT 0,
            total_latency_ms DOUBLE DEFAULT 0, next_poll_after TIMESTAMPTZ,
            failing_alerted BOOLEAN DEFAULT false
        );
        CREATE TABLE fetches (
            run_id VARCHAR, url VARCHAR, source_id VARCHAR, purpose VARCHAR,
            status_code INTEGER, elapsed_ms DOUBLE, bytes BIGINT, error VARCHAR, fetched_at TIMESTAMPTZ
        );
        CREATE TABLE articles (
            id VARCHAR PRIMARY KEY, url VARCHAR NOT NULL, source_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL, status_reason VARCHAR,
            final_url VARCHAR, canonical_url VARCHAR, title VARCHAR, author VARCHAR,
            published TIMESTAMPTZ, sitename VARCHAR, description VARCHAR, text VARCHAR,
            lang VARCHAR, lang_confidence DOUBLE, extractor VARCHAR, content_hash VARCHAR,
            duplicate_of VARCHAR, story_id VARCHAR,
            feed_title VARCHAR, feed_summary VARCHAR, feed_published TIMESTAMPTZ,
            fetched_at TIMESTAMPTZ, first_seen TIMESTAMPTZ NOT NULL, run_id VARCHAR
        );
        CREATE INDEX articles_hash ON articles (content_hash);
        CREATE TABLE article_html (article_id VARCHAR PRIMARY KEY, codec VARCHAR, html BLOB);
        CREATE TABLE article_topics (
            article_id VARCHAR, topic VARCHAR, score DOUBLE, explanation JSON, tagged_at TIMESTAMPTZ,
            PRIMARY KEY (article_id, topic)
        );
        CREATE TABLE article_signatures (
            article_id VARCHAR PRIMARY KEY, story_id VARCHAR, first_seen TIMESTAMPTZ,
            content_hash VARCHAR, minhash BLOB, facts VARCHAR[], source_id VARCHAR
        );
        CREATE TABLE stories (
            id VARCHAR PRIMARY KEY, title VARCHAR, first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ,
            first_article_id VARCHAR, topics VARCHAR[], facts VARCHAR[], surged BOOLEAN DEFAULT false,
            pending JSON, dev_facts VARCHAR[]
        );
        CREATE TABLE development_events (
            id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, story_id VARCHAR, topic VARCHAR,
            article_id VARCHAR, score DOUBLE, what_is_new JSON, compared_with JSON,
            first_seen TIMESTAMPTZ, source_id VARCHAR, run_id VARCHAR
        );
        CREATE TABLE alerts (
            id VARCHAR PRIMARY KEY, development_id VARCHAR, channel VARCHAR, kind VARCHAR,
            state VARCHAR NOT NULL, attempts INTEGER DEFAULT 0, last_error VARCHAR,
            next_attempt_at TIMESTAMPTZ, created_at TIMESTAMPTZ, sent_at TIMESTAMPTZ, payload JSON
        );
        CREATE TABLE runs (
            id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
            stats JSON
        );
        """,
    ),
    (
        2,
        "analyst views",
        """
        CREATE VIEW developments AS
            SELECT d.first_seen, d.kind, d.topic, a.title, a.lang, s.name AS outlet, a.url,
                   d.what_is_new, d.score, d.story_id, d.article_id, d.compared_with, d.source_id, d.id
            FROM development_events d
            LEFT JOIN articles a ON a.id = d.article_id
            LEFT JOIN sources s ON s.id = d.source_id
            ORDER BY d.first_seen DESC, d.id;
        CREATE VIEW story_timeline AS
            SELECT a.story_id, st.title AS story_title, coalesce(a.published, a.first_seen) AS seen_at,
                   a.lang, s.name AS outlet, a.title, a.url, a.status, a.duplicate_of,
                   (SELECT string_agg(kind, ',') FROM development_events d WHERE d.article_id = a.id) AS flagged
            FROM articles a
            JOIN stories st ON st.id = a.story_id
            LEFT JOIN sources s ON s.id = a.source_id
            ORDER BY a.story_id, seen_at, a.id;
        CREATE VIEW source_health AS
            SELECT id, name, url, last_success, last_new_article, consecutive_failures, last_error,
                   polls, CASE WHEN polls > 0 THEN total_latency_ms / polls END AS avg_latency_ms,
                   CASE WHEN polls > 0 THEN not_modified_polls::DOUBLE / polls END AS not_modified_ratio,
                   next_poll_after
            FROM sources;
        """,
    ),
    # 20–29: extraction, reprocess and retag (extract.py, flows/reprocess.py)
    (
        20,
        "retag log",
        """
        CREATE TABLE retag_log (
            run_id VARCHAR, logged_at TIMESTAMPTZ, article_id VARCHAR, topic VARCHAR,
            change VARCHAR NOT NULL, score DOUBLE
        );
        """,
    ),
    # 40–49: alerts (alerts.py)
    (
        40,
        "alert digests",
        """
        ALTER TABLE alerts ADD COLUMN digest_id VARCHAR;
        CREATE TABLE alert_digests (
            id VARCHAR PRIMARY KEY, channel VARCHAR NOT NULL, period_start TIMESTAMPTZ,
            period_end TIMESTAMPTZ, state VARCHAR NOT NULL, attempts INTEGER DEFAULT 0,
            last_error VARCHAR, next_attempt_at TIMESTAMPTZ, created_at TIMESTAMPTZ, sent_at TIMESTAMPTZ,
            alerts INTEGER
        );
        """,
    ),
    # 50–59: analyst SQL and operations (snapshot.py, query.py, ops.py)
    (
        50,
        "search index state",
        """
        CREATE TABLE search_index_state (
            articles BIGINT, newest TIMESTAMPTZ, built_at TIMESTAMPTZ, seconds DOUBLE
        );
        """,
    ),
    (
        51,
        "run history view",
        """
        CREATE VIEW run_history AS
            SELECT r.id AS run_id, r.started_at, r.finished_at, r.status,
                   round(epoch(r.finished_at - r.started_at), 1) AS seconds,
                   (SELECT count(*) FROM articles a WHERE a.run_id = r.id) AS articles_stored,
                   (SELECT count(*) FROM articles a WHERE a.run_id = r.id AND a.status = 'failed') AS failed,
                   (SELECT count(*) FROM development_events d WHERE d.run_id = r.id) AS developments,
                   TRY_CAST(json_extract_string(r.stats, '$.alerts_sent') AS INTEGER) AS alerts_sent,
                   json_extract_string(r.stats, '$.error') AS error
            FROM runs r
            ORDER BY r.started_at DESC;
        """,
    ),
]


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass(slots=True)
class SourceState:
    etag: str | None
    last_modified: str | None
    next_poll_after: datetime | None
    consecutive_failures: int


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


class Store:
    """A connection to the DuckDB file plus the verbs the pipeline needs."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    # ---- schema -------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded; return the versions applied."""
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMPTZ)"
        )
        done = {r[0] for r in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            with self.transaction():
                self.con.execute(sql)
                self.con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()]
                )
            applied.append(version)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # ---- sources ------------------------------------------------------------------------
    def sync_sources(self, rows: Sequence[tuple[str, str, str, str | None]]) -> None:
        """Make the sources table list the configured sources (id, url, kind, name)."""
        for sid, url, kind, name in rows:
            self.con.execute(
                "INSERT INTO sources (id, url, kind, name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET url = excluded.url, kind = excluded.kind, "
                "name = excluded.name",
                [sid, url, kind, name],
            )

    def source_states(self) -> dict[str, SourceState]:
        rows = self.con.execute(
            "SELECT id, etag, last_modified, next_poll_after, consecutive_failures FROM sources"
        ).fetchall()
        return {r[0]: SourceState(r[1], r[2], r[3], r[4] or 0) for r in rows}

    def record_source_poll(
        self,
        source_id: str,
        *,
        ok: bool,
        error: str | None,
        latency_ms: float | None,
        not_modified: bool,
        etag: str | None,
        last_modified: str | None,
        new_articles: int,
        next_poll_after: datetime | None,
        at: datetime,
    ) -> None:
        self.con.execute(
            """
            UPDATE sources SET
              last_polled = ?,
              last_success = CASE WHEN ? THEN ? ELSE last_success END,
              last_new_article = CASE WHEN ? > 0 THEN ? ELSE last_new_article END,
              consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures + 1 END,
              last_error = CASE WHEN ? THEN NULL ELSE ? END,
              polls = polls + 1,
              not_modified_polls = not_modified_polls + CASE WHEN ? THEN 1 ELSE 0 END,
              total_latency_ms = total_latency_ms + coalesce(?, 0),
              etag = CASE WHEN ? THEN coalesce(?, etag) ELSE etag END,
              last_modified = CASE WHEN ? THEN coalesce(?, last_modified) ELSE last_modified END,
              next_poll_after = ?
            WHERE id = ?
            """,
            [at, ok, at, new_articles, at, ok, ok, error, not_modified, latency_ms,
             ok, etag, ok, last_modified, next_poll_after, source_id],
        )

    def set_failing_alerted(self, source_id: str, value: bool) -> None:
        self.con.execute("UPDATE sources SET failing_alerted = ? WHERE id = ?", [value, source_id])

    # ---- articles -----------------------------------------------------------------------
    def known_article_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        tbl = pa.table({"id": ids})  # noqa: F841 (read by DuckDB's replacement scan)
        rows = self.con.execute("SELECT a.id FROM articles a JOIN tbl USING (id)").fetchall()
        return {r[0] for r in rows}

    def find_content_hashes(self, hashes: Iterable[str]) -> dict[str, str]:
        """content_hash -> the first stored article id with that hash."""
        hs = sorted({h for h in hashes if h})
        if not hs:
            return {}
        tbl = pa.table({"h": hs})  # noqa: F841
        rows = self.con.execute(
            "SELECT content_hash, min_by(id, first_seen) FROM articles "
            "WHERE content_hash IN (SELECT h FROM tbl) AND status IN ('ok', 'duplicate') "
            "GROUP BY content_hash"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def write_articles(self, articles: Sequence[Article], run_id: str, store_html: bool) -> int:
        """Insert articles (and their compressed HTML); existing ids are left as they are."""
        if not articles:
            return 0
        now = _now()
        cols: dict[str, list[Any]] = {k: [] for k in _ARTICLE_COLS}
        for a in articles:
            for k in _ARTICLE_COLS:
                if k == "first_seen":
                    cols[k].append(a.fetched_at or now)
                elif k == "run_id":
                    cols[k].append(run_id)
                else:
                    cols[k].append(getattr(a, k))
        tbl = pa.table(cols, schema=_ARTICLE_SCHEMA)  # noqa: F841
        before = self._count("articles")
        self.con.execute(f"INSERT OR IGNORE INTO articles ({', '.join(_ARTICLE_COLS)}) SELECT * FROM tbl")
        if store_html:
            html = [(a.id, a.html) for a in articles if a.html]
            if html:
                htbl = pa.table(  # noqa: F841
                    {"article_id": [h[0] for h in html], "codec": ["zstd"] * len(html),
                     "html": [h[1] for h in html]},
                    schema=pa.schema([("article_id", pa.string()), ("codec", pa.string()),
                                      ("html", pa.binary())]),
                )
                self.con.execute("INSERT OR IGNORE INTO article_html SELECT * FROM htbl")
        return self._count("articles") - before

    def write_topic_matches(self, matches: Sequence[TopicMatch]) -> None:
        if not matches:
            return
        now = _now()
        tbl = pa.table({  # noqa: F841
            "article_id": [m.article_id for m in matches],
            "topic": [m.topic for m in matches],
            "score": [float(m.score) for m in matches],
            "explanation": [json.dumps(m.explanation, ensure_ascii=False) for m in matches],
            "tagged_at": [now] * len(matches),
        })
        self.con.execute(
            "INSERT OR REPLACE INTO article_topics "
            "SELECT article_id, topic, score, explanation::JSON, tagged_at FROM tbl"
        )

    def write_fetches(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        keys = ["run_id", "url", "source_id", "purpose", "status_code", "elapsed_ms", "bytes", "error",
                "fetched_at"]
        tbl = pa.table({k: [r.get(k) for r in rows] for k in keys}, schema=_FETCH_SCHEMA)  # noqa: F841
        self.con.execute("INSERT INTO fetches SELECT * FROM tbl")

    # ---- novelty state ------------------------------------------------------------------
    def window_entries(self, since: datetime) -> list[WindowEntry]:
        rows = self.con.execute(
            "SELECT article_id, story_id, first_seen, content_hash, minhash, facts, source_id "
            "FROM article_signatures WHERE first_seen >= ? ORDER BY first_seen, article_id",
            [since],
        ).fetchall()
        return [WindowEntry(r[0], r[1], r[2], r[3], r[4], list(r[5] or []), r[6]) for r in rows]

    def window_stories(self, since: datetime) -> list[StoryRow]:
        rows = self.con.execute(
            "SELECT id, title, first_seen, last_seen, first_article_id, topics, facts, surged, pending, dev_facts "
            "FROM stories WHERE last_seen >= ? ORDER BY first_seen, id",
            [since],
        ).fetchall()
        return [StoryRow(r[0], r[1], r[2], r[3], r[4], list(r[5] or []), list(r[6] or []), bool(r[7]),
                         json.loads(r[8]) if r[8] else {}, list(r[9] or []))
                for r in rows]

    def write_signatures(self, entries: Sequence[WindowEntry]) -> None:
        if not entries:
            return
        tbl = pa.table({  # noqa: F841
            "article_id": [e.article_id for e in entries],
            "story_id": [e.story_id for e in entries],
            "first_seen": [e.first_seen for e in entries],
            "content_hash": [e.content_hash for e in entries],
            "minhash": [e.minhash for e in entries],
            "facts": [e.facts for e in entries],
            "source_id": [e.source_id for e in entries],
        }, schema=_SIG_SCHEMA)
        self.con.execute("INSERT OR IGNORE INTO article_signatures SELECT * FROM tbl")

    def upsert_stories(self, stories: Sequence[StoryRow]) -> None:
        if not stories:
            return
        tbl = pa.table({  # noqa: F841
            "id": [s.id for s in stories],
            "title": [s.title for s in stories],
            "first_seen": [s.first_seen for s in stories],
            "last_seen": [s.last_seen for s in stories],
            "first_article_id": [s.first_article_id for s in stories],
            "topics": [sorted(s.topics) for s in stories],
            "facts": [sorted(s.facts) for s in stories],
            "surged": [s.surged for s in stories],
            "pending": [json.dumps(s.pending, ensure_ascii=False, sort_keys=True) for s in stories],
            "dev_facts": [sorted(s.dev_facts) for s in stories],
        }, schema=_STORY_SCHEMA)
        self.con.execute("INSERT OR REPLACE INTO stories SELECT * REPLACE (pending::JSON AS pending) FROM tbl")

    def write_developments(self, devs: Sequence[Development], run_id: str) -> int:
        if not devs:
            return 0
        tbl = pa.table({  # noqa: F841
            "id": [d.id for d in devs],
            "kind": [d.kind for d in devs],
            "story_id": [d.story_id for d in devs],
            "topic": [d.topic for d in devs],
            "article_id": [d.article_id for d in devs],
            "score": [float(d.score) for d in devs],
            "what_is_new": [json.dumps(d.what_is_new, ensure_ascii=False) for d in devs],
            "compared_with": [json.dumps(d.compared_with, ensure_ascii=False) for d in devs],
            "first_seen": [d.first_seen for d in devs],
            "source_id": [d.source_id for d in devs],
            "run_id": [run_id] * len(devs),
        })
        before = self._count("development_events")
        self.con.execute(
            "INSERT OR IGNORE INTO development_events SELECT id, kind, story_id, topic, article_id, score,"
            " what_is_new::JSON, compared_with::JSON, first_seen, source_id, run_id FROM tbl"
        )
        return self._count("development_events") - before

    # ---- alerts outbox ------------------------------------------------------------------
    def enqueue_alerts(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add outbox rows; an existing idempotency key is never enqueued twice."""
        if not rows:
            return 0
        now = _now()
        tbl = pa.table({  # noqa: F841
            "id": [r["id"] for r in rows],
            "development_id": [r.get("development_id") for r in rows],
            "channel": [r["channel"] for r in rows],
            "kind": [r["kind"] for r in rows],
            "payload": [json.dumps(r["payload"], ensure_ascii=False) for r in rows],
            "queued_at": [now] * len(rows),
            "state": [r.get("state", "pending") for r in rows],  # `held`: waits for the channel's digest
        })
        before = self._count("alerts")
        self.con.execute(
            "INSERT OR IGNORE INTO alerts (id, development_id, channel, kind, state, attempts, "
            "next_attempt_at, created_at, payload) "
            "SELECT id, development_id, channel, kind, state, 0, queued_at, queued_at, payload::JSON FROM tbl"
        )
        return self._count("alerts") - before

    def due_alerts(self, now: datetime, channel: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT id, development_id, channel, kind, attempts, payload FROM alerts "
               "WHERE state = 'pending' AND next_attempt_at <= ?")
        params: list[Any] = [now]
        if channel:
            sql += " AND channel = ?"
            params.append(channel)
        rows = self.con.execute(
            sql + " ORDER BY created_at, json_extract_string(payload, '$.published'), id", params
        ).fetchall()
        return [{"id": r[0], "development_id": r[1], "channel": r[2], "kind": r[3], "attempts": r[4],
                 "payload": json.loads(r[5]) if r[5] else {}} for r in rows]

    def mark_alert(self, alert_id: str, state: str, *, error: str | None = None,
                   next_attempt_at: datetime | None = None) -> None:
        self.con.execute(
            "UPDATE alerts SET state = ?, attempts = attempts + 1, last_error = ?, "
            "next_attempt_at = coalesce(?, next_attempt_at), "
            "sent_at = CASE WHEN ? = 'sent' THEN now() ELSE sent_at END WHERE id = ?",
            [state, error, next_attempt_at, state, alert_id],
        )

    # ---- alert digests (an alert in a digest: state `held`, then `digest` with digest_id) ---------
    def oldest_held(self, channel: str) -> datetime | None:
        return self.scalar("SELECT min(created_at) FROM alerts WHERE channel = ? AND state = 'held'", [channel])

    def last_digest_end(self, channel: str) -> datetime | None:
        return self.scalar("SELECT max(period_end) FROM alert_digests WHERE channel = ?", [channel])

    def open_digest(self, channel: str) -> dict[str, Any] | None:
        """The channel's digest that was recorded but not yet delivered, if any."""
        row = self.con.execute(
            "SELECT id, period_start, period_end, attempts, next_attempt_at FROM alert_digests "
            "WHERE channel = ? AND state = 'pending' ORDER BY created_at LIMIT 1", [channel]).fetchone()
        return self._digest(row) if row else None

    def create_digest(self, channel: str, now: datetime) -> dict[str, Any] | None:
        """Tie every held alert of the channel to a new digest row (one transaction)."""
        import hashlib

        did = hashlib.sha1(f"digest|{channel}|{now.isoformat()}".encode()).hexdigest()[:20]
        with self.transaction():
            start = self.last_digest_end(channel) or self.oldest_held(channel)
            ids = [r[0] for r in self.con.execute(
                "SELECT id FROM alerts WHERE channel = ? AND state = 'held' AND created_at <= ?",
                [channel, now]).fetchall()]
            if ids:
                self.con.execute(
                    "INSERT INTO alert_digests (id, channel, period_start, period_end, state, attempts, "
                    "next_attempt_at, created_at, alerts) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                    [did, channel, start, now, now, _now(), len(ids)])
                tbl = pa.table({"id": ids})  # noqa: F841
                self.con.execute("UPDATE alerts SET state = 'digest', digest_id = ? "
                                 "WHERE id IN (SELECT id FROM tbl)", [did])
        if not ids:
            return None
        row = self.con.execute("SELECT id, period_start, period_end, attempts, next_attempt_at "
                               "FROM alert_digests WHERE id = ?", [did]).fetchone()
        return self._digest(row) if row else None

    def _digest(self, row: Sequence[Any]) -> dict[str, Any]:
        items = [json.loads(r[0]) for r in self.con.execute(
            "SELECT payload FROM alerts WHERE digest_id = ? "
            "ORDER BY created_at, json_extract_string(payload, '$.published'), id", [row[0]]).fetchall()]
        start, end = row[1], row[2]
        period = f"{start:%Y-%m-%d %H:%M}–{end:%Y-%m-%d %H:%M} UTC" if start and end else ""
        return {"id": row[0], "period": period, "attempts": row[3], "next_attempt_at": row[4], "items": items}

    def mark_digest(self, digest_id: str, state: str, *, error: str | None = None,
                    next_attempt_at: datetime | None = None) -> None:
        """Record a digest's outcome and, when final, its alerts' (one transaction)."""
        with self.transaction():
            self.con.execute(
                "UPDATE alert_digests SET state = ?, attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = coalesce(?, next_attempt_at), "
                "sent_at = CASE WHEN ? = 'sent' THEN now() ELSE sent_at END WHERE id = ?",
                [state, error, next_attempt_at, state, digest_id])
            if state != "pending":
                self.con.execute(
                    "UPDATE alerts SET state = ?, attempts = attempts + 1, last_error = ?, "
                    "sent_at = CASE WHEN ? = 'sent' THEN now() ELSE sent_at END WHERE digest_id = ?",
                    [state, error, state, digest_id])

    def source_health_changes(self, failing_after: int) -> list[dict[str, Any]]:
        """Sources that reached `failing_after` consecutive failures unannounced, or recovered after an alert."""
        rows = self.con.execute(
            "SELECT id, coalesce(name, id), url, consecutive_failures, last_error, last_success, "
            "coalesce(failing_alerted, false) FROM sources "
            "WHERE (consecutive_failures >= ? AND NOT coalesce(failing_alerted, false)) "
            "OR (consecutive_failures = 0 AND coalesce(failing_alerted, false)) ORDER BY id",
            [failing_after]).fetchall()
        return [{"source_id": r[0], "name": r[1], "url": r[2], "failures": r[3], "last_error": r[4],
                 "last_success": r[5], "recovered": bool(r[6])} for r in rows]

    # ---- runs ---------------------------------------------------------------------------
    def start_run(self, run_id: str) -> None:
        self.con.execute("INSERT OR IGNORE INTO runs (id, started_at, status) VALUES (?, ?, 'running')",
                         [run_id, _now()])

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        self.con.execute("UPDATE runs SET finished_at = ?, status = ?, stats = ?::JSON WHERE id = ?",
                         [_now(), status, json.dumps(stats), run_id])

    # ---- helpers ------------------------------------------------------------------------
    def _count(self, table: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.con.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.con.close()


_ARTICLE_COLS = [
    "id", "url", "source_id", "status", "status_reason", "final_url", "canonical_url", "title", "author",
    "published", "sitename", "description", "text", "lang", "lang_confidence", "extractor", "content_hash",
    "duplicate_of", "story_id", "feed_title", "feed_summary", "feed_published", "fetched_at", "first_seen",
    "run_id",
]
_TS = pa.timestamp("us", tz="UTC")
_ARTICLE_SCHEMA = pa.schema([
    (c, _TS if c in {"published", "feed_published", "fetched_at", "first_seen"}
     else pa.float64() if c == "lang_confidence" else pa.string())
    for c in _ARTICLE_COLS
])
_FETCH_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("url", pa.string()), ("source_id", pa.string()), ("purpose", pa.string()),
    ("status_code", pa.int32()), ("elapsed_ms", pa.float64()), ("bytes", pa.int64()), ("error", pa.string()),
    ("fetched_at", _TS),
])
_SIG_SCHEMA = pa.schema([
    ("article_id", pa.string()), ("story_id", pa.string()), ("first_seen", _TS), ("content_hash", pa.string()),
    ("minhash", pa.binary()), ("facts", pa.list_(pa.string())), ("source_id", pa.string()),
])
_STORY_SCHEMA = pa.schema([
    ("id", pa.string()), ("title", pa.string()), ("first_seen", _TS), ("last_seen", _TS),
    ("first_article_id", pa.string()), ("topics", pa.list_(pa.string())), ("facts", pa.list_(pa.string())),
    ("surged", pa.bool_()), ("pending", pa.string()), ("dev_facts", pa.list_(pa.string())),
])


def _check_writable(path: Path) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data folder {folder}: {exc.strerror}") from None
    if path.exists():
        return
    usage = shutil.disk_usage(folder)
    if usage.free < 5 * 1024 * 1024:
        raise StoreError(f"no space left for the database in {folder} ({usage.free} bytes free)")


@contextmanager
def open_store(path: str | Path, *, read_only: bool = False) -> Iterator[Store]:
    """Open (and migrate) the database; every DuckDB failure becomes a StoreError naming the path."""
    p = Path(path)
    if not read_only:
        _check_writable(p)
    elif not p.exists():
        raise StoreError(f"database not found: {p} (run `monitor run` or `monitor demo` first)")
    try:
        con = duckdb.connect(str(p), read_only=read_only)
    except (duckdb.Error, OSError) as exc:
        raise StoreError(f"cannot open database {p}: {_describe(exc)}") from None
    store = Store(con, p)
    try:
        if not read_only:
            store.migrate()
        yield store
    except duckdb.Error as exc:
        raise StoreError(f"database {p}: {_describe(exc)}") from exc
    finally:
        with suppress(duckdb.Error):
            con.close()
