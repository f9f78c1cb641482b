"""The page archive: pages outside DuckDB, durable before the commit, newest row wins, compacted, errors named."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor import pages
from monitor.errors import StoreError
from monitor.extract import compress_html, decompress_html
from monitor.models import Article
from monitor.store import Store, open_store


def _article(n: int, page: bytes | None) -> Article:
    return Article(id=f"a{n}", url=f"https://example.org/{n}", source_id="wire", status="ok", title=f"t{n}",
                   text=f"text {n}", lang="en", html=compress_html(page) if page else None,
                   fetched_at=datetime.now(UTC))


def test_pages_are_archived_beside_the_database_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "monitor.duckdb"
    with open_store(db) as store:
        with store.transaction():
            assert store.write_articles([_article(1, b"<p>one</p>"), _article(2, None)], "r1", store_html=True) == 2
        assert store.scalar("SELECT count(*) FROM article_html") == 0  # not in DuckDB
        rows = {r["id"]: r for r in store.stored_articles()}
    assert [p.name.endswith(".parquet") for p in pages.archive_dir(db).iterdir()] == [True]
    assert rows["a1"]["codec"] == "zstd" and decompress_html(bytes(rows["a1"]["html"])) == b"<p>one</p>"
    assert rows["a2"]["html"] is None


def _rolled_back(store: Store, article: Article) -> None:
    """A batch whose transaction fails after its pages were archived."""
    with pytest.raises(RuntimeError), store.transaction():
        store.write_articles([article], "r0", store_html=True)
        raise RuntimeError("the batch fails after its pages were written")


def test_a_rolled_back_batch_leaves_a_file_that_is_never_read_for_the_stored_article(tmp_path: Path) -> None:
    db = tmp_path / "monitor.duckdb"
    with open_store(db) as store:
        _rolled_back(store, _article(1, b"<p>first fetch</p>"))
        assert store.scalar("SELECT count(*) FROM articles") == 0
        assert store.stored_articles() == []
        with store.transaction():  # the next run fetches it again
            store.write_articles([_article(1, b"<p>second fetch</p>")], "r2", store_html=True)
        # an article already stored is not archived again: its first page stays the one read
        with store.transaction():
            store.write_articles([_article(1, b"<p>third fetch</p>")], "r3", store_html=True)
        (row,) = store.stored_articles()
    assert len(list(pages.archive_dir(db).glob("*.parquet"))) == 2
    assert decompress_html(bytes(row["html"])) == b"<p>second fetch</p>"


def test_pages_kept_in_duckdb_by_earlier_versions_are_still_read(tmp_path: Path) -> None:
    db = tmp_path / "monitor.duckdb"
    with open_store(db) as store:
        with store.transaction():
            store.write_articles([_article(1, None)], "r1", store_html=True)
        store.con.execute("INSERT INTO article_html VALUES ('a1', 'zstd', ?)", [compress_html(b"<p>old</p>")])
        (row,) = store.stored_articles()
    assert decompress_html(bytes(row["html"])) == b"<p>old</p>"


def test_a_write_killed_before_its_rename_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "x.pages"
    folder.mkdir()
    stale = folder / ".01795668552833661478-999999.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"half a parquet file")
    pages.write_pages(folder, [("a1", b"x")])
    assert not stale.exists() and len(list(folder.glob("*.parquet"))) == 1
    assert pages.read_pages(folder, ["a1"]) == {"a1": (pages.CODEC, b"x")}


def test_an_unwritable_archive_is_one_store_error_naming_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the archive folder should be")
    with pytest.raises(StoreError, match=r"cannot write pages to .*not-a-folder"):
        pages.write_pages(blocker, [("a1", b"x")])
    assert pages.write_pages(tmp_path / "empty", []) is None and not (tmp_path / "empty").exists()


def test_a_damaged_archive_file_is_one_store_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "x.pages"
    pages.write_pages(folder, [("a1", b"x")])
    (folder / "99999999999999999999-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreError, match=r"cannot read archived pages .*99999999999999999999-1\.parquet"):
        pages.read_pages(folder, ["a1"])


def _write(folder: Path, rows: list[tuple[str, bytes]]) -> Path:
    path = pages.write_pages(folder, [(aid, compress_html(page)) for aid, page in rows])
    assert path is not None
    return path


def _read(folder: Path, ids: list[str]) -> dict[str, bytes]:
    return {aid: decompress_html(page) for aid, (_, page) in pages.read_pages(folder, ids).items()}


def test_compaction_merges_the_small_files_and_every_stored_id_reads_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "db.duckdb.pages"
    for k in range(5):  # a5 is written twice: the newer row must win, before and after
        _write(folder, [(f"a{k}", f"<p>{k}</p>".encode()), ("a5", f"<p>five, version {k}</p>".encode())])
    _write(folder, [("orphan", b"<p>its batch was rolled back</p>")])
    ids = [f"a{k}" for k in range(6)]
    before = _read(folder, ids)
    assert before["a5"] == b"<p>five, version 4</p>"

    assert pages.compact(folder, lambda got: set(got) & set(ids), at=7) is None  # 6 files: not yet
    done = pages.compact(folder, lambda got: set(got) & set(ids), at=6)
    assert done is not None and (done.files, done.kept, done.dropped) == (6, 6, 5)  # 4 old a5 rows, the orphan
    assert [p.name for p in folder.glob("*.parquet")] == [done.path.name]
    assert _read(folder, ids) == before
    assert _read(folder, ["orphan"]) == {}


def test_files_written_after_a_compaction_sort_after_it_and_win(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "db.duckdb.pages"
    every = lambda got: set(got)  # noqa: E731
    for k in range(3):
        _write(folder, [(f"a{k}", b"<p>old</p>")])
    first = pages.compact(folder, every, at=3)
    assert first is not None
    monkeypatch.setattr(pages, "SMALL_FILE_BYTES", first.path.stat().st_size)  # the merged file is now "big"
    for k in range(3):
        _write(folder, [("a0", f"<p>new {k}</p>".encode())])
    second = pages.compact(folder, every, at=3)
    assert second is not None and second.files == 3  # the big file is left as it is
    assert sorted(p.name for p in folder.glob("*.parquet")) == [first.path.name, second.path.name]
    assert _read(folder, ["a0", "a1"]) == {"a0": b"<p>new 2</p>", "a1": b"<p>old</p>"}


def test_a_compaction_killed_before_removing_its_inputs_reads_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "db.duckdb.pages"
    for k in range(4):
        _write(folder, [("a0", f"<p>{k}</p>".encode()), (f"b{k}", b"<p>b</p>")])
    kept = {p.name: p.read_bytes() for p in folder.glob("*.parquet")}
    done = pages.compact(folder, set, at=4)
    assert done is not None
    for name, data in kept.items():  # as if killed after the rename, before any input was removed
        (folder / name).write_bytes(data)
    assert _read(folder, ["a0", "b0", "b3"]) == {"a0": b"<p>3</p>", "b0": b"<p>b</p>", "b3": b"<p>b</p>"}


def test_the_store_compacts_its_archive_and_drops_pages_of_unstored_articles(tmp_path: Path) -> None:
    db = tmp_path / "monitor.duckdb"
    with open_store(db) as store:
        _rolled_back(store, _article(99, b"<p>rolled back</p>"))
        for n in range(3):
            with store.transaction():
                store.write_articles([_article(n, f"<p>{n}</p>".encode())], "r1", store_html=True)
        assert store.compact_pages(at=5) is None
        done = store.compact_pages(at=4)
        assert done is not None and (done.files, done.kept, done.dropped) == (4, 3, 1)
        rows = {r["id"]: decompress_html(bytes(r["html"])) for r in store.stored_articles()}
    assert rows == {"a0": b"<p>0</p>", "a1": b"<p>1</p>", "a2": b"<p>2</p>"}


def test_a_compaction_that_meets_a_damaged_file_is_one_store_error_and_removes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "db.duckdb.pages"
    for k in range(3):
        _write(folder, [(f"a{k}", b"<p>x</p>")])
    (folder / "00000000000000000001-1.parquet").write_bytes(b"not parquet")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(StoreError, match=r"cannot compact pages in .*db\.duckdb\.pages"):
        pages.compact(folder, set, at=4)
    assert sorted(p.name for p in folder.iterdir()) == before  # no temporary left, no input removed
