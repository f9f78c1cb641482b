"""The page archive: fetched pages, zstd-compressed, in immutable Parquet files beside the database.

Pages are written once and read back only by `monitor reprocess`, yet inside DuckDB they were 85% of
the file: every commit's checkpoint rewrote them, the writer's buffer pool held them until the run's
checkpoint, and every snapshot publish copied them (docs/choices.md, "Pages outside DuckDB"). Here each
stored batch becomes one Parquet file in `<db>.pages/`, named so that names sort in write order.

A batch's file is written under a temporary name, fsynced and renamed *before* the batch's transaction
commits, so a committed article always has its page. A batch whose transaction then fails leaves a
file that no stored article points to; a later fetch of the same article writes a newer file, and
reading takes the newest row for each id, so such leftovers are never read in place of the page of
the stored article. This module only does file IO; the store decides when to call it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from monitor.errors import StoreError

CODEC = "zstd"  # how each page's bytes are compressed (monitor.extract.compress_html)
_SCHEMA = pa.schema([("article_id", pa.string()), ("codec", pa.string()), ("html", pa.binary())])


def archive_dir(db_path: str | Path) -> Path:
    """Where the pages of the database at `db_path` are kept: `<db file name>.pages/`."""
    p = Path(db_path)
    return p.with_name(p.name + ".pages")


def write_pages(folder: Path, pages: Sequence[tuple[str, bytes]]) -> Path | None:
    """Write (article id, compressed page) rows as one new Parquet file; durable when this returns."""
    if not pages:
        return None
    name = f"{time.time_ns():020d}-{os.getpid()}"
    final, tmp = folder / f"{name}.parquet", folder / f".{name}.tmp"
    table = pa.table({"article_id": [p[0] for p in pages], "codec": [CODEC] * len(pages),
                      "html": [p[1] for p in pages]}, schema=_SCHEMA)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(folder)
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="none")  # the pages are zstd already
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write pages to {folder}: {exc.strerror or exc}") from None
    return final


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of other processes: writers hold the run lock, so those were killed mid-write."""
    for stale in folder.glob(".*.tmp"):
        if not stale.name.endswith(f"-{os.getpid()}.tmp"):
            stale.unlink(missing_ok=True)


def read_pages(folder: Path, ids: Iterable[str]) -> dict[str, tuple[str, bytes]]:
    """The newest archived (codec, compressed page) of each of `ids` that has one."""
    wanted = set(ids)
    found: dict[str, tuple[str, bytes]] = {}
    if not wanted or not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.parquet")):  # oldest first: a newer file's row replaces an older
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot read archived pages {path}: {exc}") from None
        ids_in_file = table.column("article_id").to_pylist()
        rows = [i for i, aid in enumerate(ids_in_file) if aid in wanted]
        codecs, htmls = table.column("codec"), table.column("html")
        for i in rows:
            found[ids_in_file[i]] = (codecs[i].as_py(), htmls[i].as_py())
    return found
