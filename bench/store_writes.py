"""DuckDB row-group size for the writer: a run's writes, later runs' checkpoints, and the index rebuild.

    .venv/bin/python bench/store_writes.py                 # 20,000 articles in batches of 250
    .venv/bin/python bench/store_writes.py --articles 5000

Writes articles with real corpus texts and pages through `Store.write_articles`, one transaction per
batch, into a fresh file attached with `ROW_GROUP_SIZE n` (an ATTACH option); the pages go to the
archive beside the file (monitor.pages), as in the flow, so only texts and metadata are in DuckDB.
Then it rebuilds the search index as a snapshot publish does, and runs later cycles as scheduled runs
would: 1,000 more articles, then a checkpoint (what every store reopen and publish does), timed with
the memory it takes (the rise of the peak RSS, VmHWM, over the checkpoint). Each size runs in its own
process. Prints peak PSS, commit time, file size, the index rebuild's time and the later checkpoints,
and the ratios to DuckDB's default row group (122,880 rows). Needs ../shared/evaldata and psutil.

The writer uses store.ROW_GROUP_SIZE (8,192; docs/choices.md): the default makes every checkpoint
rewrite the last row group, which below 122,880 articles is every article, while small row groups
make the index rebuild slower.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import corpus  # noqa: E402
from monitor.store import Store  # noqa: E402

DUCKDB_DEFAULT = 122_880
SIZES = (DUCKDB_DEFAULT, 32768, 8192, 2048)
CYCLES = 3
CYCLE = 1000
BATCH = 250


def _articles(base: list[bytes], texts: list[str], start: int, n: int) -> list[object]:
    from monitor.extract import compress_html
    from monitor.models import Article

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    return [Article(id=f"{i:016x}", url=f"https://example.org/{i}", source_id="bench", status="ok",
                    title=f"article {i}", text=f"{texts[i % len(texts)]} {i}", lang="en",
                    content_hash=f"{i:040x}", html=compress_html(base[i % len(base)]),
                    fetched_at=t0 + timedelta(seconds=i)) for i in range(start, start + n)]


def run(row_group_size: int, n: int, out: multiprocessing.Queue) -> None:
    import duckdb
    import psutil
    import trafilatura

    from monitor import store
    from monitor.snapshot import refresh_search_index

    base = [gzip.decompress(b) for b in corpus.load_base()[:300]]
    texts = [trafilatura.extract(b) or "" for b in base[:100]]
    me, peak, commit_s = psutil.Process(), 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        with store.open_store(db):
            pass  # the schema, migrated
        con = duckdb.connect(":memory:")
        con.execute(f"ATTACH '{db}' AS bench (ROW_GROUP_SIZE {row_group_size})")
        con.execute("USE bench")
        con.execute(f"SET memory_limit = '{store.WRITER_MEMORY_LIMIT}'")
        s = store.Store(con, db)
        for start in range(0, n, BATCH):
            arts = _articles(base, texts, start, min(BATCH, n - start))
            t0 = time.perf_counter()
            with s.transaction():
                s.write_articles(arts, "bench", store_html=True)  # type: ignore[arg-type]
            commit_s += time.perf_counter() - t0
            peak = max(peak, me.memory_full_info().pss / 2**20)
        file_mb = round(db.stat().st_size / 2**20)
        t0 = time.perf_counter()
        try:
            refresh_search_index(con, force=True)
            index = f"{time.perf_counter() - t0:.1f}"
        except duckdb.Error as exc:
            index = f"failed: {str(exc)[:80]}"
        cycles = [_cycle_checkpoint(s, base, texts, n + k * CYCLE) for k in range(CYCLES)]
        con.close()
        out.put({"row_group_size": row_group_size, "peak_pss_mb": round(peak), "commit_s": round(commit_s, 1),
                 "file_mb": file_mb, "index_rebuild_s": index,
                 "later_checkpoints_s": [c[0] for c in cycles], "later_checkpoints_mb": [c[1] for c in cycles]})


def _status_mb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) >> 10 for line in fh if line.startswith(key))


def _cycle_checkpoint(s: Store, base: list[bytes], texts: list[str], start: int) -> tuple[float, int]:
    """A later run: CYCLE more articles, then a checkpoint; its seconds and the MB its peak rose by."""
    for b in range(start, start + CYCLE, BATCH):
        with s.transaction():
            s.write_articles(_articles(base, texts, b, BATCH), "bench", store_html=True)  # type: ignore[arg-type]
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux)
    before, t0 = _status_mb("VmRSS"), time.perf_counter()
    s.con.execute("CHECKPOINT")
    return round(time.perf_counter() - t0, 2), _status_mb("VmHWM") - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=20_000)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for size in SIZES:
        q = ctx.Queue()
        proc = ctx.Process(target=run, args=(size, args.articles, q))
        proc.start()
        rows.append(q.get())
        proc.join()
        print(f"  row groups of {size:>7,} rows: {rows[-1]}", flush=True)
    ref = rows[0]
    print(f"\n{args.articles:,} articles in batches of {BATCH}; ratio to DuckDB's default row group:")
    for r in rows[1:]:
        print(f"  {r['row_group_size']:>5}: peak PSS {r['peak_pss_mb'] / ref['peak_pss_mb']:.2f}x, "
              f"commits {r['commit_s'] / ref['commit_s']:.2f}x, file {r['file_mb'] / ref['file_mb']:.2f}x, "
              f"index rebuild {r['index_rebuild_s']} s (default: {ref['index_rebuild_s']} s), "
              f"later checkpoints {r['later_checkpoints_s']} s, +{r['later_checkpoints_mb']} MB "
              f"(default: {ref['later_checkpoints_s']} s, +{ref['later_checkpoints_mb']} MB)")


if __name__ == "__main__":
    main()
