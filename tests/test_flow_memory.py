"""The flow process's own memory: its malloc arenas and its recycled store, observed in real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]

ARENAS = """
import ctypes, sys, threading
from monitor.ops import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
barrier = threading.Barrier(8)
kept = []
def work() -> None:
    barrier.wait()  # all alive at once, so no thread inherits the arena of one that ended
    kept.append([bytearray(4096) for _ in range(64)])  # > 512 bytes: glibc malloc, not pymalloc
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
"""


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    subprocess.run([sys.executable, "-c", ARENAS, mode, str(report)], cwd=ROOT, check=True, timeout=120)
    return report.read_text().count("<heap nr=")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_flow_threads_share_two_malloc_arenas(tmp_path: Path) -> None:
    from monitor.ops import MALLOC_ARENAS

    assert _arenas(tmp_path, "default") > MALLOC_ARENAS  # the test's threads do spread over arenas
    assert _arenas(tmp_path, "limited") <= MALLOC_ARENAS


WRITER = """
import random, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from monitor.models import Article
from monitor.store import open_store
def rss_mb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) >> 10 for line in fh if line.startswith("VmRSS"))
rng = random.Random(7)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(5000)]
t0 = datetime(2025, 1, 1, tzinfo=UTC)
with open_store(Path(sys.argv[2])) as store:
    start = rss_mb()
    for b in range(20):
        arts = [Article(id=f"{i:016x}", url=f"https://example.org/{i}", source_id="s", status="ok", title=f"t {i}",
                        text=" ".join(rng.choices(words, k=600)), lang="en", content_hash=f"{i:040x}",
                        fetched_at=t0 + timedelta(seconds=i)) for i in range(b * 200, b * 200 + 200)]
        with store.transaction():
            store.write_articles(arts, "run", store_html=False)
        if sys.argv[1] == "recycled" and b % 5 == 4:
            store.recycle()
    print(rss_mb() - start)
"""


def _writer_growth_mb(tmp_path: Path, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", WRITER, mode, str(tmp_path / f"{mode}.duckdb")], cwd=ROOT,
                         check=True, timeout=300, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_recycling_the_store_gives_back_what_duckdb_holds_for_written_rows(tmp_path: Path) -> None:
    plain, recycled = _writer_growth_mb(tmp_path, "plain"), _writer_growth_mb(tmp_path, "recycled")
    assert plain >= 40  # 4,000 articles of ~4 KB: DuckDB does keep memory for them
    assert recycled <= plain * 0.6, (plain, recycled)


def test_a_recycled_store_keeps_its_rows_and_writer_settings(tmp_path: Path) -> None:
    from monitor.store import WRITER_SETUP, open_store

    def writer_settings(store: Any) -> list[Any]:
        names = [sql.split()[1] for sql in WRITER_SETUP]  # "SET name = value"
        return [store.scalar(f"SELECT current_setting('{n}')") for n in names]

    with open_store(tmp_path / "r.duckdb") as store:
        with store.transaction():
            store.con.execute("INSERT INTO sources (id, url, kind) VALUES ('a', 'https://a.example', 'rss')")
        old, settings = store.con, writer_settings(store)
        store.recycle()
        assert store.con is not old
        assert store.scalar("SELECT count(*) FROM sources") == 1
        assert writer_settings(store) == settings
        with duckdb.connect() as fresh:  # and they are not DuckDB's defaults
            assert fresh.execute("SELECT current_setting('memory_limit')").fetchone() != (settings[0],)
        with store.transaction():
            store.con.execute("INSERT INTO sources (id, url, kind) VALUES ('b', 'https://b.example', 'rss')")
        assert store.scalar("SELECT count(*) FROM sources") == 2


def test_a_writer_appends_in_small_row_groups_so_a_checkpoint_rewrites_little(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    # A checkpoint rewrites (and merges into) a table's last row group whole: its size bounds the memory
    # a checkpoint takes. 2,048 rows stand in for ROW_GROUP_SIZE so that the test writes few articles.
    from datetime import UTC, datetime

    import monitor.store as store_mod
    from monitor.models import Article

    monkeypatch.setattr(store_mod, "ROW_GROUP_SIZE", 2048)
    db = tmp_path / "rg.duckdb"
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    with store_mod.open_store(db) as store:
        for b in range(0, 5000, 250):
            arts = [Article(id=f"{i:016x}", url=f"https://example.org/{i}", source_id="s", status="ok",
                            title=f"t {i}", text=f"text {i} " * 20, lang="en", content_hash=f"{i:040x}",
                            fetched_at=t0) for i in range(b, b + 250)]
            with store.transaction():
                store.write_articles(arts, "run", store_html=False)
            if b == 2500:
                store.recycle()  # a reopen in the middle, as the flow does every RECYCLE_EVERY articles
        assert store.scalar("SELECT current_setting('temp_directory')") == f"{db}.tmp"
    with duckdb.connect(str(db), read_only=True) as con:  # analysts open the file as before
        assert con.execute("SELECT count(*) FROM articles").fetchone() == (5000,)
        groups = [r[0] for r in con.execute("SELECT max(count) FROM pragma_storage_info('articles') "
                                            "GROUP BY row_group_id").fetchall()]
    assert max(groups) <= 2048, groups
    assert len(groups) >= 3, groups
    assert not (tmp_path / "rg.duckdb.wal").exists()  # closing still checkpoints the attached file
