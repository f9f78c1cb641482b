"""`monitor reprocess` and `monitor retag` over a real ingested demo database (no fetching)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from flows.ingest import ingest
from flows.reprocess import reprocess, retag

from monitor.demo.servers import SiteServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

PEACE = "ukraine-peace-talks"


def _rows(cfg: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(cfg.parent.parent / "demo.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _exec(cfg: Path, sql: str) -> None:
    con = duckdb.connect(str(cfg.parent.parent / "demo.duckdb"))
    try:
        con.execute(sql)
    finally:
        con.close()


STORIES = "SELECT id, first_article_id, topics, facts FROM stories ORDER BY id"
DEVS = "SELECT id, kind, story_id, topic, article_id, what_is_new::VARCHAR FROM development_events ORDER BY id"
ARTICLES = "SELECT id, status, story_id, duplicate_of, lang, content_hash, extractor FROM articles ORDER BY id"


def test_reprocess_rebuilds_from_stored_html_deterministically(demo_config: Path, demo_site: SiteServer) -> None:
    ingest(str(demo_config))
    ingested_devs = _rows(demo_config, "SELECT kind, topic, article_id FROM development_events ORDER BY id")
    # damage what reprocess must rebuild: the stored text and language of every article
    _exec(demo_config, "UPDATE articles SET text = 'x', lang = 'zz', lang_confidence = NULL")
    requests_before = len(demo_site.requests)

    first = reprocess(str(demo_config))
    assert len(demo_site.requests) == requests_before  # nothing fetched
    assert first["articles"] == 24 and first["reextracted"] == 24
    assert first["statuses"] == {"ok": 23, "duplicate": 1}
    assert _rows(demo_config, "SELECT count(*) FROM articles WHERE text = 'x' OR lang = 'zz'") == [(0,)]
    assert _rows(demo_config, "SELECT count(*) FROM articles WHERE status = 'ok' AND lang_confidence IS NULL") \
        == [(0,)]
    assert _rows(demo_config, f"SELECT count(*) FROM article_topics WHERE topic = '{PEACE}'") == [(13,)]
    stories, devs, arts = (_rows(demo_config, STORIES), _rows(demo_config, DEVS), _rows(demo_config, ARTICLES))
    assert devs and stories
    # the replay finds the same developments the live run found
    assert _rows(demo_config, "SELECT kind, topic, article_id FROM development_events ORDER BY id") == ingested_devs

    second = reprocess(str(demo_config))
    assert second["statuses"] == first["statuses"]
    assert _rows(demo_config, STORIES) == stories
    assert _rows(demo_config, DEVS) == devs
    assert _rows(demo_config, ARTICLES) == arts
    # the analyst views still work after a rebuild
    assert len(_rows(demo_config, "SELECT * FROM developments")) == len(devs)
    assert _rows(demo_config, "SELECT count(*) FROM story_timeline")[0][0] > 0


def test_retag_logs_added_and_removed_topics(demo_config: Path) -> None:
    ingest(str(demo_config))
    before = _rows(demo_config, f"SELECT article_id FROM article_topics WHERE topic = '{PEACE}' ORDER BY 1")
    all_before = _rows(demo_config, "SELECT count(*) FROM article_topics")[0][0]
    assert before

    unchanged = retag(str(demo_config))
    assert (unchanged["added"], unchanged["removed"]) == (0, 0)
    assert _rows(demo_config, "SELECT count(*) FROM retag_log") == [(0,)]

    topics = demo_config.parent / "topics.toml"
    # the alert channel names the peace topic: keep it, with a query that no longer matches anything
    topics.write_text(f'[[topics]]\nid = "{PEACE}"\nname = "Peace"\nquery = "zzqqxx"\n\n'
                      '[[topics]]\nid = "geneva"\nname = "Geneva"\nquery = "Geneva OR Genf OR Genève"\n',
                      encoding="utf-8")
    changed = retag(str(demo_config))
    geneva = _rows(demo_config, "SELECT article_id FROM article_topics WHERE topic = 'geneva' ORDER BY 1")
    assert geneva
    assert _rows(demo_config, f"SELECT count(*) FROM article_topics WHERE topic = '{PEACE}'") == [(0,)]
    removed = _rows(demo_config, "SELECT article_id FROM retag_log WHERE change = 'removed' "
                                 f"AND topic = '{PEACE}' ORDER BY 1")
    added = _rows(demo_config, "SELECT article_id FROM retag_log WHERE change = 'added' AND topic = 'geneva' "
                               "ORDER BY 1")
    assert removed == before and added == geneva
    # every earlier match is gone (the other default topics too), every geneva match is new
    assert (changed["added"], changed["removed"]) == (len(geneva), all_before)
    assert _rows(demo_config, "SELECT count(*) FROM retag_log WHERE change = 'removed'") == [(all_before,)]
    assert _rows(demo_config, "SELECT count(DISTINCT run_id) FROM retag_log") == [(1,)]
