"""Discovery on bytes: feeds, JSON Feed, sitemaps (index, .gz, Google News, text), pages, homepages."""

from __future__ import annotations

import gzip
import json

import pytest
from tests.faultserver import news_sitemap

from monitor.config import SourceConfig
from monitor.sources import (
    canonical_link,
    discover_feed_links,
    parse_source_document,
    sniff_kind,
)

BASE = "https://news.example"
SRC = SourceConfig(id="s", url=BASE + "/feed.xml")


def test_tracking_parameters_stripped_and_offsite_links_dropped() -> None:
    assert canonical_link("/a/story-one.html?utm_source=x&fbclid=y&id=7#top", BASE + "/feed", False) == \
        BASE + "/a/story-one.html?id=7"
    assert canonical_link("https://www.news.example/a/x-y", BASE, False) == "https://www.news.example/a/x-y"
    assert canonical_link("https://other.example/a/x-y", BASE, False) is None
    assert canonical_link("https://other.example/a/x-y", BASE, True) == "https://other.example/a/x-y"
    assert canonical_link("javascript:alert(1)", BASE, True) is None
    assert canonical_link("http://[::1", BASE, True) is None  # broken IPv6 literal: no crash


def test_feed_keeps_entry_title_date_summary() -> None:
    feed = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title><link>https://news.example/</link>'
            b"<item><title>Peace &lt;b&gt;talks&lt;/b&gt;</title><link>/a/peace-talks-geneva</link>"
            b"<description>&lt;p&gt;Summary here&lt;/p&gt;</description>"
            b"<pubDate>Tue, 02 Dec 2025 08:00:00 GMT</pubDate></item></channel></rss>")
    res = parse_source_document(SRC, feed, BASE + "/feed.xml", "application/rss+xml")
    [ln] = res.links
    assert ln.url == BASE + "/a/peace-talks-geneva" and ln.title == "Peace talks"
    assert ln.summary == "Summary here" and ln.published is not None and ln.published.hour == 8


def test_illformed_feed_yields_entries_and_a_warning() -> None:
    feed = (b'<rss version="2.0"><channel><title>T & co</title>'
            b"<item><title>One</title><link>https://news.example/a/one-story</link></item>"
            b"<item><title>Two</title><link>https://news.example/a/two-story</link>")
    res = parse_source_document(SRC, feed, BASE + "/feed.xml")
    assert [ln.title for ln in res.links] == ["One", "Two"]
    assert res.warnings and res.warnings[0].startswith("ill-formed feed")


def test_wrong_http_charset_on_a_utf8_feed_is_ignored() -> None:
    feed = ("<rss version='2.0'><channel><title>Ü</title><item><title>Größe und Überwachung</title>"
            "<link>https://news.example/a/groesse-story</link></item></channel></rss>").encode()
    res = parse_source_document(SRC, feed, BASE, "application/rss+xml; charset=iso-8859-1")
    assert res.links[0].title == "Größe und Überwachung"
    latin = ("<rss version='2.0'><channel><title>x</title><item><title>Größe</title>"
             "<link>https://news.example/a/groesse-story</link></item></channel></rss>").encode("latin-1")
    res = parse_source_document(SRC, latin, BASE, "text/xml; charset=iso-8859-1")
    assert res.links[0].title == "Größe"


def test_json_feed() -> None:
    doc = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
        {"id": "1", "url": "https://news.example/a/json-story-one", "title": "J1",
         "date_published": "2025-12-02T08:00:00Z", "summary": "S"},
        {"id": "2", "title": "no url"}, "junk", {"url": 5, "date_published": 7}]}).encode()
    res = parse_source_document(SourceConfig(id="s", url=BASE, kind="auto"), doc, BASE, "application/feed+json")
    assert [ln.title for ln in res.links] == ["J1"] and res.links[0].published is not None
    assert "JSON Feed item is not an object" in res.warnings


def test_sitemap_index_newest_first_and_gz_google_news() -> None:
    index = (b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
             b"<sitemap><loc>https://news.example/old.xml</loc><lastmod>2019-01-01</lastmod></sitemap>"
             b"<sitemap><loc>https://news.example/news.xml.gz</loc><lastmod>2025-12-01</lastmod></sitemap>"
             b"</sitemapindex>")
    src = SourceConfig(id="s", url=BASE + "/sitemap.xml", kind="sitemap")
    res = parse_source_document(src, index, BASE + "/sitemap.xml")
    assert res.follow == [BASE + "/news.xml.gz", BASE + "/old.xml"]
    gz = gzip.compress(news_sitemap(BASE))
    auto = SourceConfig(id="s", url=BASE + "/news.xml.gz")
    res = parse_source_document(auto, gz, BASE + "/news.xml.gz", "application/x-gzip")
    one, two = res.links
    assert one.url == BASE + "/n/news-story-one.html" and one.title == "News story one"
    assert one.published is not None and one.published.isoformat() == "2025-12-02T07:30:00+01:00"
    assert two.title is None and two.published is not None  # lastmod used when no news date


def test_sitemap_refuses_entities_and_bounded_gzip() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>&b;</loc></url></urlset>')
    src = SourceConfig(id="s", url=BASE + "/sitemap.xml", kind="sitemap")
    assert "XML entities are not allowed" in (parse_source_document(src, bomb, BASE).error or "")
    big = gzip.compress(b"<urlset>" + b" " * (60 * 1024 * 1024))
    assert "once decompressed" in (parse_source_document(src, big, BASE).error or "")


def test_text_sitemap() -> None:
    src = SourceConfig(id="s", url=BASE + "/sitemap.txt", kind="sitemap")
    res = parse_source_document(src, b"https://news.example/a/one-story\nhttps://evil.example/x-y\n", BASE)
    assert [ln.url for ln in res.links] == ["https://news.example/a/one-story"]


def test_homepage_feed_discovery_and_section_pages() -> None:
    home = (b'<html><head><link rel="alternate" type="application/rss+xml" href="/rss.xml">'
            b'<link rel="alternate" type="application/atom+xml" href="https://news.example/atom.xml"></head></html>')
    assert discover_feed_links(home, BASE + "/") == [BASE + "/rss.xml", BASE + "/atom.xml"]
    res = parse_source_document(SourceConfig(id="s", url=BASE + "/"), home, BASE + "/")
    assert res.follow == [BASE + "/rss.xml"]
    section = (b'<html><body><a href="/politik/">Politik</a><a href="/politik/minister-tritt-zurueck-123">x</a>'
               b'<a href="/impressum">i</a><a href="https://other.example/a/b-c">o</a>'
               b'<a href="/politik/minister-tritt-zurueck-123?utm_source=home">dup</a></body></html>')
    page = SourceConfig(id="s", url=BASE + "/politik/", kind="page")
    res = parse_source_document(page, section, BASE + "/politik/")
    assert [ln.url for ln in res.links] == [BASE + "/politik/minister-tritt-zurueck-123"]


def test_sniff_and_garbage_never_crash() -> None:
    assert sniff_kind(b"\xef\xbb\xbf<?xml version='1.0'?><urlset>", None) == "sitemap"
    assert sniff_kind(b"https://a.example/x\n", None) == "text"
    for junk in (b"", b"\x00\x01\x02", b"\x1f\x8bnot gzip", b"{", b"<rss><channel><item>", b"<" * 10000):
        res = parse_source_document(SourceConfig(id="s", url=BASE), junk, BASE)
        assert res.error is None or not res.error.startswith("parser failed"), res.error


def test_links_are_salvaged_when_feedparser_itself_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """feedparser can raise on some mutated documents (the chaos fuzzer found a ValueError inside it);
    the error is recorded and the item links are still read with a lenient parser."""
    import feedparser

    from monitor.sources import parse_feed

    def crash(*args: object, **kwargs: object) -> None:
        raise ValueError("too many values to unpack (expected 2)")

    monkeypatch.setattr(feedparser, "parse", crash)
    src = SourceConfig(id="s", url="https://ex.org/feed", kind="rss")
    doc = (b"<rss><channel><item><title>One</title><link>https://ex.org/news/one-story</link></item>"
           b"<item><link>https://ex.org/news/two-story</link><title>broken &bogus; <</item></channel>")
    res = parse_feed(doc, src, "https://ex.org/feed")
    assert res.error and "ValueError" in res.error
    assert [ln.url for ln in res.links] == ["https://ex.org/news/one-story", "https://ex.org/news/two-story"]
