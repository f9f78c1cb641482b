"""Analyst SQL: the read-only guard, the row cap, the time limit, exports, named queries, search."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.models import Article
from monitor.query import AnalystSession, QueryRefused, QueryTimeout, repl, search, write_result
from monitor.snapshot import publish, snapshot_path
from monitor.store import Store, open_store

SLOW_CROSS_JOIN = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range = 7"

TEXTS = {
    "en1": ("Ceasefire talks resume in Geneva", "Negotiators met in Geneva. The ceasefire talks focus on "
            "prisoners. Ceasefire monitors will report weekly."),
    "en2": ("Harvest festival opens", "The harvest festival opened with music; one stall mentioned a "
            "ceasefire in passing."),
    "de1": ("Waffenruhe: Gespräche in Genf", "Die Gespräche über eine Waffenruhe wurden in Genf fortgesetzt."),
    "fr1": ("Négociations à Genève", "Les négociations sur le cessez-le-feu reprennent à Genève."),
}


def _article(key: str, n: int, source: str = "wire") -> Article:
    title, text = TEXTS[key]
    return Article(id=f"{key}-{n:04d}", url=f"https://example.org/{key}/{n}", source_id=source, status="ok",
                   title=title, text=text, lang=key[:2], fetched_at=datetime.now(UTC) - timedelta(hours=n))


def _fill(db: Path, run_id: str, articles: list[Article]) -> None:
    with open_store(db) as store:
        store.sync_sources([("wire", "https://example.org/feed.xml", "rss", "Wire")])
        store.start_run(run_id)
        store.write_articles(articles, run_id, store_html=False)
        store.finish_run(run_id, "ok", {"run_id": run_id})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "monitor.duckdb"
    _fill(path, "r1", [_article(k, i) for k in TEXTS for i in range(3)])
    publish(path)
    return path


def _count(db: Path, table: str) -> int:
    with open_store(db, read_only=True) as store:
        return int(store.scalar(f"SELECT count(*) FROM {table}"))


# ---- guard 1: nothing but queries ---------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "INSERT INTO runs (id) VALUES ('x')",
    "DELETE FROM articles",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW developments",
    "SELECT 1; DROP TABLE articles",
    "ATTACH 'other.duckdb' AS o",
    "COPY articles TO 'out.csv'",
    "SET enable_external_access = true",
    "INSTALL httpfs",
])
def test_write_statements_are_refused(db: Path, sql: str) -> None:
    before = _count(snapshot_path(db), "articles")
    with AnalystSession(db) as session, pytest.raises(QueryRefused, match="refused"):
        session.query(sql)
    assert _count(snapshot_path(db), "articles") == before
    assert _count(db, "articles") == before


def test_select_cannot_reach_the_file_system(db: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with AnalystSession(db) as session:
        with pytest.raises(Exception, match="disabled"):
            session.query(f"SELECT * FROM read_csv('{secret}')")
        assert session.query("SELECT count(*) AS n FROM articles").rows() == [(12,)]


def test_cli_refuses_a_write(db: Path) -> None:
    res = CliRunner().invoke(app, ["sql", "--db", str(db), "UPDATE articles SET title = 'x'"])
    assert res.exit_code == 1
    assert "refused: UPDATE" in res.output


# ---- guard 2: the row cap -----------------------------------------------------------------------


def test_row_cap(db: Path) -> None:
    with AnalystSession(db, max_rows=100) as session:
        capped = session.query("SELECT range AS n FROM range(5000)")
        exact = session.query("SELECT range AS n FROM range(100)")
    assert capped.table.num_rows == 100 and capped.truncated
    assert capped.rows()[-1] == (99,)
    assert exact.table.num_rows == 100 and not exact.truncated
    with AnalystSession(db, max_rows=0) as session:
        everything = session.query("SELECT range AS n FROM range(5000)")
    assert everything.table.num_rows == 5000 and not everything.truncated


def test_cli_row_cap_says_so(db: Path) -> None:
    res = CliRunner().invoke(app, ["sql", "--db", str(db), "--max-rows", "7", "-f", "json",
                                   "SELECT range AS n FROM range(50)"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["n"] for r in rows] == list(range(7))


# ---- guard 3: the time limit --------------------------------------------------------------------


def test_time_limit_interrupts_a_slow_query(db: Path) -> None:
    with AnalystSession(db, timeout_s=0.5) as session:
        with pytest.raises(QueryTimeout, match="time limit"):
            session.query(SLOW_CROSS_JOIN)
        assert session.query("SELECT 42 AS answer").rows() == [(42,)]  # the session stays usable


def test_cli_time_limit(db: Path) -> None:
    res = CliRunner().invoke(app, ["sql", "--db", str(db), "--timeout", "0.5", SLOW_CROSS_JOIN])
    assert res.exit_code == 1
    assert "time limit" in res.output


# ---- exports and named queries ------------------------------------------------------------------


def test_exports(db: Path, tmp_path: Path) -> None:
    sql = "SELECT id, lang, [lang, source_id] AS tags FROM articles ORDER BY id"
    runner = CliRunner()
    csv_out = runner.invoke(app, ["sql", "--db", str(db), "-f", "csv", sql])
    assert csv_out.exit_code == 0, csv_out.output
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0] == '"id","lang","tags"' and len(lines) == 13
    parquet = tmp_path / "out.parquet"
    res = runner.invoke(app, ["sql", "--db", str(db), "-f", "parquet", "-o", str(parquet), sql])
    assert res.exit_code == 0, res.output
    table = pq.read_table(parquet)
    assert table.num_rows == 12 and table.column("tags").to_pylist()[0] == ["de", "wire"]
    with AnalystSession(db) as session:
        buf = io.BytesIO()
        write_result(session.query(sql), "json", buf)
    assert json.loads(buf.getvalue())[0]["id"] == "de1-0000"


def test_named_queries_run_by_name(db: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["sql", "--db", str(db), "--list"])
    assert "source_health" in listed.output
    res = runner.invoke(app, ["sql", "--db", str(db), "-f", "json", "source_health"])
    assert res.exit_code == 0, res.output
    assert [r["name"] for r in json.loads(res.stdout)] == ["Wire"]
    unknown = runner.invoke(app, ["sql", "--db", str(db), "no_such_query"])
    assert unknown.exit_code == 1 and "no named query" in unknown.output


# ---- full-text search ---------------------------------------------------------------------------


def test_search_ranks_by_bm25(db: Path) -> None:
    with AnalystSession(db) as session:
        hits = search(session, "ceasefire", limit=50).table.to_pylist()
        german = search(session, "GESPRACHE genf", lang="de").table.to_pylist()  # case and accents ignored
    titles = [h["title"] for h in hits]
    assert set(titles) == {TEXTS["en1"][0], TEXTS["en2"][0]}
    assert titles[0] == TEXTS["en1"][0]  # three mentions outrank one
    assert hits[0]["score"] > hits[-1]["score"]
    assert german and {h["lang"] for h in german} == {"de"}


def test_cli_search(db: Path) -> None:
    res = CliRunner().invoke(app, ["search", "--db", str(db), "-f", "json", "négociations"])
    assert res.exit_code == 0, res.output
    assert {r["lang"] for r in json.loads(res.stdout)} == {"fr"}


EXTENSION_INDEX = ("PRAGMA create_fts_index('articles', 'id', 'title', 'text', stemmer = 'none', stopwords = 'none', "
                   "strip_accents = 1, lower = 1, overwrite = 1)")
MORE_TEXTS = [
    ("Переговоры в Женеве", "Делегации Украины и США встретились в Женеве: 28 пунктов, затем 19."),
    ("Ελλάδα και Ουκρανία", "Η Ελλάδα στηρίζει τις συνομιλίες για την Ουκρανία."),
    ("", "Only a body... with 'quotes', e-mail@example.org, $100 & (brackets) [x] {y} ~z~ 2025-11-23!"),
    ("No body", None),
    ("Geneva, Geneva, GENEVA", "Genève ceasefire ceasefire. Ceasefire?"),
]


def _index_tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    """The index's content with term ids resolved to terms (ids are arbitrary labels)."""
    s = "fts_main_articles"
    return {
        "dict": con.execute(f"SELECT term, df FROM {s}.dict ORDER BY term").fetchall(),
        "terms": con.execute(f"SELECT t.docid, t.fieldid, d.term FROM {s}.terms t JOIN {s}.dict d USING (termid) "
                             "ORDER BY ALL").fetchall(),
        "docs": con.execute(f"SELECT * FROM {s}.docs ORDER BY docid").fetchall(),
        "stats": con.execute(f"SELECT * FROM {s}.stats").fetchall(),
        "fields": con.execute(f"SELECT * FROM {s}.fields ORDER BY fieldid").fetchall(),
        "schema": con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = ? ORDER BY 1",
                              [s]).fetchall(),
    }


def _scores(con: duckdb.DuckDBPyConnection, query: str, options: str) -> list[tuple[str, float]]:
    return [(r[0], round(r[1], 9)) for r in con.execute(
        f"SELECT id, fts_main_articles.match_bm25(id, ?{options}) AS s FROM articles WHERE s IS NOT NULL "
        "ORDER BY id", [query]).fetchall()]


@pytest.mark.parametrize("token_chunk", [None, 4])
def test_our_search_index_is_the_fts_extensions_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      token_chunk: int | None) -> None:
    """snapshot._build_index writes the tables PRAGMA create_fts_index writes (with our options) and
    match_bm25 gives the same scores, in every language, field choice and mode; also when the articles
    are tokenized a few at a time, each step on two threads."""
    from monitor import snapshot

    if token_chunk:
        monkeypatch.setattr(snapshot, "TOKEN_CHUNK", token_chunk)

    db = tmp_path / "m.duckdb"
    extra = [Article(id=f"x-{i}", url=f"https://example.org/x/{i}", source_id="wire", status="ok", title=t,
                     text=x, lang="xx", fetched_at=datetime.now(UTC)) for i, (t, x) in enumerate(MORE_TEXTS)]
    _fill(db, "r1", [_article(k, i) for k in TEXTS for i in range(3)] + extra)
    queries = ["ceasefire", "Geneva ceasefire", "GESPRACHE genf", "négociations", "Женеве", "ελλαδα",
               "e-mail example", "quotes brackets", "no such word", "the"]
    modes = ["", ", fields := 'title'", ", conjunctive := 1", ", fields := 'text', conjunctive := 1"]
    with open_store(db) as store:
        snapshot.load_fts(store.con)
        store.con.execute(EXTENSION_INDEX)
        theirs = _index_tables(store.con)
        their_scores = {(q, m): _scores(store.con, q, m) for q in queries for m in modes}
        assert snapshot.refresh_search_index(store.con, force=True) is not None
        ours = _index_tables(store.con)
        our_scores = {(q, m): _scores(store.con, q, m) for q in queries for m in modes}
    assert ours == theirs
    assert len(ours["dict"]) > 50 and ("женеве", 1) in ours["dict"]
    assert our_scores == their_scores
    assert sum(map(len, our_scores.values())) > 40


def test_search_needs_no_extension_and_ignores_a_trailing_full_stop(db: Path) -> None:
    """Our match_bm25 has no stem() (a plain DuckDB client can search the snapshot), and a conjunctive
    search ending in punctuation still finds its articles (the extension's counts the empty token)."""
    plain = duckdb.connect(str(snapshot_path(db)), read_only=True)
    try:
        found = plain.execute("SELECT id FROM (SELECT id, fts_main_articles.match_bm25(id, 'ceasefire talks.', "
                              "conjunctive := 1) AS s FROM articles) WHERE s IS NOT NULL ORDER BY id").fetchall()
    finally:
        plain.close()
    assert [f[0] for f in found] == ["en1-0000", "en1-0001", "en1-0002"]


# ---- the prompt and fresh snapshots -------------------------------------------------------------


def test_prompt_runs_queries_and_sees_a_new_snapshot(db: Path) -> None:
    lines = iter(["SELECT count(*) AS n", "FROM articles;", "INSERT INTO runs (id) VALUES ('x');",
                  "@publish", "SELECT count(*) AS n FROM articles;", ".quit"])
    shown: list[list[tuple[object, ...]]] = []
    said: list[str] = []

    def read(prompt: str) -> str:
        line = next(lines)
        if line == "@publish":  # a scheduled run finishes while the analyst sits at the prompt
            _fill(db, "r2", [_article("en1", 100 + i) for i in range(5)])
            publish(db)
            line = ""
        return line

    with AnalystSession(db) as session:
        repl(session, read, lambda r: shown.append(r.rows()), said.append, [])
    assert shown == [[(12,)], [(17,)]]
    assert any("refused" in s for s in said)
    assert any("reconnected" in s for s in said)


def test_status_reads_runs_and_sources(db: Path) -> None:
    res = CliRunner().invoke(app, ["status", "--db", str(db), "-f", "json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["runs"][0]["run_id"] == "r1" and st["runs"][0]["articles_stored"] == 12
    assert st["in_flight"] is None and [s["id"] for s in st["sources"]] == ["wire"]


# ---- the documented examples stay correct -------------------------------------------------------


def test_every_query_in_docs_sql_runs(db: Path) -> None:
    import re

    docs = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
    blocks = re.findall(r"```sql\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 15
    with AnalystSession(db) as session:
        results = [session.query(sql) for sql in blocks]
    assert all(r.columns for r in results)
    outcomes = next(r for r in results if r.columns == ["source_id", "status", "articles"])
    assert outcomes.rows() == [("wire", "ok", 12)]


def test_search_index_rebuild_is_throttled_but_can_be_forced(db: Path) -> None:
    from monitor.snapshot import refresh_search_index

    _fill(db, "r2", [_article("fr1", 100)])
    with open_store(db) as store:
        assert refresh_search_index(store.con) is None  # built moments ago by publish(): wait
        assert refresh_search_index(store.con, force=True) is not None
        assert store.scalar("SELECT articles FROM search_index_state") == store.scalar(
            "SELECT count(*) FROM articles")


def _mib(setting: str) -> float:
    value, unit = setting.split()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_search_index_rebuild_is_checkpointed_under_its_own_limit(db: Path) -> None:
    """The rebuild and its checkpoint run under INDEX_MEMORY_LIMIT; the writer gets its own limit back
    and no index rows are left in the WAL for a later commit to checkpoint under the writer's limit."""
    from monitor.snapshot import _wal_pending, load_fts, refresh_search_index

    _fill(db, "r2", [_article("de1", 100)])
    with open_store(db) as store:
        before = _mib(store.scalar("SELECT current_setting('memory_limit')"))
        assert refresh_search_index(store.con, force=True) is not None
        # DuckDB shows a limit to 0.1 of its unit, so setting back what it shows may lose < 0.1 MiB
        assert before - 0.1 <= _mib(store.scalar("SELECT current_setting('memory_limit')")) <= before
        assert not _wal_pending(db)
        load_fts(store.con)
        hits = store.con.execute("SELECT id FROM (SELECT id, fts_main_articles.match_bm25(id, 'waffenruhe') AS s "
                                 "FROM articles) WHERE s IS NOT NULL ORDER BY id").fetchall()
    assert [h[0] for h in hits] == ["de1-0000", "de1-0001", "de1-0002", "de1-0100"]



def test_an_index_rebuild_out_of_its_memory_is_redone_under_the_writers_limit(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vocabulary bigger than INDEX_MEMORY_LIMIT holds (a large store of varied text) must not leave
    search behind for good: the rebuild is redone once under the writer's own limit, and the writer
    keeps a usable connection with its own settings."""
    from monitor import snapshot

    _fill(db, "r2", [_article(k, 100 + i) for k in TEXTS for i in range(300)])
    with open_store(db) as store:
        store.con.execute("DELETE FROM search_index_state")  # as if never built: this publish rebuilds
        limit, threads = (store.scalar(f"SELECT current_setting('{n}')") for n in ("memory_limit", "threads"))
        monkeypatch.setattr(snapshot, "INDEX_MEMORY_LIMIT", "1MB")
        attempts: list[tuple[dict[str, object], str]] = []
        build = snapshot._build_index

        def recorded(con: duckdb.DuckDBPyConnection, state: Any, **settings: Any) -> None:
            try:
                build(con, state, **settings)
            except duckdb.OutOfMemoryException:
                attempts.append((settings, "out of memory"))
                raise
            attempts.append((settings, "built"))

        monkeypatch.setattr(snapshot, "_build_index", recorded)
        published = snapshot.publish_from(store.con, db)
        assert attempts == [({"memory_limit": "1MB", "threads": snapshot.INDEX_THREADS}, "out of memory"),
                            ({}, "built")]
        assert published.articles == 12 + 1200 and published.index_seconds is not None
        assert published.index_error is None
        assert store.scalar("SELECT articles FROM search_index_state") == 1212
        # DuckDB shows a limit to 0.1 of its unit, so setting back what it shows may lose < 0.1 MiB
        assert _mib(limit) - 0.1 <= _mib(store.scalar("SELECT current_setting('memory_limit')")) <= _mib(limit)
        assert store.scalar("SELECT current_setting('threads')") == threads
        assert store.scalar("SELECT count(*) FROM articles") == 1212  # the writer's connection still works


def test_a_failed_index_rebuild_still_publishes_the_runs_data(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt really runs out of memory (1 MB) and is rolled back; the second is made to fail
    too (a store too big for any limit cannot be built here). The previous index stays in place, and
    the snapshot carries every article and says why search lags."""
    from monitor import snapshot

    build = snapshot._build_index

    def fallback_fails_too(con: duckdb.DuckDBPyConnection, state: Any, **settings: Any) -> None:
        if not settings:
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 32.0 MiB")
        build(con, state, **settings)

    _fill(db, "r2", [_article(k, 100 + i) for k in TEXTS for i in range(300)])
    with open_store(db) as store:
        store.con.execute("DELETE FROM search_index_state")
        monkeypatch.setattr(snapshot, "INDEX_MEMORY_LIMIT", "1MB")
        monkeypatch.setattr(snapshot, "_build_index", fallback_fails_too)
        published = snapshot.publish_from(store.con, db)
        assert published.index_seconds is None
        assert published.index_error and "Out of Memory" in published.index_error
    check = duckdb.connect(str(published.path), read_only=True)
    try:
        assert check.execute("SELECT count(*) FROM articles").fetchone() == (12 + 1200,)
        assert check.execute(f"SELECT count(*) FROM {snapshot.FTS_SCHEMA}.docs").fetchone() == (12,)  # the old index
    finally:
        check.close()


def test_a_run_checkpoints_when_its_snapshot_is_published_not_at_every_commit(db: Path) -> None:
    """Each checkpoint rewrites the tables' last row group: the writer lets the WAL grow past DuckDB's
    16 MB default (WRITER_CHECKPOINT_THRESHOLD), and the publish checkpoints it. A run's writes are
    more than the index rebuild's 64 MB: they are checkpointed before the rebuild lowers the limit."""
    import random

    from monitor.snapshot import _wal_pending, publish_from

    # ~33 KB an article in a column the index does not read (pages are archived outside DuckDB):
    # 8 MB of WAL a batch of 250
    bulk = random.Random(7).randbytes(16_500).hex()

    def batch(store: Store, k: int) -> None:
        with store.transaction():
            store.write_articles([
                Article(id=f"big-{k}-{i}", url=f"https://example.org/big/{k}/{i}", source_id="wire",
                        status="ok", title="Geneva", text=f"Negotiators met in Geneva, round {k} {i}.",
                        lang="en", feed_summary=bulk, fetched_at=datetime.now(UTC)) for i in range(250)],
                "r2", store_html=False)

    with open_store(db) as store:
        for k in range(3):  # DuckDB's default would checkpoint at the third commit (WAL past 16 MB)
            batch(store, k)
        assert _wal_pending(db)
        for k in range(3, 12):  # ~100 MB in all
            batch(store, k)
        store.con.execute("DELETE FROM search_index_state")  # as if never built: this publish rebuilds
        assert publish_from(store.con, db).articles == 12 + 3000
        assert not _wal_pending(db)


def test_an_upgraded_store_drops_the_unused_content_hash_index(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 73: the index is gone from an older store, and duplicate lookups by hash still work."""
    import monitor.store as store_mod

    db = tmp_path / "old.duckdb"
    every = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in every if m[0] < 73])
    _fill(db, "r1", [_article("en1", 1)])
    with open_store(db) as old:
        old.con.execute("UPDATE articles SET content_hash = 'h1'")
        assert old.scalar("SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'articles_hash'") == 1
    monkeypatch.setattr(store_mod, "MIGRATIONS", every)
    with open_store(db) as new:
        assert new.scalar("SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'articles_hash'") == 0
        assert new.scalar("SELECT count(*) FROM schema_migrations WHERE version = 73") == 1
        assert new.find_content_hashes(["h1", "h2"]) == {"h1": "en1-0001"}
