"""Alerts: developments become outbox rows (one per development × channel), then are delivered.

The outbox lives in DuckDB (store.py). Delivery posts each pending row with httpx, marks it sent only
after the service accepted it, retries retryable failures with exponential backoff (honouring 429
Retry-After / Discord `retry_after`), and leaves rows pending across runs while a webhook is down.
Guarantee: at-least-once per idempotency key; a duplicate is only possible if the process dies
between the service's 2xx and the row's update (one row's window). Webhook URLs are secrets and are
never logged: errors carry the masked URL.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from monitor.config import AlertsConfig, ChannelConfig
from monitor.errors import (
    AlertError,
    PermanentAlertError,
    RetryableAlertError,
    is_retryable_status,
    mask_secrets,
)
from monitor.models import Development

SLACK_TEXT_LIMIT = 3000


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


def alert_id(development_id: str, channel: str) -> str:
    """The idempotency key: one alert per development and channel, ever."""
    return hashlib.sha1(f"{development_id}|{channel}".encode()).hexdigest()[:20]


def routes(ch: ChannelConfig, dev: Development) -> bool:
    return (ch.enabled and bool(ch.url) and dev.kind in ch.kinds and dev.score >= ch.min_score
            and (not ch.topics or dev.topic in ch.topics))


def outbox_rows(channels: Sequence[ChannelConfig], contexts: Sequence[AlertContext]) -> list[dict[str, Any]]:
    rows = []
    seen: set[tuple[str, str, str]] = set()
    for ctx in contexts:
        for ch in channels:
            # an article matching two topics of one channel is one message, not two
            once = (ch.name, ctx.development.article_id, ctx.development.kind)
            if ch.mode == "instant" and routes(ch, ctx.development) and once not in seen:
                seen.add(once)
                rows.append({"id": alert_id(ctx.development.id, ch.name), "development_id": ctx.development.id,
                             "channel": ch.name, "kind": ctx.development.kind,
                             "payload": message_fields(ctx)})
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


def slack_escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # no broadcast mentions from article text
    for word in ("@channel", "@here", "@everyone"):
        text = text.replace(word, word.replace("@", "@\u200b"))
    return text


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


KIND_LABEL = {"new_story": "New story", "update": "Update", "surge": "Surge", "source_failing": "Source failing",
              "source_recovered": "Source recovered"}


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


def slack_payload(f: dict[str, Any]) -> dict[str, Any]:
    label = KIND_LABEL.get(f["kind"], f["kind"])
    title = slack_escape(cut(f["title"], 300))
    url = f.get("url") or ""
    link = f"<{url}|{title}>" if url.startswith(("http://", "https://")) else title
    langs = ", ".join(f.get("languages") or [])
    body = (f"*{label}* · {slack_escape(f['topic_name'])}\n{link}\n"
            f"{slack_escape(f.get('outlet') or '')} · {f.get('lang') or '?'} · {f.get('published') or ''}\n"
            f"*What is new:* {slack_escape(what_is_new_text(f))}\n"
            f"Earlier reports in this story: {f.get('earlier_reports', 0)}"
            + (f" ({slack_escape(langs)})" if langs else ""))
    fallback = cut(f"{label}: {f['title']} ({f.get('outlet') or ''})", 300)
    return {"text": slack_escape(fallback),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": cut(body, SLACK_TEXT_LIMIT)}}]}


def generic_payload(f: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "news-monitor.alert/1", **f}


FORMATTERS = {"slack": slack_payload, "mattermost": slack_payload, "generic": generic_payload}


def render(channel: ChannelConfig, fields: dict[str, Any]) -> dict[str, Any]:
    fmt = FORMATTERS.get(channel.type)
    if fmt is None:
        raise PermanentAlertError(f"channel type {channel.type} is not supported yet")
    return fmt(fields)


def post(client: httpx.Client, channel: ChannelConfig, payload: dict[str, Any]) -> str:
    """POST one message; translate the answer into success or an AlertError (URL masked)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    try:
        resp = client.post(channel.url, content=body, headers={"Content-Type": "application/json"})
    except httpx.TimeoutException:
        raise RetryableAlertError(f"{channel.name}: timeout") from None
    except httpx.HTTPError as exc:
        raise RetryableAlertError(mask_secrets(f"{channel.name}: {type(exc).__name__}: {exc}")) from None
    if resp.status_code < 300:
        return resp.text[:200]
    if resp.status_code == 429 or is_retryable_status(resp.status_code):
        raise RetryableAlertError(f"{channel.name}: HTTP {resp.status_code}", _retry_after(resp))
    raise PermanentAlertError(f"{channel.name}: HTTP {resp.status_code}: {mask_secrets(resp.text[:200])}")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    try:
        data = resp.json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("retry_after"), (int, float)):
        return float(data["retry_after"])
    return None


@dataclass(slots=True)
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    pending: int = 0


def deliver_pending(store: Any, cfg: AlertsConfig, *, max_wait_s: float = 30.0) -> DeliveryReport:
    """Send every due outbox row. A row is marked sent right after its 2xx, one at a time."""
    report = DeliveryReport()
    channels = {c.name: c for c in cfg.channels}
    now = datetime.now(UTC)
    down: dict[str, str] = {}
    with httpx.Client(timeout=cfg.timeout_s, trust_env=False, follow_redirects=False) as client:
        for row in store.due_alerts(now):
            ch = channels.get(row["channel"])
            if ch is None or not ch.url:
                continue
            if ch.name in down:  # one failing channel costs one attempt per run, not one per alert
                report.pending += 1
                continue
            error = _deliver_one(store, client, ch, row, cfg, report, max_wait_s)
            if error:
                down[ch.name] = error
    return report


def _deliver_one(store: Any, client: httpx.Client, ch: ChannelConfig, row: dict[str, Any],
                 cfg: AlertsConfig, report: DeliveryReport, max_wait_s: float) -> str | None:
    """Deliver one row; return the error if the channel should not be tried again this run."""
    attempts = row["attempts"]
    waited = 0.0
    while True:
        try:
            post(client, ch, render(ch, row["payload"]))
        except AlertError as exc:
            attempts += 1
            retry_after = getattr(exc, "retry_after", None)
            if exc.retryable and attempts < cfg.max_attempts:
                if retry_after is not None and waited + retry_after <= max_wait_s:
                    time.sleep(retry_after)
                    waited += retry_after
                    continue
                delay = retry_after if retry_after is not None else cfg.backoff_s * 2 ** (attempts - 1)
                store.mark_alert(row["id"], "pending", error=str(exc),
                                 next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))
                report.pending += 1
                return str(exc)
            store.mark_alert(row["id"], "failed", error=str(exc))
            report.failed += 1
            return None
        store.mark_alert(row["id"], "sent")
        report.sent += 1
        return None
