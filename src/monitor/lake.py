"""The DuckLake backend: attaching a lake (PostgreSQL catalog + Parquet data path) and its staging table.

A lake is DuckDB's lakehouse format: the catalog (which tables, which Parquet files, which snapshot)
lives in PostgreSQL, the data as Parquet files under `data_path` (a local folder or object storage).
Many DuckDB processes on many machines attach the same lake; each commit is a new snapshot. The
ducklake and postgres extensions are loaded from their pinned wheels in site-packages, never
downloaded (the DuckDB version and the wheels' version are pinned together in pyproject.toml).

DuckLake has no primary keys, unique constraints or indexes: `lake_ddl` strips them from the
migrations, and store.py writes with anti-join inserts and MERGE instead of INSERT OR IGNORE/REPLACE.
The `staged_articles` table carries extracted batches from partition runs to the one writer that
runs novelty over them (flows/partitioned.py).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from monitor.errors import StoreError
from monitor.models import Article, TopicMatch

DUCKDB_VERSION = "v1.5.5"
LAKE_ALIAS = "lake"
_EXTENSIONS = {"ducklake": "duckdb_extension_ducklake", "postgres_scanner": "duckdb_extension_postgres_scanner"}


def extension_path(name: str) -> Path:
    """The extension file shipped in its `duckdb_extension_<name>` wheel."""
    import importlib

    package = _EXTENSIONS[name]
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:  # pinned dependencies; this only guards a broken install
        raise StoreError(f"the {package} package is not installed") from exc
    base = Path(str(mod.__file__)).parent / "extensions" / DUCKDB_VERSION
    found = sorted(base.glob(f"{name}.duckdb_extension*"))
    if not found:
        raise StoreError(f"{name} extension not found under {base}")
    return found[0]


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Load ducklake and postgres offline (autoinstall off: a missing file is an error, not a download)."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    for name in _EXTENSIONS:
        con.execute(f"LOAD '{_quote(str(extension_path(name)))}'")


def _quote(text: str) -> str:
    return text.replace("'", "''")


def attach_sql(catalog: str, data_path: str, alias: str = LAKE_ALIAS, read_only: bool = False) -> str:
    """The ATTACH statement (the same line analysts type in plain DuckDB)."""
    opts = [f"DATA_PATH '{_quote(data_path)}'"] + (["READ_ONLY"] if read_only else [])
    return f"ATTACH 'ducklake:postgres:{_quote(catalog)}' AS {alias} ({', '.join(opts)})"


def connect(catalog: str, data_path: str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lake attached and selected (`USE lake`)."""
    if not catalog or not data_path:
        raise StoreError("a DuckLake store needs storage.catalog and storage.data_path")
    if "://" not in data_path:
        Path(data_path).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        load_extensions(con)
        con.execute(attach_sql(catalog, data_path, read_only=read_only))
        con.execute(f"USE {LAKE_ALIAS}")
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot attach lake {describe(catalog)}: {str(exc).splitlines()[0]}") from None
    return con


def describe(catalog: str) -> str:
    """The catalog connection string without its password (for errors and logs)."""
    return re.sub(r"password=\S+", "password=***", catalog)


_PK_COLUMN = re.compile(r"\s+PRIMARY\s+KEY\b", re.IGNORECASE)
_PK_CLAUSE = re.compile(r",\s*PRIMARY\s+KEY\s*\([^)]*\)", re.IGNORECASE)
_INDEX = re.compile(r"(CREATE\s+(UNIQUE\s+)?|DROP\s+)INDEX\b[^;]*;", re.IGNORECASE)


def lake_ddl(sql: str) -> str:
    """A migration for a lake: PRIMARY KEY, CREATE INDEX and DROP INDEX removed (DuckLake has neither)."""
    return _PK_COLUMN.sub("", _PK_CLAUSE.sub("", _INDEX.sub("", sql)))


# ---- staging: extracted batches waiting for the writer -----------------------------------------

STAGING_DDL = """
CREATE TABLE IF NOT EXISTS staged_articles (
    cycle_id VARCHAR, partition INTEGER, source_id VARCHAR, seq INTEGER, article_id VARCHAR,
    payload BLOB, staged_at TIMESTAMPTZ
)
"""


@dataclass(slots=True)
class Staged:
    """One extracted article (and its topic matches) waiting for novelty and storage."""

    source_id: str
    seq: int  # position in the source's discovery order (the single-machine run's order)
    article: Article
    matches: list[TopicMatch]


def stage(con: duckdb.DuckDBPyConnection, cycle_id: str, partition: int, rows: Sequence[Staged]) -> int:
    """Append a partition's extracted articles. Payloads are pickles: staging lives for one cycle and
    is written and read by the same code version on every worker."""
    con.execute(STAGING_DDL)
    if not rows:
        return 0
    import pyarrow as pa

    tbl = pa.table({  # noqa: F841 (read by DuckDB's replacement scan)
        "cycle_id": [cycle_id] * len(rows),
        "partition": [partition] * len(rows),
        "source_id": [r.source_id for r in rows],
        "seq": [r.seq for r in rows],
        "article_id": [r.article.id for r in rows],
        "payload": [pickle.dumps((r.article, r.matches)) for r in rows],
    })
    con.execute("INSERT INTO staged_articles SELECT *, now() FROM tbl")
    return len(rows)


def staged(con: duckdb.DuckDBPyConnection, cycle_id: str) -> list[Staged]:
    """A cycle's staged articles in the single-machine order: by source id, then discovery order."""
    con.execute(STAGING_DDL)
    rows = con.execute(
        "SELECT source_id, seq, payload FROM staged_articles WHERE cycle_id = ? ORDER BY source_id, seq",
        [cycle_id]).fetchall()
    out = []
    for sid, seq, payload in rows:
        article, matches = pickle.loads(payload)
        out.append(Staged(sid, seq, article, matches))
    return out


def clear_staged(con: duckdb.DuckDBPyConnection, cycle_id: str) -> None:
    con.execute("DELETE FROM staged_articles WHERE cycle_id = ?", [cycle_id])


def table_counts(con: Any, tables: Sequence[str]) -> dict[str, int]:
    return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
