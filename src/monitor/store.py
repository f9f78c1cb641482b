"""DuckDB storage: schema with recorded migrations, bulk idempotent writes, the alert outbox.

Only this module talks to DuckDB. Writes go through Arrow tables (one INSERT per batch) and use
`INSERT OR IGNORE`/`INSERT OR REPLACE` on primary keys, so running the same cycle twice stores nothing
twice. DuckDB errors are translated into StoreError naming the database path.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor import pages
from monitor.config import StorageConfig
from monitor.errors import StoreError
from monitor.models import (
    LSH_BANDS,
    LSH_ROWS,
    Article,
    CandidateQuery,
    Development,
    NoveltyCandidates,
    StoryBounds,
    StoryRow,
    TopicMatch,
    WindowEntry,
    from_epoch_micros,
)

R = TypeVar("R")

# fact_days from article_facts (migration 71, as it was recorded; migration 74 keys the facts)
FACT_DAYS_FILL = """
    INSERT INTO fact_days
        SELECT fact, (epoch_us(first_seen) // 86400000000)::INTEGER AS day, count(*)::INTEGER
        FROM article_facts GROUP BY fact, day ORDER BY day, fact;
    INSERT INTO fact_days_sealed SELECT max(day) + 1 FROM fact_days HAVING count(*) > 0;
"""
# fact_day_keys from article_facts, in one pass (bench/novelty.py builds its history with it)
FACT_DAY_KEYS_FILL = """
    INSERT INTO fact_day_keys
        SELECT md5_number_lower(fact), (epoch_us(first_seen) // 86400000000)::INTEGER AS day, count(*)::INTEGER
        FROM article_facts GROUP BY fact, day ORDER BY day;
    INSERT INTO fact_days_sealed SELECT max(day) + 1 FROM fact_day_keys HAVING count(*) > 0;
"""

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
    # 60–69: novelty candidate indexes (novelty.py). Rows are appended in (roughly) time order, so
    # `first_seen`/`seen` zonemaps prune lookups to the window. Bands: 5 bands of 11 MinHash values
    # (44 bytes of the stored 64 × uint32 signature), keyed by the md5 of the band's bytes.
    (
        60,
        "novelty candidate indexes",
        """
        CREATE TABLE article_facts (fact VARCHAR, article_id VARCHAR, story_id VARCHAR, first_seen TIMESTAMPTZ);
        CREATE TABLE article_bands (band UTINYINT, hash UBIGINT, article_id VARCHAR, first_seen TIMESTAMPTZ);
        CREATE TABLE story_facts (fact VARCHAR, story_id VARCHAR, seen TIMESTAMPTZ);
        INSERT INTO article_facts
            SELECT unnest(facts), article_id, story_id, first_seen FROM article_signatures ORDER BY first_seen;
        INSERT INTO article_bands
            SELECT r.b, md5_number_lower(s.minhash[r.b * 44 + 1:r.b * 44 + 44]), s.article_id, s.first_seen
            FROM article_signatures s CROSS JOIN range(5) r(b)
            WHERE octet_length(s.minhash) >= 220 ORDER BY s.first_seen;
        INSERT INTO story_facts SELECT unnest(facts), id, last_seen FROM stories ORDER BY last_seen;
        """,
    ),
    # 70–79: novelty lookup at scale. story_facts keyed by 64-bit integers (the lower half of the md5
    # of the fact and of the story id; md5 is stable across DuckDB versions, `hash()` is not): the
    # story bound joins ~10^5 window rows per batch, and integer joins cost half of string joins. A
    # key collision can only make a story look like it holds a fact (fetched in vain), never drop one.
    (
        70,
        "novelty story fact keys",
        """
        CREATE TABLE story_fact_keys (fact UBIGINT, story UBIGINT, seen TIMESTAMPTZ);
        INSERT INTO story_fact_keys
            SELECT md5_number_lower(fact), md5_number_lower(story_id), seen FROM story_facts ORDER BY seen;
        DROP TABLE story_facts;
        """,
    ),
    # Window document frequencies from per-day counts: fact_days holds, per fact and UTC day (days
    # since 1970), rows whose n sum to the day's article_facts rows. Each batch appends its own counts;
    # days before fact_days_sealed.day were recounted into one row per fact (late articles add rows).
    # A lookup sums the window's whole days here and counts only its first, partial day in article_facts.
    (
        71,
        "novelty fact day counts",
        """
        CREATE TABLE fact_days (fact VARCHAR, day INTEGER, n INTEGER);
        CREATE TABLE fact_days_sealed (day INTEGER);
        """ + FACT_DAYS_FILL,
    ),
    # story key -> id, one row per write of a story (like story_fact_keys): the story bound returns
    # keys, and md5 over every window story's id to map them back cost more than this lookup
    (
        72,
        "novelty story keys",
        """
        CREATE TABLE story_keys (story UBIGINT, id VARCHAR, seen TIMESTAMPTZ);
        INSERT INTO story_keys SELECT md5_number_lower(id), id, last_seen FROM stories ORDER BY last_seen;
        """,
    ),
    # The content-hash index served no query (find_content_hashes' semi-join scans the column with or
    # without it: 28 ms a batch at 1M articles either way), and DuckDB rewrites an ART index whole at
    # every checkpoint that follows a write: at 1M articles, 1,000 more cost 1.60 s and 125 MB of new
    # blocks at each checkpoint with it, 0.39 s without (docs/benchmarks.md, session 11).
    (73, "drop the unused content-hash index", "DROP INDEX IF EXISTS articles_hash;"),
    # fact_days with its facts as 64-bit keys (lower half of the md5, as story_fact_keys): summing the
    # window's whole days is an integer join, 11 ms a 200-article batch on the 1M benchmark store instead
    # of 19 ms on strings (docs/novelty.md). A key collision with another fact of the window would add
    # that fact's count (odds ~1e-10 a batch at 350,000 window facts): the df, a weight, not a decision rule.
    (
        74,
        "novelty fact day counts keyed",
        """
        CREATE TABLE fact_day_keys (fact UBIGINT, day INTEGER, n INTEGER);
        INSERT INTO fact_day_keys SELECT md5_number_lower(fact), day, n FROM fact_days ORDER BY day;
        DROP TABLE fact_days;
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


_BAND_KEY = "md5_number_lower({m}[r.b * 44 + 1:r.b * 44 + 44])"
# Candidate entries and stories are read by index lookup while ids x this < the window's signatures,
# else by one scan of the window. A lookup costs 0.06-0.11 ms a row (DuckDB fetches a row's lists
# element by element), a scan ~0.5 us a window row plus ~0.01 ms a hit. Signatures on the 1M-article
# store (38,000 in the window): 100 ids 7 vs 22 ms, 1,000 ids 62 vs 30 ms; stories there: 100 ids
# 9.5 vs 15 ms, 1,000 ids 82 vs 43 ms; bench/pipeline.py's 5,000-article run, ~1,000 entries a
# batch: 124 vs 22 ms.
WINDOW_SCAN_RATIO = 100
# fact_days' day of a first_seen (migration 71): whole UTC days since 1970
_DAY = "(epoch_us(first_seen) // 86400000000)::INTEGER"


def _day(t: datetime) -> int:
    return int(t.timestamp() // 86400)


def _day_start(day: int) -> datetime:
    return datetime.fromtimestamp(day * 86400, UTC)


# story_fact_keys rows of a stories table (migration 70): one per fact, at the story's last_seen
STORY_FACT_KEYS = ("SELECT md5_number_lower(f), md5_number_lower(id), last_seen "
                   "FROM (SELECT unnest(facts) AS f, id, last_seen FROM {stories})")


@contextmanager
def duckdb_setting(con: duckdb.DuckDBPyConnection, name: str, value: str) -> Iterator[None]:
    """Run the block with DuckDB setting `name` = `value`, then give the connection its own value back."""
    row = con.execute(f"SELECT current_setting('{name}')").fetchone()
    con.execute(f"SET {name} = '{value}'")
    try:
        yield
    finally:
        if row:
            con.execute(f"SET {name} = '{row[0]}'")


class Store:
    """A connection to the DuckDB file plus the verbs the pipeline needs."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, lake: bool = False) -> None:
        self.con = con
        self.path = path
        self.lake = lake  # a DuckLake store: no primary keys, so no INSERT OR IGNORE/REPLACE (see _insert_new)

    # ---- schema -------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded; return the versions applied."""
        pk = "" if self.lake else " PRIMARY KEY"
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            f"(version INTEGER{pk}, name VARCHAR, applied_at TIMESTAMPTZ)"
        )
        done = {r[0] for r in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            with self.transaction():
                self.con.execute(_lake_ddl(sql) if self.lake else sql)
                self.con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()]
                )
            applied.append(version)
        return applied

    def recycle(self) -> None:
        """Close the connection and open a new one on the same file (a writer, set up as open_store does).

        An open DuckDB database keeps memory for the rows written through it, also after a checkpoint,
        until it is closed: 73 MB after 4,000 articles of 4 KB, against 26 MB when reopened every 1,000
        (tests/test_flow_memory.py). The flow recycles its store every RECYCLE_EVERY articles. Closing
        checkpoints the WAL into the file. A DuckLake store is left as it is.
        """
        if self.lake:
            return
        self.con.close()
        self.con = _connect(self.path)
        for sql in WRITER_SETUP:
            self.con.execute(sql)

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
            if self.lake:
                self.con.execute(
                    "MERGE INTO sources t USING (SELECT ? AS id, ? AS url, ? AS kind, ? AS name) n ON t.id = n.id "
                    "WHEN MATCHED THEN UPDATE SET url = n.url, kind = n.kind, name = n.name "
                    "WHEN NOT MATCHED THEN INSERT (id, url, kind, name) VALUES (n.id, n.url, n.kind, n.name)",
                    [sid, url, kind, name])
                continue
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

    def compact_pages(self, at: int | None = None) -> pages.Compacted | None:
        """Merge the page archive's newest small files when there are `at` (pages.COMPACT_AT) of them
        (pages.compact); rows of ids that are not stored articles are dropped. A DuckLake keeps no archive."""
        if self.lake:
            return None
        return pages.compact(pages.archive_dir(self.path), self.known_article_ids, at)

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
        """Insert articles, and archive their compressed pages first (monitor.pages: a committed article
        always has its page); existing ids are left as they are."""
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
        tbl = pa.table(cols, schema=_ARTICLE_SCHEMA)
        if store_html and not self.lake:
            known = self.known_article_ids(a.id for a in articles)
            pages.write_pages(pages.archive_dir(self.path),
                              [(a.id, a.html) for a in articles if a.html and a.id not in known])
        before = self._count("articles")
        self._insert_new("articles", ["id"], "SELECT * FROM tbl", f"({', '.join(_ARTICLE_COLS)})", data=tbl)
        if store_html and self.lake:  # a DuckLake keeps its tables in Parquet files already
            html = [(a.id, a.html) for a in articles if a.html]
            if html:
                htbl = pa.table(
                    {"article_id": [h[0] for h in html], "codec": [pages.CODEC] * len(html),
                     "html": [h[1] for h in html]},
                    schema=pa.schema([("article_id", pa.string()), ("codec", pa.string()),
                                      ("html", pa.binary())]),
                )
                self._insert_new("article_html", ["article_id"], "SELECT * FROM tbl", data=htbl)
        return self._count("articles") - before

    def write_topic_matches(self, matches: Sequence[TopicMatch]) -> None:
        if not matches:
            return
        now = _now()
        tbl = pa.table({
            "article_id": [m.article_id for m in matches],
            "topic": [m.topic for m in matches],
            "score": [float(m.score) for m in matches],
            "explanation": [json.dumps(m.explanation, ensure_ascii=False) for m in matches],
            "tagged_at": [now] * len(matches),
        })
        self._upsert("article_topics", ["article_id", "topic"],
                     "SELECT article_id, topic, score, explanation::JSON AS explanation, tagged_at FROM tbl", tbl)

    def story_of(self, article_id: str) -> str | None:
        row = self.con.execute("SELECT story_id FROM articles WHERE id = ?", [article_id]).fetchone()
        return row[0] if row else None

    def story_reach(self, story_id: str) -> tuple[int, list[str]]:
        """How many stored articles a story has, and in which languages."""
        row = self.con.execute(
            "SELECT count(*), list(DISTINCT lang ORDER BY lang) FROM articles WHERE story_id = ?", [story_id]
        ).fetchone()
        return (int(row[0]), [x for x in (row[1] or []) if x]) if row else (0, [])

    def source_name(self, source_id: str) -> str:
        row = self.con.execute("SELECT coalesce(name, id) FROM sources WHERE id = ?", [source_id]).fetchone()
        return str(row[0]) if row and row[0] else source_id

    # ---- reprocess / retag ----------------------------------------------------------------
    def stored_articles(self) -> list[dict[str, Any]]:
        """Every article with its stored HTML (codec, bytes; None when not kept), in first-seen order."""
        cols = ", ".join(f"a.{c}" for c in STORED_ARTICLE_COLS)
        cur = self.con.execute(
            f"SELECT {cols}, h.codec, h.html FROM articles a LEFT JOIN article_html h ON h.article_id = a.id "
            "ORDER BY a.first_seen, a.id"
        )
        rows = [dict(zip([*STORED_ARTICLE_COLS, "codec", "html"], r, strict=True)) for r in cur.fetchall()]
        if self.lake:  # a lake keeps its pages in article_html
            return rows
        # pages stored in DuckDB before the archive existed are in the join; the rest are archived
        archived = pages.read_pages(pages.archive_dir(self.path), (r["id"] for r in rows if r["html"] is None))
        for r in rows:
            if r["html"] is None and r["id"] in archived:
                r["codec"], r["html"] = archived[r["id"]]
        return rows

    def update_extracted(self, articles: Sequence[Article]) -> None:
        """Overwrite the extraction and novelty fields of stored articles (reprocess)."""
        if not articles:
            return
        cols: dict[str, list[Any]] = {"id": [a.id for a in articles]}
        for c in REPROCESSED_COLS:
            cols[c] = [getattr(a, c) for a in articles]
        schema = pa.schema([("id", pa.string())] + [
            (c, _TS if c == "published" else pa.float64() if c == "lang_confidence" else pa.string())
            for c in REPROCESSED_COLS])
        tbl = pa.table(cols, schema=schema)  # noqa: F841 (read by DuckDB's replacement scan)
        sets = ", ".join(f"{c} = tbl.{c}" for c in REPROCESSED_COLS)
        self.con.execute(f"UPDATE articles SET {sets} FROM tbl WHERE articles.id = tbl.id")

    def reset_derived(self) -> None:
        """Forget everything derived from articles (topics, signatures, stories, developments)."""
        with self.transaction():
            for table in DERIVED_TABLES:
                self.con.execute(f"DELETE FROM {table}")
            self.con.execute("UPDATE articles SET story_id = NULL, duplicate_of = NULL, content_hash = NULL")

    def taggable_articles(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(id, title, text, lang) of every ok article, for retagging."""
        rows = self.con.execute("SELECT id, title, text, lang FROM articles WHERE status = 'ok' ORDER BY id")
        return [(r[0], r[1], r[2], r[3]) for r in rows.fetchall()]

    def topic_scores(self) -> dict[tuple[str, str], float]:
        rows = self.con.execute("SELECT article_id, topic, score FROM article_topics").fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    def replace_topic_matches(self, matches: Sequence[TopicMatch], run_id: str,
                              log: Sequence[tuple[str, str, str, float]]) -> None:
        """Replace all topic matches and record (article_id, topic, added|removed, score) in retag_log."""
        with self.transaction():
            self.con.execute("DELETE FROM article_topics")
            self.write_topic_matches(matches)
            if log:
                tbl = pa.table({  # noqa: F841
                    "run_id": [run_id] * len(log), "logged_at": pa.array([_now()] * len(log), _TS),
                    "article_id": [x[0] for x in log], "topic": [x[1] for x in log],
                    "change": [x[2] for x in log], "score": [float(x[3]) for x in log]})
                self.con.execute("INSERT INTO retag_log SELECT * FROM tbl")

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

    def novelty_candidates(self, q: CandidateQuery) -> NoveltyCandidates:
        """Only what a batch needs from the window, each part found through an index.

        entries: window signatures sharing the batch's content hash or a MinHash band (article_bands),
        or a fact key within the echo range in a candidate story (article_facts), each with only the
        batch's facts (and, if reached through a fact alone, without hash and MinHash); stories: window
        stories that can score `q.story_bounds` for an article (story_fact_keys); df: the window's whole days
        in fact_day_keys plus its first day in article_facts; n_docs: signatures in the window; story_sources:
        the candidate stories' articles (before surge_since one row per source).
        """
        with self._single_threaded():
            return self._novelty_candidates(q)

    @contextmanager
    def _single_threaded(self) -> Iterator[None]:
        """Run the block on one DuckDB thread. The lookups are a handful of small queries (a few ms each):
        a second thread saves little on an idle machine and, on cores shared with extraction workers,
        waits for them (measured on the 1M-article benchmark: docs/novelty.md)."""
        with duckdb_setting(self.con, "threads", "1"):
            yield

    def _novelty_candidates(self, q: CandidateQuery) -> NoveltyCandidates:
        n_docs = int(self.scalar("SELECT count(*) FROM article_signatures WHERE first_seen >= ?", [q.since]))
        if not n_docs:
            return NoveltyCandidates(rows={"entries": 0, "stories": 0, "df": 0, "story_sources": 0})
        qh = pa.table({"h": sorted({h for h in q.hashes if h})}, schema=pa.schema([("h", pa.string())]))
        qf = pa.table({"fact": sorted(set(q.facts))}, schema=pa.schema([("fact", pa.string())]))
        qm = pa.table({"minhash": q.minhashes}, schema=pa.schema([("minhash", pa.binary())]))
        with self._registered(qh=qh, qf=qf, qm=qm):
            df = self._window_df(q.since)
            if q.story_bounds:
                story_ids = self._bounded_stories(q.story_bounds(df, n_docs), q.since)
            else:
                with self._registered(qs=qf.rename_columns(["fact"])):
                    story_ids = self._candidate_stories(q.since)
            stories = self._stories_by_id(story_ids, q.since, n_docs)
            entries = self._candidate_entries(q, [s.id for s in stories], n_docs)
        sources = self._story_sources([s.id for s in stories], q.since, max(q.since, q.surge_since))
        return NoveltyCandidates(
            entries, stories, df, n_docs, sources,
            rows={"entries": len(entries), "stories": len(stories), "df": len(df), "story_sources": len(sources)})

    def _window_df(self, since: datetime) -> dict[str, int]:
        """Window document frequency of the facts in the registered `qf`: the window's whole days from
        fact_day_keys (joined on the facts' keys), its first (partial) day from article_facts."""
        day = _day(since)
        rows = self.con.execute(
            """
            WITH k AS MATERIALIZED (SELECT fact, md5_number_lower(fact) AS key FROM qf)
            SELECT fact, sum(n)::BIGINT FROM (
                SELECT k.fact, d.n FROM fact_day_keys d JOIN k ON d.fact = k.key WHERE d.day > $day
                UNION ALL
                SELECT fact, 1 FROM article_facts
                    WHERE first_seen >= $since AND first_seen < $next AND fact IN (SELECT fact FROM qf))
            GROUP BY fact
            """, {"day": day, "since": since, "next": _day_start(day + 1)}).fetchall()
        return {f: int(n) for f, n in rows}

    def _candidate_entries(self, q: CandidateQuery, story_ids: list[str], n_docs: int) -> list[WindowEntry]:
        """The window signatures the batch can reach: content hash, LSH band, or a fact within the echo
        range in a candidate story.

        An entry reached only through a fact comes without its content hash and MinHash: it shares
        neither with any of the batch's articles (the first two branches would have found it; the
        band keys in SQL only ever match more), so the detector could never match it as a copy. In a
        big story those are most of the entries (13,000 of 16,000 a batch at 20,000 bench articles).
        """
        ids = self.con.execute(
            f"""
            WITH qb AS (SELECT DISTINCT r.b AS band, {_BAND_KEY.format(m='minhash')} AS hash
                        FROM qm CROSS JOIN range({LSH_BANDS}) r(b))
            SELECT article_id, bool_or(near) AS near FROM (
                SELECT article_id, true AS near FROM article_signatures
                    WHERE first_seen >= $since AND content_hash IN (SELECT h FROM qh)
                UNION ALL
                SELECT article_id, true FROM article_bands SEMI JOIN qb USING (band, hash)
                    WHERE first_seen >= $since
                UNION ALL
                SELECT article_id, false FROM article_facts
                    WHERE first_seen >= $echo_since AND first_seen <= $until AND fact IN (SELECT fact FROM qf)
                    AND story_id IN ({_sql_strings(story_ids) or 'NULL'}))
            GROUP BY article_id
            """, {"since": q.since, "echo_since": max(q.since, q.echo_since), "until": q.until}).to_arrow_table()
        if not ids.num_rows:
            return []
        # every id is in the window: each branch above filters on first_seen >= since. Times come as
        # epoch_us here and in _story_sources: DuckDB converts each TIMESTAMPTZ through pytz (~4 us,
        # 0.1 s a batch against 15,000 stored bench articles)
        got = self._window_rows_by_id(
            "SELECT article_id, story_id, epoch_us(first_seen), content_hash, minhash, facts, source_id "
            "FROM article_signatures", "article_id", "first_seen", q.since, ids.column(0).to_pylist(), n_docs,
            "ORDER BY first_seen, article_id", lambda cur: cur.to_arrow_table())
        near = pc.is_in(got.column(0), value_set=pc.filter(ids.column(0), ids.column(1)))
        cols = [got.column(0).to_pylist(), _shared_strings(got.column(1)), got.column(2).to_pylist(),
                _shared_strings(pc.if_else(near, got.column(3), None)),
                pc.if_else(near, got.column(4), None).to_pylist(), _shared_strings(got.column(6))]
        facts = _facts_among(got.column(5), q.facts)
        return [WindowEntry(a, s, from_epoch_micros(t), h, m, f, src)
                for a, s, t, h, m, src, f in zip(*cols, facts, strict=True)]

    def _bounded_stories(self, b: StoryBounds, since: datetime) -> list[str]:
        """Ids of the window stories whose facts weigh at least `need` for some article (scored in SQL).

        A story is reached through an article's probe facts; a reached (article, story) pair whose
        probe weight plus the article's `cut` (all its other facts) stays below `need` is dropped, and
        only the rest look up the other facts (common facts reach most stories, so they are never
        joined on their own).
        """
        qw = pa.table({"a": b.article, "fact": b.fact, "w": b.weight, "probe": b.probe},
                      schema=pa.schema([("a", pa.int32()), ("fact", pa.string()), ("w", pa.float64()),
                                        ("probe", pa.bool_())]))
        qn = pa.table({"a": list(range(len(b.need))), "need": b.need, "cut": b.cut},
                      schema=pa.schema([("a", pa.int32()), ("need", pa.float64()), ("cut", pa.float64())]))
        with self._registered(qw=qw, qn=qn):
            # facts and stories as 64-bit keys (story_fact_keys) keep the joins narrow. Only probe facts
            # are joined with all the window stories holding them; the other facts only with the reached
            # stories (`held`): common facts are in most stories, so they are never joined on their own.
            hit = self.con.execute(
                """
                WITH q AS MATERIALIZED (SELECT a, md5_number_lower(fact) AS f, w, probe FROM qw),
                sf AS MATERIALIZED (SELECT DISTINCT fact AS f, story AS h FROM story_fact_keys
                                    WHERE seen >= $since AND fact IN (SELECT f FROM q WHERE probe)),
                reach AS MATERIALIZED (
                    SELECT q.a, sf.h, sum(q.w) AS w FROM q JOIN sf USING (f) JOIN qn USING (a) WHERE q.probe
                    GROUP BY q.a, sf.h HAVING sum(q.w) + any_value(qn.cut) >= any_value(qn.need)),
                held AS (SELECT DISTINCT fact AS f, story AS h FROM story_fact_keys WHERE seen >= $since
                         AND story IN (SELECT h FROM reach) AND fact IN (SELECT f FROM q WHERE NOT probe)),
                rest AS (SELECT r.a, r.h, q.w FROM reach r JOIN q USING (a)
                         WHERE NOT q.probe AND xor(r.h, q.f) IN (SELECT xor(h, f) FROM held)),
                scored AS (SELECT a, h, sum(w) AS w FROM (SELECT * FROM reach UNION ALL SELECT * FROM rest)
                           GROUP BY a, h)
                SELECT DISTINCT h FROM scored JOIN qn USING (a) WHERE scored.w >= qn.need
                """, {"since": since}).to_arrow_table()
        return self._story_ids_keyed(hit, since)

    def _story_ids_keyed(self, keys: pa.Table, since: datetime) -> list[str]:
        """Ids of the window stories whose md5 key is in `keys` (column h), through story_keys."""
        if not keys.num_rows:
            return []
        with self._registered(hit=keys):
            return [r[0] for r in self.con.execute(
                "SELECT DISTINCT id FROM story_keys WHERE seen >= ? AND story IN (SELECT h FROM hit)",
                [since]).fetchall()]

    def _window_rows_by_id(self, select: str, key: str, seen: str, since: datetime, ids: list[str],
                           n_docs: int, order: str, fetch: Callable[[duckdb.DuckDBPyConnection], R]) -> R:
        """`select`'s rows whose `key` is in `ids`, all in the window (`seen` >= since): a constant IN list
        on the primary key is an index lookup, but DuckDB fetches a looked-up row's lists element by
        element; for many ids one scan of the window's rows costs less (WINDOW_SCAN_RATIO, against the
        window's signatures: counting the window's stories would cost a query). `fetch` reads the result."""
        if len(ids) * WINDOW_SCAN_RATIO < n_docs:
            return fetch(self.con.execute(f"{select} WHERE {key} IN ({_sql_strings(ids)}) {order}"))
        with self._registered(qids=pa.table({"id": ids}, schema=pa.schema([("id", pa.string())]))):
            return fetch(self.con.execute(
                f"{select} WHERE {seen} >= ? AND {key} IN (SELECT id FROM qids) {order}", [since]))

    def _stories_by_id(self, ids: list[str], since: datetime, n_docs: int) -> list[StoryRow]:
        """The window stories `ids` (each story's last_seen is at least the seen of its story_keys rows)."""
        if not ids:
            return []
        rows = self._window_rows_by_id(
            "SELECT id, title, first_seen, last_seen, first_article_id, topics, facts, surged, pending, dev_facts "
            "FROM stories", "id", "last_seen", since, ids, n_docs, "ORDER BY first_seen, id",
            lambda cur: cur.fetchall())
        return [StoryRow(r[0], r[1], r[2], r[3], r[4], list(r[5] or []), list(r[6] or []), bool(r[7]),
                         json.loads(r[8]) if r[8] else {}, list(r[9] or []))
                for r in rows]

    def _candidate_stories(self, since: datetime) -> list[str]:
        """Window stories holding one of the facts in the registered `qs` (by key: a collision adds a story)."""
        hit = self.con.execute(
            "SELECT DISTINCT story AS h FROM story_fact_keys WHERE seen >= $since "
            "AND fact IN (SELECT md5_number_lower(fact) FROM qs)", {"since": since}).to_arrow_table()
        return self._story_ids_keyed(hit, since)

    def _story_sources(self, story_ids: list[str], since: datetime,
                       surge_since: datetime) -> list[tuple[str, datetime, str]]:
        if not story_ids:
            return []
        # constant IN lists: a filter inside the scan, cheaper than a semi-join over the window's rows
        ids = _sql_strings(story_ids)
        rows = self.con.execute(
            f"""
            SELECT story_id, epoch_us(first_seen), source_id FROM article_signatures
                WHERE first_seen >= $surge_since AND story_id IN ({ids})
            UNION ALL
            SELECT story_id, epoch_us(max(first_seen)), source_id FROM article_signatures
                WHERE first_seen >= $since AND first_seen < $surge_since AND story_id IN ({ids})
                GROUP BY story_id, source_id
            ORDER BY 1, 2, 3
            """, {"since": since, "surge_since": surge_since}).to_arrow_table()
        times = [from_epoch_micros(t) for t in rows.column(1).to_pylist()]
        return list(zip(_shared_strings(rows.column(0)), times, _shared_strings(rows.column(2)), strict=True))

    @contextmanager
    def _registered(self, **tables: pa.Table) -> Iterator[None]:
        """Arrow tables visible to SQL under their names for the duration of the block."""
        for name, t in tables.items():
            self.con.register(name, t)
        try:
            yield
        finally:
            for name in tables:
                self.con.unregister(name)

    def write_signatures(self, entries: Sequence[WindowEntry]) -> None:
        if not entries:
            return
        tbl = pa.table({
            "article_id": [e.article_id for e in entries],
            "story_id": [e.story_id for e in entries],
            "first_seen": [e.first_seen for e in entries],
            "content_hash": [e.content_hash for e in entries],
            "minhash": [e.minhash for e in entries],
            "facts": [e.facts for e in entries],
            "source_id": [e.source_id for e in entries],
        }, schema=_SIG_SCHEMA)
        self._write_signature_indexes(tbl)

    def _write_signature_indexes(self, tbl: pa.Table) -> None:
        """Insert new signatures and their rows in article_facts/article_bands (derived from them)."""
        if not self._count("article_signatures"):  # reprocess empties the signatures: the indexes follow
            self.con.execute("DELETE FROM article_facts; DELETE FROM article_bands; DELETE FROM fact_day_keys; "
                             "DELETE FROM fact_days_sealed")
        with self._registered(nsig=tbl):
            if self.lake:
                new = self.con.execute(
                    "SELECT article_id FROM nsig ANTI JOIN article_signatures USING (article_id)").to_arrow_table()
                self.con.execute("INSERT INTO article_signatures SELECT * FROM nsig SEMI JOIN new USING (article_id)")
            else:
                new = self.con.execute(
                    "INSERT OR IGNORE INTO article_signatures SELECT * FROM nsig RETURNING article_id").to_arrow_table()
            with self._registered(new=new):
                self.con.execute("INSERT INTO article_facts SELECT unnest(facts), article_id, story_id, first_seen "
                                 "FROM nsig SEMI JOIN new USING (article_id)")
                self.con.execute(
                    f"INSERT INTO article_bands SELECT r.b, {_BAND_KEY.format(m='t.minhash')}, t.article_id, "
                    f"t.first_seen FROM nsig t SEMI JOIN new USING (article_id) CROSS JOIN range({LSH_BANDS}) r(b) "
                    f"WHERE octet_length(t.minhash) >= {LSH_BANDS * LSH_ROWS * 4}")
                self.con.execute(
                    "INSERT INTO fact_day_keys SELECT md5_number_lower(fact), day, count(*) FROM "
                    f"(SELECT unnest(facts) AS fact, {_DAY} AS day FROM nsig SEMI JOIN new USING (article_id)) "
                    "GROUP BY fact, day")
                top = self.scalar(f"SELECT max({_DAY}) FROM nsig SEMI JOIN new USING (article_id)")
        self._seal_fact_days(top)

    def _seal_fact_days(self, top: int | None) -> None:
        """Recount the days from the sealed one up to (not including) `top`, the newest day written, into
        one row per fact (fact_days_sealed.day: the days before it are recounted). A day is appended to
        by every batch while it is current; recounting it once the next one has begun keeps fact_day_keys
        at about one row per fact and day (late articles for a sealed day add a row each batch)."""
        if top is None:
            return
        sealed = self.scalar("SELECT max(day) FROM fact_days_sealed")
        if sealed is not None and top > sealed:
            self.con.execute("DELETE FROM fact_day_keys WHERE day >= ? AND day < ?", [sealed, top])
            self.con.execute(
                f"INSERT INTO fact_day_keys SELECT md5_number_lower(fact), {_DAY} AS day, count(*) FROM article_facts "
                "WHERE first_seen >= ? AND first_seen < ? GROUP BY fact, day ORDER BY day",
                [_day_start(sealed), _day_start(top)])
        if sealed is None or top > sealed:
            self.con.execute("DELETE FROM fact_days_sealed")
            self.con.execute("INSERT INTO fact_days_sealed VALUES (?)", [top])

    def upsert_stories(self, stories: Sequence[StoryRow]) -> None:
        if not stories:
            return
        tbl = pa.table({
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
        if not self._count("stories"):  # reprocess empties them: their index follows
            self.con.execute("DELETE FROM story_fact_keys; DELETE FROM story_keys")
        if self.lake:
            self._upsert("stories", ["id"], "SELECT * REPLACE (pending::JSON AS pending) FROM tbl", tbl)
        else:
            # delete by a constant key list (index lookups) and append: a sixth of INSERT OR REPLACE's
            # cost on a store of 200,000 stories (same rows: every column is rewritten)
            self.con.execute(f"DELETE FROM stories WHERE id IN ({_sql_strings(tbl.column('id').to_pylist())})")
            self._with_tbl("INSERT INTO stories SELECT * REPLACE (pending::JSON AS pending) FROM tbl", (), tbl)
        # every write of a story re-lists its facts at its last_seen, so a lookup over the window finds
        # every story still in it by any of its facts (rows are appended in time order)
        with self._registered(nstories=tbl):
            self.con.execute(f"INSERT INTO story_fact_keys {STORY_FACT_KEYS.format(stories='nstories')}")
            self.con.execute("INSERT INTO story_keys SELECT md5_number_lower(id), id, last_seen FROM nstories")

    def write_developments(self, devs: Sequence[Development], run_id: str) -> int:
        if not devs:
            return 0
        tbl = pa.table({
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
        self._insert_new(
            "development_events", ["id"], "SELECT id, kind, story_id, topic, article_id, score,"
            " what_is_new::JSON AS what_is_new, compared_with::JSON AS compared_with, first_seen, source_id, run_id"
            " FROM tbl", data=tbl
        )
        return self._count("development_events") - before

    # ---- alerts outbox ------------------------------------------------------------------
    def enqueue_alerts(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add outbox rows; an existing idempotency key is never enqueued twice."""
        if not rows:
            return 0
        now = _now()
        tbl = pa.table({
            "id": [r["id"] for r in rows],
            "development_id": [r.get("development_id") for r in rows],
            "channel": [r["channel"] for r in rows],
            "kind": [r["kind"] for r in rows],
            "payload": [json.dumps(r["payload"], ensure_ascii=False) for r in rows],
            "queued_at": [now] * len(rows),
            "state": [r.get("state", "pending") for r in rows],  # `held`: waits for the channel's digest
        })
        before = self._count("alerts")
        self._insert_new(
            "alerts", ["id"], "SELECT id, development_id, channel, kind, state, 0 AS attempts, "
            "queued_at AS next_attempt_at, queued_at AS created_at, payload::JSON AS payload FROM tbl",
            "(id, development_id, channel, kind, state, attempts, next_attempt_at, created_at, payload)", data=tbl
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
        self._insert_new("runs", ["id"], "SELECT ? AS id, ? AS started_at, 'running' AS status",
                         "(id, started_at, status)", [run_id, _now()])

    def close_interrupted_runs(self) -> int:
        """Mark runs left 'running' by a killed process as 'interrupted' (call while holding the run lock)."""
        rows = self.con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running' RETURNING id")
        return len(rows.fetchall())

    def finish_run(self, run_id: str, status: str, stats: dict[str, Any]) -> None:
        self.con.execute("UPDATE runs SET finished_at = ?, status = ?, stats = ?::JSON WHERE id = ?",
                         [_now(), status, json.dumps(stats), run_id])

    # ---- helpers ------------------------------------------------------------------------
    def _insert_new(self, table: str, keys: Sequence[str], select: str, cols: str = "",
                    params: Sequence[Any] = (), data: pa.Table | None = None) -> None:
        """Insert the rows whose key is not stored yet: INSERT OR IGNORE on the file, an anti-join on a lake.

        `data` is the Arrow table `select` reads as `tbl`."""
        if not self.lake:
            sql = f"INSERT OR IGNORE INTO {table} {cols} {select}"
        else:
            on = " AND ".join(f"t.{k} = n.{k}" for k in keys)
            sql = (f"INSERT INTO {table} {cols} SELECT DISTINCT ON ({', '.join(keys)}) * FROM ({select}) n "
                   f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {on})")
        self._with_tbl(sql, params, data)

    def _upsert(self, table: str, keys: Sequence[str], select: str, data: pa.Table) -> None:
        """Insert or replace by key: INSERT OR REPLACE on the file, MERGE on a lake (columns by name)."""
        if not self.lake:
            sql = f"INSERT OR REPLACE INTO {table} {select}"
        else:
            on = " AND ".join(f"t.{k} = n.{k}" for k in keys)
            sql = (f"MERGE INTO {table} t USING ({select}) n ON {on} "
                   "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")
        self._with_tbl(sql, (), data)

    def _with_tbl(self, sql: str, params: Sequence[Any], data: pa.Table | None) -> None:
        if data is None:
            self.con.execute(sql, list(params))
            return
        self.con.register("tbl", data)
        try:
            self.con.execute(sql, list(params))
        finally:
            self.con.unregister("tbl")

    def _count(self, table: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.con.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.con.close()


STORED_ARTICLE_COLS = (
    "id", "url", "source_id", "status", "status_reason", "final_url", "canonical_url", "title", "author",
    "published", "sitename", "description", "text", "lang", "lang_confidence", "extractor", "content_hash",
    "feed_title", "feed_summary", "feed_published", "fetched_at", "first_seen",
)
REPROCESSED_COLS = (
    "status", "status_reason", "canonical_url", "title", "author", "published", "sitename", "description",
    "text", "lang", "lang_confidence", "extractor", "content_hash", "duplicate_of", "story_id",
)
DERIVED_TABLES = ("article_topics", "article_signatures", "article_facts", "article_bands", "fact_day_keys",
                  "fact_days_sealed", "stories", "story_fact_keys", "story_keys", "development_events")
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


def _facts_among(facts: pa.ChunkedArray, wanted: Sequence[str]) -> list[list[str]]:
    """Each row's facts that are in `wanted`, in stored order, as `wanted`'s own string objects.

    A candidate entry's other facts never weigh in a decision (novelty.Detector looks up only the
    batch's facts). As Python objects, facts were most of a batch's lookup: at 20,000 bench articles
    ~16,000 entries of ~40 facts, made and dropped every batch; the flow process's small-object
    arenas kept the high-water mark (docs/benchmarks.md, session 15).
    """
    if not wanted or not len(facts):
        return [[] for _ in range(len(facts))]
    arr = facts.combine_chunks()
    flat = pc.list_flatten(arr)
    at = pc.index_in(flat, value_set=pa.array(wanted, pa.string()))
    keep = pc.is_valid(at)
    # row by row through numpy, not as Python ints: a list of ~500,000 of them was most of this
    # function's own peak
    rows = np.bincount(pc.filter(pc.list_parent_indices(arr), keep).to_numpy(), minlength=len(arr))
    ends = np.cumsum(rows).tolist()
    kept = np.asarray(wanted, dtype=object)[pc.filter(at, keep).to_numpy()].tolist()
    return [kept[end - n:end] for end, n in zip(ends, rows.tolist(), strict=True)]


def _shared_strings(col: pa.ChunkedArray) -> list[Any]:
    """A string column as Python objects, one object per distinct value (story and source ids repeat
    across thousands of a batch's candidate rows)."""
    enc = col.combine_chunks().dictionary_encode()
    values = enc.dictionary.to_pylist()
    return [None if i is None else values[i] for i in enc.indices.to_pylist()]


def _sql_strings(values: Iterable[str]) -> str:
    """SQL string literals, comma-separated (for IN lists the planner turns into index lookups)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


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


def _lake_ddl(sql: str) -> str:
    from monitor.lake import lake_ddl

    return lake_ddl(sql)


@contextmanager
def _open_lake(storage: StorageConfig, read_only: bool) -> Iterator[Store]:
    """The DuckLake backend (monitor.lake): PostgreSQL catalog, Parquet under storage.data_path."""
    from monitor import lake

    con = lake.connect(storage.catalog, storage.data_path, read_only=read_only)
    with _serving(Store(con, Path(storage.data_path), lake=True), f"lake {lake.describe(storage.catalog)}",
                  migrate=not read_only) as store:
        yield store


@contextmanager
def _serving(store: Store, where: str, *, migrate: bool, setup: Sequence[str] = ()) -> Iterator[Store]:
    """Run setup statements, migrate (for writers), hand out the store, turn DuckDB errors into
    StoreError naming `where`, and always close."""
    try:
        for sql in setup:
            store.con.execute(sql)
        if migrate:
            store.migrate()
        yield store
    except duckdb.Error as exc:
        raise StoreError(f"{where}: {_describe(exc)}") from exc
    finally:
        with suppress(duckdb.Error):
            store.con.close()


WRITER_MEMORY_LIMIT = "512MB"
# DuckDB checkpoints when the WAL passes 16 MB by default: with article texts and HTML that is every
# batch or two, and each checkpoint rewrites the tables' last, partly filled row group, which holds
# everything the run wrote so far. With 1 GB a run checkpoints about once, when its snapshot is published
# (publish_from checkpoints before copying). 20,000 articles in batches of 250: commits plus the final
# checkpoint 21.4 -> 10.0 s, file 1,397 -> 708 MB, peak PSS 898 -> 859 MB (256 MB: 10.9 s, 1,237 MB).
# Measured while pages were in DuckDB; since they are archived (monitor.pages) it matters less: 8,000
# articles through the flow, flow peak PSS 668 MB at 1 GB vs 631 MB at 16 MB, detect/store 3.1 vs 3.4 ms each.
WRITER_CHECKPOINT_THRESHOLD = "1GB"
# bounded memory for the writer (DuckDB's default is 80% of RAM): it spills to disk past this.
# DuckDB's allocator (its own jemalloc) returns freed pages to the system only when it is next
# busy, unless its background thread purges them: without it, each batch's commit left ~100-300 MB
# of freed pages resident in the flow process until the next batch (docs/benchmarks.md, issue #10)
WRITER_SETUP = (f"SET memory_limit = '{WRITER_MEMORY_LIMIT}'",
                f"SET checkpoint_threshold = '{WRITER_CHECKPOINT_THRESHOLD}'",
                "SET allocator_background_threads = true")
# articles between two Store.recycle calls in a run. 20,000 bench articles through the flow: the flow
# process's peak PSS 969 -> 776 MB, the whole tree's 1,564 -> 1,357 MB, at the same speed (50.5 vs 50.7
# docs/s; detect/store 6.7 vs 6.6 ms an article). 1,000 rather than 2,000 since session 15: the flow
# process's peak 616 -> 514 MB at 20,000 articles. The flow never recycles after its last batch, so a
# cycle of the 1M-store benchmark (1,000 articles) never does.
RECYCLE_EVERY = 1000


@contextmanager
def open_store(path: str | Path, *, read_only: bool = False, storage: StorageConfig | None = None) -> Iterator[Store]:
    """Open (and migrate) the database; every DuckDB failure becomes a StoreError naming the path.

    With `storage.backend = "ducklake"` the lake named by storage.catalog/data_path is opened instead.
    """
    if storage is not None and storage.backend == "ducklake":
        with _open_lake(storage, read_only) as lake_store:
            yield lake_store
        return
    p = Path(path)
    if not read_only:
        _check_writable(p)
    elif not p.exists():
        raise StoreError(f"database not found: {p} (run `monitor run` or `monitor demo` first)")
    con = _connect(p, read_only=read_only)
    setup = () if read_only else WRITER_SETUP
    with _serving(Store(con, p), f"database {p}", migrate=not read_only, setup=setup) as store:
        yield store


# Rows per row group in what a writer appends (DuckDB's default is 122,880). A checkpoint (each reopen,
# each publish) rewrites a table's last, partly filled row group and merges small ones into it, holding
# it in memory: below 122,880 articles that is every article. A 100,000-article store, each later cycle
# of 1,000 articles: checkpoint 1.3 s and +460-490 MB with the default, 0.1 s and +1-24 MB with 8,192.
# The search index's tables get small row groups too: the fts extension's rebuild was slower for it
# (20,000 articles 18.3 -> 26.4 s); ours is not (11.0 and 10.6 s; bench/store_writes.py, snapshot.py).
ROW_GROUP_SIZE = 8192
# the writer's name for the store's catalog (the file is attached to an in-memory database, the only
# way to give ATTACH's ROW_GROUP_SIZE); queries name tables without a catalog, as analysts do
WRITER_CATALOG = "store"


def _connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        if read_only:
            return duckdb.connect(str(path), read_only=True)
        return _attach_writer(path)
    except (duckdb.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {_describe(exc)}") from None


def _attach_writer(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        quoted = str(path).replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS {WRITER_CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        con.execute(f"USE {WRITER_CATALOG}")
        # spills go beside the file, as for a database opened directly (not into the working directory)
        con.execute(f"SET temp_directory = '{quoted}.tmp'")
    except BaseException:
        con.close()
        raise
    return con
