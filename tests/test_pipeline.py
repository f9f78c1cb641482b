"""The spine end to end: the real flow over the demo site on 127.0.0.1, a real DuckDB file."""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest
from flows.ingest import ingest

from monitor.demo.servers import SiteServer, WebhookReceiver

pytestmark = pytest.mark.usefixtures("prefect_harness")

PEACE = "ukraine-peace-talks"


def _db(cfg: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(cfg.parent.parent / "demo.duckdb"), read_only=True)


def _rows(cfg: Path, sql: str) -> list[tuple]:
    con = _db(cfg)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_full_cycle_over_demo_site(demo_config: Path, webhook: WebhookReceiver) -> None:
    stats = ingest(str(demo_config))

    # 24 article pages linked from 7 source documents; the kyiv-observer English copy is a duplicate
    assert stats["statuses"] == {"ok": 23, "duplicate": 1}
    assert sum(s["fetched"] for s in stats["sources"].values()) == 24  # counted though extraction drops the bytes
    assert _rows(demo_config, "SELECT count(*), count(DISTINCT url) FROM articles") == [(24, 24)]
    dup = _rows(demo_config, "SELECT url, duplicate_of IS NOT NULL FROM articles WHERE status = 'duplicate'")
    assert dup == [(dup[0][0], True)] and "/kyiv-observer/en/" in dup[0][0]
    # every article ends with exactly one status and every ok article has a language
    assert _rows(demo_config, "SELECT count(*) FROM articles WHERE status = 'ok' AND lang IS NULL") == [(0,)]

    # the section page contributes the two articles that the Europa Heute feed omits
    assert stats["sources"]["europa-heute-politik"]["new"] == 2

    # peace talks: 13 ok articles tagged (the 14th is the duplicate), none of the 10 negatives
    tagged = _rows(demo_config, f"SELECT count(*) FROM article_topics WHERE topic = '{PEACE}'")
    assert tagged == [(13,)]
    negatives = _rows(demo_config, f"""
        SELECT a.url FROM article_topics t JOIN articles a ON a.id = t.article_id
        WHERE t.topic = '{PEACE}' AND (a.url LIKE '%gaza%' OR a.url LIKE '%sudan%' OR a.url LIKE '%ternop%'
              OR a.url LIKE '%pokrowsk%' OR a.url LIKE '%armenien%' OR a.url LIKE '%derbi%'
              OR a.url LIKE '%ezb%' OR a.url LIKE '%festival%')""")
    assert negatives == []

    # three developments of the peace-talks story: the wire original, then the Geneva and Abu Dhabi news
    devs = _rows(demo_config, f"SELECT kind, url FROM developments WHERE topic = '{PEACE}' ORDER BY first_seen")
    assert [d[0] for d in devs] == ["new_story", "update", "update"]
    assert devs[0][1].endswith("globalwire/news/us-russia-secret-28-point-plan.html")
    assert "genfer" in devs[1][1] or "geneva" in devs[1][1]
    assert "abu-dhabi" in devs[2][1] or "abu-dabi" in devs[2][1]

    # the seed (an Indonesian translation of the wire story) joins that story and is not flagged
    seed = _rows(demo_config, """
        SELECT a.story_id = o.story_id, a.id IN (SELECT article_id FROM development_events)
        FROM articles a, articles o
        WHERE a.url LIKE '%rencana-perdamaian-28-poin%' AND o.url LIKE '%globalwire/news/us-russia%'""")
    assert seed == [(True, False)]

    # one alert per peace-talks development reached the Slack-like receiver, in Slack's shape
    assert len(webhook.received) == 3
    assert all("blocks" in m["body"] and m["body"]["text"] for m in webhook.received)
    assert _rows(demo_config, "SELECT state, count(*) FROM alerts GROUP BY state") == [("sent", 3)]
    assert Path(stats["dashboard"]).read_text().count("<section") >= 4


def test_second_run_adds_nothing(demo_config: Path, webhook: WebhookReceiver) -> None:
    ingest(str(demo_config))
    before = _rows(demo_config, """SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM article_topics),
        (SELECT count(*) FROM development_events), (SELECT count(*) FROM alerts), (SELECT count(*) FROM stories)""")
    stats = ingest(str(demo_config))
    after = _rows(demo_config, """SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM article_topics),
        (SELECT count(*) FROM development_events), (SELECT count(*) FROM alerts), (SELECT count(*) FROM stories)""")
    assert after == before
    assert stats["developments"] == 0 and stats["alerts_sent"] == 0 and stats["statuses"] == {}
    assert len(webhook.received) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_source_down_others_stored(demo_config: Path) -> None:
    dead = _free_port()  # nothing listens there: connection refused
    sources = demo_config / "sources.toml"
    sources.write_text(sources.read_text() + f'''
[[sources]]
id = "dead-outlet"
url = "http://127.0.0.1:{dead}/feed.xml"
kind = "rss"
''')
    stats = ingest(str(demo_config))
    assert stats["statuses"]["ok"] == 23
    assert "cannot connect" in (stats["sources"]["dead-outlet"]["error"] or "")
    health = _rows(demo_config, "SELECT consecutive_failures, last_error FROM source_health WHERE id = 'dead-outlet'")
    assert health[0][0] == 1 and "cannot connect" in health[0][1]
    ok = _rows(demo_config, "SELECT consecutive_failures FROM source_health WHERE id = 'globalwire'")
    assert ok == [(0,)]


def test_webhook_down_keeps_alerts_pending_then_sends(demo_config: Path, webhook: WebhookReceiver) -> None:
    webhook.fail_next(1, status=503)  # the channel is skipped for the rest of the run after this
    stats = ingest(str(demo_config))
    assert stats["alerts_sent"] == 0 and stats["alerts_pending"] == 3
    con = duckdb.connect(str(demo_config.parent.parent / "demo.duckdb"))
    con.execute("UPDATE alerts SET next_attempt_at = now()")  # do not wait for the backoff
    con.close()
    stats = ingest(str(demo_config))
    assert stats["alerts_sent"] == 3
    assert len(webhook.received) == 3


def test_run_killed_earlier_is_marked_interrupted(demo_config: Path) -> None:
    ingest(str(demo_config))
    con = duckdb.connect(str(demo_config.parent.parent / "demo.duckdb"))
    con.execute("INSERT INTO runs (id, started_at, status) VALUES ('killed-run', now(), 'running')")
    con.close()
    ingest(str(demo_config))
    statuses = dict(_rows(demo_config, "SELECT id, status FROM runs"))
    assert statuses["killed-run"] == "interrupted"
    assert sorted(v for k, v in statuses.items() if k != "killed-run") == ["ok", "ok"]


def test_extraction_drops_page_bytes_once_articles_are_built(demo_config: Path, demo_site: SiteServer) -> None:
    """A batch's pages leave memory when its articles are built (each keeps its compressed HTML), not
    when the batch is stored; the run still counts every page as fetched."""
    from flows.ingest import extract_and_tag, fetch_batch

    from monitor.config import load_settings
    from monitor.models import Link
    from monitor.topics import TopicSet

    settings = load_settings(str(demo_config))
    links = [Link(url=f"{demo_site.url}/{path}", source_id="demo", via="article") for path in (
        "globalwire/news/us-russia-secret-28-point-plan.html", "nusantara/berita/rencana-perdamaian-28-poin.html")]
    fetched = fetch_batch.fn(settings, links)
    assert [f.ok for f in fetched] == [True, True]
    arts, matches = extract_and_tag.fn(settings, TopicSet.compile(settings.topics), links, fetched, None)
    assert [f.content for f in fetched] == [None, None]
    assert [a.status for a in arts] == ["ok", "ok"] and all(a.html and a.text for a in arts)
    assert PEACE in {m.topic for m in matches}  # tagging ran on the texts


def test_a_run_that_recycles_its_store_and_compacts_its_pages_loses_nothing(
        demo_config: Path, webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow reopens its store every RECYCLE_EVERY articles (memory, store.recycle); what comes after
    (later batches, alerts, the dashboard, the snapshot) runs on the new connection. At its end it
    merges the page archive's small files (pages.compact); every stored page still reads back."""
    import flows.ingest

    from monitor import pages
    from monitor.store import Store, open_store

    recycled: list[int] = []
    real = Store.recycle

    def counting(store: Store) -> None:
        recycled.append(1)
        real(store)

    monkeypatch.setattr(flows.ingest, "RECYCLE_EVERY", 1)
    monkeypatch.setattr(Store, "recycle", counting)
    toml = demo_config / "monitor.toml"  # batches of 12: reopened after the first
    toml.write_text(toml.read_text().replace("[fetch]\n", "[fetch]\nbatch_size = 12\n", 1))
    monkeypatch.setattr(pages, "COMPACT_AT", 1)
    stats = ingest(str(demo_config))
    assert len(recycled) == 1  # after the first of two batches, not after the last
    assert stats["statuses"] == {"ok": 23, "duplicate": 1} and stats["developments"] == 6  # 3 of them peace talks
    assert stats["alerts_sent"] == 3 and len(webhook.received) == 3 and stats["snapshot"]
    assert stats["pages_compacted"] == 2  # the two batches' files, merged into one
    db = demo_config.parent.parent / "demo.duckdb"
    assert [p.name.endswith("-c.parquet") for p in pages.archive_dir(db).glob("*.parquet")] == [True]
    with open_store(db) as store:
        stored = store.stored_articles()
    assert len(stored) == 24 and all(r["html"] for r in stored)


def test_a_page_archive_that_cannot_be_compacted_does_not_fail_the_run(demo_config: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor import pages

    db = demo_config.parent.parent / "demo.duckdb"
    damaged = pages.archive_dir(db) / "00000000000000000001-1.parquet"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"a file damaged on disk")
    monkeypatch.setattr(pages, "COMPACT_AT", 1)
    stats = ingest(str(demo_config))
    assert stats["statuses"] == {"ok": 23, "duplicate": 1} and stats["pages_compacted"] == 0
    assert damaged.exists() and len(list(damaged.parent.glob("*.parquet"))) == 2  # nothing merged or lost
