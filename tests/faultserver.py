"""A real fault-injecting HTTP server on 127.0.0.1 for the fetch and discovery tests.

Every path is one behaviour (see `FaultHandler.routes`): server errors, Retry-After, timeouts, a
trickling body, a body that ends early, 50 MB pages, a gzip bomb, a redirect loop, binaries, wrong
charsets, conditional GET (ETag / Last-Modified), robots.txt, sitemaps (index, .gz, Google News),
and feeds linking to non-public addresses. It records every request (path, headers, time) so tests
can prove what was and was not asked for.
"""

from __future__ import annotations

import gzip
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from monitor.demo.servers import BackgroundServer, _QuietHandler

ETAG = '"v1-feed"'
LAST_MODIFIED = "Mon, 01 Dec 2025 10:00:00 GMT"
BIG = 50 * 1024 * 1024
WORDS = ("The negotiators met again on Tuesday to discuss the draft agreement, and officials said "
         "that several points remained open, including the timetable for the withdrawal and the "
         "guarantees demanded by both sides. Observers described the talks as difficult but useful. ")
GERMAN = ("Die Größe der Delegation überraschte die Beobachter; außerdem äußerten sich die Minister "
          "zur Frage der Sicherheitsgarantien und zur künftigen Überwachung des Waffenstillstands. ")


@dataclass(slots=True)
class Seen:
    path: str
    headers: dict[str, str]
    at: float


@cache
def gzip_bomb() -> bytes:
    """64 MB of zeros, gzip-compressed to about 64 KB."""
    return gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


def distinct_text(seed: str, words: int = 160) -> str:
    """Article text of its own (so that articles are not near-duplicates of each other)."""
    vocab = (WORDS + GERMAN).replace(".", "").replace(",", "").replace(";", "").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocab) for _ in range(words)) + "."


def article_html(title: str, body: str | None = None, head: str = "", charset_meta: str = "utf-8") -> str:
    body = body or distinct_text(title)
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    return (f"<!doctype html><html lang=\"en\"><head>{meta}<title>{title}</title>{head}</head><body>"
            f"<article><h1>{title}</h1><p>{body}</p><p>{body}</p></article></body></html>")


def rss(base: str, items: list[tuple[str, str]], title: str = "Fault feed") -> bytes:
    entries = "".join(
        f"<item><title>{t}</title><link>{href if href.startswith('http') else base + href}</link>"
        f"<description>Feed summary of {t}: {WORDS}</description>"
        f"<pubDate>Tue, 02 Dec 2025 08:00:00 GMT</pubDate></item>"
        for t, href in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{title}</title>'
            f"<link>{base}/</link>{entries}</channel></rss>").encode()


ARTICLE_FAULTS: list[tuple[str, str]] = [
    ("Good story one", "/a/good-story-one.html"),
    ("Always 500", "/a/always-500.html"),
    ("Busy then fine", "/a/busy-then-fine.html"),
    ("Always 503", "/a/always-503.html"),
    ("Throttled 429", "/a/throttled-429.html"),
    ("Slow answer", "/a/slow-answer.html"),
    ("Trickling page", "/a/trickling-page.html"),
    ("Cut short", "/a/cut-short.html"),
    ("Huge declared", "/a/huge-declared.html"),
    ("Huge streamed", "/a/huge-streamed.html"),
    ("Gzip bomb", "/a/gzip-bomb.html"),
    ("Redirect loop", "/a/redirect-loop.html"),
    ("Annual report", "/a/annual-report.pdf"),
    ("Unlabelled blob", "/a/unlabelled-blob"),
    ("Latin one page", "/a/latin-one-page.html"),
    ("Wrong charset page", "/a/wrong-charset-page.html"),
    ("Secret story", "/private/secret-story.html"),
    ("Redirect to private", "/a/redirect-to-private.html"),
    ("Metadata service", "http://169.254.169.254/latest/meta-data/iam-story"),
    ("Private network", "http://10.0.0.1/admin/private-story"),
    ("Canonical story", "/a/canonical-story.html?utm_source=feed&utm_medium=rss"),
]


class FaultHandler(_QuietHandler):
    def do_GET(self) -> None:
        srv: FaultServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        srv.record(self.path, dict(self.headers))
        try:
            handler = srv.route(path)
            handler(self, srv)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- helpers used by routes ---------------------------------------------------------------
    def html(self, text: str, ctype: str = "text/html; charset=utf-8", encoding: str = "utf-8") -> None:
        self.send_body(200, text.encode(encoding), ctype)

    def stream(self, status: int, headers: dict[str, str], chunks: Callable[[], Any]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        for chunk in chunks():
            self.wfile.write(chunk)
            self.wfile.flush()
        self.close_connection = True


def _status(code: int, headers: dict[str, str] | None = None) -> Callable[[FaultHandler, FaultServer], None]:
    def answer(h: FaultHandler, srv: FaultServer) -> None:
        h.send_body(code, f"status {code}".encode(), "text/plain", headers)
    return answer


def _busy_then_fine(h: FaultHandler, srv: FaultServer) -> None:
    if srv.count(h.path) == 1:
        h.send_body(503, b"busy", "text/plain", {"Retry-After": "1"})
    else:
        h.html(article_html("Busy then fine"))


def _slow(h: FaultHandler, srv: FaultServer) -> None:
    time.sleep(srv.slow_s)
    h.html(article_html("Slow answer"))


def _trickle(h: FaultHandler, srv: FaultServer) -> None:
    def chunks() -> Any:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not srv.stopping.is_set():
            yield b"<"
            time.sleep(0.1)
    h.stream(200, {"Content-Type": "text/html", "Content-Length": "100000"}, chunks)


def _cut_short(h: FaultHandler, srv: FaultServer) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/html; charset=utf-8")
    h.send_header("Content-Length", "20000")
    h.end_headers()
    h.wfile.write(article_html("Cut short").encode()[:500])
    h.wfile.flush()
    h.close_connection = True


def _huge(declared: bool) -> Callable[[FaultHandler, FaultServer], None]:
    def answer(h: FaultHandler, srv: FaultServer) -> None:
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if declared:
            headers["Content-Length"] = str(BIG)

        def chunks() -> Any:
            block = b"<p>" + b"x" * 65530 + b"</p>"
            for _ in range(BIG // len(block)):
                if srv.stopping.is_set():
                    return
                yield block if declared else b"%x\r\n%s\r\n" % (len(block), block)
            if not declared:
                yield b"0\r\n\r\n"
        if not declared:
            headers["Transfer-Encoding"] = "chunked"
        h.stream(200, headers, chunks)
    return answer


def _bomb(h: FaultHandler, srv: FaultServer) -> None:
    body = gzip_bomb()
    h.send_body(200, body, "text/html; charset=utf-8", {"Content-Encoding": "gzip"})


def _redirect(to: str) -> Callable[[FaultHandler, FaultServer], None]:
    def answer(h: FaultHandler, srv: FaultServer) -> None:
        h.send_body(302, b"", "text/plain", {"Location": to})
    return answer


def _binary(ctype: str | None, magic: bytes) -> Callable[[FaultHandler, FaultServer], None]:
    def answer(h: FaultHandler, srv: FaultServer) -> None:
        body = magic + bytes(range(256)) * 8192  # 2 MB
        h.send_response(200)
        if ctype:
            h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return answer


def _latin1(h: FaultHandler, srv: FaultServer) -> None:
    h.html(article_html("Größe der Delegation", GERMAN * 5, charset_meta=""), ctype="text/html",
           encoding="latin-1")


def _wrong_charset(h: FaultHandler, srv: FaultServer) -> None:
    h.html(article_html("Überwachung des Waffenstillstands", GERMAN * 5),
           ctype="text/html; charset=iso-8859-1", encoding="utf-8")


def _conditional_feed(h: FaultHandler, srv: FaultServer) -> None:
    if h.headers.get("If-None-Match") == ETAG or h.headers.get("If-Modified-Since") == LAST_MODIFIED:
        h.send_response(304)
        h.send_header("ETag", ETAG)
        h.send_header("Content-Length", "0")
        h.end_headers()
        return
    body = rss(srv.url, [("Conditional story", "/c/conditional-story.html")], "Conditional feed")
    h.send_body(200, body, "application/rss+xml", {"ETag": ETAG, "Last-Modified": LAST_MODIFIED})


def _feed(items: list[tuple[str, str]],
          ctype: str = "application/rss+xml") -> Callable[[FaultHandler, FaultServer], None]:
    def answer(h: FaultHandler, srv: FaultServer) -> None:
        h.send_body(200, rss(srv.url, items), ctype)
    return answer


def _article(h: FaultHandler, srv: FaultServer) -> None:
    path = h.path.split("?", 1)[0]
    title = path.rsplit("/", 1)[-1].split(".")[0].replace("-", " ").capitalize()
    head = ""
    if "canonical" in path:
        head = f'<link rel="canonical" href="{srv.url}/a/the-canonical-story.html">'
    h.html(article_html(title, head=head))


def _sitemap_index(h: FaultHandler, srv: FaultServer) -> None:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{srv.url}/sm/old.xml</loc><lastmod>2020-01-01</lastmod></sitemap>"
            f"<sitemap><loc>{srv.url}/sm/news.xml.gz</loc><lastmod>2025-12-02T08:00:00Z</lastmod></sitemap>"
            f"</sitemapindex>")
    h.send_body(200, body.encode(), "application/xml")


def news_sitemap(base: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
            f'xmlns:news="http://www.google.com/schemas/sitemap-news/0.9">'
            f"<url><loc>{base}/n/news-story-one.html?utm_campaign=x</loc><news:news>"
            f"<news:publication><news:name>Fault News</news:name><news:language>en</news:language>"
            f"</news:publication><news:publication_date>2025-12-02T07:30:00+01:00</news:publication_date>"
            f"<news:title>News story one</news:title></news:news></url>"
            f"<url><loc>{base}/n/news-story-two.html</loc><lastmod>2025-12-01</lastmod></url>"
            f"</urlset>").encode()


def _news_gz(h: FaultHandler, srv: FaultServer) -> None:
    h.send_body(200, gzip.compress(news_sitemap(srv.url)), "application/x-gzip")


def _old_sitemap(h: FaultHandler, srv: FaultServer) -> None:
    body = (f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>{srv.url}/n/old-story-archive.html</loc></url></urlset>")
    h.send_body(200, body.encode(), "application/xml")


def _homepage(h: FaultHandler, srv: FaultServer) -> None:
    h.html('<!doctype html><html><head><title>Home</title><link rel="alternate" '
           'type="application/rss+xml" href="/home/feed.xml"></head><body>Home</body></html>')


def _robots(h: FaultHandler, srv: FaultServer) -> None:
    h.send_body(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")


class FaultServer(BackgroundServer):
    """Use as a context manager; `url` is its root, `paths()` what it was asked for."""

    def __init__(self, slow_s: float = 3.0) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.slow_s = slow_s
        self.extra: dict[str, Callable[[FaultHandler, FaultServer], None]] = {}
        super().__init__(FaultHandler)
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.seen.append(Seen(path, headers, time.monotonic()))

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.path == path)

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path.split("?", 1)[0] for s in self.seen]

    def route(self, path: str) -> Callable[[FaultHandler, FaultServer], None]:
        if path in self.extra:
            return self.extra[path]
        if path in ROUTES:
            return ROUTES[path]
        if path.startswith(("/a/", "/c/", "/n/", "/h/", "/private/")) and path.endswith(".html"):
            return _article
        return _status(404)


ROUTES: dict[str, Callable[[FaultHandler, FaultServer], None]] = {
    "/robots.txt": _robots,
    "/a/always-500.html": _status(500),
    "/a/busy-then-fine.html": _busy_then_fine,
    "/a/always-503.html": _status(503, {"Retry-After": "1"}),
    "/a/throttled-429.html": _status(429, {"Retry-After": "1"}),
    "/a/slow-answer.html": _slow,
    "/a/trickling-page.html": _trickle,
    "/a/cut-short.html": _cut_short,
    "/a/huge-declared.html": _huge(declared=True),
    "/a/huge-streamed.html": _huge(declared=False),
    "/a/gzip-bomb.html": _bomb,
    "/a/redirect-loop.html": _redirect("/a/redirect-loop-2.html"),
    "/a/redirect-loop-2.html": _redirect("/a/redirect-loop.html"),
    "/a/redirect-to-private.html": _redirect("http://10.0.0.1/internal/story-x"),
    "/a/annual-report.pdf": _binary("application/pdf", b"%PDF-1.7\n"),
    "/a/unlabelled-blob": _binary(None, b"\x89PNG\r\n\x1a\n"),
    "/a/latin-one-page.html": _latin1,
    "/a/wrong-charset-page.html": _wrong_charset,
    "/faults/feed.xml": _feed(ARTICLE_FAULTS),
    "/c/feed.xml": _conditional_feed,
    "/home/": _homepage,
    "/home/feed.xml": _feed([("Home story", "/h/home-story-one.html")]),
    "/sm/index.xml": _sitemap_index,
    "/sm/news.xml.gz": _news_gz,
    "/sm/old.xml": _old_sitemap,
    "/src/always-500.xml": _status(500),
    "/src/always-503.xml": _status(503, {"Retry-After": "1"}),
    "/src/throttled-429.xml": _status(429, {"Retry-After": "1"}),
    "/src/trickle.xml": _trickle,
    "/src/gzip-bomb.xml": _bomb,
    "/src/redirect-loop.xml": _redirect("/src/redirect-loop.xml"),
    "/src/huge.xml": _huge(declared=False),
    "/private/feed.xml": _feed([("Hidden", "/private/hidden-story.html")]),
}
