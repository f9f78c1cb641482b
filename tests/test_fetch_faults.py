"""Fetching against a real fault-injecting server on 127.0.0.1: every fault ends as a readable reason,
nothing is sent to non-public addresses, and the other sources of a run are still stored."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import duckdb
import pytest
from tests.faultserver import ARTICLE_FAULTS, ETAG, FaultServer

from monitor.config import FetchConfig
from monitor.demo.servers import BackgroundServer
from monitor.fetch import AddressPolicy, Fetcher, FetchRequest, embedded_ipv4, fetch_all, user_agent
from monitor.models import FetchResult

CFG = FetchConfig(allow_private=["127.0.0.1"], per_host=4, min_delay_s=0, retries=1, backoff_s=0.05,
                  connect_timeout_s=1, read_timeout_s=1, total_timeout_s=2, max_bytes=1_000_000)


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer(slow_s=3) as srv:
        yield srv


def _fetch(cfg: FetchConfig, reqs: list[FetchRequest]) -> list[FetchResult]:
    return fetch_all(cfg, reqs)


def test_every_article_fault_ends_with_a_readable_outcome(faults: FaultServer) -> None:
    urls = [href if href.startswith("http") else faults.url + href for _, href in ARTICLE_FAULTS]
    results = dict(zip(urls, _fetch(CFG, [FetchRequest(u) for u in urls]), strict=True))

    def res(path: str) -> FetchResult:
        return results[path if path.startswith("http") else faults.url + path]

    assert res("/a/good-story-one.html").ok and b"Good story one" in (res("/a/good-story-one.html").content or b"")
    assert res("/a/always-500.html").error == "HTTP 500 (after 2 attempts)"
    assert res("/a/busy-then-fine.html").ok  # 503 + Retry-After once, then served
    assert res("/a/always-503.html").error == "HTTP 503 (Retry-After 1s) (after 2 attempts)"
    assert res("/a/throttled-429.html").error == "HTTP 429 (Retry-After 1s) (after 2 attempts)"
    assert "timeout (ReadTimeout)" in (res("/a/slow-answer.html").error or "")
    assert "within 2s (deadline)" in (res("/a/trickling-page.html").error or "")
    assert "connection broken" in (res("/a/cut-short.html").error or "")
    assert res("/a/huge-declared.html").error == "body too large: 52428800 bytes declared > cap 1000000"
    assert res("/a/huge-streamed.html").error == "body too large: over 1000000 bytes"
    assert "once decompressed" in (res("/a/gzip-bomb.html").error or "")
    assert "redirect loop" in (res("/a/redirect-loop.html").error or "")
    pdf = res("/a/annual-report.pdf")
    assert pdf.ok and pdf.content == b"" and pdf.content_type == "application/pdf"
    blob = res("/a/unlabelled-blob")
    assert blob.ok and blob.content is not None and len(blob.content) <= 1024
    assert res("/private/secret-story.html").error == "disallowed by robots.txt"
    assert "redirect to http://10.0.0.1/internal/story-x refused" in (res("/a/redirect-to-private.html").error or "")
    assert res("http://169.254.169.254/latest/meta-data/iam-story").error == (
        "refused: 169.254.169.254, a non-public address (allow it in fetch.allow_private)")
    assert (res("http://10.0.0.1/admin/private-story").error or "").startswith("refused: 10.0.0.1,")
    # retries: 500/503/429 twice, 4xx never retried; robots-disallowed path never requested
    paths = faults.paths()
    assert paths.count("/a/always-500.html") == 2
    assert paths.count("/a/throttled-429.html") == 2
    assert "/private/secret-story.html" not in paths
    assert paths.count("/robots.txt") == 1  # cached per host


def test_retry_after_is_waited_for(faults: FaultServer) -> None:
    [res] = _fetch(CFG, [FetchRequest(faults.url + "/a/busy-then-fine.html")])
    assert res.ok
    times = [s.at for s in faults.seen if s.path == "/a/busy-then-fine.html"]
    assert len(times) == 2 and times[1] - times[0] >= 0.95  # a lower bound: load only adds to it


def test_no_retry_for_404(faults: FaultServer) -> None:
    [res] = _fetch(CFG, [FetchRequest(faults.url + "/a/missing")])
    assert res.error == "HTTP 404" and not res.retryable
    assert faults.paths().count("/a/missing") == 1


def test_conditional_get_sends_validators_and_reads_304(faults: FaultServer) -> None:
    url = faults.url + "/c/feed.xml"
    [first] = _fetch(CFG, [FetchRequest(url, purpose="source")])
    assert first.ok and first.headers.get("etag") == ETAG
    [second] = _fetch(CFG, [FetchRequest(url, purpose="source", etag=ETAG)])
    assert second.not_modified and second.status_code == 304 and second.content is None
    assert [s.headers.get("If-None-Match") for s in faults.seen if s.path == "/c/feed.xml"] == [None, ETAG]


def test_robots_override_for_owned_sources(faults: FaultServer) -> None:
    [res] = _fetch(CFG, [FetchRequest(faults.url + "/private/feed.xml", purpose="source", ignore_robots=True)])
    assert res.ok


def test_user_agent_names_project_and_contact(faults: FaultServer) -> None:
    cfg = CFG.model_copy(update={"user_agent": "desk-monitor/2", "contact_url": "https://desk.example/bot"})
    _fetch(cfg, [FetchRequest(faults.url + "/a/good-story-one.html")])
    ua = {s.headers.get("User-Agent") for s in faults.seen}
    assert ua == {"desk-monitor/2 (+https://desk.example/bot)"} == {user_agent(cfg)}


@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a non-public"),
    ("http://10.0.0.1/", "10.0.0.1, a non-public"),
    ("http://[::1]:9/", "::1, a non-public"),
    ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1, a non-public"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe, a non-public"),
    ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1, a non-public"),
    ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1, a non-public"),
    ("http://localhost:9/", "localhost resolves to 127.0.0.1"),
    ("http://2130706433/", "2130706433 resolves to 127.0.0.1"),
    ("http://0.0.0.0/", "0.0.0.0, a non-public"),
    ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
])
def test_address_guard_refuses_before_connecting(url: str, why: str) -> None:
    cfg = FetchConfig(retries=0)  # nothing allowed, not even 127.0.0.1
    [res] = _fetch(cfg, [FetchRequest(url)])
    assert res.error is not None and why in res.error, res.error
    assert res.status_code is None and not res.retryable


def test_guard_allows_configured_hosts_and_ranges() -> None:
    policy = AddressPolicy(["127.0.0.1", "10.1.0.0/16"])
    assert policy.ip_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.ip_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.ip_allowed(ipaddress.ip_address("10.1.2.3"))
    assert not policy.ip_allowed(ipaddress.ip_address("10.2.0.1"))
    assert not policy.ip_allowed(ipaddress.ip_address("127.0.0.2"))
    assert policy.ip_allowed(ipaddress.ip_address("93.184.215.14"))
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address("10.0.0.1")


def test_connection_layer_rechecks_addresses(faults: FaultServer) -> None:
    """Even if the pre-check is skipped (as after a DNS change), the connect-time guard refuses."""

    async def run() -> FetchResult:
        async with Fetcher(FetchConfig(retries=0, respect_robots=False)) as f:
            async def no_check(url: str, allow_private: bool = False) -> None:
                return None
            f.policy.check = no_check  # type: ignore[method-assign]
            return await f.fetch(FetchRequest(faults.url + "/a/good-story-one.html"))

    res = asyncio.run(run())
    assert res.error is not None and res.error.startswith("refused: 127.0.0.1"), res.error
    assert faults.seen == []


def test_per_host_limit_holds(faults: FaultServer) -> None:
    cfg = CFG.model_copy(update={"per_host": 2, "concurrency": 16})

    async def run() -> dict[str, int]:
        async with Fetcher(cfg) as f:
            await f.fetch_many([FetchRequest(f"{faults.url}/a/story-{i}-x.html") for i in range(30)])
            return f.max_concurrency_seen

    seen = asyncio.run(run())
    assert max(seen.values()) <= 2 and len(faults.seen) == 31


class _KeepAlive(BaseHTTPRequestHandler):
    """An HTTP/1.1 page server that counts the TCP connections it accepts."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections += 1  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        robots = self.path == "/robots.txt"
        body = b"User-agent: *\nAllow: /\n" if robots else b"<html><body><p>page</p></body></html>"
        if self.path.startswith("/gone"):  # an error page, as sites send them: a small HTML body
            body = b"<html><body><h1>404 Not Found</h1>" + b"<p>not here</p>" * 200 + b"</body></html>"
        self.send_response(404 if self.path.startswith("/gone") else 200)
        self.send_header("Content-Type", "text/plain" if robots else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_connections_to_each_host_are_kept_while_other_hosts_are_fetched() -> None:
    """Three hosts, two connections each, but only two requests in flight at once (concurrency): one
    pool for all hosts would close one host's idle connections to open another's, again and again."""
    servers = [BackgroundServer(_KeepAlive) for _ in range(3)]
    for srv in servers:
        srv.httpd.connections, srv.httpd.lock = 0, threading.Lock()  # type: ignore[attr-defined]
    cfg = CFG.model_copy(update={"per_host": 2, "concurrency": 2})
    with servers[0], servers[1], servers[2]:
        urls = [f"{servers[i % 3].url}/p{i}.html" for i in range(60)]
        results = _fetch(cfg, [FetchRequest(u) for u in urls])
        assert all(r.ok for r in results)
        assert max(srv.httpd.connections for srv in servers) <= 2  # type: ignore[attr-defined]


def test_an_error_answer_leaves_its_connection_open_for_the_next_request() -> None:
    """A 404 whose small body is left unread cannot give its connection back: the next request to the
    host would open a new one (a handshake more, and a site counting connections sees more of us)."""
    srv = BackgroundServer(_KeepAlive)
    srv.httpd.connections, srv.httpd.lock = 0, threading.Lock()  # type: ignore[attr-defined]
    cfg = CFG.model_copy(update={"per_host": 1, "concurrency": 1})
    with srv:
        results = _fetch(cfg, [FetchRequest(f"{srv.url}/{'gone' if i % 2 else 'p'}{i}.html") for i in range(20)])
        assert [r.ok for r in results] == [i % 2 == 0 for i in range(20)]
        assert all("HTTP 404" in (r.error or "") for r in results if not r.ok)
        assert srv.httpd.connections == 1  # type: ignore[attr-defined]


# ---- the real flow: good demo sources plus faulty ones --------------------------------------------


FAULT_SOURCES = """
[[sources]]
id = "faults"
url = "{base}/faults/feed.xml"
kind = "rss"
allow_offsite = true

[[sources]]
id = "conditional"
url = "{base}/c/feed.xml"
kind = "rss"

[[sources]]
id = "src-500"
url = "{base}/src/always-500.xml"

[[sources]]
id = "src-503"
url = "{base}/src/always-503.xml"

[[sources]]
id = "src-trickle"
url = "{base}/src/trickle.xml"

[[sources]]
id = "src-bomb"
url = "{base}/src/gzip-bomb.xml"

[[sources]]
id = "src-loop"
url = "{base}/src/redirect-loop.xml"

[[sources]]
id = "src-robots"
url = "{base}/private/feed.xml"

[[sources]]
id = "news-sitemap"
url = "{base}/sm/index.xml"
kind = "sitemap"

[[sources]]
id = "homepage"
url = "{base}/home/"
"""


def _fault_config(demo_config: Path, faults: FaultServer) -> Path:
    mon = demo_config / "monitor.toml"
    text = mon.read_text().replace(
        "retries = 1\nbackoff_s = 0.2",
        "retries = 1\nbackoff_s = 0.05\nread_timeout_s = 1\ntotal_timeout_s = 2\nmax_bytes = 1000000")
    assert "total_timeout_s" in text
    mon.write_text(text)
    src = demo_config / "sources.toml"
    src.write_text(src.read_text() + FAULT_SOURCES.format(base=faults.url))
    return demo_config


def _rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_flow_stores_good_sources_and_records_every_fault(
        prefect_harness: None, demo_config: Path, tmp_path: Path) -> None:
    from flows.ingest import ingest

    with FaultServer(slow_s=3) as faults:
        cfg = _fault_config(demo_config, faults)
        stats = ingest(str(cfg))
        db = Path(stats["database"])
        arts = {r[0]: r[1:] for r in _rows(db, "SELECT url, status, status_reason, canonical_url, text, "
                                                "feed_title FROM articles")}
        health = {r[0]: r[1:] for r in _rows(db, "SELECT id, last_success, consecutive_failures, last_error, "
                                                  "avg_latency_ms, not_modified_ratio FROM source_health")}
        before = len(faults.seen)
        stats2 = ingest(str(cfg))
        second_paths = faults.paths()[before:]
        health2 = {r[0]: r[1:] for r in _rows(db, "SELECT id, consecutive_failures, not_modified_ratio, "
                                                   "next_poll_after FROM source_health")}
        etags = dict(_rows(db, "SELECT id, etag FROM sources"))

    # the good demo sources are all stored
    for sid in ("globalwire", "nusantara", "europa-heute", "kyiv-observer", "la-gazette"):
        assert stats["sources"][sid]["stored"] > 0, sid
        assert health[sid][0] is not None and health[sid][1] == 0
    by_path = {u.replace(faults.url, ""): v for u, v in arts.items()}

    def status(path: str) -> tuple[str, str | None]:
        return by_path[path][0], by_path[path][1]

    assert status("/a/good-story-one.html")[0] == "ok"
    assert status("/a/always-500.html") == ("failed", "fetch failed: HTTP 500 (after 2 attempts)")
    assert status("/a/always-503.html")[1] == "fetch failed: HTTP 503 (Retry-After 1s) (after 2 attempts)"
    assert status("/a/throttled-429.html")[1] == "fetch failed: HTTP 429 (Retry-After 1s) (after 2 attempts)"
    assert "deadline" in (status("/a/trickling-page.html")[1] or "")
    assert "timeout" in (status("/a/slow-answer.html")[1] or "")
    assert "connection broken" in (status("/a/cut-short.html")[1] or "")
    assert "too large" in (status("/a/huge-declared.html")[1] or "")
    assert "too large" in (status("/a/huge-streamed.html")[1] or "")
    assert "compression bomb" in (status("/a/gzip-bomb.html")[1] or "")
    assert "redirect loop" in (status("/a/redirect-loop.html")[1] or "")
    assert status("/a/annual-report.pdf") == ("not_article", "content type application/pdf is not HTML")
    assert status("/a/unlabelled-blob")[0] == "not_article"
    assert status("/private/secret-story.html") == ("failed", "fetch failed: disallowed by robots.txt")
    assert "refused" in (status("/a/redirect-to-private.html")[1] or "")
    meta = by_path["http://169.254.169.254/latest/meta-data/iam-story"]
    assert meta[0] == "failed" and "refused: 169.254.169.254" in meta[1]
    assert meta[4] == "Metadata service"  # what the feed said is kept
    assert "refused: 10.0.0.1" in by_path["http://10.0.0.1/admin/private-story"][1]
    # wrong / missing charset: the text is read correctly anyway
    assert "Größe" in (by_path["/a/latin-one-page.html"][3] or "")
    assert "Überwachung" in (by_path["/a/wrong-charset-page.html"][3] or "")
    # tracking parameters stripped; rel=canonical recorded
    canon = by_path["/a/canonical-story.html"]
    assert canon[2] == faults.url + "/a/the-canonical-story.html"
    # sitemap index -> newest .gz Google News sitemap first, with the news title
    assert "/n/news-story-one.html" in by_path and by_path["/n/news-story-one.html"][4] == "News story one"
    assert "/h/home-story-one.html" in by_path  # homepage -> discovered feed
    # failing sources: readable reasons in source_health, and the run went on
    assert health["src-500"][2] == f"{faults.url}/src/always-500.xml: HTTP 500 (after 2 attempts)"
    assert "Retry-After 1s" in health["src-503"][2]
    assert "deadline" in health["src-trickle"][2]
    assert "compression bomb" in health["src-bomb"][2]
    assert "redirect loop" in health["src-loop"][2]
    assert "disallowed by robots.txt" in health["src-robots"][2]
    assert health["src-500"][1] == 1 and health["src-500"][3] is not None
    # second run: the feed answers 304 and nothing else is asked of it
    assert etags["conditional"] == ETAG
    assert "/c/conditional-story.html" not in second_paths
    assert second_paths.count("/c/feed.xml") == 1
    assert health2["conditional"][1] == 0.5  # one 304 out of two polls
    assert stats2["sources"]["conditional"]["new"] == 0
    # failing sources back off after the second consecutive failure
    assert health2["src-500"][0] == 2 and health2["src-500"][2] is not None
    assert stats2["sources"]["faults"]["new"] == 0  # everything from the first run is known


def test_failing_source_is_skipped_while_backing_off(
        prefect_harness: None, demo_config: Path) -> None:
    from flows.ingest import ingest

    with FaultServer() as faults:
        src = demo_config / "sources.toml"
        src.write_text(f'[[sources]]\nid = "down"\nurl = "{faults.url}/src/always-500.xml"\n')
        mon = demo_config / "monitor.toml"
        mon.write_text(mon.read_text().replace("retries = 1", "retries = 0"))
        for _ in range(2):
            ingest(str(demo_config))
        asked = faults.paths().count("/src/always-500.xml")
        third = ingest(str(demo_config))
        assert faults.paths().count("/src/always-500.xml") == asked == 2
    assert (third["sources"]["down"]["skipped"] or "").startswith("skipped: backing off until")

