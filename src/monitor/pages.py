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
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from monitor.errors import StoreError

CODEC = "zstd"  # how each page's bytes are compressed (monitor.extract.compress_html)
# One file per stored batch is ~50 files a day on a 30-minute schedule. When the newest run of files
# under SMALL_FILE_BYTES reaches COMPACT_AT files, it is merged into one (compact).
COMPACT_AT = 64
SMALL_FILE_BYTES = 32 << 20
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


@dataclass(frozen=True, slots=True)
class Compacted:
    """What compact did: files merged into `path`, rows kept, rows dropped (older copies, unstored ids)."""

    path: Path
    files: int
    kept: int
    dropped: int


def compact(folder: Path, stored: Callable[[Sequence[str]], set[str]],
            at: int | None = None) -> Compacted | None:
    """Merge the newest run of small files into one when it has `at` (COMPACT_AT) files or more; None otherwise.

    The merged file keeps, for each id, the row that reading would take (the newest), and only ids
    that `stored` says are stored articles: rows left by a batch whose transaction failed go here.
    It is named after the newest file it replaces, so it sorts after every older file and before
    every newer one, and reading takes the same row for every id before, during and after the merge.
    It is written, fsynced and renamed before the files it replaces are removed. The caller holds
    the run lock (no other writer).
    """
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    group: list[Path] = []
    for path in reversed(files):  # newest first, up to the first big (already merged) file
        if path.stat().st_size >= SMALL_FILE_BYTES:
            break
        group.append(path)
    if len(group) < (COMPACT_AT if at is None else at):
        return None
    target = group[0].with_name(f"{group[0].stem}-c.parquet")
    tmp = folder / f".{target.stem}-{os.getpid()}.tmp"
    try:
        keep, dropped = _rows_to_keep(group, stored)  # per file, newest first
        with open(tmp, "wb") as fh:
            with pq.ParquetWriter(fh, _SCHEMA, compression="none") as writer:
                for path, rows in zip(reversed(group), reversed(keep), strict=True):  # oldest first
                    if rows:
                        writer.write_table(pq.read_table(path, schema=_SCHEMA).take(rows))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        for path in group:
            path.unlink()
    except (OSError, pa.ArrowException) as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot compact pages in {folder}: {exc}") from None
    return Compacted(target, len(group), sum(len(r) for r in keep), dropped)


def _rows_to_keep(newest_first: Sequence[Path], stored: Callable[[Sequence[str]], set[str]],
                  ) -> tuple[list[list[int]], int]:
    """For each file, the rows reading would take for a stored id; and how many rows are dropped."""
    seen: set[str] = set()
    keep: list[list[int]] = []
    dropped = 0
    for path in newest_first:
        ids = pq.read_table(path, columns=["article_id"]).column("article_id").to_pylist()
        wanted = stored(ids)
        rows: list[int] = []
        for i in range(len(ids) - 1, -1, -1):  # within a file, the last row of an id wins
            if ids[i] in wanted and ids[i] not in seen:
                seen.add(ids[i])
                rows.append(i)
        rows.reverse()
        keep.append(rows)
        dropped += len(ids) - len(rows)
    return keep, dropped
