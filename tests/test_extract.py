"""Extraction through the real fetch path: encodings without charset, fallbacks, time limit, dates, language."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from monitor.config import FetchConfig
from monitor.demo.servers import BackgroundServer
from monitor.extract import (
    ExtractInput,
    ExtractionPool,
    ExtractOutput,
    build_article,
    compress_html,
    count_words,
    decompress_html,
    detect_language,
    extract_batch,
    extract_one,
    extraction_pool,
    pack_fetched,
    plausible_date,
)
from monitor.fetch import Fetcher, FetchRequest
from monitor.models import FetchResult, Link

RU_PARAS = [
    "Переговоры в Женеве продолжились в понедельник: делегации обсуждали мирный план из девятнадцати "
    f"пунктов, сообщил источник {i}, знакомый с ходом встречи, и добавил, что стороны ещё не договорились."
    for i in range(6)
]
JA_PARAS = [
    f"ジュネーブでの和平交渉は月曜日も続き、代表団は十九項目の計画について協議したと関係者{i}が語った。"
    "双方はまだ合意に至っていないという。"
    for i in range(6)
]
EN_BODY = (
    "Negotiators met again in Geneva on Monday to discuss the nineteen point peace plan. "
    "Officials said the talks were constructive but that no agreement had been reached yet, and "
    "that further meetings were planned for the coming week in Abu Dhabi and in Moscow."
)


def _page(title: str, paras: list[str], head: str = "", lang: str | None = None) -> str:
    body = "".join(f"<p>{p}</p>" for p in paras)
    lang_attr = f' lang="{lang}"' if lang else ""
    return (f"<!DOCTYPE html><html{lang_attr}><head><title>{title}</title>{head}</head>"
            f"<body><nav><a href='/'>Home</a></nav><article><h1>{title}</h1>{body}</article>"
            "<footer>Example News</footer></body></html>")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        body = self.server.owner.pages.get(self.path)  # type: ignore[attr-defined]
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html")  # never a charset
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


class _Pages(BackgroundServer):
    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages
        super().__init__(_Handler)


def _fetch(pages: dict[str, bytes]) -> tuple[str, list[FetchResult]]:
    cfg = FetchConfig(allow_private=["127.0.0.1"], min_delay_s=0, respect_robots=False, retries=0)

    async def run(base: str) -> list[FetchResult]:
        async with Fetcher(cfg) as f:
            return await f.fetch_many([FetchRequest(base + p) for p in pages])

    with _Pages(pages) as srv:
        return srv.url, asyncio.run(run(srv.url))


@pytest.fixture(scope="module")
def pool() -> Iterator[ExtractionPool | None]:
    with extraction_pool(2) as p:
        yield p


def _through_server(pages: dict[str, bytes], pool: ExtractionPool | None,
                    **kw: Any) -> list[ExtractOutput]:
    base, fetched = _fetch(pages)
    assert all(r.ok for r in fetched), [r.error for r in fetched]
    assert all("charset" not in (r.content_type or "") for r in fetched)
    items = [ExtractInput(base + path, r.content or b"", r.content_type, **kw)
             for path, r in zip(pages, fetched, strict=True)]
    return extract_batch(items, pool=pool)


def test_windows_1251_and_shift_jis_without_charset(pool: ExtractionPool | None) -> None:
    pages = {
        "/ru.html": _page("Переговоры в Женеве", RU_PARAS).encode("cp1251"),
        "/ja.html": _page("ジュネーブ和平交渉", JA_PARAS).encode("shift_jis"),
    }
    ru, ja = _through_server(pages, pool)
    assert ru.status == "ok", ru.status_reason
    assert "Переговоры в Женеве продолжились" in (ru.text or "")
    assert ru.title == "Переговоры в Женеве"
    assert ru.lang == "ru" and (ru.lang_confidence or 0) > 0.9
    assert ja.status == "ok", ja.status_reason  # no spaces in Japanese: word count must not say too_short
    assert "ジュネーブでの和平交渉は月曜日も続き" in (ja.text or "")
    assert ja.lang == "ja" and (ja.lang_confidence or 0) > 0.9


def test_main_text_only_in_json_ld(pool: ExtractionPool | None) -> None:
    body = " ".join([EN_BODY] * 3)
    ld = json.dumps({"@context": "https://schema.org", "@graph": [
        {"@type": "WebSite", "name": "Example"},
        {"@type": "NewsArticle", "headline": "Geneva talks", "articleBody": body}]})
    html = ("<html><head><title>Geneva talks</title>"
            f'<script type="application/ld+json">{ld}</script></head>'
            "<body><div id='app'></div><script>render()</script></body></html>")
    teaser = html.replace("<div id='app'></div>",
                          "<article><h1>Geneva talks</h1><p>Talks resumed in Geneva on Monday, officials "
                          "said. Read the full story in our app.</p></article>")
    empty, short = _through_server({"/ld.html": html.encode(), "/teaser.html": teaser.encode()}, pool)
    # an empty body: trafilatura's own baseline may already read JSON-LD; either way the body is the text
    assert empty.status == "ok" and empty.text == body
    assert empty.extractor in ("json-ld", "trafilatura-balanced")
    # a teaser in the HTML: trafilatura returns it, the JSON-LD articleBody is the article
    assert short.status == "ok"
    assert short.extractor == "json-ld"
    assert short.text == body
    assert short.lang == "en"


def test_og_description_then_feed_summary(pool: ExtractionPool | None) -> None:
    desc = "Short teaser about the Geneva talks and the peace plan."
    html = f'<html><head><meta property="og:description" content="{desc}"></head><body></body></html>'
    (og,) = _through_server({"/og.html": html.encode()}, pool)
    assert og.extractor == "og:description" and og.text == desc
    assert og.status == "too_short"
    (feed,) = _through_server({"/empty-body.html": b"<html><body></body></html>"}, pool,
                              feed_summary=EN_BODY)
    assert feed.extractor == "feed-summary" and feed.text == EN_BODY


def test_empty_page_is_not_an_article(pool: ExtractionPool | None) -> None:
    empty, blank = _through_server({"/empty.html": b"", "/blank.html": b"<html><body> </body></html>"}, pool)
    for out in (empty, blank):
        assert out.status == "not_article"
        assert out.status_reason == "no main text found"
        assert out.text is None and out.extractor is None


def test_time_limit_fails_one_document_not_the_batch() -> None:
    # ~3 s of extraction here: 30,000 classed blocks, each tested by trafilatura's XPaths
    huge = ("<html><body><article>"
            + "".join(f'<div class="c{i % 7}"><p>Paragraph {i} of a page that takes the parser a long time.</p></div>'
                      for i in range(30_000))
            + "</article></body></html>").encode()
    ok_page = _page("Geneva talks", [EN_BODY, EN_BODY + " More."]).encode()
    items = [ExtractInput("http://example.org/slow", huge, "text/html"),
             ExtractInput("http://example.org/ok", ok_page, "text/html")]
    with extraction_pool(1) as pool:
        slow, ok = extract_batch(items, timeout_s=0.05, pool=pool)
        # the worker survives the timeout and keeps working
        (again,) = extract_batch(items[1:], timeout_s=30, pool=pool)
    assert slow.status == "failed"
    assert slow.status_reason is not None and "exceeded" in slow.status_reason
    assert ok.status in ("ok", "failed")  # may share the tiny limit; what matters is it came back
    assert again.status == "ok" and "Geneva" in (again.text or "")


def test_pages_travel_in_tasks_of_several_in_order_and_a_slow_one_fails_alone() -> None:
    """extract_batch sends several pages per pool task (pages_per_task); outputs keep the batch's
    order, and a page over its time limit fails alone, not the task it travelled in."""
    from monitor.extract import pages_per_task

    # 20,000 distinct paragraphs: ~1.3 s of extraction, warm or cold
    slow_page = ("<html><body><article>" + "".join(f"<p>Paragraph {i} of a long page: {i * 7919 % 10007}.</p>"
                                                   for i in range(20_000)) + "</article></body></html>").encode()
    pages = [_page(f"Talks day {i}", [EN_BODY, f"Day {i} of the talks in Geneva ended."]).encode() for i in range(40)]
    items = [ExtractInput(f"http://example.org/{i}", p, "text/html") for i, p in enumerate(pages)]
    items.insert(21, ExtractInput("http://example.org/slow", slow_page, "text/html"))
    assert pages_per_task(len(items)) == 5 and pages_per_task(3) == 1
    with extraction_pool(2) as pool:
        outs = extract_batch(items, timeout_s=0.5, pool=pool)
    assert [o.url for o in outs] == [i.url for i in items]
    slow = outs.pop(21)
    assert slow.status == "failed" and "exceeded 0.5s" in (slow.status_reason or "")
    assert all(o.status == "ok" for o in outs)
    assert [o.title for o in outs] == [f"Talks day {i}" for i in range(40)]


def test_time_limit_is_not_swallowed_by_trafilatura() -> None:
    """The alarm fires inside trafilatura, which catches `Exception` around many steps: the limit
    must still end the page as 'exceeded'. While ExtractionTimeout was an Exception, a script running
    these pages got "extraction error: TypeError: 'NoneType' ..." 3 times in 3; where the alarm lands
    depends on timing, and under pytest it lands outside those steps, so this test guards the
    reason, not every place the alarm can land."""
    # 20,000 flat paragraphs, then deep nesting: over a second of extraction, warm or cold
    nested = ("<html><body>"
              + "".join(f"<p>Paragraph {i} of a long page: {i * 7919 % 10007}.</p>" for i in range(20_000))
              + "".join(f"<div><p>Paragraph {i} of a page that takes the parser a long time.</p>"
                        for i in range(60_000)) + "</div>" * 60_000 + "</body></html>").encode()
    with extraction_pool(1) as pool:
        outs = [extract_batch([ExtractInput(f"http://example.org/nested{k}", nested + b" " * k, "text/html")],
                              timeout_s=0.05, pool=pool)[0] for k in range(3)]
    assert [o.status_reason for o in outs] == ["extraction exceeded 0.05s"] * 3


def test_a_killed_worker_loses_no_page_and_the_pool_goes_on() -> None:
    """A worker killed mid-batch (as the kernel's OOM killer would) breaks its process pool: every
    page still gets its own outcome, the pool is restarted, and the next batch is extracted, also
    after the workers are killed while idle."""
    import os
    import signal
    import threading

    pages = [_page(f"Talks day {i}", [EN_BODY, f"Day {i} of the talks in Geneva ended."] * 20).encode()
             for i in range(240)]
    items = [ExtractInput(f"http://example.org/{i}", p, "text/html") for i, p in enumerate(pages)]
    killed: list[int] = []
    tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return int(fh.read().rsplit(")", 1)[1].split()[11]) / tick  # utime
        except OSError:
            return 0.0

    def kill_a_worker(pool: ExtractionPool) -> None:
        # once a worker has done some of the batch's pages, while most are still to do: with 120 pages
        # and 0.3 s of CPU, a fast machine once finished the batch before the kill (no restart seen)
        for _ in range(500):
            busy = [pid for pid in pool.worker_pids() if cpu_s(pid) > 0.1]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            threading.Event().wait(0.01)

    with extraction_pool(2) as pool:
        assert pool is not None
        killer = threading.Thread(target=kill_a_worker, args=(pool,))
        killer.start()
        outs = extract_batch(items, pool=pool)
        killer.join()
        restarts_in_batch = pool.restarts
        idle = pool.worker_pids()
        for pid in idle:  # killed between batches, as the OOM killer may pick an idle worker
            os.kill(pid, signal.SIGKILL)
        threading.Event().wait(0.5)
        (after,) = extract_batch(items[:1], pool=pool)
        restarts = pool.restarts
    assert killed, "no worker was found to kill"
    assert restarts_in_batch == 1 and idle and restarts == 2
    assert [o.url for o in outs] == [i.url for i in items]
    assert all(o.status == "ok" for o in outs), [o.status_reason for o in outs if o.status != "ok"]
    assert after.status == "ok"


def test_worn_workers_are_renewed_between_batches_and_lose_no_page() -> None:
    """After `renew_after` pages the pool forks fresh workers, but only once the tasks already given
    to the old ones are done: with batches pipelined from two threads, as the flow runs them, every
    page comes back ok, in order, the same as extracted in this process."""
    from concurrent.futures import ThreadPoolExecutor

    pages = [_page(f"Talks day {i}", [EN_BODY, f"Day {i} of the talks in Geneva ended."] * 10).encode()
             for i in range(96)]
    items = [ExtractInput(f"http://example.org/{i}", p, "text/html") for i, p in enumerate(pages)]
    batches = [items[i:i + 16] for i in range(0, len(items), 16)]
    with extraction_pool(2) as pool, ThreadPoolExecutor(2) as threads:
        assert pool is not None
        pool.renew_after = 20
        seen: set[int] = set()
        outs: list[ExtractOutput] = []
        pending = [threads.submit(extract_batch, batches[0], pool=pool)]
        for batch in batches[1:]:
            pending.append(threads.submit(extract_batch, batch, pool=pool))  # two batches in the pool
            outs.extend(pending.pop(0).result())
            seen.update(pool.worker_pids())
        outs.extend(pending.pop(0).result())
        seen.update(pool.worker_pids())
        renewals, restarts = pool.renewals, pool.restarts
    assert renewals >= 2 and len(seen) > 2  # new worker processes, not the first two again
    assert restarts == 0  # no task was cut short (a broken pool would have been restarted)
    assert [o.url for o in outs] == [i.url for i in items]
    assert outs == extract_batch(items, pool=None)


MAIN_SCRIPT = """
import sys
from pathlib import Path

if __name__ == "__mp_main__":  # multiprocessing imports a parent's main module under this name
    Path(sys.argv[1]).write_text("a worker imported the parent's main module")
if __name__ == "__main__":
    from monitor.extract import ExtractInput, extract_batch, extraction_pool

    page = "<html><body><article>" + "<p>Negotiators met in Geneva on Monday.</p>" * 30 + "</article></body></html>"
    with extraction_pool(2) as pool:
        outs = extract_batch([ExtractInput(f"http://example.org/{i}", page.encode(), "text/html") for i in range(8)],
                             pool=pool)
    print(",".join(o.status for o in outs))
"""


def test_workers_do_not_import_the_parents_main_module(tmp_path: Any) -> None:
    """multiprocessing imports the parent's `__main__` in every process it starts; the extraction
    workers need nothing from it (the `monitor` command's would cost each 9 MB), so they skip it."""
    import subprocess
    import sys

    script, marker = tmp_path / "main.py", tmp_path / "imported"
    script.write_text(MAIN_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == ",".join(["ok"] * 8)
    assert not marker.exists()


def test_dates_future_and_ancient_rejected_with_reason() -> None:
    now = datetime(2025, 11, 30, tzinfo=UTC)
    assert plausible_date(datetime(1990, 5, 1, tzinfo=UTC), now) == (
        None, "date 1990-05-01 rejected: before 1995")
    future = now + timedelta(days=3)
    assert plausible_date(future, now)[1] == f"date {future.date()} rejected: in the future"
    assert plausible_date(now - timedelta(days=1), now) == (now - timedelta(days=1), None)

    page = _page("Geneva talks", [EN_BODY, EN_BODY]).encode()
    out = extract_one(ExtractInput("http://example.org/a", page, "text/html",
                                   feed_published=datetime(1980, 1, 1, tzinfo=UTC)), now=now)
    assert out.published is None
    assert "feed date 1980-01-01 rejected: before 1995" in out.notes
    feed_date = datetime(2025, 11, 29, 8, 30, tzinfo=UTC)
    out = extract_one(ExtractInput("http://example.org/b", page, "text/html", feed_published=feed_date),
                      now=now)
    assert out.published == feed_date  # the page has no date: the feed's is used


def test_page_date_beats_feed_date_and_future_page_date_falls_back() -> None:
    now = datetime(2025, 11, 30, tzinfo=UTC)
    head = '<meta property="article:published_time" content="2025-11-20T09:00:00+00:00">'
    page = _page("Geneva talks", [EN_BODY, EN_BODY], head=head).encode()
    feed_date = datetime(2025, 11, 29, tzinfo=UTC)
    out = extract_one(ExtractInput("http://example.org/c", page, "text/html", feed_published=feed_date), now=now)
    assert out.published is not None and out.published.date().isoformat() == "2025-11-20"
    # seen from a "now" before the page's date, the page date is in the future: rejected, feed used
    early = datetime(2025, 11, 10, tzinfo=UTC)
    out = extract_one(ExtractInput("http://example.org/c", page, "text/html",
                                   feed_published=datetime(2025, 11, 9, tzinfo=UTC)), now=early)
    if out.notes:  # htmldate may already drop it (its own max date is today)
        assert any("in the future" in n for n in out.notes)
    assert out.published == datetime(2025, 11, 9, tzinfo=UTC)


def test_language_detection_with_confidence() -> None:
    assert detect_language(EN_BODY) [0] == "en"
    lang, conf = detect_language("Die Gespräche in Genf wurden am Montag fortgesetzt, teilte ein Sprecher mit.")
    assert lang == "de" and conf is not None and 0.5 < conf <= 1.0
    # too little text: the page's lang attribute decides, without a confidence
    assert detect_language("Kyiv", hint="uk-UA") == ("uk", None)
    assert detect_language("", hint=None) == (None, None)


def test_lang_attribute_is_only_a_hint() -> None:
    page = _page("Geneva talks", [EN_BODY, EN_BODY], lang="fr").encode()
    out = extract_one(ExtractInput("http://example.org/d", page, "text/html"))
    assert out.lang == "en"


def test_word_count_handles_cjk() -> None:
    assert count_words("one two three") == 3
    assert count_words("和平交渉") == 2
    assert count_words("Kyiv 和平交渉 talks") == 4


def test_binary_and_non_html_are_not_articles() -> None:
    out = extract_one(ExtractInput("http://example.org/x.pdf", b"%PDF-1.7 ...", "application/pdf"))
    assert out.status == "not_article" and "application/pdf" in (out.status_reason or "")
    out = extract_one(ExtractInput("http://example.org/x", b"\x89PNG\r\n\x1a\n\x00\x00", "text/html"))
    assert out.status == "not_article"


def test_html_compression_round_trip() -> None:
    html = _page("Geneva talks", RU_PARAS).encode("cp1251")
    blob = compress_html(html)
    assert len(blob) < len(html)
    assert decompress_html(blob) == html


def test_pages_packed_after_fetch_extract_and_store_as_the_raw_bytes(pool: ExtractionPool | None) -> None:
    """The flow packs each fetched page (pack_fetched): the workers get the blob and unpack it, the
    store keeps that blob as it is; what is extracted and stored is what the raw bytes give."""
    pages = {"/ru.html": _page("Переговоры в Женеве", RU_PARAS).encode("cp1251"),
             "/en.html": _article_page(12), "/gone.html": b""}
    base, fetched = _fetch({k: v for k, v in pages.items() if v})
    gone = FetchResult(url=base + "/gone.html", final_url=base + "/gone.html", status_code=404, error="HTTP 404")
    raw = [r.content for r in fetched]
    packed = pack_fetched([*fetched, gone])
    assert [r.compressed for r in packed] == [True, True, False]
    assert [decompress_html(r.content or b"") for r in fetched] == raw
    assert sum(len(r.content or b"") for r in fetched) < sum(len(b or b"") for b in raw)
    blobs = [r.content for r in fetched]
    assert [r.content for r in pack_fetched(fetched)] == blobs  # packed once only

    def inputs(contents: list[bytes | None], compressed: bool) -> list[ExtractInput]:
        return [ExtractInput(r.url, c or b"", r.content_type, compressed=compressed)
                for r, c in zip(fetched, contents, strict=True)]
    from_raw = extract_batch(inputs(raw, False), pool=None)
    assert extract_batch(inputs(blobs, True), pool=pool) == from_raw
    assert extract_batch(inputs(blobs, True), pool=None) == from_raw
    assert [o.status for o in from_raw] == ["ok", "ok"]
    link = Link(url=fetched[0].url, source_id="s", via="feed", title="t")
    art = build_article(link, fetched[0], from_raw[0], keep_html=True)
    assert art.html is blobs[0] and decompress_html(art.html) == raw[0]
    broken = extract_one(ExtractInput(fetched[0].url, b"not zstd", "text/html", compressed=True))
    assert broken.status == "failed" and "could not be unpacked" in (broken.status_reason or "")


def test_compressed_page_holds_only_its_own_size() -> None:
    """The flow keeps two batches of compressed pages: each must not keep the compressor's whole buffer."""
    html = _article_page(400)
    tracemalloc.start()
    try:
        blob = compress_html(html)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(blob) * 4 < len(html)
    assert held < len(blob) + 1024, f"a {len(blob)}-byte blob holds {held} bytes"


def _article_page(paragraphs: int) -> bytes:
    body = "".join(f"<p>Paragraph {i}: delegations from both sides met in Geneva on Sunday to discuss the "
                   f"28-point plan, and officials said the talks would continue on Monday.</p>"
                   for i in range(paragraphs))
    return (f'<html lang="en"><head><title>Talks in Geneva</title><meta property="article:published_time" '
            f'content="2025-11-23T10:00:00Z"></head><body><nav><a href="/">Home</a></nav><article>'
            f"<h1>Talks in Geneva</h1>{body}</article><footer>Contact us</footer></body></html>").encode()


@pytest.mark.parametrize(("paragraphs", "passes"), [(12, 1), (3, 2)])
def test_full_cascade_only_for_a_short_fast_text(monkeypatch: pytest.MonkeyPatch, paragraphs: int,
                                                 passes: int) -> None:
    import trafilatura

    from monitor import extract

    calls: list[dict[str, Any]] = []
    calls_args: list[tuple[Any, ...]] = []
    real = trafilatura.bare_extraction

    def spy(*args: Any, **kwargs: Any) -> Any:  # the real function, its calls recorded
        calls.append(kwargs)
        calls_args.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(trafilatura, "bare_extraction", spy)
    out = extract_one(ExtractInput("https://example.org/news/geneva", _article_page(paragraphs), "text/html"))
    assert out.status == "ok" and out.title == "Talks in Geneva"
    assert out.published is not None and out.published.date().isoformat() == "2025-11-23"
    assert len(calls) == passes and calls[0]["fast"] is True
    long_enough = len(out.text or "") >= extract.FULL_CASCADE_BELOW
    assert long_enough == (passes == 1)
    assert all(c["with_metadata"] is False for c in calls)  # metadata is read once, by page_metadata
    assert all(not isinstance(a[0], bytes) for a in calls_args)  # the page is parsed once, not per pass
    if passes == 2:
        assert "fast" not in calls[1]


def test_page_metadata_equals_trafilaturas_for_the_fields_we_keep() -> None:
    """page_metadata skips trafilatura's categories, tags and licence; every other field must match
    `trafilatura.metadata.extract_metadata` (same options) on real evaluation pages."""
    import gzip
    from pathlib import Path

    from trafilatura.metadata import extract_metadata
    from trafilatura.settings import DEFAULT_CONFIG, set_date_params

    from monitor.extract import page_metadata, page_tree

    evaldata = Path(__file__).resolve().parents[2] / "shared" / "evaldata"
    files = sorted((evaldata / "scrapinghub-aeb" / "html").glob("*.html.gz"))[:60]
    files += sorted((evaldata / "trafilatura-eval" / "html").rglob("*.html.gz"))[:140]
    if not files:
        pytest.skip(f"no evaluation pages under {evaldata}")
    fields = ("title", "author", "url", "hostname", "sitename", "date", "description", "image", "pagetype")
    dates = set_date_params(DEFAULT_CONFIG.getboolean("DEFAULT", "EXTENSIVE_DATE_SEARCH"))
    differ, authors = [], 0
    for f in files:
        url = f"https://example.org/{f.name}"
        tree = page_tree(gzip.decompress(f.read_bytes()))
        ours, theirs = page_metadata(tree, url), extract_metadata(tree, url, dates)
        differ += [(f.name, k) for k in fields if getattr(ours, k) != getattr(theirs, k)]
        authors += bool(ours.author)
    assert not differ
    assert authors > 50  # the comparison saw real values, not only empty fields


def _eval_pages(limit: int | None = None) -> list[Any]:
    import gzip
    from pathlib import Path

    evaldata = Path(__file__).resolve().parents[2] / "shared" / "evaldata"
    files = sorted((evaldata / "scrapinghub-aeb" / "html").glob("*.html.gz"))
    files += sorted((evaldata / "trafilatura-eval" / "html").rglob("*.html.gz"))
    if not files:
        pytest.skip(f"no evaluation pages under {evaldata}")
    return [gzip.decompress(f.read_bytes()) for f in files[:limit]]


def test_byline_finds_trafilaturas_author_on_every_evaluation_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """byline.extract_author searches the page itself, and prunes a copy only when a match holds
    pruned content; both ways must give what trafilatura's extract_author gives, page by page."""
    from trafilatura.metadata import extract_author

    from monitor import byline
    from monitor.extract import page_tree

    copies = 0
    pruned = byline._pruned_author

    def counted(tree: Any) -> str | None:
        nonlocal copies
        copies += 1
        return pruned(tree)

    monkeypatch.setattr(byline, "_pruned_author", counted)
    differ, found, trees = [], 0, 0
    for i, page in enumerate(_eval_pages()):
        tree = page_tree(page)
        if tree is None:
            continue
        trees += 1
        ours, theirs = byline.extract_author(tree), extract_author(tree)
        differ += [(i, ours, theirs)] if ours != theirs else []
        found += theirs is not None
    assert not differ
    assert found > 400 and 0 < copies < trees / 10  # both ways were taken, the copy rarely


@pytest.mark.parametrize("body", [
    # a byline in the comments is pruned; the article's own is found
    '<div class="comments"><span class="author">A Commenter</span></div><p class="byline">By Jane Doe</p>',
    # a byline holding a <time>: the time is pruned, its tail joins the text before it
    '<p class="byline">By Jane Doe<time>5 May</time>, Reuters</p>',
    '<div class="author-name"><figure>x</figure>Sam Roe</div>',
    "<author>Ann Lee</author>",
    "<p><rel>me</rel>Bo Chan</p>",
    '<span class="byl">Kim Park</span>', '<div id="zuozhe">Li Wei Ming</div>',
    '<span itemprop="author name">Eva Berg</span>', '<a rel="author" href="/x">Tom Fox</a>',
    '<div data-component="Byline">Ida Holm</div>', '<span class="print">Noa Ziv</span>',
    '<div class="title"><span class="writer">Al Gore</span></div><em class="writer">Max Payne</em>',
    "<p>no byline here at all</p>",
])
def test_byline_edge_cases_match_trafilatura(body: str) -> None:
    from trafilatura.metadata import extract_author

    from monitor import byline
    from monitor.extract import page_tree

    tree = page_tree(f"<html><body><article>{body}<p>{'Text. ' * 40}</p></article></body></html>".encode())
    assert byline.extract_author(tree) == extract_author(tree)


def test_tuned_trafilatura_extracts_what_trafilatura_as_shipped_extracts(monkeypatch: pytest.MonkeyPatch) -> None:
    """page_tree tunes how trafilatura runs (monitor.extract.tune_trafilatura: lxml's C element-class
    lookup, plain strings into its regular-expression XPaths); every field extracted from real pages
    must equal what trafilatura as shipped extracts."""
    from lxml import html as lxml_html
    from trafilatura import xpaths

    from monitor import extract

    def outputs(pages: list[bytes]) -> list[str]:
        outs = []
        for i, page in enumerate(pages):
            out = extract.extract_one(extract.ExtractInput(f"https://example.org/{i}.html", page, "text/html"))
            outs.append(repr([getattr(out, k) for k in out.__slots__ if k != "novelty"]))
        return outs

    def form_class() -> type:
        tree = extract.page_tree(b"<html><body><form><input name='q'></form><p>x</p></body></html>")
        return type(tree.find(".//form"))

    pages = _eval_pages()[::6]
    extract.tune_trafilatura()
    assert form_class() is lxml_html.HtmlElement  # the C lookup is in use
    replaced = list(extract._REPLACED)
    assert len(replaced) == 20 and all(lst[i] is not xp for lst, i, xp in replaced)
    ours = outputs(pages)
    monkeypatch.setattr(extract, "TUNE_TRAFILATURA", False)
    extract.untune_trafilatura()
    try:
        assert form_class() is lxml_html.FormElement
        assert all(lst[i] is xp for lst, i, xp in replaced) and replaced[0][0] in vars(xpaths).values()
        theirs = outputs(pages)
    finally:
        extract.tune_trafilatura()
    assert sum(o != t for o, t in zip(ours, theirs, strict=True)) == 0
    assert len(ours) > 150


def test_guarded_regex_xpaths_select_what_trafilaturas_own_select() -> None:
    """tune_trafilatura skips a regular-expression test when its attribute is absent, only where the
    expression cannot match the empty string; each of trafilatura's XPaths must select the same
    elements, in the same order, as trafilatura's own on real pages."""
    from lxml import etree
    from trafilatura import xpaths

    from monitor import extract

    assert extract._guard_regex_tests("re:test(@id|@class, 'a|^b') or re:test(@class, 'x?', 'i')") == (
        "((@id|@class) and re:test(@id|@class, 'a|^b')) or re:test(@class, 'x?', 'i')")
    ns = {"re": xpaths.REGEXP_NS}
    pairs = [(etree.XPath(xp.path, namespaces=ns), etree.XPath(extract._guard_regex_tests(xp.path), namespaces=ns))
             for value in vars(xpaths).values() if isinstance(value, list)
             for xp in value if isinstance(xp, etree.XPath) and "re:test" in xp.path]
    assert len(pairs) == 20 and all(a.path != b.path for a, b in pairs)
    trees = [t for t in (extract.page_tree(page) for page in _eval_pages()[::6]) if t is not None]
    assert len(trees) > 180
    selected = differ = 0
    for tree in trees:
        for theirs, ours in pairs:
            got = theirs(tree)
            selected += len(got)
            differ += got != ours(tree)
    assert differ == 0 and selected > 1000


def test_the_shared_justext_stoplist_is_justexts_own_and_outlives_cache_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    """warm_up builds justext's all-languages stoplist once (in the forkserver) instead of in every worker
    after every reset of trafilatura's caches; what justext gets must not change."""
    import justext.core
    from justext.utils import get_stoplist
    from trafilatura import external
    from trafilatura.meta import reset_caches

    from monitor import extract

    monkeypatch.setattr(justext.core, "define_stoplist", justext.core.define_stoplist)  # restored after
    everything = external.JT_STOPLIST or external.jt_stoplist_init()
    expected = frozenset(w.lower() for w in everything)
    extract.share_justext_stoplist()
    shared = justext.core.define_stoplist(everything)
    assert shared == expected and len(shared) > 100_000
    reset_caches()  # what _maybe_reset_caches does every RESET_EVERY pages
    assert justext.core.define_stoplist(everything) is shared
    assert justext.core.define_stoplist(get_stoplist("German")) == frozenset(
        w.lower() for w in get_stoplist("German"))
    extract.share_justext_stoplist()  # idempotent
    assert justext.core.define_stoplist(everything) is shared
