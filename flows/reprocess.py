"""Reprocess and retag stored articles without fetching anything.

`reprocess`: re-extract every article from its stored compressed HTML (articles without HTML keep their
stored text), re-detect the language, re-tag with the current topics, then rebuild the derived state
(topic matches, signatures, stories, development events) by replaying the articles in the order they
were first seen, in batches. Deterministic: the same database and config give the same stories and
developments every time. It queues no alerts (analysts were told when the articles arrived).

`retag`: re-evaluate the current topics on stored `ok` articles, replace `article_topics`, and record
every topic added to or removed from an article in `retag_log`.

All reading and writing goes through Store verbs; this module only wires the stages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.ingest import detect_novelty, quoted
from monitor import pages
from monitor.config import Settings, load_settings
from monitor.extract import ExtractInput, build_article, extract_batch, extraction_pool
from monitor.models import Article, FetchResult, Link, TopicMatch
from monitor.store import STORED_ARTICLE_COLS, Store, open_store
from monitor.topics import TopicSet


def _run_id(kind: str) -> str:
    return f"{kind}-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


# ---- reading ------------------------------------------------------------------------------------


def _as_article(row: dict[str, Any]) -> Article:
    return Article(**{k: row[k] for k in STORED_ARTICLE_COLS if k != "first_seen"})


def _page_input(row: dict[str, Any]) -> ExtractInput | None:
    """The stored page as extraction input; a compressed page stays compressed (the worker unpacks it)."""
    if row["html"] is None:
        return None
    return ExtractInput(row["url"], bytes(row["html"]), "text/html", row["feed_title"], row["feed_summary"],
                        row["feed_published"], compressed=row["codec"] == pages.CODEC)


# ---- stages -------------------------------------------------------------------------------------


@task(name="re-extract", cache_policy=NONE)
def re_extract(settings: Settings, rows: Sequence[dict[str, Any]], pool: Any) -> list[Article]:
    """Extract again from stored HTML; rows without HTML keep what was stored (language re-detected)."""
    todo = [(i, item) for i, r in enumerate(rows) if (item := _page_input(r)) is not None]
    inputs = [item for _, item in todo]
    outs = extract_batch(inputs, min_words=settings.monitor.extract.min_words,
                         timeout_s=settings.monitor.extract.timeout_s, pool=pool)
    by_i = {i: o for (i, _), o in zip(todo, outs, strict=True)}
    articles = []
    for i, r in enumerate(rows):
        if i not in by_i:
            art = _as_article(r)
            if art.status == "duplicate":
                art.status = "ok"  # duplicates are decided again below
            articles.append(art)
            continue
        link = Link(url=r["url"], source_id=r["source_id"], via="stored", title=r["feed_title"],
                    published=r["feed_published"], summary=r["feed_summary"])
        fetched = FetchResult(url=r["url"], final_url=r["final_url"] or r["url"], content=b"",
                              fetched_at=r["fetched_at"])
        art = build_article(link, fetched, by_i[i], keep_html=False)
        art.id = r["id"]
        articles.append(art)
    return articles


@task(name="re-detect", cache_policy=NONE)
def re_detect(settings: Settings, store: Store, run_id: str, articles: list[Article],
              matches: list[TopicMatch]) -> dict[str, int]:
    """Novelty exactly as ingest decides it, then overwrite the batch's derived state (no alerts)."""
    result = detect_novelty(settings, store, articles, matches)
    ok_ids = {a.id for a in articles if a.status == "ok"}
    with store.transaction():
        store.update_extracted(articles)
        store.write_topic_matches([m for m in matches if m.article_id in ok_ids])
        store.write_signatures(result.signatures)
        store.upsert_stories(result.stories)
        devs = store.write_developments(result.developments, run_id)
    return {"developments": devs, "tagged": len({m.article_id for m in matches if m.article_id in ok_ids})}


# ---- flows --------------------------------------------------------------------------------------


@flow(name="reprocess", log_prints=False)
def reprocess(config_dir: str) -> dict[str, Any]:
    """Re-extract, re-detect language, re-tag and rebuild stories/developments from stored HTML."""
    settings = load_settings(config_dir)
    topics = TopicSet.compile(settings.topics)
    run_id = _run_id("reprocess")
    stats: dict[str, Any] = {"run_id": run_id, "articles": 0, "reextracted": 0, "statuses": {},
                             "tagged": 0, "developments": 0, "database": str(settings.db_path)}
    with open_store(settings.db_path) as store:
        store.start_run(run_id)
        rows = store.stored_articles()
        store.reset_derived()
        with extraction_pool(settings.monitor.extract.workers if rows else 0) as pool:
            for batch in _chunks(rows, settings.monitor.fetch.batch_size):
                articles = re_extract(quoted(settings), quoted(batch), pool)
                matches = topics.tag_many((a.id, a.title, a.text, a.lang) for a in articles if a.status == "ok")
                counts = re_detect(quoted(settings), store, run_id, quoted(articles), quoted(matches))
                stats["articles"] += len(articles)
                stats["reextracted"] += sum(r["html"] is not None for r in batch)
                stats["tagged"] += counts["tagged"]
                stats["developments"] += counts["developments"]
                for a in articles:
                    stats["statuses"][a.status] = stats["statuses"].get(a.status, 0) + 1
        store.finish_run(run_id, "ok", stats)
    return stats


@flow(name="retag", log_prints=False)
def retag(config_dir: str) -> dict[str, Any]:
    """Re-evaluate the current topics on stored articles; log every topic added or removed."""
    settings = load_settings(config_dir)
    topics = TopicSet.compile(settings.topics)
    run_id = _run_id("retag")
    with open_store(settings.db_path) as store:
        store.start_run(run_id)
        rows = store.taggable_articles()
        before = store.topic_scores()
        matches = topics.tag_many(rows)
        after = {(m.article_id, m.topic): m.score for m in matches}
        log = ([(*k, "added", after[k]) for k in sorted(after.keys() - before.keys())]
               + [(*k, "removed", before[k]) for k in sorted(before.keys() - after.keys())])
        store.replace_topic_matches(matches, run_id, log)
        stats = {"run_id": run_id, "articles": len(rows), "matches": len(matches),
                 "added": sum(x[2] == "added" for x in log),
                 "removed": sum(x[2] == "removed" for x in log), "database": str(settings.db_path)}
        store.finish_run(run_id, "ok", stats)
    return stats
