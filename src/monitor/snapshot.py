"""The analyst snapshot: a read-only copy of the database, published after every run.

DuckDB lets one process write a file, and a reader in another process holds a lock that stops the
writer from opening it. So analysts never open the pipeline's database: after each run the writer
refreshes the full-text index (only when articles changed), checkpoints, copies the file byte for
byte to a temporary name next to `<db>.snapshot.duckdb`, checks the copy, and renames it into
place. Rename swaps the directory entry only: an analyst who still holds the old snapshot keeps
reading the old inode and blocks nobody; the next open (or the next query of `monitor sql`'s
prompt, which notices the new inode) sees the new data. The reasoning and
the measured cost are in docs/choices.md.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from monitor.errors import StoreError

FTS_TABLE = "articles"
FTS_SCHEMA = "fts_main_articles"
DUCKDB_VERSION = "v1.5.5"


@dataclass(slots=True, frozen=True)
class Published:
    """What one publish did."""

    path: Path
    seconds: float
    index_seconds: float | None  # None: the search index was current, not rebuilt
    bytes: int
    articles: int
    method: str  # file | logical
    index_error: str | None = None  # the rebuild failed: the copy holds the previous index (search lags)


def snapshot_path(db_path: str | Path) -> Path:
    p = Path(db_path)
    return p.with_name(p.stem + ".snapshot.duckdb")


def fts_extension_path() -> Path:
    """The fts extension shipped in the `duckdb_extension_fts` wheel (loaded offline, never downloaded)."""
    try:
        import duckdb_extension_fts
    except ImportError as exc:  # the dependency is pinned; this only guards a broken install
        raise StoreError("the duckdb-extension-fts package is not installed") from exc
    base = Path(duckdb_extension_fts.__file__).parent / "extensions" / DUCKDB_VERSION
    found = sorted(base.glob("fts.duckdb_extension*"))
    if not found:
        raise StoreError(f"fts extension not found under {base}")
    return found[0]


def load_fts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"LOAD '{fts_extension_path()}'")


REINDEX_MIN_INTERVAL_S = 15 * 60
REINDEX_MAX_SHARE = 0.05
# DuckDB memory for the index rebuild: it spills past this instead of growing the writer's process.
# Measured: under the writer's 512 MB limit the rebuild added 634 MB to the process at 20,000 bench articles
# (608-668 MB on the synthetic 1M store); under 64 MB, 177 MB (113 MB), in 16.7 s either way at 20,000
# and 20 -> 23 s on the 1M store, its checkpoint included (docs/benchmarks.md). Those figures are the fts
# extension's build; ours under 64 MB: +177 MB at 20,000 bench articles, +167 MB on the 1M store.
INDEX_MEMORY_LIMIT = "128MB"
# ...on two DuckDB threads (64 MB each: each thread builds tables of its own, and they are what the
# limit runs out of; the fts extension's build on the 1M store failed with 2 threads under 64 MB).
# A run publishes after its extraction workers have stopped, so the second core is idle: 4,800 bench
# articles 2.5-2.7 s on one thread under 64 MB, 1.4-1.5 s on two under 128 MB (docs/benchmarks.md,
# session 12). A store whose vocabulary outgrows the limit is rebuilt under the writer's own limit
# instead (`refresh_search_index`).
INDEX_THREADS = "2"
# Articles per tokenizing step: each step's texts are handed to DuckDB as an Arrow table in one record
# batch per thread, which DuckDB tokenizes in parallel (a table scan is parallel by row group only,
# and up to 8,192 articles are one row group). Bounds the Python-side copy to one step's texts.
TOKEN_CHUNK = 2048


def _rebuilt_recently(built_at: datetime | None, seconds: float | None) -> bool:
    """Keep whole-index rebuilds to about 5% of the time, and 15 min apart: one that took 60 s waits 20 min.

    On a large store the rebuild (about 0.5 ms per article of news text) would otherwise hold the run
    lock on every run; search then lags the database by at most this interval.
    """
    if built_at is None:
        return False
    wait = max(REINDEX_MIN_INTERVAL_S, (seconds or 0.0) / REINDEX_MAX_SHARE)
    return (datetime.now(UTC) - built_at).total_seconds() < wait


def refresh_search_index(con: duckdb.DuckDBPyConnection, force: bool = False) -> float | None:
    """Rebuild the BM25 index over articles when articles changed since it was built.

    DuckDB's fts index cannot be updated in place, so it is rebuilt whole (about 0.5 ms per article);
    runs that stored no article (most scheduled runs) skip it, and so do runs soon after a rebuild
    (see `_rebuilt_recently`) unless `force`. Returns the seconds spent, or None.
    """
    row = con.execute("SELECT count(*), max(first_seen) FROM articles").fetchone()
    count, newest = (int(row[0]), row[1]) if row else (0, None)
    state = con.execute("SELECT articles, newest, built_at, seconds FROM search_index_state").fetchone()
    has_index = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'docs'", [FTS_SCHEMA]
    ).fetchone()
    if state and has_index and has_index[0] and state[0] == count and state[1] == newest:
        return None
    if state and has_index and has_index[0] and not force and _rebuilt_recently(state[2], state[3]):
        return None
    started = time.monotonic()
    # the run's own writes may still be in the WAL (the writer checkpoints rarely, store.py): they are
    # checkpointed under the writer's limit, so that the checkpoint below holds the index alone (under
    # 64 MB the run's 5,000 articles failed to pin memory and invalidated the database)
    con.execute("CHECKPOINT")
    try:
        _build_index(con, (count, newest, started), memory_limit=INDEX_MEMORY_LIMIT, threads=INDEX_THREADS)
    except duckdb.OutOfMemoryException:
        # a vocabulary bigger than the index's limit holds (a large store of varied text): spend the
        # writer's memory once rather than leave search, and every later snapshot, behind for good
        _build_index(con, (count, newest, started))
    return round(time.monotonic() - started, 3)


# The search index: the tables and macros of DuckDB's fts extension (`PRAGMA create_fts_index` with
# stemmer 'none', stopwords 'none', strip_accents, lower), built by our own statements. The extension's
# script fills its tables with correlated UPDATEs over every term row; under the writer's 8,192-row row
# groups that took 5.9 s at 5,000 bench articles, against 2.9 s for these CREATE ... AS (docs/benchmarks.md).
# Same tables, same columns, same BM25 scores (tests/test_sql.py compares them with the extension's),
# and no stem() in the macros, so a reader needs no extension to search. No stemming: articles come in
# many languages and Porter stemming is English-only.
_TOKEN_SEPARATORS = r"""'[0-9!@#$%^&*()_+={}\[\]:;<>,.?~\\/\|''''"`-]+'"""
_FIELDS = ("title", "text")
_TOKENS = "fts_tokens"


def _tokenize(value: str) -> str:
    return (r"string_split_regex(regexp_replace(lower(strip_accents(CAST("
            rf"{value} AS VARCHAR))), {_TOKEN_SEPARATORS}, ' ', 'g'), '\s+')")


def _fill_tokens(con: duckdb.DuckDBPyConnection) -> None:
    """Every word of every article, one row each, in a temp table that the rebuild's statements read.

    Filled before the rebuild's transaction: rows a transaction has not committed stay in memory, and
    at 20,000 articles (15 million words) the next statement then failed under INDEX_MEMORY_LIMIT.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_TOKENS} (term VARCHAR, docid BIGINT, fieldid BIGINT)")
    row = con.execute(f"SELECT max(rowid), current_setting('threads') FROM {FTS_TABLE}").fetchone()
    if row is None or row[0] is None:
        return
    top, threads = int(row[0]), max(1, int(row[1]))
    tokenized = " UNION ALL ".join(
        f"SELECT unnest({_tokenize(field)}) AS term, docid, {i}::BIGINT AS fieldid FROM fts_chunk"
        for i, field in enumerate(_FIELDS))
    for lo in range(0, top + 1, TOKEN_CHUNK):
        chunk = con.execute(f"SELECT rowid AS docid, {', '.join(_FIELDS)} FROM {FTS_TABLE} "
                            "WHERE rowid >= ? AND rowid < ?", [lo, lo + TOKEN_CHUNK]).to_arrow_table()
        if not chunk.num_rows:
            continue
        per = -(-chunk.num_rows // threads)
        batches = [b for i in range(0, chunk.num_rows, per) for b in chunk.slice(i, per).to_batches()]
        con.register("fts_chunk", pa.Table.from_batches(batches, schema=chunk.schema))
        try:
            con.execute(f"INSERT INTO {_TOKENS} SELECT * FROM ({tokenized}) WHERE len(term) > 0")
        finally:
            con.unregister("fts_chunk")


def _index_statements() -> list[str]:
    """The rebuild from the tokens, one statement each, for one transaction: a failure leaves the
    previous index whole."""
    s = FTS_SCHEMA
    fields = ", ".join(f"({i}, '{field}')" for i, field in enumerate(_FIELDS))
    return [
        f"DROP SCHEMA IF EXISTS {s} CASCADE",
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.stopwords (sw VARCHAR)",
        f"CREATE MACRO {s}.tokenize(s) AS {_tokenize('s')}",
        f"CREATE TABLE {s}.fields (fieldid BIGINT, field VARCHAR)",
        f"INSERT INTO {s}.fields VALUES {fields}",
        # df from distinct (term, docid) pairs: grouping spills to disk under the limit, count(DISTINCT) does not
        f"CREATE TABLE {s}.dict AS SELECT (row_number() OVER (ORDER BY term) - 1)::BIGINT AS termid, term, df "
        f"FROM (SELECT term, count(*)::BIGINT AS df FROM (SELECT DISTINCT term, docid FROM {_TOKENS}) GROUP BY term)",
        f"CREATE TABLE {s}.terms AS SELECT t.docid, t.fieldid, d.termid FROM {_TOKENS} t JOIN {s}.dict d USING (term)",
        f'CREATE TABLE {s}.docs AS SELECT a.rowid AS docid, a.id AS "name", coalesce(n.len, 0)::BIGINT AS len '
        f"FROM {FTS_TABLE} a LEFT JOIN (SELECT docid, count(*) AS len FROM {_TOKENS} GROUP BY docid) n "
        "ON n.docid = a.rowid",
        f"CREATE TABLE {s}.stats AS SELECT count(docid)::BIGINT AS num_docs, "
        f"(sum(len) / count(len))::DOUBLE AS avgdl FROM {s}.docs",
        _MATCH_BM25.replace("{s}", s),
    ]


# The extension's match_bm25, less stem() (stemmer 'none' returns the word) and with empty query
# tokens dropped: the extension counts the '' that a trailing full stop leaves, so its conjunctive
# search for "peace plan." found nothing.
_MATCH_BM25 = """
CREATE MACRO {s}.match_bm25(docname, query_string, fields := NULL, k := 1.2, b := 0.75, conjunctive := false) AS (
    WITH tokens AS (
        SELECT DISTINCT t FROM (SELECT unnest({s}.tokenize(query_string)) AS t) WHERE len(t) > 0
    ),
    fieldids AS (
        SELECT fieldid FROM {s}.fields
        WHERE CASE WHEN fields IS NULL THEN 1
                   ELSE field IN (SELECT * FROM (SELECT unnest(string_split(fields, ','))) AS fsq) END
    ),
    qtermids AS (
        SELECT termid FROM {s}.dict AS dict, tokens WHERE dict.term = tokens.t
    ),
    qterms AS (
        SELECT termid, docid FROM {s}.terms AS terms
        WHERE CASE WHEN fields IS NULL THEN 1 ELSE fieldid IN (SELECT * FROM fieldids) END
          AND termid IN (SELECT qtermids.termid FROM qtermids)
    ),
    term_tf AS (
        SELECT termid, docid, count(*) AS tf FROM qterms GROUP BY docid, termid
    ),
    cdocs AS (
        SELECT docid FROM qterms GROUP BY docid
        HAVING CASE WHEN conjunctive THEN count(DISTINCT termid) = (SELECT count(*) FROM tokens) ELSE 1 END
    ),
    subscores AS (
        SELECT docs.docid, len, term_tf.termid, tf, df,
               log(((SELECT num_docs FROM {s}.stats) - df + 0.5) / (df + 0.5) + 1)
               * ((tf * (k + 1)) / (tf + k * (1 - b + b * (len / (SELECT avgdl FROM {s}.stats)))))
               AS subscore
        FROM term_tf, cdocs, {s}.docs AS docs, {s}.dict AS dict
        WHERE term_tf.docid = cdocs.docid AND term_tf.docid = docs.docid AND term_tf.termid = dict.termid
    ),
    scores AS (
        SELECT docid, sum(subscore) AS score FROM subscores GROUP BY docid
    )
    SELECT score FROM scores, {s}.docs AS docs WHERE scores.docid = docs.docid AND docs.name = docname
)
"""


def _build_index(con: duckdb.DuckDBPyConnection, state: tuple[int, Any, float], *,
                 memory_limit: str | None = None, threads: str | None = None) -> None:
    """One whole rebuild (and its checkpoint) under the given DuckDB settings, recorded in search_index_state."""
    from monitor.store import duckdb_setting

    count, newest, started = state
    with ExitStack() as settings:
        for name, value in (("memory_limit", memory_limit), ("threads", threads)):
            if value is not None:
                settings.enter_context(duckdb_setting(con, name, value))
        try:
            _fill_tokens(con)
            con.execute("BEGIN TRANSACTION")
            for statement in _index_statements():
                con.execute(statement)
            con.execute("DELETE FROM search_index_state")
            con.execute("INSERT INTO search_index_state VALUES (?, ?, ?, ?)",
                        [count, newest, datetime.now(UTC), round(time.monotonic() - started, 3)])
            con.execute("COMMIT")
            con.execute(f"DROP TABLE {_TOKENS}")  # before the checkpoint, which runs under the same limit
            # the new index is still in the WAL: the next commit would checkpoint it under the writer's
            # limit (+400 MB at 20,000 articles instead of +20 MB under this one, in the same ~0.5 s)
            con.execute("CHECKPOINT")
        except duckdb.Error:
            # without this rollback the settings could not be set back, and every later statement of
            # the run would fail with the aborted transaction
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        finally:
            with suppress(duckdb.Error):
                con.execute(f"DROP TABLE IF EXISTS {_TOKENS}")


def _wal_pending(db_path: Path) -> bool:
    wal = db_path.with_name(db_path.name + ".wal")
    return wal.exists() and wal.stat().st_size > 0


def _logical_copy(con: duckdb.DuckDBPyConnection, tmp: Path) -> None:
    source = con.execute("SELECT current_database()").fetchone()
    assert source is not None
    con.execute(f"ATTACH '{tmp}' AS monitor_snapshot")
    try:
        con.execute(f'COPY FROM DATABASE "{source[0]}" TO monitor_snapshot')
    finally:
        con.execute("DETACH monitor_snapshot")


def _copy(con: duckdb.DuckDBPyConnection, db_path: Path, tmp: Path) -> str:
    """Copy the checkpointed file byte for byte (fast); fall back to a logical copy if a WAL remains."""
    con.execute("CHECKPOINT")
    if _wal_pending(db_path):
        _logical_copy(con, tmp)
        return "logical"
    shutil.copyfile(db_path, tmp)
    return "file"


def _verify(tmp: Path, expected_articles: int) -> None:
    """Open the copy as an analyst would; it must hold every article the writer has."""
    check = duckdb.connect(str(tmp), read_only=True)
    try:
        row = check.execute("SELECT count(*) FROM articles").fetchone()
    finally:
        check.close()
    if not row or int(row[0]) != expected_articles:
        raise StoreError(f"snapshot copy {tmp} holds {row[0] if row else 0} articles, "
                         f"the database {expected_articles}")


def publish_from(con: duckdb.DuckDBPyConnection, db_path: str | Path) -> Published:
    """Publish the snapshot of the database behind the writer's open connection `con`."""
    db = Path(db_path)
    target = snapshot_path(db)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    for stale in target.parent.glob(f"{target.name}.*.tmp"):  # left by a publish that was killed
        stale.unlink(missing_ok=True)
    index_s, index_error = _refreshed_index(con)
    try:
        row = con.execute("SELECT count(*) FROM articles").fetchone()
        articles = int(row[0]) if row else 0
        tmp.unlink(missing_ok=True)
        method = _copy(con, db, tmp)
        _verify(tmp, articles)
        size = tmp.stat().st_size
        os.replace(tmp, target)  # atomic: readers see the old file or the new one, never half of one
    except (duckdb.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot publish analyst snapshot {target}: {str(exc).splitlines()[0]}") from None
    except StoreError:
        tmp.unlink(missing_ok=True)
        raise
    return Published(target, round(time.monotonic() - started, 3), index_s, size, articles, method, index_error)


def _refreshed_index(con: duckdb.DuckDBPyConnection) -> tuple[float | None, str | None]:
    """(seconds, None) or (None, why): a failed rebuild leaves the previous index in place, and the
    snapshot still publishes the run's data (new articles are found by SQL, not yet by search)."""
    try:
        return refresh_search_index(con), None
    except (duckdb.Error, StoreError) as exc:
        return None, f"search index not rebuilt: {str(exc).splitlines()[0]}"


def publish(db_path: str | Path) -> Published:
    """Publish from the database file, outside a run (takes the run lock; refuses while a run is in flight)."""
    from monitor.ops import run_lock
    from monitor.store import open_store

    p = Path(db_path)
    if not p.exists():
        raise StoreError(f"database not found: {p} (run `monitor run` or `monitor demo` first)")
    with run_lock(p) as holder:
        if holder is not None:
            raise StoreError(f"a run is in flight ({holder.describe()}); it publishes the analyst "
                             "snapshot when it finishes")
        with open_store(p) as store:
            return publish_from(store.con, p)


def open_snapshot(db_path: str | Path, *, publish_if_missing: bool = True) -> tuple[duckdb.DuckDBPyConnection, Any]:
    """Open the analyst snapshot read-only; returns the connection and the inode it opened."""
    snap = snapshot_path(db_path)
    if not snap.exists() and publish_if_missing and Path(db_path).exists():
        publish(db_path)
    if not snap.exists():
        raise StoreError(f"no analyst snapshot at {snap} (it is published at the end of every run: "
                         "run `monitor run` or `monitor demo` first)")
    try:
        ino = _identity(snap)
        con = duckdb.connect(str(snap), read_only=True)
    except (duckdb.Error, OSError) as exc:
        raise StoreError(f"cannot open analyst snapshot {snap}: {str(exc).splitlines()[0]}") from None
    return con, ino


def is_stale(db_path: str | Path, opened_ino: Any) -> bool:
    """True when a newer snapshot has been published since the one opened as `opened_ino`."""
    try:
        return _identity(snapshot_path(db_path)) != opened_ino
    except OSError:
        return False


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns
