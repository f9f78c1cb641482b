"""Alert formatting, routing and source health: escaping, limits, one alert per state change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import alerts
from monitor.config import AlertsConfig, ChannelConfig, Settings
from monitor.models import Development
from monitor.store import Store, open_store

NOW = datetime(2025, 11, 20, 9, 0, tzinfo=UTC)
TYPES = ["slack", "discord", "teams", "googlechat", "mattermost", "apprise"]


def _fields(title: str, **kw: Any) -> dict[str, Any]:
    return alerts.sample_fields() | {"title": title, "kind": "update", "story_id": "s1"} | kw


def _limits_ok(kind: str, p: dict[str, Any]) -> bool:
    size = alerts.payload_bytes(p)
    if kind == "slack":
        return (len(p["blocks"]) <= 50 and len(p["text"]) <= 3000
                and all(len(b["text"]["text"]) <= 3000 for b in p["blocks"] if b["type"] == "section"))
    if kind == "discord":
        e = p["embeds"]
        return (len(p["content"]) <= 2000 and len(e) <= 10 and alerts.discord_total(p) <= 6000
                and all(len(x["title"]) <= 256 and len(x["description"]) <= 4096 for x in e))
    if kind == "teams":
        return size <= 28_000
    if kind == "googlechat":
        return size <= 32_000
    if kind == "mattermost":
        return len(p["text"]) <= 16_383
    return len(p["body"]) <= alerts.APPRISE_BODY


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=6000), st.sampled_from(TYPES))
def test_any_title_fits_each_service_and_carries_no_mention(title: str, kind: str) -> None:
    ch = ChannelConfig(name="c", type=kind, url="https://hooks.example/x")  # type: ignore[arg-type]
    p = alerts.render(ch, _fields(title + " @everyone <!here>"))
    assert _limits_ok(kind, p)
    text = " ".join(str(v) for v in _walk(p))
    assert "@everyone" not in text and "<!here>" not in text


def _walk(p: Any) -> Iterator[str]:
    if isinstance(p, dict):
        for v in p.values():
            yield from _walk(v)
    elif isinstance(p, list):
        for v in p:
            yield from _walk(v)
    elif isinstance(p, str):
        yield p


@pytest.mark.parametrize("kind", TYPES)
def test_huge_digest_is_cut_to_fit_and_says_how_much_was_left_out(kind: str) -> None:
    items = [_fields(f"story {i % 30} item {i} " + "ÄÖÜ & <b> " * 60, story_id=f"s{i % 30}") for i in range(400)]
    ch = ChannelConfig(name="c", type=kind, url="https://hooks.example/x",  # type: ignore[arg-type]
                       mode="digest", digest_cron="0 8 * * *")
    p = alerts.render_digest(ch, items, "today")
    assert _limits_ok(kind, p)
    assert "more" in " ".join(_walk(p))  # "…and N more development(s)"


def test_escaping_per_format() -> None:
    raw = "A&B <!channel> <@U1> @here *x* [y](z) <users/all>"
    assert alerts.slack_escape(raw).startswith("A&amp;B &lt;!channel&gt; &lt;@\u200bU1&gt; @\u200bhere")
    md = alerts.markdown_escape(raw)
    assert "\\*x\\*" in md and "\\[y\\]\\(z\\)" in md and "<@U1>" not in md and "@here" not in md
    assert "&lt;users/all&gt;" in alerts.html_escape(raw)
    cut = alerts.cut("word " * 30, 52)
    assert cut.endswith("word…") and len(cut) <= 52  # at a word boundary when one is near
    assert alerts.fit("&" * 100, 10, alerts.slack_escape) in ("&amp;…", "…")


def test_routing_by_topic_kind_score_and_one_message_per_article() -> None:
    slack = ChannelConfig(name="s", type="slack", url="https://h/x", topics=["peace"], min_score=0.5)
    ops = ChannelConfig(name="ops", type="generic", url="https://h/y", kinds=["source_failing"])
    dig = ChannelConfig(name="d", type="discord", url="https://h/z", mode="digest", digest_cron="0 8 * * *")

    def dev(i: int, topic: str, score: float) -> alerts.AlertContext:
        d = Development(id=f"d{i}", kind="update", story_id="s", topic=topic, article_id="a1" if i < 2 else f"a{i}",
                        score=score, what_is_new={}, compared_with=[], first_seen=NOW, source_id="w")
        return alerts.AlertContext(d, topic, "W", NOW, 0, [], "")

    rows = alerts.outbox_rows([slack, ops, dig], [dev(0, "peace", 0.9), dev(1, "gaza", 0.9), dev(2, "peace", 0.1)])
    got = sorted((r["channel"], r["development_id"], r["state"]) for r in rows)
    # d0 and d1 are one article in two topics: the digest channel lists it once
    assert got == [("d", "d0", "held"), ("d", "d2", "held"), ("s", "d0", "pending")]


def test_digest_channel_needs_a_valid_schedule() -> None:
    with pytest.raises(ValueError, match="digest_cron"):
        ChannelConfig(name="d", type="slack", url="https://h/x", mode="digest")
    with pytest.raises(ValueError, match="cron"):
        ChannelConfig(name="d", type="slack", url="https://h/x", mode="digest", digest_cron="every day")
    ch = ChannelConfig(name="d", type="slack", url="https://h/x", mode="digest", digest_cron="0 8 * * *",
                       digest_timezone="Europe/Berlin")
    assert alerts.digest_due(ch, datetime(2025, 11, 20, 6, 0, tzinfo=UTC), datetime(2025, 11, 20, 7, 1, tzinfo=UTC))
    assert not alerts.digest_due(ch, datetime(2025, 11, 20, 7, 1, tzinfo=UTC),
                                 datetime(2025, 11, 20, 8, 30, tzinfo=UTC))


# ---- source health ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "h.duckdb") as s:
        s.sync_sources([("wire", "https://wire.example/feed.xml", "rss", "Wire"),
                        ("gazette", "https://gazette.example/feed.json", "jsonfeed", "Gazette")])
        yield s


def _poll(store: Store, sid: str, ok: bool, at: datetime) -> None:
    store.record_source_poll(sid, ok=ok, error=None if ok else "cannot connect", latency_ms=1.0,
                             not_modified=False, etag=None, last_modified=None, new_articles=0,
                             next_poll_after=None, at=at)


def test_source_failing_once_after_n_failures_and_once_on_recovery(store: Store) -> None:
    from flows.ingest import _source_health_alerts

    ops = ChannelConfig(name="ops", type="generic", url="https://h/ops", kinds=["source_failing"])
    news = ChannelConfig(name="news", type="slack", url="https://h/news")  # not subscribed
    cfg = Settings.model_construct(monitor=_Monitor(AlertsConfig(source_failing_after=3, channels=[ops, news])))
    queued = []
    for i, ok in enumerate([True, False, False, False, False, False, True, True, False]):
        _poll(store, "wire", ok, NOW + timedelta(minutes=i))
        _poll(store, "gazette", True, NOW + timedelta(minutes=i))
        queued.append(_source_health_alerts(store, cfg))
    assert queued == [0, 0, 0, 1, 0, 0, 1, 0, 0]
    rows = store.con.execute("SELECT channel, kind, payload->>'$.title' FROM alerts ORDER BY created_at").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("ops", "source_failing"), ("ops", "source_recovered")]
    assert "3 polls in a row" in rows[0][2] and "works again" in rows[1][2]


class _Monitor:
    def __init__(self, alerts_cfg: AlertsConfig) -> None:
        self.alerts = alerts_cfg
