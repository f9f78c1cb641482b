"""Benchmark corpus: evaluation pages reused under new URLs, served from RSS feeds on 127.0.0.1.

The base pages are the 181 scrapinghub-aeb and 990 trafilatura-eval pages in ../shared/evaldata/
(kept gzip-compressed in memory, ~35 MB). Article `i` of a set is base page `(offset + i) % B` with a
few words and numbers of its longest text nodes changed (`variant`), so no two articles are exact
copies; the bytes are made on demand from the index, so the corpus never sits in memory whole and
every consumer (the server, the raw-trafilatura and newspaper4k workers) sees the same bytes.

`serve` runs an asyncio HTTP/1.1 server (keep-alive, in-memory, one process) on several ports; each
port is one "host" with its own feeds. Paths: `/{set}/f{n}.xml` (RSS 2.0), `/{set}/a/{i}-{slug}.html`,
`/robots.txt` (allow all).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").exists() else Path("/work/shared")
EVALDATA = SHARED / "evaldata"
ITEMS_PER_FEED = 500

_SKIP = re.compile(rb"<(script|style|noscript|head|template)\b.*?</\1\s*>", re.I | re.S)
_TEXT = re.compile(rb">([^<]{120,})<")
_WORD = re.compile(rb"\b[A-Za-z]{4,}\b")
_NUM = re.compile(rb"\b\d{1,6}\b")
_SWAP = (b"reportedly", b"officially", b"again", b"today", b"also", b"later", b"still", b"meanwhile")


def base_files(evaldata: Path = EVALDATA) -> list[Path]:
    """The 1,171 evaluation pages, in a fixed order."""
    files = sorted((evaldata / "scrapinghub-aeb" / "html").glob("*.html.gz"))
    files += sorted((evaldata / "trafilatura-eval" / "html").rglob("*.html.gz"))
    if not files:
        raise FileNotFoundError(f"no evaluation pages under {evaldata} (is ../shared there?)")
    return files


def load_base(evaldata: Path = EVALDATA) -> list[bytes]:
    """The base pages, still gzip-compressed."""
    return [p.read_bytes() for p in base_files(evaldata)]


def variant(page: bytes, k: int) -> bytes:
    """Page `page` with a few words and numbers of its (up to) 3 longest text nodes changed."""
    skips = [m.span() for m in _SKIP.finditer(page)]

    def visible(pos: int) -> bool:
        return not any(a <= pos < b for a, b in skips)

    nodes = [m.span(1) for m in _TEXT.finditer(page) if m.group(1).count(b" ") >= 15 and visible(m.start())]
    nodes = sorted(sorted(nodes, key=lambda s: s[0] - s[1])[:3])
    out, last = [], 0
    for j, (a, b) in enumerate(nodes):
        out.append(page[last:a])
        out.append(_change(page[a:b], k, j))
        last = b
    out.append(page[last:])
    return b"".join(out)


def _change(node: bytes, k: int, j: int) -> bytes:
    words = list(_WORD.finditer(node))
    if words:
        w = words[(k * 7 + j * 3) % len(words)]
        node = node[:w.start()] + _SWAP[(k + j) % len(_SWAP)] + node[w.end():]
    num = _NUM.search(node)
    if num:
        return node[:num.start()] + str(int(num.group(0)) + k + 1).encode() + node[num.end():]
    return node + f" {k + 1}".encode()


@dataclass(frozen=True, slots=True)
class CorpusSet:
    """`n` articles starting at base index `offset`, spread over `hosts` hosts."""

    name: str
    n: int
    offset: int = 0
    picks: tuple[int, ...] = ()  # base pages to use (default: all)

    def feeds_per_host(self, hosts: int) -> int:
        return max(1, -(-self.n // (ITEMS_PER_FEED * hosts)))

    def host_of(self, i: int, hosts: int) -> int:
        return i % hosts

    def feed_of(self, i: int, hosts: int) -> int:
        return (i // hosts) % self.feeds_per_host(hosts)

    def path(self, i: int) -> str:
        return f"/{self.name}/a/{i:06d}-bench-article-{i % 97}.html"


def article_bytes(base: list[bytes], s: CorpusSet, i: int) -> bytes:
    j = s.offset + i
    pool = s.picks or range(len(base))
    return variant(gzip.decompress(base[pool[j % len(pool)]]), j // len(pool))


def pages_dated_from(base: list[bytes], limit: int, cutoff: str) -> list[int]:
    """Base pages (of the first `limit`) with no date or a date from `cutoff` (YYYY-MM-DD) on.

    The scale test puts the synthetic history before `cutoff`, so the novelty window (which starts
    two weeks before the oldest article of a batch) reaches into it as far as fresh news would.
    """
    from trafilatura.metadata import extract_metadata

    keep = []
    for j in range(min(limit, len(base))):
        meta = extract_metadata(gzip.decompress(base[j]).decode("utf-8", "replace"))
        if meta is None or meta.date is None or str(meta.date)[:10] >= cutoff:
            keep.append(j)
    return keep


def feed_xml(s: CorpusSet, host: int, feed: int, hosts: int, base_url: str, now: datetime) -> bytes:
    items = []
    for i in range(host, s.n, hosts):
        if s.feed_of(i, hosts) != feed:
            continue
        url = base_url + s.path(i)
        when = format_datetime(now - timedelta(seconds=30 * i))
        items.append(f"<item><title>Bench article {i}</title><link>{escape(url)}</link>"
                     f"<guid isPermaLink=\"true\">{escape(url)}</guid><pubDate>{when}</pubDate>"
                     f"<description>Article {i} of the {s.name} set.</description></item>")
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?><rss version=\"2.0\"><channel>"
            f"<title>{s.name} feed {feed} on host {host}</title><link>{escape(base_url)}/</link>"
            f"<description>bench</description>{''.join(items)}</channel></rss>").encode()


def sources_toml(sets: Iterable[CorpusSet], ports: list[int], only: str) -> str:
    """The sources.toml listing every feed of set `only`."""
    out = []
    for s in sets:
        if s.name != only:
            continue
        for h, port in enumerate(ports):
            for f in range(s.feeds_per_host(len(ports))):
                out.append(f'[[sources]]\nid = "{s.name}-h{h}-f{f}"\nname = "Bench {s.name} host {h} feed {f}"\n'
                           f'url = "http://127.0.0.1:{port}/{s.name}/f{f}.xml"\nkind = "rss"\n')
    return "\n".join(out)


# ---- the server ---------------------------------------------------------------------------------


class _Site:
    def __init__(self, sets: list[CorpusSet], ports: list[int]) -> None:
        self.base = load_base()
        self.sets = {s.name: s for s in sets}
        self.ports = ports
        self.now = datetime.now(UTC)
        self.feeds: dict[tuple[int, str], bytes] = {}
        self.requests = 0

    def answer(self, port: int, path: str) -> tuple[int, str, bytes]:
        self.requests += 1
        if path == "/robots.txt":
            return 200, "text/plain", b"User-agent: *\nAllow: /\n"
        parts = path.split("/")
        s = self.sets.get(parts[1]) if len(parts) > 2 else None
        host = self.ports.index(port)
        if s is not None and len(parts) == 3 and parts[2].startswith("f") and parts[2].endswith(".xml"):
            key = (port, path)
            if key not in self.feeds:
                self.feeds[key] = feed_xml(s, host, int(parts[2][1:-4]), len(self.ports),
                                           f"http://127.0.0.1:{port}", self.now)
            return 200, "application/rss+xml; charset=utf-8", self.feeds[key]
        if s is not None and len(parts) == 4 and parts[2] == "a":
            i = int(parts[3].split("-", 1)[0])
            if 0 <= i < s.n and s.host_of(i, len(self.ports)) == host:
                return 200, "text/html", article_bytes(self.base, s, i)
        return 404, "text/plain", b"not found"


async def _handle(site: _Site, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            line, *headers = head.decode("latin-1").split("\r\n")
            method, path = line.split(" ")[:2]
            status, ctype, body = site.answer(port, path.split("?", 1)[0])
            close = any(h.lower().startswith("connection:") and "close" in h.lower() for h in headers)
            writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                         f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
            if close:
                break
    finally:
        writer.close()


async def _serve(sets: list[CorpusSet], ports: list[int], ready: Any) -> None:
    site = _Site(sets, ports)
    servers = [await asyncio.start_server(functools.partial(_handle, site, port), "127.0.0.1", port, backlog=512)
               for port in ports]
    ready.set()
    await asyncio.gather(*(s.serve_forever() for s in servers))


def serve(sets: list[CorpusSet], ports: list[int], ready: Any) -> None:
    """Process entry point: serve the sets on the ports until killed; set `ready` once listening."""
    asyncio.run(_serve(sets, ports, ready))
