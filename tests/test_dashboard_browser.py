"""The rendered dashboard in real headless Chromium, driven over the Chrome DevTools Protocol.

Checks what an analyst sees (rows per view, the plotly chart, working filters), that the page makes no
request but for its own file, logs no console error, and that a hostile article stays inert text.
Skipped only when no `chromium` binary is installed (`.ci/run` installs Debian's package).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from monitor.dashboard import DEFAULT_DIR, build_payload, load_queries, render_dashboard, render_page, run_queries
from monitor.models import Article, Development, TopicMatch
from monitor.store import StoryRow, open_store

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)"
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--hide-scrollbars", "--mute-audio", "about:blank"]
HOSTILE_TITLE = "<img src=x onerror=alert(1)>"
HOSTILE_URL = "javascript:alert(1)"


# ---- a minimal CDP client -------------------------------------------------------------------------


@dataclass
class PageLog:
    """What the page did while we watched it."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


class Cdp:
    """One websocket to the browser, one page session (flattened), events collected into a PageLog."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.session: str | None = None
        self.log = PageLog()
        self.loaded = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                fut = self.pending.pop(msg["id"])
                if "error" in msg:
                    fut.set_exception(RuntimeError(f"CDP error: {msg['error']}"))
                else:
                    fut.set_result(msg.get("result", {}))
            elif "method" in msg:
                await self._event(msg["method"], msg.get("params", {}))

    async def _event(self, method: str, p: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.log.requests.append(p["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.log.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.log.console_errors.append(p["entry"].get("text", ""))
        elif method == "Runtime.exceptionThrown":
            self.log.exceptions.append(json.dumps(p["exceptionDetails"])[:500])
        elif method == "Page.javascriptDialogOpening":
            self.log.dialogs.append(p.get("message", ""))
            task = asyncio.create_task(self.send("Page.handleJavaScriptDialog", accept=False))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def send(self, method: str, *, browser: bool = False, **params: Any) -> Any:
        i = next(self.ids)
        msg: dict[str, Any] = {"id": i, "method": method, "params": params}
        if self.session and not browser:
            msg["sessionId"] = self.session
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(json.dumps(msg))
        return await asyncio.wait_for(fut, 60)

    async def open_page(self) -> None:
        target = await self.send("Target.createTarget", browser=True, url="about:blank")
        att = await self.send("Target.attachToTarget", browser=True, targetId=target["targetId"], flatten=True)
        self.session = att["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=1366, height=900, deviceScaleFactor=1,
                        mobile=False)

    async def navigate(self, url: str) -> None:
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 60)

    async def js(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                                     "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = path.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Cdp]:
    """A fresh headless Chromium (own profile dir) with one page attached."""
    import websockets

    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="dash-chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ws_url = await _devtools_url(Path(profile), proc)
            async with websockets.connect(ws_url, max_size=None) as ws:
                cdp = Cdp(ws)
                await cdp.open_page()
                try:
                    yield cdp
                finally:
                    cdp.reader.cancel()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _devtools_url(profile: Path, proc: subprocess.Popen[bytes]) -> str:
    port_file = profile / "DevToolsActivePort"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if port_file.exists():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise RuntimeError("chromium did not open its DevTools port")


# ---- what the page shows ----------------------------------------------------------------------------

SNAPSHOT_JS = r"""
(() => {
  const text = (n) => n ? n.textContent : null;
  const devs = {};
  document.querySelectorAll('#developments section.topic').forEach((s) => {
    devs[s.getAttribute('data-topic')] = [...s.querySelectorAll('li.dev')].map((li) => ({
      title: text(li.querySelector('.title')), tag: li.querySelector('.title').tagName,
      href: li.querySelector('.title').getAttribute('href'), when: text(li.querySelector('time')),
      kind: li.getAttribute('data-kind'), outlet: text(li.querySelector('.outlet')),
      lang: text(li.querySelector('.lang')), chips: [...li.querySelectorAll('.chip')].map(text)}));
  });
  const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')].map(
    (tr) => [...tr.children].map((td) => td.textContent));
  const chart = document.getElementById('volume-chart');
  const traces = (chart.data || []).filter((t) => t.type === 'bar');
  return {
    developments: devs,
    stories: rows('stories'),
    storyLinks: [...document.querySelectorAll('#stories tbody tr td:first-child > *')].map(
      (n) => ({tag: n.tagName, text: n.textContent, href: n.getAttribute('href')})),
    health: rows('source_health'),
    extra: rows('extra'),
    extraLinks: [...document.querySelectorAll('#extra a[href]')].map((a) => a.getAttribute('href')),
    chart: {svg: chart.querySelectorAll('svg.main-svg').length,
            bars: chart.querySelectorAll('g.barlayer g.point path').length,
            traces: traces.map((t) => t.name),
            total: traces.reduce((n, t) => n + t.y.reduce((a, b) => a + b, 0), 0),
            hidden: chart.hidden},
    links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
    topics: [...document.querySelectorAll('#f-topic option')].map((o) => o.textContent),
    imgs: document.querySelectorAll('img').length,
    filter: {topic: document.getElementById('f-topic').value, from: document.getElementById('f-from').value,
             to: document.getElementById('f-to').value},
    hash: location.hash,
    pwned: window.__pwned === true,
  };
})()
"""


def set_filters_js(topic: str | None = None, start: str | None = None, end: str | None = None) -> str:
    steps = []
    for elem_id, value in (("f-topic", topic), ("f-from", start), ("f-to", end)):
        if value is not None:
            steps.append(f"(() => {{ const i = document.getElementById({json.dumps(elem_id)}); "
                         f"i.value = {json.dumps(value)}; i.dispatchEvent(new Event('change')); }})();")
    return "\n".join(steps) + "\ntrue"


async def wait_for_chart(cdp: Cdp) -> None:
    for _ in range(200):
        if await cdp.js("document.querySelectorAll('#volume-chart svg.main-svg').length > 0"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the plotly chart never rendered")


def external_requests(log: PageLog, page: Path) -> list[str]:
    """Requests other than the page itself (inline data: images are not requests to anywhere)."""
    return [u for u in log.requests if u != page.as_uri() and not u.startswith("data:")]


# ---- the demo --------------------------------------------------------------------------------------


def _expected(db: Path) -> dict[str, Any]:
    """What the views must show, straight from the database's tables and analyst views."""
    con = duckdb.connect(str(db), read_only=True)

    def one(sql: str, params: list[Any] | None = None) -> Any:
        row = con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    try:
        per_topic = dict(con.execute("SELECT topic, count(*) FROM developments GROUP BY topic").fetchall())
        titles = {t: [r[0] for r in con.execute(
            "SELECT title FROM developments WHERE topic = ? ORDER BY first_seen DESC, id", [t]).fetchall()]
            for t in per_topic}
        last_day = one("SELECT max(CAST(first_seen AS DATE)) FROM developments")
        on_last_day = dict(con.execute(
            "SELECT topic, count(*) FROM developments WHERE CAST(first_seen AS DATE) = ? GROUP BY topic",
            [last_day]).fetchall())
        stories = one("SELECT count(DISTINCT story_id) FROM articles WHERE story_id IS NOT NULL")
        ukraine_stories = one("SELECT count(*) FROM stories WHERE list_contains(topics, 'ukraine-peace-talks') "
                              "AND id IN (SELECT story_id FROM articles)")
        tagged = one("SELECT count(DISTINCT a.id) FROM articles a JOIN article_topics t ON t.article_id = a.id "
                     "WHERE a.status IN ('ok', 'duplicate')")
        ukraine_tagged = one("SELECT count(*) FROM articles a JOIN article_topics t ON t.article_id = a.id "
                             "WHERE a.status IN ('ok', 'duplicate') AND t.topic = 'ukraine-peace-talks'")
        langs = {r[0] for r in con.execute(
            "SELECT DISTINCT coalesce(a.lang, '?') FROM articles a JOIN article_topics t ON t.article_id = a.id "
            "WHERE a.status IN ('ok', 'duplicate')").fetchall()}
        sources = [r[0] for r in con.execute("SELECT name FROM sources ORDER BY name").fetchall()]
    finally:
        con.close()
    return {"per_topic": per_topic, "titles": titles, "last_day": last_day.isoformat(),
            "on_last_day": on_last_day, "stories": stories, "ukraine_stories": ukraine_stories,
            "tagged": tagged, "ukraine_tagged": ukraine_tagged, "langs": langs, "sources": sources}


def test_demo_dashboard_in_chromium(demo_config: Path, prefect_harness: None) -> None:
    from flows.ingest import run_once

    stats = run_once(str(demo_config))
    page = Path(stats["dashboard"])
    want = _expected(Path(stats["database"]))
    assert want["per_topic"].get("ukraine-peace-talks", 0) > 0, "the demo should flag ukraine developments"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], PageLog]:
        async with chromium() as cdp:
            await cdp.navigate(page.as_uri())
            await wait_for_chart(cdp)
            first = await cdp.js(SNAPSHOT_JS)
            await cdp.screenshot(ARTIFACTS / "dashboard-demo.png")
            await cdp.js(set_filters_js(topic="ukraine-peace-talks"))
            await wait_for_chart(cdp)
            topic = await cdp.js(SNAPSHOT_JS)
            await cdp.js(set_filters_js(start=want["last_day"], end=want["last_day"]))
            narrowed = await cdp.js(SNAPSHOT_JS)
            await cdp.screenshot(ARTIFACTS / "dashboard-demo-filtered.png")
            return first, topic, narrowed, cdp.log

    first, topic, narrowed, log = asyncio.run(scenario())

    # developments: one timeline per topic, every development, newest first, linked to its article
    assert {t: len(v) for t, v in first["developments"].items()} == want["per_topic"]
    for t, devs in first["developments"].items():
        assert [d["title"] for d in devs] == want["titles"][t]
        assert [d["when"] for d in devs] == sorted((d["when"] for d in devs), reverse=True)
        assert all(d["tag"] == "A" and d["href"].startswith("http://127.0.0.1:") for d in devs)
        assert all(d["outlet"] and d["lang"] and d["chips"] for d in devs)
    assert first["chart"]["svg"] > 0 and first["chart"]["bars"] > 0 and not first["chart"]["hidden"]
    assert set(first["chart"]["traces"]) == want["langs"]
    assert first["chart"]["total"] == want["tagged"]
    assert len(first["stories"]) == want["stories"]
    assert any(int(r[7]) > 0 for r in first["stories"]), "the demo's main story has flagged updates"
    assert sorted(r[0] for r in first["health"]) == want["sources"]
    assert all(r[1] == "ok" for r in first["health"])
    # the topic filter narrows every filtered view, and the date range narrows it further
    assert list(topic["developments"]) == ["ukraine-peace-talks"]
    assert len(topic["developments"]["ukraine-peace-talks"]) == want["per_topic"]["ukraine-peace-talks"]
    assert len(topic["stories"]) == want["ukraine_stories"] < want["stories"]
    assert topic["chart"]["total"] == want["ukraine_tagged"]
    assert "topic=ukraine-peace-talks" in topic["hash"]
    shown = {t: len(v) for t, v in narrowed["developments"].items()}
    assert shown == {t: n for t, n in want["on_last_day"].items() if t == "ukraine-peace-talks"}
    assert narrowed["filter"] == {"topic": "ukraine-peace-talks", "from": want["last_day"], "to": want["last_day"]}
    # a quiet, self-contained page
    assert log.console_errors == [] and log.exceptions == [] and log.dialogs == []
    assert page.as_uri() in log.requests and external_requests(log, page) == []
    assert (ARTIFACTS / "dashboard-demo.png").stat().st_size > 10_000


# ---- a hostile feed ----------------------------------------------------------------------------------

HOSTILE_TOPIC = "</script><script>window.__pwned=true</script>"
HOSTILE_ERROR = "<script>window.__pwned=true</script> 500"
SAFE_URL = "https://example.org/news/a?b=1&c=<x>"


def _hostile_db(path: Path) -> None:
    """A database holding what a hostile feed could put there, written through the real Store."""
    at = datetime(2025, 11, 20, 9, 30, tzinfo=UTC)
    with open_store(path) as store:
        store.sync_sources([("evil", "http://127.0.0.1:9/feed.xml", "rss", "<b onmouseover=alert(2)>Evil</b>"),
                            ("fine", "https://example.org/feed.xml", "rss", "Fine & Co")])
        store.record_source_poll("evil", ok=False, error=HOSTILE_ERROR, latency_ms=10.0, not_modified=False,
                                 etag=None, last_modified=None, new_articles=0, next_poll_after=None, at=at)
        arts = [Article(id="bad1", url=HOSTILE_URL, source_id="evil", status="ok", title=HOSTILE_TITLE,
                        lang="en", published=at, fetched_at=at, story_id="s-bad"),
                Article(id="good1", url=SAFE_URL, source_id="fine", status="ok", title="A & B <ok>",
                        lang="de", published=at, fetched_at=at, story_id="s-good")]
        store.write_articles(arts, "run-1", store_html=False)
        store.write_topic_matches([TopicMatch("bad1", HOSTILE_TOPIC, 1.0, {}),
                                   TopicMatch("good1", HOSTILE_TOPIC, 1.0, {})])
        store.upsert_stories([StoryRow(a.story_id or "", a.title, at, at, a.id, [HOSTILE_TOPIC], [], False)
                              for a in arts])
        new = {"new_facts": {"names": ["<script>window.__pwned=true</script>"], "numbers": ["<i>1</i>"]}}
        store.write_developments([
            Development(id=f"d-{a.id}", kind="new_story", story_id=a.story_id or "", topic=HOSTILE_TOPIC,
                        article_id=a.id, score=1.0, what_is_new=new, compared_with=[], first_seen=at,
                        source_id=a.source_id) for a in arts], "run-1")


async def _look(cdp: Cdp, page: Path) -> dict[str, Any]:
    await cdp.navigate(page.as_uri())
    await wait_for_chart(cdp)
    return dict(await cdp.js(SNAPSHOT_JS))


def test_hostile_article_stays_text(tmp_path: Path) -> None:
    db = tmp_path / "hostile.duckdb"
    _hostile_db(db)
    page = tmp_path / "dashboard.html"
    folder = tmp_path / "dashboards"  # the shipped definition plus one analyst-added query
    shutil.copytree(DEFAULT_DIR, folder)
    (folder / "50_articles.sql").write_text("-- title: Articles\nSELECT title, url FROM articles ORDER BY id")
    with open_store(db, read_only=True) as store:
        render_dashboard(store.con, page, folder=folder)
        payload = build_payload(run_queries(store.con, load_queries(DEFAULT_DIR)), datetime.now(UTC))
    html = page.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html, re.S)
    assert data is not None and "<" not in data.group(1) and "javascript:" not in data.group(1)
    assert HOSTILE_TITLE not in html and HOSTILE_TOPIC not in html
    # the same page without its CSP: escaping alone must hold, so an executed payload would show here
    bare = tmp_path / "no-csp.html"
    bare.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html), encoding="utf-8")
    assert "Content-Security-Policy" not in bare.read_text(encoding="utf-8")
    # the page's own JS must refuse a javascript: URL even if one got past the Python side
    for row in payload["datasets"]["developments"]["rows"] + payload["datasets"]["stories"]["rows"]:
        if row["url"] is None:
            row["url"] = HOSTILE_URL
    raw = tmp_path / "raw-url.html"
    raw.write_text(render_page(payload), encoding="utf-8")
    assert HOSTILE_URL in raw.read_text(encoding="utf-8")

    async def scenario() -> tuple[list[dict[str, Any]], PageLog]:
        async with chromium() as cdp:
            seen = [await _look(cdp, p) for p in (page, bare, raw)]
            await cdp.screenshot(ARTIFACTS / "dashboard-hostile.png")
            return seen, cdp.log

    seen, log = asyncio.run(scenario())
    for view in seen:
        devs = {d["title"]: d for d in view["developments"][HOSTILE_TOPIC]}
        assert devs[HOSTILE_TITLE]["tag"] == "SPAN" and devs[HOSTILE_TITLE]["href"] is None
        assert devs["A & B <ok>"]["tag"] == "A" and devs["A & B <ok>"]["href"] == SAFE_URL
        assert "<script>window.__pwned=true</script>" in devs[HOSTILE_TITLE]["chips"]
        links = {s["text"]: s for s in view["storyLinks"]}
        assert links[HOSTILE_TITLE]["tag"] == "SPAN" and links["A & B <ok>"]["tag"] == "A"
        assert not any(u.lower().startswith("javascript") for u in view["links"])
        assert HOSTILE_TOPIC in view["topics"]
        evil = next(r for r in view["health"] if r[0] == "<b onmouseover=alert(2)>Evil</b>")
        assert "failing" in evil[1] and evil[-1] == HOSTILE_ERROR
        assert view["imgs"] == 0 and view["pwned"] is False
    assert sorted(seen[0]["extra"]) == sorted([["A & B <ok>", SAFE_URL], [HOSTILE_TITLE, ""]])
    assert seen[0]["extraLinks"] == [SAFE_URL]
    assert log.dialogs == [] and log.exceptions == [] and log.console_errors == []
    assert all(u.startswith("data:") or u in {p.as_uri() for p in (page, bare, raw)} for u in log.requests)
