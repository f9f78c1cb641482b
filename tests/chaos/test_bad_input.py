"""Random and mutated feeds, sitemaps and pages through discovery and extraction: no uncaught exception,
every failure recorded with a reason.

Seeds are real documents: the feed corpora in /work/shared/evaldata/feeds (feedparser's ill-formed and
well-formed cases, feed-rs captures, rss-parser) and the demo site's feeds, sitemaps and pages.
Hypothesis mutates them (cut, splice, flip, insert hostile fragments such as NUL bytes, broken CDATA,
entity expansions, a gzip magic, wrong encodings) and also generates documents from scratch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.chaos.chaoslib import FULL, SHARED, SITE, FaultTable

from monitor.config import SourceConfig
from monitor.extract import ExtractInput, extract_batch, extract_one, extraction_pool
from monitor.models import SourceDocResult
from monitor.sources import parse_source_document

FEEDS = SHARED / "evaldata" / "feeds"
STATUSES = {"ok", "duplicate", "not_article", "too_short", "failed"}
BASE = "http://127.0.0.1:9/"
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 6))
          + b']><rss version="2.0"><channel><title>&lol5;</title><item><link>http://127.0.0.1:9/a-b</link>'
          + b"</item></channel></rss>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<rss version="2.0"><channel><item><title>&x;</title><link>http://127.0.0.1:9/leak-&x;</link>'
       b"</item></channel></rss>")
FRAGMENTS = [b"\x00", b"<![CDATA[", b"]]>", b"&#0;", b"&#xD800;", b"&bogus;", b"\xff\xfe", b"\xef\xbb\xbf",
             b"\x1f\x8b\x08", b"</", b"<item><link>", b"<url><loc>http://[::1", b"javascript:alert(1)",
             b'<?xml version="1.0" encoding="utf-16"?>', b"<entry><link href=", b"\r", b"\\u0000", b"{", b"]",
             b'{"version": "https://jsonfeed.org/version/1.1", "items": [{"url": 5}]}',
             b"<sitemapindex><sitemap><loc>" + BASE.encode() + b"s.xml</loc></sitemap></sitemapindex>",
             b"<a href='" + b"x" * 5000 + b"'>", LAUGHS[:200], b"<html><head><meta charset=x-bogus>"]
KINDS = ["auto", "rss", "atom", "feed", "jsonfeed", "sitemap", "page", "article"]
CTYPES = [None, "", "application/rss+xml", "text/html; charset=utf-8", "application/json", "text/xml",
          "application/octet-stream", "text/plain", "application/x-gzip", "text/html; charset=bogus"]
EXAMPLES = (3000, 400) if FULL else (500, 80)  # (discovery, extraction)
TALLY: Counter[str] = Counter()
REASONS: Counter[str] = Counter()
CRASHES: list[str] = []


def _sample(folder: Path, patterns: tuple[str, ...], every: int) -> list[bytes]:
    files = sorted(p for pat in patterns for p in folder.rglob(pat) if p.is_file())
    return [p.read_bytes()[:200_000] for p in files[::every]]


def corpus() -> list[bytes]:
    docs = _sample(SITE, ("*.xml", "*.json", "*.txt", "*.html"), 3)
    if FEEDS.exists():
        docs += _sample(FEEDS / "feedparser" / "illformed", ("*.xml",), 4)
        docs += _sample(FEEDS / "feedparser" / "wellformed", ("*.xml",), 60)
        docs += _sample(FEEDS / "feed-rs", ("*.xml", "*.json"), 3)
        docs += _sample(FEEDS / "rss-parser", ("*.rss", "*.xml", "*.atom"), 4)
    return [d.replace(b"{{BASE}}", BASE.rstrip("/").encode()) for d in docs] + [LAUGHS, XXE]


CORPUS = corpus()


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # now and then a document from scratch
        return draw(st.binary(max_size=2000))
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["cut", "insert", "flip", "splice", "dup"]))
        pos = draw(st.integers(0, max(len(data), 1))) if data else 0
        if op == "cut":
            del data[pos:pos + draw(st.integers(1, 400))]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(FRAGMENTS))
        elif op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "splice":
            other = draw(st.sampled_from(CORPUS))
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            data[pos:pos] = other[start:start + draw(st.integers(1, 2000))]
        elif op == "dup" and data:
            data[pos:pos] = data[max(0, pos - 300):pos] * draw(st.integers(2, 20))
    return bytes(data)


def test_corpus_present() -> None:
    if not FEEDS.exists():
        pytest.skip(f"{FEEDS} is absent: the sweep runs on the demo site's documents only")
    assert len(CORPUS) > 60


@settings(max_examples=EXAMPLES[0], deadline=None, derandomize=not FULL,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=documents(), kind=st.sampled_from(KINDS), ctype=st.sampled_from(CTYPES))
def test_discovery_survives(doc: bytes, kind: str, ctype: str | None) -> None:
    src = SourceConfig(id="fuzz", url=BASE + "feed", kind=kind)  # type: ignore[arg-type]
    TALLY["discovery"] += 1
    try:
        res = parse_source_document(src, doc, BASE + "feed", ctype)
    except Exception as exc:  # the finding: record it, then fail
        CRASHES.append(f"discovery {kind}: {type(exc).__name__}: {exc}"[:200])
        raise
    assert isinstance(res, SourceDocResult)
    assert res.error is None or res.error.strip(), "an error without a reason"
    if res.error:
        TALLY["discovery errors"] += 1
        REASONS[res.error.split(":")[0][:40] if "parser failed" not in res.error else res.error[:90]] += 1
    for ln in res.links:
        assert ln.url.startswith(("http://", "https://")), ln.url
        assert "root:" not in (ln.title or "") + ln.url, "XXE: a local file leaked into a link"
    TALLY["links"] += len(res.links)


@settings(max_examples=EXAMPLES[1], deadline=None, derandomize=not FULL,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=documents(), ctype=st.sampled_from(CTYPES), min_words=st.sampled_from([0, 5, 40]))
def test_extraction_survives(doc: bytes, ctype: str | None, min_words: int) -> None:
    TALLY["extraction"] += 1
    try:
        out = extract_one(ExtractInput(BASE + "a-b.html", doc, ctype, feed_summary="x y z"), min_words=min_words)
    except Exception as exc:
        CRASHES.append(f"extract_one: {type(exc).__name__}: {exc}"[:200])
        raise
    assert out.status in STATUSES
    assert out.status == "ok" or out.status_reason, f"{out.status} without a reason"
    TALLY[f"extraction {out.status}"] += 1


def test_extraction_workers_record_each_failure() -> None:
    """The worker-process path: one output per input, in order, each non-ok one with its reason."""
    docs = [CORPUS[0][:50], b"\x00" * 100, LAUGHS, XXE, b"<html><body>" + b"<div>" * 20000 + b"</body></html>",
            b"%PDF-1.7 binary"]
    inputs = [ExtractInput(f"{BASE}doc-{i}.html", d, "text/html") for i, d in enumerate(docs)]
    with extraction_pool(1) as pool:
        outs = extract_batch(inputs, min_words=40, timeout_s=20, pool=pool)
    assert [o.url for o in outs] == [i.url for i in inputs]
    assert all(o.status in STATUSES and (o.status == "ok" or o.status_reason) for o in outs)
    assert all("root:" not in (o.text or "") for o in outs), "XXE: a local file leaked into text"


def test_zz_bad_input_rows(fault_table: FaultTable) -> None:
    d, e = TALLY["discovery"], TALLY["extraction"]
    assert d and e, "the sweeps did not run"
    caught = {k: v for k, v in REASONS.items() if "parser failed" in k}
    fault_table.add("bad input → discovery (mutated feeds/sitemaps/pages)", d, d - sum(1 for c in CRASHES
                    if c.startswith("discovery")),
                    f"{len(CORPUS)} seed docs; {TALLY['discovery errors']} recorded errors; "
                    f"parser bugs caught by the safety net: {sum(caught.values())} {sorted(caught)[:3]}")
    statuses = {k.split()[-1]: v for k, v in TALLY.items() if k.startswith("extraction ")}
    fault_table.add("bad input → extraction (extract_one)", e, e - sum(1 for c in CRASHES
                    if c.startswith("extract")), f"statuses {statuses}")
    fault_table.add("bad input → extraction workers (pool)", 1, 1, "6 hostile docs incl. entity bomb, XXE, "
                    "20k nested divs, binary")
    assert not CRASHES, CRASHES


def test_surrogate_in_one_title_keeps_the_other_items() -> None:
    src = SourceConfig(id="fuzz", url=BASE + "feed", kind="rss")
    doc = (b'<rss version="2.0"><channel><item><title>a&#xD800;b</title><link>' + BASE.encode() + b"bad-one</link>"
           b"</item><item><title>fine</title><link>" + BASE.encode() + b"good-one</link></item></channel></rss>")
    res = parse_source_document(src, doc, BASE + "feed", "application/rss+xml")
    assert res.error is None and BASE + "good-one" in [ln.url for ln in res.links], res.error
