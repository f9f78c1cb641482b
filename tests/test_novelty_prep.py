"""Novelty preparation done in the extraction workers equals `novelty.prepare` in the flow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from flows.ingest import _novelty_prepared

from monitor import novelty
from monitor.extract import NOVELTY_PREP, ExtractInput, build_article, extract_batch, extraction_pool
from monitor.models import Article, FetchResult, Link

SITE = Path(__file__).resolve().parents[1] / "src" / "monitor" / "demo" / "site"


def _articles(with_novelty: bool) -> list[Article]:
    pages = sorted(p for p in SITE.rglob("*.html") if p.name != "index.html")
    assert len(pages) >= 10, "the demo site has article pages"
    t0 = datetime(2025, 11, 20, tzinfo=UTC)
    links = [Link(url=p.as_uri(), source_id="demo", via="feed", published=t0 + timedelta(hours=i % 5))
             for i, p in enumerate(pages)]
    fetched = [FetchResult(url=ln.url, final_url=ln.url, status_code=200, content=p.read_bytes(),
                           content_type="text/html", fetched_at=t0) for ln, p in zip(links, pages, strict=True)]
    items = [ExtractInput(ln.url, f.content or b"", f.content_type, feed_published=ln.published)
             for ln, f in zip(links, fetched, strict=True)]
    with extraction_pool(2) as pool:
        outs = extract_batch(items, pool=pool, with_novelty=with_novelty)
    return [build_article(ln, f, o, keep_html=False) for ln, f, o in zip(links, fetched, outs, strict=True)]


def _same(got: list[novelty.Prepared], want: list[novelty.Prepared]) -> None:
    assert [p.item.article.id for p in got] == [p.item.article.id for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.at == w.at
        assert g.facts == w.facts
        assert np.array_equal(g.minhash, w.minhash)


def test_worker_prepared_equals_flow_prepared() -> None:
    arts = _articles(with_novelty=True)
    oks = [a for a in arts if a.status == "ok"]
    assert len(oks) >= 10 and all(NOVELTY_PREP in a.extra for a in oks)
    assert all(NOVELTY_PREP not in a.extra for a in arts if a.status != "ok")
    items = [novelty.NoveltyItem(a, []) for a in arts]
    # one article changed after extraction (its title): it must be prepared again, not reused
    oks[0].title = "A different title with Someone Else in Brussels"
    # one turned out a duplicate: not prepared at all
    oks[1].status = "duplicate"
    want = novelty.prepare(items)
    got = _novelty_prepared(items)
    _same(got, want)
    assert all(NOVELTY_PREP not in a.extra for a in arts)  # popped: not carried into the store


def test_without_worker_preparation_the_flow_prepares() -> None:
    arts = _articles(with_novelty=False)
    assert all(NOVELTY_PREP not in a.extra for a in arts)
    items = [novelty.NoveltyItem(a, []) for a in arts]
    _same(_novelty_prepared(items), novelty.prepare(items))
