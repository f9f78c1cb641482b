"""Analyst SQL: read-only queries over the analyst snapshot, with a row cap and a time limit.

Three guards, each enough on its own for its case: (1) only SELECT/EXPLAIN statements are accepted
(checked with DuckDB's own parser, so `SELECT 1; DROP TABLE x` is refused whole); (2) the
connection is read-only on the snapshot file; (3) after the fts extension is loaded the connection
turns off file system access and locks its configuration, so `COPY ... TO`, `ATTACH` and
`read_csv('/etc/...')` fail too. A timer interrupts a query past its time limit, and at most
`max_rows` rows are fetched. Exports (csv, json, parquet) are written here from Arrow, never by SQL.

Named queries are `.sql` files in `dashboards/` and `config/queries/` (and `<config>/queries/`),
run by file name with or without its number prefix (`10_developments` or `developments`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa

from monitor import snapshot
from monitor.errors import QueryRefused, QueryTimeout, StoreError

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = frozenset({"SELECT", "EXPLAIN"})
FORMATS = ("table", "csv", "json", "parquet")


@dataclass(slots=True)
class Result:
    table: pa.Table
    truncated: bool
    seconds: float

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def rows(self) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self.table.to_pylist()]


def check_read_only(sql: str) -> list[str]:
    """The statements of `sql` (as text) if every one is a query; otherwise raise QueryRefused."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise QueryRefused("no statement given")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in ALLOWED:
            raise QueryRefused(f"refused: {kind} statements are not allowed (analyst SQL is read-only; "
                               "only SELECT and EXPLAIN run)")
    return [st.query for st in statements]


class AnalystSession:
    """A read-only connection to the analyst snapshot that reconnects when a newer one is published."""

    def __init__(self, db_path: str | Path, *, max_rows: int = 10_000, timeout_s: float = 60.0,
                 threads: int | None = None) -> None:
        self.db_path = Path(db_path)
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.threads = threads
        self.con: duckdb.DuckDBPyConnection | None = None
        self._opened: Any = None

    def __enter__(self) -> AnalystSession:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        con, self._opened = snapshot.open_snapshot(self.db_path)
        try:
            snapshot.load_fts(con)
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            con.close()
            raise StoreError(f"cannot prepare analyst connection: {str(exc).splitlines()[0]}") from None
        self.con = con

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def refresh(self) -> bool:
        """Reopen if a newer snapshot was published; True when it did."""
        if self.con is not None and not snapshot.is_stale(self.db_path, self._opened):
            return False
        self.close()
        self.connect()
        return True

    def query(self, sql: str) -> Result:
        """Run analyst SQL (guarded); the result of the last statement is returned."""
        statements = check_read_only(sql)
        result: Result | None = None
        for st in statements:
            result = self._run(st, [])
        assert result is not None
        return result

    def run_trusted(self, sql: str, params: Sequence[Any]) -> Result:
        """Run SQL written in this project (search), with the same cap and time limit."""
        return self._run(sql, params)

    def _run(self, sql: str, params: Sequence[Any]) -> Result:
        if self.con is None:
            self.connect()
        con = self.con
        assert con is not None
        started = time.monotonic()
        timer = threading.Timer(self.timeout_s, con.interrupt)
        timer.daemon = True
        timer.start()
        try:
            table, truncated = _fetch_capped(con.execute(sql, list(params)), self.max_rows)
        except duckdb.InterruptException:
            raise QueryTimeout(f"query stopped after the {self.timeout_s:g} s time limit "
                               "(raise it with --timeout)") from None
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from None
        finally:
            timer.cancel()
        return Result(table, truncated, round(time.monotonic() - started, 3))


def _fetch_capped(cur: duckdb.DuckDBPyConnection, max_rows: int) -> tuple[pa.Table, bool]:
    """At most `max_rows` rows (0 = no cap); the flag says whether more were there."""
    if cur.description is None:
        return pa.table({}), False
    reader = cur.fetch_record_batch(2048)
    batches: list[pa.RecordBatch] = []
    seen = 0
    truncated = False
    for batch in reader:
        batches.append(batch)
        seen += batch.num_rows
        if max_rows and seen > max_rows:
            truncated = True
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if truncated:
        table = table.slice(0, max_rows)
    return table, truncated


# ---- named queries ------------------------------------------------------------------------------


def query_dirs(config_dir: Path | None) -> list[Path]:
    """Where named queries live: the project's dashboards/ and config/queries/ (next to the package
    and under the working directory, for installs outside the source tree), and <config>/queries/."""
    cwd = Path.cwd()
    dirs = [ROOT / "dashboards", ROOT / "config" / "queries", cwd / "dashboards", cwd / "config" / "queries"]
    if config_dir is not None:
        dirs.append(config_dir / "queries")
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in out:
            out.append(d.resolve())
    return out


def named_queries(dirs: Iterable[Path]) -> dict[str, Path]:
    """name -> file; a file answers to its stem and to its stem without a `10_` number prefix."""
    found: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.sql")) if d.is_dir() else []:
            found.setdefault(p.stem, p)
            found.setdefault(re.sub(r"^\d+[_-]", "", p.stem), p)
    return found


def resolve(text: str, dirs: Iterable[Path]) -> str:
    """A query name becomes its file's SQL; anything else is taken as SQL."""
    name = text.strip()
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        known = named_queries(dirs)
        if name.removesuffix(".sql") in known:
            return known[name.removesuffix(".sql")].read_text(encoding="utf-8")
        raise QueryRefused(f"no named query {name!r} (known: {', '.join(sorted(known)) or 'none'})")
    return text


def describe_queries(dirs: Iterable[Path]) -> list[tuple[str, str, str]]:
    """(name, title, file) of every named query, for `monitor sql --list`."""
    out = []
    seen: set[Path] = set()
    for name, path in sorted(named_queries(dirs).items()):
        if path in seen or re.match(r"^\d+[_-]", name):
            continue
        seen.add(path)
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        title = first[0].split("title:", 1)[1].strip() if first and "title:" in first[0] else ""
        out.append((name, title, str(path)))
    return out


# ---- full-text search ---------------------------------------------------------------------------

SEARCH_SQL = f"""
SELECT round(s.score, 3) AS score, a.title, a.lang, coalesce(src.name, a.source_id) AS outlet,
       coalesce(a.published, a.first_seen) AS seen_at, a.story_id, a.url
FROM (SELECT id, {snapshot.FTS_SCHEMA}.match_bm25(id, ?) AS score FROM articles) s
JOIN articles a USING (id)
LEFT JOIN sources src ON src.id = a.source_id
WHERE s.score IS NOT NULL AND a.status = 'ok' AND (? IS NULL OR a.lang = ?)
ORDER BY s.score DESC, a.id
LIMIT ?
"""


def search(session: AnalystSession, text: str, *, lang: str | None = None, limit: int = 20) -> Result:
    """BM25-ranked articles matching the words of `text` (accents and case ignored)."""
    if not text.strip():
        raise QueryRefused("nothing to search for")
    return session.run_trusted(SEARCH_SQL, [text, lang, lang, limit])


# ---- export -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def write_result(result: Result, fmt: str, out: IO[bytes]) -> None:
    """csv, json (an array of objects) or parquet, written to a binary stream."""
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(_plain(result.table), out)
    elif fmt == "json":
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in result.table.to_pylist()]
        out.write(json.dumps(rows, ensure_ascii=False, default=str, indent=1).encode("utf-8"))
        out.write(b"\n")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result.table, out)
    else:
        raise QueryRefused(f"unknown export format {fmt!r} (csv, json, parquet)")


def _plain(table: pa.Table) -> pa.Table:
    """CSV cannot hold lists or structs: write those columns as JSON text."""
    cols = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
                           pa.string())
        cols.append(col)
    return pa.table(dict(zip(table.column_names, cols, strict=True)))


# ---- the interactive prompt ---------------------------------------------------------------------


def repl(session: AnalystSession, read: Callable[[str], str], show: Callable[[Result], None],
         say: Callable[[str], None], dirs: Sequence[Path]) -> None:
    """Read statements ending in `;` (or `.commands`), run each on the newest snapshot."""
    say("analyst SQL on the snapshot (read-only). End statements with ';'. "
        ".tables  .queries  .quit")
    buf: list[str] = []
    while True:
        try:
            line = read("sql> " if not buf else "...> ")
        except EOFError:
            return
        stripped = line.strip()
        if not buf and stripped.startswith("."):
            if stripped in (".quit", ".exit", ".q"):
                return
            text = {".tables": "SHOW TABLES;"}.get(stripped)
            if stripped == ".queries":
                for name, title, _ in describe_queries(dirs):
                    say(f"  {name:<22} {title}")
                continue
            if text is None:
                say(f"unknown command {stripped}")
                continue
            buf = [text]
        else:
            buf.append(line)
        sql = "\n".join(buf).strip()
        is_name = len(buf) == 1 and re.fullmatch(r"[A-Za-z0-9_.-]+;?", sql) is not None
        if not sql.endswith(";") and not is_name:
            if not sql:
                buf = []
            continue
        buf = []
        try:
            if session.refresh():
                say("(a newer snapshot was published: reconnected)")
            show(session.query(resolve(sql.rstrip(";"), dirs) if is_name else sql))
        except StoreError as exc:
            say(f"error: {exc}")
