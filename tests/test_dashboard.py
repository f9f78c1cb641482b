"""The dashboard's data side: queries over real DuckDB files, value conversion, safe embedding, CSP.

What the page does with the data in a browser is in test_dashboard_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.dashboard import (
    DEFAULT_DIR,
    build_payload,
    date_bounds,
    embed_json,
    json_value,
    load_queries,
    render_dashboard,
    run_queries,
    safe_url,
)
from monitor.errors import StoreError
from monitor.models import Article, TopicMatch
from monitor.store import Store, open_store

NOW = datetime(2025, 11, 20, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize("url", [
    "http://example.org", "https://example.org/a?b=1&c=<x>#f", "HTTPS://EXAMPLE.ORG/", "http://127.0.0.1:8765/x",
])
def test_safe_url_keeps_http_links(url: str) -> None:
    assert safe_url(url) == url


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)", "//evil.example/x", "http:/evil",
    "https://", "http://exa mple.org", "http://example.org/\nx", "file:///etc/passwd", "", None, 42,
    "https://\\evil", "ftp://example.org/",
])
def test_safe_url_refuses_everything_else(url: object) -> None:
    assert safe_url(url) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=20))
def test_embedded_json_is_inert_in_html_and_decodes_to_the_same_value(value: object) -> None:
    text = embed_json({"v": value})
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == {"v": value}


def test_embedded_json_cannot_close_its_script() -> None:
    text = embed_json({"title": "</script><script>alert(1)</script><!--"})
    assert "</script" not in text.lower() and "<!--" not in text
    assert json.loads(text)["title"] == "</script><script>alert(1)</script><!--"


def test_json_value_normalises_duckdb_values() -> None:
    aware = datetime(2025, 11, 20, 10, 30, tzinfo=UTC) + timedelta(0)
    assert json_value(aware) == "2025-11-20T10:30:00Z"
    assert json_value(datetime(2025, 11, 20, 10, 30)) == "2025-11-20T10:30:00Z"
    assert json_value(date(2025, 11, 20)) == "2025-11-20"
    assert json_value(Decimal("1.5")) == 1.5
    assert json_value(float("nan")) is None
    assert json_value([aware, {"k": Decimal("2")}]) == ["2025-11-20T10:30:00Z", {"k": 2.0}]
    assert json_value(b"\x00") is None


def test_query_files_name_their_datasets(tmp_path: Path) -> None:
    (tmp_path / "20_second.sql").write_text("-- title: Second one\nSELECT 2 AS n")
    (tmp_path / "10_first.sql").write_text("SELECT 1 AS n")
    queries = load_queries(tmp_path)
    assert [(q.name, q.title) for q in queries] == [("first", "10_first"), ("second", "Second one")]
    assert {q.name for q in load_queries(DEFAULT_DIR)} >= {"developments", "topic_volume", "stories",
                                                           "source_health"}


def test_a_broken_query_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "10_bad.sql").write_text("SELECT * FROM no_such_table")
    with open_store(tmp_path / "db.duckdb") as store, pytest.raises(StoreError, match=r"10_bad\.sql"):
        run_queries(store.con, load_queries(tmp_path))


def _article(aid: str, topic_day: datetime, lang: str, url: str | None = None) -> Article:
    return Article(id=aid, url=url or f"https://example.org/{aid}", source_id="src", status="ok",
                   title=f"title {aid}", lang=lang, published=topic_day, fetched_at=topic_day)


def _seed(store: Store) -> None:
    store.sync_sources([("src", "https://example.org/feed", "rss", "Example")])
    day2 = NOW + timedelta(days=1)
    store.write_articles([_article("a1", NOW, "en"), _article("a2", NOW, "de"), _article("a3", day2, "en"),
                          _article("a4", day2, "en", url="javascript:alert(1)")], "run", store_html=False)
    store.write_topic_matches([TopicMatch("a1", "t1", 1.0, {}), TopicMatch("a1", "t2", 1.0, {}),
                               TopicMatch("a2", "t1", 1.0, {}), TopicMatch("a3", "t2", 1.0, {})])


def test_volume_counts_each_article_once_for_all_topics(tmp_path: Path) -> None:
    with open_store(tmp_path / "db.duckdb") as store:
        _seed(store)
        sets = {d.name: d for d in run_queries(store.con, load_queries(DEFAULT_DIR))}
    vol = {(r["day"], r["topic"], r["lang"]): r["articles"] for r in sets["topic_volume"].rows}
    assert vol == {("2025-11-20", "t1", "en"): 1, ("2025-11-20", "t2", "en"): 1, ("2025-11-20", "t1", "de"): 1,
                   ("2025-11-21", "t2", "en"): 1,
                   ("2025-11-20", None, "en"): 1, ("2025-11-20", None, "de"): 1, ("2025-11-21", None, "en"): 1}


def test_source_health_names_failing_silent_and_slow_sources(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with open_store(tmp_path / "db.duckdb") as store:
        store.sync_sources([(s, f"https://{s}.example/feed", "rss", s.title())
                            for s in ("healthy", "failing", "silent", "slow", "fresh")])

        def poll(sid: str, ok: bool, latency: float, new: int, at: datetime) -> None:
            store.record_source_poll(sid, ok=ok, error=None if ok else "HTTP 503", latency_ms=latency,
                                     not_modified=False, etag=None, last_modified=None, new_articles=new,
                                     next_poll_after=None, at=at)

        poll("healthy", True, 100, 3, now)
        poll("failing", True, 100, 3, now)
        poll("failing", False, 100, 0, now)
        poll("silent", True, 100, 2, now - timedelta(days=5))
        poll("silent", True, 100, 0, now)
        poll("slow", True, 9000, 1, now)
        sets = {d.name: d for d in run_queries(store.con, load_queries(DEFAULT_DIR))}
    problems = {r["id"]: r["problems"] for r in sets["source_health"].rows}
    assert problems == {"healthy": [], "failing": ["failing"], "silent": ["silent"], "slow": ["slow"],
                        "fresh": []}
    assert [r["id"] for r in sets["source_health"].rows][:3] == ["failing", "silent", "slow"]


def test_date_filter_opens_on_the_last_days_of_data(tmp_path: Path) -> None:
    with open_store(tmp_path / "db.duckdb") as store:
        _seed(store)
        sets = run_queries(store.con, load_queries(DEFAULT_DIR))
    assert date_bounds(sets, 30) == {"min": "2025-11-20", "max": "2025-11-21", "default_from": "2025-11-20"}
    assert date_bounds(sets, 1)["default_from"] == "2025-11-21"
    assert date_bounds([], 30) == {"min": None, "max": None, "default_from": None}


def test_payload_drops_non_http_links_and_lists_topics(tmp_path: Path) -> None:
    with open_store(tmp_path / "db.duckdb") as store:
        _seed(store)
        store.con.execute("INSERT INTO stories (id, title, first_seen, last_seen, first_article_id, topics) "
                          "VALUES ('s1', 'x', ?, ?, 'a4', ['t3'])", [NOW, NOW])
        store.con.execute("UPDATE articles SET story_id = 's1' WHERE id = 'a4'")
        payload = build_payload(run_queries(store.con, load_queries(DEFAULT_DIR)), NOW)
    assert payload["topics"] == ["t1", "t2", "t3"]
    assert payload["datasets"]["stories"]["rows"][0]["url"] is None
    assert "javascript:" not in json.dumps(payload)


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", page, flags=re.S)


def test_page_is_self_contained_and_its_csp_allows_only_its_own_scripts(tmp_path: Path) -> None:
    out = tmp_path / "site" / "dashboard.html"
    with open_store(tmp_path / "db.duckdb") as store:  # an empty, freshly migrated database
        assert render_dashboard(store.con, out) == out
    page = out.read_text(encoding="utf-8")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None
    scripts = _scripts(page)
    assert len(scripts) == 2 and "Plotly" in scripts[0] and len(scripts[0]) > 1_000_000
    hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts}
    policy = dict(p.strip().split(" ", 1) for p in csp.group(1).split(";") if p.strip())
    assert set(policy["script-src"].split()) == hashes
    assert policy["default-src"] == "'none'" and "unsafe-inline" not in policy["script-src"]
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert not list(out.parent.glob("*.tmp"))
    data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert all(ds["rows"] == [] for ds in data["datasets"].values()) and data["bounds"]["max"] is None


def test_an_extra_query_file_becomes_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "dash"
    shutil.copytree(DEFAULT_DIR, folder)
    (folder / "50_runs.sql").write_text("-- title: Runs\nSELECT id, status FROM runs ORDER BY id")
    with open_store(tmp_path / "db.duckdb") as store:
        store.start_run("r1")
        render_dashboard(store.con, tmp_path / "d.html", folder=folder)
    page = (tmp_path / "d.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert data["datasets"]["runs"] == {"title": "Runs", "columns": ["id", "status"],
                                        "rows": [{"id": "r1", "status": "running"}]}
