"""The page archive: pages outside DuckDB, durable before the commit, newest row wins, errors named."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor import pages
from monitor.errors import StoreError
from monitor.extract import compress_html, decompress_html
from monitor.models import Article
from monitor.store import open_store


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


def test_a_rolled_back_batch_leaves_a_file_that_is_never_read_for_the_stored_article(tmp_path: Path) -> None:
    db = tmp_path / "monitor.duckdb"
    with open_store(db) as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.write_articles([_article(1, b"<p>first fetch</p>")], "r1", store_html=True)
            raise RuntimeError("the batch fails after its pages were written")
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
