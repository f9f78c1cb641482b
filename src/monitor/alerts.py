"""Alerts: developments become outbox rows (one per development × channel), then are delivered.

This module owns routing, the native message of each chat service (escaped and cut to its limits),
digests, source-health alerts and delivery. The outbox lives in DuckDB (store.py).

Delivery posts each due row with httpx and marks it sent right after the service's 2xx, one row at a
time; retryable failures back off exponentially (honouring 429 Retry-After and Discord's
`retry_after`) and a channel that fails is left alone for the rest of the run, its rows pending.
Guarantee: at-least-once per idempotency key. A duplicate needs the process to die (or the answer to
time out) between the service accepting a message and the row's update, so at most one message per
channel is in doubt at any time; every request carries the key as `Idempotency-Key` (and Google
Chat's `requestId`, which makes that service exactly-once). Webhook URLs are secrets and are never
logged: errors carry the masked URL.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx

from monitor.config import AlertsConfig, ChannelConfig
from monitor.errors import (
    AlertError,
    PermanentAlertError,
    RetryableAlertError,
    is_retryable_status,
    mask_secrets,
    mask_url,
    register_secret,
)
from monitor.models import Development

# Documented limits of each service (see docs/alerts.md for the sources).
SLACK_SECTION = 3000
SLACK_BLOCKS = 50
SLACK_HEADER = 150
SLACK_FALLBACK = 3000
DISCORD_CONTENT = 2000
DISCORD_TITLE = 256
DISCORD_DESCRIPTION = 4096
DISCORD_FIELD_VALUE = 1024
DISCORD_FOOTER = 2048
DISCORD_EMBEDS = 10
DISCORD_TOTAL = 6000
TEAMS_BYTES = 27_000  # Teams rejects messages over ~28 KB; keep headroom for the envelope
GOOGLE_BYTES = 30_000  # Google Chat: 32,000 bytes per message
GOOGLE_TEXT = 4096
MATTERMOST_TEXT = 16_000  # Mattermost posts hold 16,383 characters
APPRISE_BODY = 4000

SIGNATURE_HEADER = "X-Monitor-Signature"
TIMESTAMP_HEADER = "X-Monitor-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"

KIND_LABEL = {"new_story": "New story", "update": "Update", "surge": "Surge",
              "source_failing": "Source failing", "source_recovered": "Source recovered"}
HEALTH_KINDS = ("source_failing", "source_recovered")


@dataclass(slots=True)
class AlertContext:
    """What a message says beyond the development itself."""

    development: Development
    topic_name: str
    outlet: str
    published: datetime | None
    earlier_reports: int
    languages: list[str]
    explanation: str


@dataclass(slots=True)
class SourceHealth:
    """A source whose failing/recovered state changed (from the `sources` table)."""

    source_id: str
    name: str
    url: str
    failures: int
    last_error: str | None
    last_success: datetime | None
    recovered: bool


# ---- routing and outbox rows --------------------------------------------------------------------


def alert_id(development_id: str, channel: str) -> str:
    """The idempotency key: one alert per development and channel, ever."""
    return hashlib.sha1(f"{development_id}|{channel}".encode()).hexdigest()[:20]


def routes(ch: ChannelConfig, dev: Development) -> bool:
    return (ch.enabled and bool(ch.url) and dev.kind in ch.kinds and dev.score >= ch.min_score
            and (not ch.topics or dev.topic in ch.topics))


def _row(ch: ChannelConfig, development_id: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"id": alert_id(development_id, ch.name), "development_id": development_id, "channel": ch.name,
            "kind": kind, "payload": fields, "state": "held" if ch.mode == "digest" else "pending"}


def outbox_rows(channels: Sequence[ChannelConfig], contexts: Sequence[AlertContext]) -> list[dict[str, Any]]:
    rows = []
    seen: set[tuple[str, str, str]] = set()
    for ctx in contexts:
        for ch in channels:
            # an article matching two topics of one channel is one message, not two
            once = (ch.name, ctx.development.article_id, ctx.development.kind)
            if routes(ch, ctx.development) and once not in seen:
                seen.add(once)
                rows.append(_row(ch, ctx.development.id, ctx.development.kind, message_fields(ctx)))
    return rows


def health_rows(channels: Sequence[ChannelConfig], changes: Sequence[SourceHealth]) -> list[dict[str, Any]]:
    """Outbox rows for sources that crossed the failure threshold or recovered (kind `source_failing`)."""
    rows: list[dict[str, Any]] = []
    for h in changes:
        kind = "source_recovered" if h.recovered else "source_failing"
        since = h.last_success.isoformat() if h.last_success else "never"
        dev_id = f"source:{h.source_id}:{kind}:{since}"
        fields = health_fields(h, kind, dev_id)
        rows.extend(_row(ch, dev_id, kind, fields) for ch in channels
                    if ch.enabled and ch.url and "source_failing" in ch.kinds)
    return rows


def message_fields(ctx: AlertContext) -> dict[str, Any]:
    """Format-independent message content, stored in the outbox so a resend says the same thing."""
    d = ctx.development
    return {
        "kind": d.kind, "topic": d.topic, "topic_name": ctx.topic_name, "title": d.title or "(no title)",
        "url": d.url, "outlet": ctx.outlet, "lang": d.lang,
        "published": ctx.published.isoformat() if ctx.published else None,
        "what_is_new": d.what_is_new, "earlier_reports": ctx.earlier_reports,
        "languages": ctx.languages, "explanation": ctx.explanation, "story_id": d.story_id,
        "development_id": d.id, "score": d.score,
    }


def health_fields(h: SourceHealth, kind: str, dev_id: str) -> dict[str, Any]:
    if kind == "source_failing":
        title = f"{h.name} has failed {h.failures} polls in a row"
        message = f"last error: {h.last_error or 'unknown'}"
    else:
        title, message = f"{h.name} works again", "the source answered normally"
    return {"kind": kind, "topic": None, "topic_name": "Source health", "title": title, "url": h.url,
            "outlet": h.name, "lang": None, "published": datetime.now(UTC).isoformat(),
            "what_is_new": {"message": mask_secrets(message)}, "earlier_reports": 0, "languages": [],
            "explanation": "", "story_id": f"source:{h.source_id}", "development_id": dev_id, "score": 0.0}


# ---- text: escaping and cutting -----------------------------------------------------------------

_AT_MENTION = re.compile(r"@(?=[\w])")
_ANGLE_MENTION = re.compile(r"<(?=[!@#&:/])")
_MD_SPECIAL = re.compile(r"([\\`*_~|\[\]()>#])")


def defang(text: str) -> str:
    """No mention from article text: `@everyone`, `@here`, `<!channel>`, `<@U1>`, `<users/all>`."""
    return _AT_MENTION.sub("@\u200b", _ANGLE_MENTION.sub("<\u200b", text))


def slack_escape(text: str) -> str:
    return defang(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def markdown_escape(text: str) -> str:
    """Discord / Mattermost / Teams markdown: backslash the characters that format or link."""
    return _MD_SPECIAL.sub(r"\\\1", defang(text)).replace("\n", " ")


def html_escape(text: str) -> str:
    """Google Chat card text takes a small HTML subset."""
    return defang(html.escape(text, quote=False))


def plain(text: str) -> str:
    return defang(text)


def cut(text: str, limit: int) -> str:
    """Cut to `limit` characters at a word boundary when one is near, ending with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: max(limit - 1, 0)]
    space = head.rfind(" ")
    if space > limit * 0.8:
        head = head[:space]
    return head.rstrip() + "…"


def fit(text: str, limit: int, escape: Callable[[str], str]) -> str:
    """Escape then cut so that the escaped text fits (never leaving half an escape at the end)."""
    out = escape(text)
    n = len(text)
    while len(out) > limit and n > 0:
        n = min(n - 1, int(n * limit / len(out)))  # escaping grows text: shrink in proportion
        out = escape(cut(text, n)) if n > 1 else "…"
    return out


def what_is_new_text(f: dict[str, Any]) -> str:
    w = f.get("what_is_new") or {}
    facts = w.get("new_facts") or w.get("facts") or {}
    parts = []
    if facts.get("names"):
        parts.append("names: " + ", ".join(facts["names"][:12]))
    if facts.get("numbers"):
        parts.append("numbers: " + ", ".join(facts["numbers"][:12]))
    if "sources" in w:
        parts.append(f"{w['sources']} independent sources within {w.get('within_hours')}h")
    if "message" in w:
        parts.append(str(w["message"]))
    return "; ".join(parts) or "—"


def _label(f: dict[str, Any]) -> str:
    return KIND_LABEL.get(f["kind"], f["kind"])


def _link(f: dict[str, Any]) -> str:
    url = f.get("url") or ""
    return url if url.startswith(("http://", "https://")) else ""


def _meta(f: dict[str, Any]) -> str:
    return " · ".join(x for x in (f.get("outlet") or "", f.get("lang") or "", f.get("published") or "") if x)


def _earlier(f: dict[str, Any]) -> str:
    """Earlier reports of the story, then why the article matched its topic (the topic's explanation)."""
    langs = ", ".join(f.get("languages") or [])
    line = f"{f.get('earlier_reports', 0)} earlier report(s)" + (f" in {langs}" if langs else "")
    why = f.get("explanation") or ""
    return line + (f"\nWhy: {cut(why, 280)}" if why else "")


# ---- one alert per service ----------------------------------------------------------------------


def slack_payload(f: dict[str, Any]) -> dict[str, Any]:
    label, url = _label(f), _link(f)
    head = f"*{label}* · {slack_escape(f['topic_name'])}\n"
    tail = (f"\n{slack_escape(_meta(f))}\n*What is new:* {fit(what_is_new_text(f), 1200, slack_escape)}\n"
            f"{slack_escape(_earlier(f))}")
    room = SLACK_SECTION - len(head) - len(tail) - len(url) - 4
    title = fit(f["title"], min(room, 1000), slack_escape)
    link = f"<{url}|{title}>" if url else title
    fallback = fit(f"{label}: {f['title']} ({f.get('outlet') or ''})", 300, slack_escape)
    return {"text": fallback,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": head + link + tail}}]}


def mattermost_payload(f: dict[str, Any]) -> dict[str, Any]:
    return {"text": _markdown_alert(f, MATTERMOST_TEXT)}


def _markdown_alert(f: dict[str, Any], limit: int) -> str:
    url = _link(f)
    title = fit(f["title"], min(1000, limit // 2), markdown_escape)
    head = f"**{_label(f)}** · {markdown_escape(f['topic_name'])}\n"
    link = f"[{title}]({url})" if url else title
    return cut(head + link + f"\n{markdown_escape(_meta(f))}\n**What is new:** "
               f"{fit(what_is_new_text(f), 1500, markdown_escape)}\n{markdown_escape(_earlier(f))}", limit)


def discord_payload(f: dict[str, Any]) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": fit(f["title"], DISCORD_TITLE, markdown_escape),
        "description": fit("What is new: " + what_is_new_text(f), 1500, markdown_escape),
        "fields": [
            {"name": "Topic", "value": fit(f["topic_name"], 200, markdown_escape), "inline": True},
            {"name": "Outlet", "value": fit(f.get("outlet") or "—", 200, markdown_escape), "inline": True},
            {"name": "Language", "value": f.get("lang") or "—", "inline": True},
            {"name": "Earlier reports", "value": fit(_earlier(f), 500, markdown_escape), "inline": False},
        ],
        "footer": {"text": fit(f"{_label(f)} · news-monitor", 200, plain)},
    }
    if _link(f):
        embed["url"] = _link(f)
    if f.get("published"):
        embed["timestamp"] = f["published"]
    content = fit(f"{_label(f)} · {f['topic_name']}", DISCORD_CONTENT, markdown_escape)
    return {"content": content, "embeds": [embed], "allowed_mentions": {"parse": []}}


def teams_card(body: list[dict[str, Any]], url: str = "") -> dict[str, Any]:
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard", "version": "1.4", "body": body,
                            "msteams": {"width": "Full"}}
    if url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open article", "url": url}]
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def _tb(text: str, **kw: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **kw}


def teams_payload(f: dict[str, Any]) -> dict[str, Any]:
    body = [
        _tb(f"{_label(f)} · {markdown_escape(f['topic_name'])}", weight="Bolder", size="Small"),
        _tb(fit(f["title"], 1000, markdown_escape), weight="Bolder", size="Medium"),
        _tb(markdown_escape(_meta(f)), isSubtle=True, spacing="None"),
        _tb("**What is new:** " + fit(what_is_new_text(f), 3000, markdown_escape)),
        _tb(markdown_escape(_earlier(f)), isSubtle=True),
    ]
    return teams_card(body, _link(f))


def googlechat_payload(f: dict[str, Any]) -> dict[str, Any]:
    url = _link(f)
    title = fit(f["title"], 1000, html_escape)
    widgets: list[dict[str, Any]] = [
        {"textParagraph": {"text": f"<b>{title}</b>"}},
        {"decoratedText": {"topLabel": "Outlet · language · published", "text": html_escape(_meta(f)),
                           "wrapText": True}},
        {"textParagraph": {"text": "<b>What is new:</b> " + fit(what_is_new_text(f), 3000, html_escape)}},
        {"textParagraph": {"text": html_escape(_earlier(f))}},
    ]
    if url:
        widgets.append({"buttonList": {"buttons": [{"text": "Open article", "onClick": {"openLink": {"url": url}}}]}})
    card = {"header": {"title": fit(f"{_label(f)} · {f['topic_name']}", 200, plain)},
            "sections": [{"widgets": widgets}]}
    return {"fallbackText": fit(f"{_label(f)}: {f['title']}", 300, plain),
            "cardsV2": [{"cardId": "alert", "card": card}]}


def generic_payload(f: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "news-monitor.alert/1", **f}


def apprise_payload(f: dict[str, Any]) -> dict[str, Any]:
    return {"title": fit(f"{_label(f)} · {f['topic_name']}", 250, plain),
            "body": cut(_markdown_alert(f, APPRISE_BODY), APPRISE_BODY)}


FORMATTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "slack": slack_payload, "mattermost": mattermost_payload, "discord": discord_payload,
    "teams": teams_payload, "googlechat": googlechat_payload, "generic": generic_payload,
    "apprise": apprise_payload,
}


def render(channel: ChannelConfig, fields: dict[str, Any]) -> dict[str, Any]:
    fmt = FORMATTERS.get(channel.type)
    if fmt is None:
        raise PermanentAlertError(f"channel type {channel.type} is not supported")
    return fmt(fields)


# ---- digests ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Story:
    title: str
    items: list[dict[str, Any]] = field(default_factory=list)


def group_by_story(items: Sequence[dict[str, Any]]) -> list[Story]:
    """Developments grouped by story, stories in order of first appearance; a story is titled by
    its new_story development when the period has one."""
    stories: dict[str, Story] = {}
    for f in items:
        key = f.get("story_id") or f.get("development_id") or ""
        st = stories.setdefault(key, Story(title=f["title"]))
        if f["kind"] == "new_story" and not any(i["kind"] == "new_story" for i in st.items):
            st.title = f["title"]
        st.items.append(f)
    return list(stories.values())


def _take(stories: Sequence[Story], k: int) -> tuple[list[Story], int]:
    """k developments, spread over the stories (every story's first before any story's second),
    and how many were left out."""
    ranked = sorted(((j, i) for i, st in enumerate(stories) for j in range(len(st.items))))[:k]
    keep: dict[int, int] = {}
    for _, i in ranked:
        keep[i] = keep.get(i, 0) + 1
    out = [Story(st.title, st.items[: keep[i]]) for i, st in enumerate(stories) if i in keep]
    return out, _count(stories) - len(ranked)


def _largest_fitting(n: int, build: Callable[[int], dict[str, Any]],
                     ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The payload with the most developments (binary search over k) that fits the service."""
    if ok(full := build(n)):
        return full
    lo, hi = 0, n  # build(lo) fits (0 developments: a header and "…and n more")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(build(mid)):
            lo = mid
        else:
            hi = mid
    return build(lo)


def _digest_title(stories: Sequence[Story], period: str) -> str:
    n = sum(len(s.items) for s in stories)
    return f"Digest {period}: {n} development(s) in {len(stories)} stor{'y' if len(stories) == 1 else 'ies'}"


def _line(f: dict[str, Any], esc: Callable[[str], str], link: Callable[[str, str], str], width: int) -> str:
    title = fit(f["title"], width, esc)
    url = _link(f)
    where = esc(" · ".join(x for x in (f.get("outlet") or "", f.get("lang") or "") if x))
    return (f"{esc(_label(f))}: {link(url, title) if url else title} ({where}) — "
            f"{fit(what_is_new_text(f), 200, esc)}")


def _more(left: int) -> str:
    return f"…and {left} more development(s)" if left else ""


def slack_digest(stories: Sequence[Story], period: str) -> dict[str, Any]:
    def build(k: int) -> dict[str, Any]:
        part, left = _take(stories, k)
        blocks: list[dict[str, Any]] = [{"type": "header", "text": {
            "type": "plain_text", "text": cut(_digest_title(stories, period), SLACK_HEADER)}}]
        for st in part:
            lines = [f"*{fit(st.title, 300, slack_escape)}*"] + [
                "• " + _line(f, slack_escape, lambda u, t: f"<{u}|{t}>", 200) for f in st.items]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _join_cut(lines, SLACK_SECTION)}})
        if left:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _more(left)}]})
        return {"text": cut(_digest_title(stories, period), SLACK_FALLBACK), "blocks": blocks}

    return _largest_fitting(_count(stories), build, lambda p: len(p["blocks"]) <= SLACK_BLOCKS)


def _join_cut(lines: Sequence[str], limit: int) -> str:
    """Join whole lines while they fit; say how many were left out."""
    out: list[str] = []
    for i, ln in enumerate(lines):
        rest = len(lines) - i
        note = f"\n…and {rest - 1} more" if rest > 1 else ""
        if len("\n".join([*out, ln])) + len(note) > limit:
            out.append(f"…and {rest} more")
            break
        out.append(ln)
    return cut("\n".join(out), limit)


def _count(stories: Sequence[Story]) -> int:
    return sum(len(s.items) for s in stories)


def discord_digest(stories: Sequence[Story], period: str) -> dict[str, Any]:
    def build(k: int) -> dict[str, Any]:
        part, left = _take(stories, k)
        if len(part) > DISCORD_EMBEDS:
            left += _count(part[DISCORD_EMBEDS:])
            part = part[:DISCORD_EMBEDS]
        embeds = [{"title": fit(st.title, DISCORD_TITLE, markdown_escape),
                   "description": _join_cut(["• " + _line(f, markdown_escape, lambda u, t: f"[{t}]({u})", 150)
                                             for f in st.items], DISCORD_DESCRIPTION)} for st in part]
        content = cut(_digest_title(stories, period) + (f"\n{_more(left)}" if left else ""), DISCORD_CONTENT)
        return {"content": content, "embeds": embeds, "allowed_mentions": {"parse": []}}

    return _largest_fitting(_count(stories), build, lambda p: discord_total(p) <= DISCORD_TOTAL)


def discord_total(payload: dict[str, Any]) -> int:
    """Characters Discord counts against the 6,000 limit of one message's embeds."""
    total = 0
    for e in payload.get("embeds", []):
        total += len(e.get("title", "")) + len(e.get("description", ""))
        total += len(e.get("footer", {}).get("text", "")) + len(e.get("author", {}).get("name", ""))
        total += sum(len(fl["name"]) + len(fl["value"]) for fl in e.get("fields", []))
    return total


def teams_digest(stories: Sequence[Story], period: str) -> dict[str, Any]:
    def build(k: int) -> dict[str, Any]:
        part, left = _take(stories, k)
        body = [_tb(markdown_escape(_digest_title(stories, period)), weight="Bolder", size="Medium")]
        for st in part:
            body.append(_tb(fit(st.title, 300, markdown_escape), weight="Bolder", separator=True))
            body.extend(_tb("- " + _line(f, markdown_escape, lambda u, t: f"[{t}]({u})", 200), spacing="Small")
                        for f in st.items)
        if left:
            body.append(_tb(_more(left), isSubtle=True))
        return teams_card(body)

    return _largest_fitting(_count(stories), build, lambda p: payload_bytes(p) <= TEAMS_BYTES)


def googlechat_digest(stories: Sequence[Story], period: str) -> dict[str, Any]:
    def build(k: int) -> dict[str, Any]:
        part, left = _take(stories, k)
        sections: list[dict[str, Any]] = [
            {"header": fit(st.title, 200, html_escape), "widgets": [
                {"textParagraph": {"text": _line(f, html_escape, lambda u, t: f'<a href="{html.escape(u)}">{t}</a>',
                                                 200)}} for f in st.items]} for st in part]
        if left:
            sections.append({"widgets": [{"textParagraph": {"text": _more(left)}}]})
        card = {"header": {"title": cut(_digest_title(stories, period), 200)}, "sections": sections}
        return {"fallbackText": cut(_digest_title(stories, period), 300),
                "cardsV2": [{"cardId": "digest", "card": card}]}

    return _largest_fitting(_count(stories), build, lambda p: payload_bytes(p) <= GOOGLE_BYTES)


def _markdown_digest(stories: Sequence[Story], period: str, limit: int) -> str:
    lines = [f"**{markdown_escape(_digest_title(stories, period))}**"]
    for st in stories:
        lines.append(f"\n**{fit(st.title, 300, markdown_escape)}**")
        lines.extend("- " + _line(f, markdown_escape, lambda u, t: f"[{t}]({u})", 200) for f in st.items)
    return _join_cut(lines, limit)


def generic_digest(stories: Sequence[Story], period: str) -> dict[str, Any]:
    return {"schema": "news-monitor.digest/1", "period": period, "title": _digest_title(stories, period),
            "stories": [{"story_id": st.items[0].get("story_id"), "title": st.title, "developments": st.items}
                        for st in stories]}


def render_digest(channel: ChannelConfig, items: Sequence[dict[str, Any]], period: str) -> dict[str, Any]:
    stories = group_by_story(items)
    match channel.type:
        case "slack":
            return slack_digest(stories, period)
        case "discord":
            return discord_digest(stories, period)
        case "teams":
            return teams_digest(stories, period)
        case "googlechat":
            return googlechat_digest(stories, period)
        case "mattermost":
            return {"text": _markdown_digest(stories, period, MATTERMOST_TEXT)}
        case "apprise":
            return {"title": cut(_digest_title(stories, period), 250),
                    "body": _markdown_digest(stories, period, APPRISE_BODY)}
        case _:
            return generic_digest(stories, period)


def payload_bytes(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def digest_due(channel: ChannelConfig, since: datetime, now: datetime) -> bool:
    """Has the channel's digest schedule fired after `since` (the last digest, or the oldest held alert)?"""
    from cronsim import CronSim

    tz = ZoneInfo(channel.digest_timezone)
    nxt = next(CronSim(channel.digest_cron or "0 8 * * *", since.astimezone(tz)))
    return bool(nxt <= now.astimezone(tz))


# ---- posting ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    text: str


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` + HMAC-SHA256 over `<timestamp>.<body>` (the timestamp guards against replays)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def post(client: httpx.Client, channel: ChannelConfig, payload: dict[str, Any], key: str) -> Answer:
    """POST one message; translate the answer into an Answer or an AlertError (URL masked)."""
    if channel.type == "apprise":
        return post_apprise(channel, payload)
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
    url = httpx.URL(channel.url)
    if channel.type == "googlechat":  # Google Chat returns the first message for a repeated requestId
        url = url.copy_merge_params({"requestId": key})
    if channel.type == "generic" and channel.secret:
        ts = str(int(time.time()))
        headers |= {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature(channel.secret, ts, body)}
    try:
        resp = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise RetryableAlertError(f"{channel.name}: timeout") from None
    except httpx.HTTPError as exc:
        where = f"{channel.name} ({mask_url(channel.url)})"
        raise RetryableAlertError(_masked(channel, f"{where}: {type(exc).__name__}: {exc}")) from None
    if resp.status_code < 300:
        return Answer(resp.status_code, _masked(channel, resp.text[:300]))
    if resp.status_code == 429 or is_retryable_status(resp.status_code):
        raise RetryableAlertError(f"{channel.name}: HTTP {resp.status_code}", _retry_after(resp))
    raise PermanentAlertError(f"{channel.name}: HTTP {resp.status_code}: {_masked(channel, resp.text[:200])}")


def _masked(channel: ChannelConfig, text: str) -> str:
    """Mask the URL, and its path and query on their own: services echo those in error bodies."""
    text = mask_secrets(text)
    parts = urlsplit(channel.url)
    for piece in (channel.url, f"{parts.path}?{parts.query}", parts.path, parts.query):
        if len(piece) >= 8:
            text = text.replace(piece, "/***")
    return text


def post_apprise(channel: ChannelConfig, payload: dict[str, Any]) -> Answer:
    """The long tail: apprise knows each service's URL scheme; it only says yes or no."""
    import apprise

    ap = apprise.Apprise()
    if not ap.add(channel.url):
        raise PermanentAlertError(f"{channel.name}: not a URL apprise understands")
    with apprise.LogCapture(level=apprise.logging.INFO) as log:  # keep apprise's lines (and URLs) off the log
        ok = ap.notify(title=payload["title"], body=payload["body"], body_format=apprise.NotifyFormat.MARKDOWN)
        detail = log.getvalue()
    if ok:
        return Answer(200, "apprise: delivered")
    last = _masked(channel, detail.strip().splitlines()[-1] if detail.strip() else "no detail")
    raise RetryableAlertError(f"{channel.name}: apprise could not deliver ({last[:200]})")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            return None
    try:
        data = resp.json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("retry_after"), (int, float)):
        return max(float(data["retry_after"]), 0.0)
    return None


def sample_fields() -> dict[str, Any]:
    """What `monitor alerts test` sends."""
    return {"kind": "new_story", "topic": "test", "topic_name": "Test message", "title":
            "news-monitor test message: this channel is set up", "url": "https://example.org/news-monitor-test",
            "outlet": "news-monitor", "lang": "en", "published": datetime.now(UTC).isoformat(timespec="seconds"),
            "what_is_new": {"message": "nothing, this is a test"}, "earlier_reports": 0, "languages": ["en"],
            "explanation": "", "story_id": "test", "development_id": "test", "score": 1.0}


def send_test(cfg: AlertsConfig, channel_name: str) -> Answer:
    """Send the sample message to one channel (outside the outbox) and return the service's answer."""
    ch = next((c for c in cfg.channels if c.name == channel_name), None)
    if ch is None:
        raise PermanentAlertError(f"no channel named {channel_name!r} in [[alerts.channels]]")
    guard_secrets(cfg)
    key = alert_id(f"test:{time.time_ns()}", ch.name)
    with httpx.Client(timeout=cfg.timeout_s, trust_env=False, follow_redirects=False) as client:
        return post(client, ch, render(ch, sample_fields()), key)


# ---- delivery -----------------------------------------------------------------------------------


@dataclass(slots=True)
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    pending: int = 0
    digests: int = 0


class _MaskSecrets(logging.Filter):
    """httpx logs every request URL at INFO, apprise its own lines: mask webhook URLs in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = mask_secrets(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


_MASK = _MaskSecrets()


def guard_secrets(cfg: AlertsConfig) -> None:
    """Treat every channel URL (and signing key) as a secret, also those written into the TOML."""
    for ch in cfg.channels:
        register_secret(ch.url)
        if ch.secret:
            register_secret(ch.secret)
    for name in ("httpx", "httpcore", "apprise"):
        lg = logging.getLogger(name)
        if _MASK not in lg.filters:
            lg.addFilter(_MASK)


def deliver_pending(store: Any, cfg: AlertsConfig, *, max_wait_s: float = 30.0) -> DeliveryReport:
    """Send every due outbox row. A row is marked sent right after its 2xx, one at a time."""
    guard_secrets(cfg)
    report = DeliveryReport()
    channels = {c.name: c for c in cfg.channels}
    down: set[str] = set()
    with httpx.Client(timeout=cfg.timeout_s, trust_env=False, follow_redirects=False) as client:
        for row in store.due_alerts(datetime.now(UTC)):
            ch = channels.get(row["channel"])
            if ch is None or not ch.url:
                continue
            if ch.name in down:  # one failing channel costs one attempt per run, not one per alert
                report.pending += 1
                continue
            payload = render(ch, row["payload"])
            result = _attempt(client, ch, payload, row["id"], row["attempts"], cfg, max_wait_s)
            if result.error is None:
                store.mark_alert(row["id"], "sent")
                report.sent += 1
            elif result.next_attempt_at is not None:
                store.mark_alert(row["id"], "pending", error=result.error, next_attempt_at=result.next_attempt_at)
                report.pending += 1
                down.add(ch.name)
            else:
                store.mark_alert(row["id"], "failed", error=result.error)
                report.failed += 1
    return report


@dataclass(slots=True)
class Attempt:
    error: str | None = None
    next_attempt_at: datetime | None = None  # set: retry later; unset with an error: failed for good


def _attempt(client: httpx.Client, ch: ChannelConfig, payload: dict[str, Any], key: str, attempts: int,
             cfg: AlertsConfig, max_wait_s: float) -> Attempt:
    """Post one message, waiting out short Retry-After answers; say what to record."""
    waited = 0.0
    while True:
        try:
            post(client, ch, payload, key)
            return Attempt()
        except AlertError as exc:
            attempts += 1
            retry_after = getattr(exc, "retry_after", None)
            if not exc.retryable or attempts >= cfg.max_attempts:
                return Attempt(error=str(exc))
            if retry_after is not None and waited + retry_after <= max_wait_s:
                time.sleep(retry_after)
                waited += retry_after
                continue
            delay = retry_after if retry_after is not None else cfg.backoff_s * 2 ** (attempts - 1)
            return Attempt(error=str(exc), next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))


def deliver_digests(store: Any, cfg: AlertsConfig, now: datetime | None = None, *,
                    force: bool = False, max_wait_s: float = 30.0) -> DeliveryReport:
    """Send each digest channel's held alerts as one message when its schedule has fired.

    A digest is first recorded (its alerts tied to it) and only then sent, so a crash resends the very
    same digest under the same idempotency key instead of regrouping the alerts.
    """
    now = now or datetime.now(UTC)
    guard_secrets(cfg)
    report = DeliveryReport()
    with httpx.Client(timeout=cfg.timeout_s, trust_env=False, follow_redirects=False) as client:
        for ch in cfg.channels:
            if ch.mode != "digest" or not ch.enabled or not ch.url:
                continue
            digest = store.open_digest(ch.name)
            if digest is not None and digest["next_attempt_at"] and digest["next_attempt_at"] > now:
                report.pending += len(digest["items"])
                continue
            if digest is None:
                since = store.last_digest_end(ch.name) or store.oldest_held(ch.name)
                if since is None or not (force or digest_due(ch, since, now)):
                    continue
                digest = store.create_digest(ch.name, now)
                if digest is None:
                    continue
            payload = render_digest(ch, digest["items"], digest["period"])
            result = _attempt(client, ch, payload, digest["id"], digest["attempts"], cfg, max_wait_s)
            if result.error is None:
                store.mark_digest(digest["id"], "sent")
                report.digests += 1
                report.sent += len(digest["items"])
            elif result.next_attempt_at is not None:
                store.mark_digest(digest["id"], "pending", error=result.error, next_attempt_at=result.next_attempt_at)
                report.pending += len(digest["items"])
            else:
                store.mark_digest(digest["id"], "failed", error=result.error)
                report.failed += len(digest["items"])
    return report
