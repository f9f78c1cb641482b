"""Benchmark the analyst snapshot: what publishing costs the writer, against database size.

For each size, a database is filled with synthetic articles (about 500 words each, as news runs, plus
zstd-compressed HTML as the pipeline stores it), then timed:

- publish after a run that stored articles (the BM25 index is rebuilt, then the file is copied);
- publish after a run that stored nothing (index current: checkpoint + copy + check only);
- the alternative logical copy (`ATTACH` + `COPY FROM DATABASE`), for comparison with the file copy;
- an analyst query on the snapshot, and whether a reader on the pipeline file itself blocks a writer.

    .venv/bin/python bench/snapshot.py [--sizes 1000 5000 20000]

Figures depend on load: this machine is shared, so read the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import duckdb  # noqa: E402
import zstandard  # noqa: E402

from monitor import snapshot  # noqa: E402
from monitor.models import Article  # noqa: E402
from monitor.query import AnalystSession, search  # noqa: E402
from monitor.store import open_store  # noqa: E402


def fill(db: Path, n: int, seed: int = 7) -> None:
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 10))) for _ in range(30_000)]
    cz = zstandard.ZstdCompressor(level=3)
    now = datetime.now(UTC)
    with open_store(db) as store:
        store.sync_sources([("wire", "https://example.org/feed.xml", "rss", "Wire")])
        for start in range(0, n, 1000):
            batch = []
            for i in range(start, min(n, start + 1000)):
                text = " ".join(rnd.choices(vocab, k=500))
                batch.append(Article(id=f"{i:016x}", url=f"https://example.org/{i}", source_id="wire",
                                     status="ok", title=" ".join(rnd.choices(vocab, k=9)), text=text,
                                     lang="en", fetched_at=now - timedelta(minutes=i),
                                     html=cz.compress(f"<html><body><p>{text}</p></body></html>".encode())))
            store.write_articles(batch, "bench", store_html=True)


def reader_blocks_writer(db: Path) -> bool:
    reader = subprocess.Popen([sys.executable, "-c",
                               "import sys, duckdb; c = duckdb.connect(sys.argv[1], read_only=True); "
                               "print('open', flush=True); sys.stdin.readline()", str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    try:
        duckdb.connect(str(db)).close()
        blocked = False
    except duckdb.Error:
        blocked = True
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait(10)
    return blocked


def measure(n: int, folder: Path) -> dict[str, object]:
    db = folder / f"bench-{n}.duckdb"
    fill(db, n)
    with open_store(db) as store:
        rebuilt = snapshot.publish_from(store.con, db)
        unchanged = snapshot.publish_from(store.con, db)
        logical_tmp = folder / f"logical-{n}.duckdb"
        t0 = time.monotonic()
        snapshot._logical_copy(store.con, logical_tmp)
        logical_s = time.monotonic() - t0
    with AnalystSession(db) as session:
        words = " ".join(str(session.query("SELECT title FROM articles LIMIT 1").rows()[0][0]).split()[:2])
        t0 = time.monotonic()
        hits = search(session, words, limit=20)
        search_s = time.monotonic() - t0
    return {
        "articles": n,
        "db_mb": round(db.stat().st_size / 1e6, 1),
        "snapshot_mb": round(rebuilt.bytes / 1e6, 1),
        "publish_with_index_rebuild_s": rebuilt.seconds,
        "index_rebuild_s": rebuilt.index_seconds,
        "publish_no_new_articles_s": unchanged.seconds,
        "copy_method": unchanged.method,
        "logical_copy_s": round(logical_s, 3),
        "search_s": round(search_s, 3),
        "search_hits": hits.table.num_rows,
        "reader_on_pipeline_file_blocks_writer": reader_blocks_writer(db),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "snapshot.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            row = measure(n, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "note": "2 shared cores, other work running: compare ratios",
                                    "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
