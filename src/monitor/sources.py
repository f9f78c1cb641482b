"""Discovery: turn the bytes of a source document (feed, sitemap, section page, homepage, single
article URL) into links to articles. Pure functions on bytes; the flow fetches the documents.

Feeds are parsed by feedparser (RSS 0.9x/1.0/2.0, Atom; it reads ill-formed feeds and says so
through `bozo`), JSON Feed by the json module, sitemaps by defusedxml (no entity expansion, so XML
bombs are refused), HTML pages by courlan's link extraction. Links are canonicalised by courlan
(tracking parameters removed) and kept on the source's site unless the source allows otherwise.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from calendar import timegm
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import courlan
import feedparser
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from lxml import etree

from monitor.config import SourceConfig
from monitor.errors import SourceError
from monitor.models import Link, SourceDocResult

MAX_SITEMAP_BYTES = 50 * 1024 * 1024
_TAG_RE = re.compile(r"<[^>]+>")
_WS_RE = re.compile(r"\s+")
SM_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
NEWS_NS = "{http://www.google.com/schemas/sitemap-news/0.9}"


def gunzip_bounded(content: bytes, limit: int = MAX_SITEMAP_BYTES) -> bytes:
    """Decompress a gzip file (a `.gz` sitemap or feed); refuse more than `limit` bytes out."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(content)) as gz:
            out = gz.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"bad gzip file: {exc}") from None
    if len(out) > limit:
        raise SourceError(f"larger than {limit} bytes once decompressed")
    return out


def sniff_kind(content: bytes, content_type: str | None) -> str:
    """Guess what a source document is: jsonfeed, sitemap, feed, text (URL list) or html."""
    head = content[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    ctype = (content_type or "").lower()
    if head.startswith(b"{") or "json" in ctype:
        return "jsonfeed"
    if b"<urlset" in head or b"<sitemapindex" in head:
        return "sitemap"
    if b"<rss" in head or b"<feed" in head or b"<rdf" in head or b"<channel" in head:
        return "feed"
    if b"<html" in head or b"<!doctype html" in head or "html" in ctype:
        return "html"
    if head.startswith(b"<?xml"):
        body = content[:8192].lower()
        if b"<urlset" in body or b"<sitemapindex" in body:
            return "sitemap"
        return "feed"
    if head.startswith((b"http://", b"https://")) and b"<" not in head:
        return "text"
    return "html"


def clean_text(html_or_text: str | None, limit: int = 1000) -> str | None:
    if not html_or_text:
        return None
    text = _WS_RE.sub(" ", _TAG_RE.sub(" ", html_or_text)).strip()
    return text[:limit] or None


def canonical_link(url: str, base: str, allow_offsite: bool) -> str | None:
    """Absolute, cleaned URL with tracking parameters removed; None if it is not worth fetching."""
    if not url or not isinstance(url, str):
        return None
    try:
        absolute = urljoin(base, url.strip())
        if urlsplit(absolute).scheme not in ("http", "https") or not urlsplit(absolute).hostname:
            return None
        cleaned = courlan.normalize_url(absolute, strict=True)
    except ValueError:  # e.g. an invalid IPv6 literal or port
        return None
    if not cleaned:
        return None
    if not allow_offsite and _site(cleaned) != _site(base):
        return None
    return cleaned


def _site(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


def _struct_to_dt(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(timegm(value), tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _iso_to_dt(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_feed(content: bytes, source: SourceConfig, base_url: str,
               content_type: str | None = None) -> SourceDocResult:
    """RSS/Atom/RDF through feedparser; what can be read is kept, problems become warnings."""
    result = SourceDocResult(source_id=source.id)
    headers = {"content-type": _trusted_content_type(content, content_type)} if content_type else {}
    content = _SURROGATE_REF.sub(b"&#xFFFD;", content)  # a lone surrogate makes feedparser fail whole
    try:
        parsed = feedparser.parse(io.BytesIO(content), response_headers=headers, sanitize_html=False,
                                  resolve_relative_uris=False)
    except Exception as exc:  # feedparser is lenient, but one document must never stop a run
        result.error = f"feed parser failed: {type(exc).__name__}: {str(exc)[:200]}"
        _salvage_feed_links(content, source, base_url, result)
        return result
    if parsed.get("bozo"):
        bozo = parsed.get("bozo_exception")
        result.warnings.append(f"ill-formed feed: {type(bozo).__name__}: {str(bozo)[:200]}")
    if not parsed.entries and not parsed.get("feed"):
        result.error = "not a feed: nothing could be read"
        return result
    feed_link = parsed.get("feed", {}).get("link") or base_url
    for entry in parsed.entries:
        try:
            _add_entry(result, entry, source, base_url, feed_link)
        except Exception as exc:  # one odd item must not cost the others
            result.warnings.append(f"item skipped: {type(exc).__name__}: {str(exc)[:200]}")
    return result


def _salvage_feed_links(content: bytes, source: SourceConfig, base_url: str, result: SourceDocResult) -> None:
    """When feedparser gives up, read item/entry links with lxml in recover mode (entities off)."""
    try:
        parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, huge_tree=False)
        root = etree.fromstring(content, parser)
    except (etree.LxmlError, ValueError):
        return
    if root is None:
        return
    for item in root.iter():
        if not isinstance(item.tag, str) or etree.QName(item).localname not in ("item", "entry"):
            continue
        href, title = None, None
        for child in item:
            if not isinstance(child.tag, str):
                continue
            name = etree.QName(child).localname
            if name == "link" and not href:
                href = (child.get("href") or child.text or "").strip() or None
            elif name == "title" and not title:
                title = clean_text(child.text, 500)
        url = canonical_link(href or "", base_url, source.allow_offsite) if href else None
        if url:
            result.links.append(Link(url=url, source_id=source.id, via="feed", title=title))
    if result.links:
        result.warnings.append(f"{len(result.links)} links salvaged with a lenient XML parser")


# character references to UTF-16 surrogates (U+D800..U+DFFF, i.e. 55296..57343), which are not characters
_SURROGATE_REF = re.compile(
    rb"&#(?:[xX]0*[dD][89a-fA-F][0-9a-fA-F]{2}|0*(?:55[2-9]\d\d|56\d\d\d|57[0-2]\d\d|573[0-3]\d|5734[0-3]));"
)


def _add_entry(result: SourceDocResult, entry: Any, source: SourceConfig, base_url: str, feed_link: str) -> None:
    """One feed item to one Link (or a warning saying why it was skipped)."""
    href = entry.get("link")
    if not href:
        for ln in entry.get("links", []):
            if ln.get("href"):
                href = ln["href"]
                break
    url = canonical_link(href or "", base_url if href and href.startswith("/") else feed_link,
                         source.allow_offsite)
    if url is None and href:
        url = canonical_link(href, base_url, source.allow_offsite)
    if url is None:
        if href:
            result.warnings.append(f"link skipped: {href[:200]}")
        return
    published = _struct_to_dt(entry.get("published_parsed") or entry.get("updated_parsed"))
    summary = entry.get("summary") or (entry.get("content") or [{}])[0].get("value")
    result.links.append(Link(url=url, source_id=source.id, via="feed",
                             title=clean_text(entry.get("title"), 500), published=published,
                             summary=clean_text(summary)))


_XML_DECL_ENC = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=", re.I)


def _trusted_content_type(content: bytes, content_type: str) -> str:
    """Drop the HTTP charset when the bytes say better (BOM, XML declaration, valid non-ASCII UTF-8).

    Servers often send a default charset (ISO-8859-1) for feeds that are really UTF-8; trusting it
    turns every accented letter into mojibake.
    """
    mime, _, params = content_type.partition(";")
    if "charset" not in params.lower():
        return content_type
    if content.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or _XML_DECL_ENC.match(content[:200]):
        return mime.strip()
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return content_type
    return mime.strip() if not content.isascii() else content_type


def parse_json_feed(content: bytes, source: SourceConfig, base_url: str) -> SourceDocResult:
    result = SourceDocResult(source_id=source.id)
    try:
        data = json.loads(content.decode("utf-8-sig", "replace"))
    except (ValueError, RecursionError) as exc:
        result.error = f"JSON Feed is not valid JSON: {exc}"
        return result
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        result.error = "JSON Feed has no items list"
        return result
    for item in data["items"]:
        if not isinstance(item, dict):
            result.warnings.append("JSON Feed item is not an object")
            continue
        href = item.get("url") or item.get("external_url") or ""
        url = canonical_link(href, base_url, source.allow_offsite) if isinstance(href, str) else None
        if url is None:
            if href:
                result.warnings.append(f"link skipped: {str(href)[:200]}")
            continue
        summary = item.get("summary") or item.get("content_text") or item.get("content_html")
        result.links.append(Link(url=url, source_id=source.id, via="feed",
                                 title=clean_text(str(item.get("title") or ""), 500),
                                 published=_iso_to_dt(item.get("date_published") or item.get("date_modified")),
                                 summary=clean_text(str(summary) if summary else None)))
    return result


def parse_sitemap(content: bytes, source: SourceConfig, base_url: str) -> SourceDocResult:
    """A sitemap (links) or sitemap index (documents to follow); gzip accepted; entities refused."""
    result = SourceDocResult(source_id=source.id)
    if content[:2] == b"\x1f\x8b":
        try:
            content = gunzip_bounded(content)
        except SourceError as exc:
            result.error = f"sitemap: {exc}"
            return result
    if sniff_kind(content, None) == "text":
        return parse_text_sitemap(content, source, base_url)
    try:
        root = SafeET.fromstring(content, forbid_dtd=False, forbid_entities=True)
    except DefusedXmlException as exc:
        result.error = f"refused sitemap: {type(exc).__name__} (XML entities are not allowed)"
        return result
    except (SafeET.ParseError, ValueError) as exc:
        result.error = f"sitemap is not well-formed XML: {exc}"
        return result
    tag = root.tag.split("}")[-1]
    if tag == "sitemapindex":
        children = []
        for sm in root.iter(f"{SM_NS}sitemap"):
            loc = (sm.findtext(f"{SM_NS}loc") or "").strip()
            url = canonical_link(loc, base_url, source.allow_offsite)
            if url:
                lastmod = _iso_to_dt(sm.findtext(f"{SM_NS}lastmod"))
                children.append((lastmod.timestamp() if lastmod else 0.0, url))
        # newest first: the documents read per poll are capped, and news lives in recent sitemaps
        result.follow = [u for _, u in sorted(children, key=lambda c: -c[0])]
        if not result.follow:
            result.warnings.append("sitemap index lists no usable sitemap")
        return result
    if tag != "urlset":
        result.error = f"not a sitemap: root element <{tag}>"
        return result
    for u in root.iter(f"{SM_NS}url"):
        loc = (u.findtext(f"{SM_NS}loc") or "").strip()
        url = canonical_link(loc, base_url, source.allow_offsite)
        if not url:
            continue
        news = u.find(f"{NEWS_NS}news")
        title = published = None
        if news is not None:
            title = clean_text(news.findtext(f"{NEWS_NS}title"), 500)
            published = _iso_to_dt(news.findtext(f"{NEWS_NS}publication_date"))
        published = published or _iso_to_dt(u.findtext(f"{SM_NS}lastmod"))
        result.links.append(Link(url=url, source_id=source.id, via="sitemap", title=title,
                                 published=published))
    return result


def parse_text_sitemap(content: bytes, source: SourceConfig, base_url: str) -> SourceDocResult:
    """A plain-text sitemap: one URL per line (allowed by the sitemaps protocol)."""
    result = SourceDocResult(source_id=source.id)
    for line in content.decode("utf-8", "replace").splitlines():
        url = canonical_link(line.strip(), base_url, source.allow_offsite)
        if url:
            result.links.append(Link(url=url, source_id=source.id, via="sitemap"))
    return result


_ALT_FEED_RE = re.compile(
    rb"<link[^>]+(?:application/(?:rss|atom|feed)\+xml|application/feed\+json)[^>]*>", re.I
)
_HREF_RE = re.compile(rb"""href\s*=\s*["']([^"']+)["']""", re.I)


def discover_feed_links(html: bytes, base_url: str) -> list[str]:
    """`<link rel="alternate" type="application/rss+xml" href=...>` on a homepage."""
    found = []
    for tag in _ALT_FEED_RE.findall(html[:500_000]):
        m = _HREF_RE.search(tag)
        if m:
            found.append(urljoin(base_url, m.group(1).decode("utf-8", "replace").strip()))
    return list(dict.fromkeys(found))


def parse_section_page(content: bytes, source: SourceConfig, base_url: str) -> SourceDocResult:
    """Article links on a section/front page (navigation and off-site links left out)."""
    result = SourceDocResult(source_id=source.id)
    text = content.decode("utf-8", "replace")
    # courlan's own filter drops IP-addressed hosts, so filter here instead
    links = courlan.extract_links(text, url=base_url, external_bool=False, no_filter=True)
    page = courlan.normalize_url(base_url, strict=True)
    seen: set[str] = set()
    for href in sorted(links):
        url = canonical_link(href, base_url, source.allow_offsite)
        if url and url not in seen and url != page and not _is_ancestor(url, base_url) \
                and _looks_like_article(url):
            seen.add(url)
            result.links.append(Link(url=url, source_id=source.id, via="page"))
    if not result.links:
        result.warnings.append("no article links found on the page")
    return result


def _is_ancestor(url: str, page: str) -> bool:
    """A link up the page's own path (the site or section home) is navigation, not an article."""
    path = urlsplit(url).path.rstrip("/") + "/"
    return urlsplit(page).path.startswith(path)


_NOT_ARTICLE = re.compile(
    r"(privacy|imprint|impressum|contact|kontakt|about|datenschutz|terms|login|signup|subscribe|"
    r"/tags?/|/category/|/author/|/page/\d|seite-\d)", re.I)


def _looks_like_article(url: str) -> bool:
    """Article URLs carry a slug (several words) or a long numeric id; sections and pages do not."""
    path = urlsplit(url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if last in ("", "index.html", "index.htm") or _NOT_ARTICLE.search(path):
        return False
    if courlan.is_navigation_page(url) or courlan.is_not_crawlable(url):
        return False
    stem = last.rsplit(".", 1)[0]
    return "-" in stem or "_" in stem or bool(re.search(r"\d{5,}", stem))


def parse_source_document(source: SourceConfig, content: bytes, base_url: str,
                          content_type: str | None = None) -> SourceDocResult:
    """Dispatch on the source's declared kind, or sniff the content when the kind is auto.

    Never raises: a parser bug on one document becomes that document's error ("parser failed").
    """
    try:
        return _parse_document(source, content, base_url, content_type)
    except Exception as exc:
        return SourceDocResult(source_id=source.id,
                               error=f"parser failed: {type(exc).__name__}: {str(exc)[:200]}")


def _parse_document(source: SourceConfig, content: bytes, base_url: str,
                    content_type: str | None) -> SourceDocResult:
    kind: str = source.kind
    if content[:2] == b"\x1f\x8b":  # a .gz document served without Content-Encoding
        try:
            content = gunzip_bounded(content)
        except SourceError as exc:
            return SourceDocResult(source_id=source.id, error=str(exc))
    sniffed = sniff_kind(content, content_type)
    if kind in ("auto", "feed", "rss", "atom", "jsonfeed"):
        kind = sniffed if kind == "auto" or sniffed in ("feed", "jsonfeed") else kind
    if kind in ("feed", "rss", "atom"):
        return parse_feed(content, source, base_url, content_type)
    if kind == "jsonfeed":
        return parse_json_feed(content, source, base_url)
    if kind in ("sitemap", "text"):
        return parse_sitemap(content, source, base_url)
    if source.kind == "auto" and kind == "html":
        feeds = discover_feed_links(content, base_url)
        if feeds:
            return SourceDocResult(source_id=source.id, follow=feeds[:1])
    return parse_section_page(content, source, base_url)


def dedupe_links(links: Iterable[Link]) -> list[Link]:
    """One link per URL; feed metadata wins over bare sitemap/page links."""
    best: dict[str, Link] = {}
    for ln in links:
        cur = best.get(ln.url)
        if cur is None:
            best[ln.url] = ln
            continue
        cur.title = cur.title or ln.title
        cur.published = cur.published or ln.published
        cur.summary = cur.summary or ln.summary
    return list(best.values())
