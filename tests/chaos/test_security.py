"""Security faults: SSRF (direct, through redirects, through feed links), hostile titles in the dashboard
and in chat payloads, webhook URLs kept out of every log, output and the database.

No traffic ever leaves loopback: a guard on socket.connect refuses (and records) any non-loopback
destination for the whole module, and the loopback targets the fetcher must refuse are live listeners
that count hits (the claim is "zero hits", not "an error message").
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.chaos.chaoslib import TOKEN, CleanRun, FaultTable, Servers, cli_cmd, cli_env, run_cli, write_config

from monitor import alerts
from monitor.config import ChannelConfig, FetchConfig, SourceConfig
from monitor.dashboard import render_dashboard
from monitor.errors import PermanentFetchError
from monitor.fetch import AddressPolicy, FetchRequest, fetch_all
from monitor.sources import parse_source_document

OUTBOUND: list[Any] = []
ROWS: dict[str, tuple[int, int, str]] = {}


@pytest.fixture(autouse=True, scope="module")
def loopback_only() -> Iterator[None]:
    """Refuse (and record) any connection this process attempts to a non-loopback address."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(addr: Any) -> bool:
        if not isinstance(addr, tuple):
            return True  # unix sockets
        try:
            return ipaddress.ip_address(str(addr[0]).split("%")[0]).is_loopback
        except ValueError:
            return False

    def connect(self: socket.socket, addr: Any) -> None:
        if not allowed(addr):
            OUTBOUND.append(addr)
            raise ConnectionRefusedError(f"chaos guard: {addr} is not loopback")
        return real_connect(self, addr)

    def connect_ex(self: socket.socket, addr: Any) -> int:
        if not allowed(addr):
            OUTBOUND.append(addr)
            return 111
        return real_connect_ex(self, addr)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]


class _Counting(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        srv: Any = self.server
        srv.hits.append(self.path)
        if self.path.startswith("/r?to="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/r?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = srv.body
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(host: str, body: bytes = b"") -> Any:
    srv: Any = ThreadingHTTPServer((host, 0), _Counting)
    srv.hits, srv.body, srv.daemon_threads = [], body, True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


SSRF_URLS = [
    "http://127.0.0.1/", "http://10.0.0.1/", "http://10.255.255.254:8080/x", "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "gopher://127.0.0.1:25/", "ftp://10.0.0.1/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::]/", "http://[fe80::1]/", "http://[fd00::1]/",
    "http://0.0.0.0/", "http://localhost/", "http://2130706433/", "http://100.64.0.1/",
]


def test_ssrf_refused_before_any_traffic() -> None:
    policy = AddressPolicy([])
    reasons = {}
    for url in SSRF_URLS:
        with pytest.raises(PermanentFetchError) as err:
            asyncio.run(policy.check(url))
        reasons[url] = err.value.reason
        assert re.search(r"refused|not allowed|DNS lookup", err.value.reason), (url, err.value.reason)
    assert "localhost resolves to" in reasons["http://localhost/"]
    assert not OUTBOUND
    ROWS["SSRF: direct URLs (policy)"] = (len(SSRF_URLS), len(SSRF_URLS),
                                          f"e.g. {reasons['http://[::ffff:127.0.0.1]/']}")


def test_ssrf_through_redirects_and_feed_links() -> None:
    """The origin is allowed (127.0.0.2); what it points to is not, and never gets a single request."""
    victim = serve("127.0.0.1", b"secret")
    vport = victim.server_address[1]
    targets = [f"http://127.0.0.1:{vport}/admin", f"http://localhost:{vport}/admin",
               f"http://[::ffff:127.0.0.1]:{vport}/admin", "http://10.0.0.1/", "http://169.254.169.254/latest/",
               "file:///etc/passwd", f"http://[::1]:{vport}/", f"http://2130706433:{vport}/"]
    items = "".join(f"<item><title>t{i}</title><link>{t}</link></item>" for i, t in enumerate(targets))
    origin = serve("127.0.0.2", f'<rss version="2.0"><channel>{items}</channel></rss>'.encode())
    base = f"http://127.0.0.2:{origin.server_address[1]}"
    cfg = FetchConfig(allow_private=["127.0.0.2"], min_delay_s=0, retries=0, respect_robots=False)
    try:
        results = fetch_all(cfg, [FetchRequest(f"{base}/r?to={t}") for t in targets])
        src = SourceConfig(id="hostile", url=f"{base}/feed.xml", kind="rss", allow_offsite=True)
        feed = fetch_all(cfg, [FetchRequest(f"{base}/feed.xml", purpose="source")])[0]
        links = parse_source_document(src, feed.content or b"", feed.final_url, feed.content_type).links
        via_feed = fetch_all(cfg, [FetchRequest(ln.url) for ln in links])
    finally:
        victim.shutdown()
        origin.shutdown()
    errors = [r.error or "" for r in results + via_feed]
    assert all(re.search(r"refused|not allowed", e) for e in errors), errors
    assert victim.hits == [] and not OUTBOUND, (victim.hits, OUTBOUND)
    ROWS["SSRF: redirects + feed links to private targets"] = (
        len(errors), sum(bool(re.search(r"refused|not allowed", e)) for e in errors),
        f"{len(targets)} redirects, {len(links)} feed links; victim listener hits: {len(victim.hits)}")


HOSTILE = ['</script><script>alert("x")</script>', '<img src=x onerror=alert(1)>',
           "<!channel> @everyone @here @channel <users/all> <a href=http://evil.example>x</a>",
           "[click](http://evil.example) <http://evil.example|click> <@U0123>", "\u2028\u2029 ${{7*7}} {{7*7}}"]


def test_hostile_titles_in_dashboard(tmp_path: Path, clean_run: CleanRun) -> None:
    db = tmp_path / "hostile.duckdb"
    shutil.copy(clean_run.db, db)
    con = duckdb.connect(str(db))
    try:
        plain = render_dashboard(con, tmp_path / "plain.html").read_text()
        con.execute("UPDATE articles SET title = ? || ' ' || coalesce(title, ''), url = url || '#\"><x>'",
                    [" ".join(HOSTILE)])
        con.execute("UPDATE stories SET title = ?", [HOSTILE[0]])
        page = render_dashboard(con, tmp_path / "hostile.html").read_text()
    finally:
        con.close()
    tags = re.compile(r"<script\b|<img\b|<x>", re.IGNORECASE)
    assert len(tags.findall(page)) == len(tags.findall(plain)), "a title added markup to the page"
    assert "Content-Security-Policy" in page and "alert(" in page  # the titles are there, as inert data
    ROWS["hostile titles → dashboard"] = (1, 1, "no added <script>/<img> tags; CSP present")


def rendered_markup(kind: str, payload: dict[str, Any]) -> str:
    """The parts of a payload the chat service renders as markup (plain-text fields cannot inject)."""
    if kind == "googlechat":
        widgets = payload["cardsV2"][0]["card"]["sections"][0]["widgets"]
        return json.dumps([w.get("textParagraph") or w.get("decoratedText") for w in widgets], ensure_ascii=False)
    return json.dumps(payload, ensure_ascii=False)


MARKUP_RISKS = {  # what would turn hostile text into a ping, a link or markup on each service
    "slack": ("<!channel>", "@everyone", "@here", "<@U0123>", "<http://evil.example|", "<script>"),
    "teams": ("@everyone", "@here", "[click](http://evil"),
    "discord": ("@everyone", "@here", "<@U0123>", "[click](http://evil"),
    "mattermost": ("@everyone", "@here", "@channel", "[click](http://evil"),
    "googlechat": ("<users/all>", "<script>", "<img ", "<a href"),
}


@pytest.mark.parametrize("kind", [*MARKUP_RISKS, "generic"])
def test_hostile_titles_in_chat(kind: str) -> None:
    ch = ChannelConfig(name="c", type=kind, url="https://hooks.example.org/x")  # type: ignore[arg-type]
    fields = alerts.sample_fields() | {"title": " ".join(HOSTILE), "outlet": HOSTILE[2], "topic_name": HOSTILE[3]}
    payload = alerts.render(ch, fields)
    if kind == "generic":  # JSON for programs: the title must arrive exactly as the outlet wrote it
        assert payload.get("title") == fields["title"] or fields["title"] in json.dumps(payload, ensure_ascii=False)
        ROWS["hostile titles → generic payload"] = (1, 1, "title passed verbatim as JSON data")
        return
    text = rendered_markup(kind, payload)
    found = [bad for bad in MARKUP_RISKS[kind] if bad in text]
    ROWS[f"hostile titles → {kind} payload"] = (1, int(not found), f"raw: {found}" if found else "defanged/escaped")
    assert not found, text[:600]


def test_webhook_urls_absent_everywhere(tmp_path: Path, servers: Servers, clean_run: CleanRun) -> None:
    """Three failing channels (404, 500, connection refused): their URLs appear in no output, log or row."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    token2, token3 = TOKEN + "-dead", TOKEN + "-five-hundred"
    extra = ''.join(f'\n[[alerts.channels]]\nname = "{n}"\ntype = "{t}"\nurl = "${{{v}}}"\n'
                    for n, t, v in (("dead", "generic", "DEAD_HOOK"), ("flaky", "discord", "FLAKY_HOOK")))
    data = tmp_path / "data"
    config = write_config(tmp_path, data, extra)
    env = cli_env(servers)
    env["DEAD_HOOK"] = f"http://127.0.0.1:{closed}/hooks/{token2}"
    env["FLAKY_HOOK"] = f"{servers.hook.url}/api/webhooks/{token3}"
    servers.reset()
    servers.hook.hook = lambda path, body: (404, {}, f"no such hook {path}".encode()) if TOKEN in path and \
        "five" not in path else (500, {}, f"boom at {path}".encode())
    res = run_cli([*cli_cmd(config)[:-2], "--format", "table"], env, tmp_path)
    servers.reset()
    assert res.returncode == 0, res.stderr[-2000:]
    places = {"stdout": res.stdout, "stderr": res.stderr}
    for f in sorted((data / "logs").rglob("*")) if (data / "logs").exists() else []:
        if f.is_file():
            places[str(f.relative_to(tmp_path))] = f.read_text(errors="replace")
    page = data / "dashboard.html"
    places["dashboard"] = page.read_text() if page.exists() else ""
    con = duckdb.connect(str(data / "demo.duckdb"), read_only=True)
    try:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        for schema, table in tables:
            rows = con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            places[f"db:{schema}.{table}"] = json.dumps(rows, default=str)
        errors = con.execute("SELECT channel, last_error FROM alerts WHERE last_error IS NOT NULL").fetchall()
    finally:
        con.close()
    leaks = [where for where, text in places.items() for t in (TOKEN, token2, token3) if t in text]
    assert {c for c, _ in errors} >= {"demo-slack", "dead", "flaky"}, errors  # the failures were recorded
    ROWS["webhook URLs in logs/outputs/database"] = (
        1, int(not leaks), f"3 failing channels (404, 500, refused); searched {len(places)} places; "
        f"leaks: {sorted(set(leaks)) or 'none'}; e.g. last_error {errors[0][1][:60]!r}")
    assert not leaks, leaks


def test_zz_security_rows(fault_table: FaultTable) -> None:
    assert ROWS, "no security fault was tried"
    for name, (runs, passed, note) in ROWS.items():
        fault_table.add(name, runs, passed, note)
    fault_table.add("no traffic to non-loopback addresses", 1, int(not OUTBOUND), f"attempts: {len(OUTBOUND)}")
