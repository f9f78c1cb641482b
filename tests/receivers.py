"""Webhook receivers on 127.0.0.1 that behave like each chat service.

Each checks a POST against the service's documented shape and limits and answers the way the service
does: Slack and Mattermost `200 ok`, Discord `204`, Teams Workflows `202`, Google Chat `200` with the
message (and the first message again for a repeated `requestId`), a generic receiver that verifies the
HMAC signature. They can be scripted to answer 429 (Retry-After header or Discord's `retry_after`
body), 500, or slowly, and can call a hook after accepting a message (to kill the sender there).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from monitor.demo.servers import BackgroundServer, _QuietHandler

Answer = tuple[int, dict[str, str], bytes]

SUCCESS: dict[str, Answer] = {
    "slack": (200, {}, b"ok"), "mattermost": (200, {}, b"ok"), "discord": (204, {}, b""),
    "teams": (202, {}, b""), "generic": (200, {}, b"ok"), "apprise": (200, {}, b"ok"),
}


def slack_problem(body: dict[str, Any]) -> str | None:
    blocks = body.get("blocks")
    if not body.get("text") and not blocks:
        return "no_text"
    for b in blocks or []:
        text = (b.get("text") or {}).get("text", "")
        if b["type"] == "section" and len(text) > 3000:
            return "invalid_blocks"
        if b["type"] == "header" and (b["text"]["type"] != "plain_text" or len(text) > 150):
            return "invalid_blocks"
        if b["type"] == "context" and len(b.get("elements", [])) > 10:
            return "invalid_blocks"
    if blocks is not None and len(blocks) > 50:
        return "invalid_blocks"
    return None


def discord_problem(body: dict[str, Any]) -> str | None:
    embeds = body.get("embeds") or []
    if not body.get("content") and not embeds:
        return '{"code": 50006, "message": "Cannot send an empty message"}'
    total = 0
    bad = len(body.get("content") or "") > 2000 or len(embeds) > 10
    for e in embeds:
        fields = e.get("fields", [])
        bad |= len(e.get("title", "")) > 256 or len(e.get("description", "")) > 4096 or len(fields) > 25
        bad |= len(e.get("footer", {}).get("text", "")) > 2048
        bad |= any(len(f["name"]) > 256 or len(f["value"]) > 1024 for f in fields)
        total += len(e.get("title", "")) + len(e.get("description", "")) + len(e.get("footer", {}).get("text", ""))
        total += sum(len(f["name"]) + len(f["value"]) for f in fields)
    if bad or total > 6000:
        return '{"code": 50035, "message": "Invalid Form Body"}'
    return None


def teams_problem(body: dict[str, Any], raw: bytes) -> str | None:
    if len(raw) > 28_000:
        return "413 message too large"
    atts = body.get("attachments")
    if body.get("type") != "message" or not isinstance(atts, list) or not atts:
        return "expected a message with attachments"
    for a in atts:
        if a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "attachment is not an Adaptive Card"
        card = a.get("content") or {}
        if card.get("type") != "AdaptiveCard" or not card.get("version") or not card.get("body"):
            return "invalid Adaptive Card"
    return None


def googlechat_problem(body: dict[str, Any], raw: bytes) -> str | None:
    if len(raw) > 32_000:
        return "message exceeds 32000 bytes"
    if len(body.get("text", "")) > 4096:
        return "text exceeds 4096 characters"
    cards = body.get("cardsV2")
    if not body.get("text") and not cards:
        return "message has no text or cards"
    for c in cards or []:
        if not c.get("cardId") or not c.get("card", {}).get("sections"):
            return "invalid card"
    return None


def mattermost_problem(body: dict[str, Any]) -> str | None:
    if not body.get("text") and not body.get("attachments"):
        return "Unable to parse incoming data"
    if len(body.get("text", "")) > 16383:
        return "message too long"
    return None


class _Handler(_QuietHandler):
    def do_POST(self) -> None:
        recv: ServiceReceiver = self.server.owner  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, answer = recv.answer(self.path, dict(self.headers), raw)
        ctype = "application/json" if answer[:1] == b"{" else "text/plain; charset=utf-8"
        with contextlib.suppress(OSError):  # the sender died while we answered
            self.send_body(status, answer, ctype, headers)


class ServiceReceiver(BackgroundServer):
    """`received`: every accepted request; `messages`: what the service shows (after its own dedup)."""

    def __init__(self, service: str, port: int = 0, secret: str | None = None) -> None:
        self.service = service
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.script: list[Answer] = []
        self.delay_s = 0.0
        self.on_accept: Callable[[dict[str, Any]], None] | None = None
        self.lock = threading.Lock()
        self._by_request_id: dict[str, Answer] = {}
        super().__init__(_Handler, port)

    def fail_next(self, n: int, status: int = 500, headers: dict[str, str] | None = None,
                  body: bytes = b"error") -> None:
        with self.lock:
            self.script.extend([(status, headers or {}, body)] * n)

    def wait_for(self, n: int, timeout_s: float = 10.0) -> int:
        """Wait until n requests were accepted (a slow answer still in its handler thread)."""
        end = time.monotonic() + timeout_s
        while len(self.received) < n and time.monotonic() < end:
            time.sleep(0.05)
        return len(self.received)

    def problem(self, body: Any, raw: bytes, headers: dict[str, str]) -> str | None:
        if not isinstance(body, dict):
            return "body is not a JSON object"
        match self.service:
            case "slack":
                return slack_problem(body)
            case "discord":
                return discord_problem(body)
            case "teams":
                return teams_problem(body, raw)
            case "googlechat":
                return googlechat_problem(body, raw)
            case "mattermost":
                return mattermost_problem(body)
            case "generic":
                return self._generic_problem(body, raw, headers)
        return None

    def _generic_problem(self, body: dict[str, Any], raw: bytes, headers: dict[str, str]) -> str | None:
        if not str(body.get("schema", "")).startswith("news-monitor."):
            return "unknown schema"
        if self.secret:
            ts = headers.get("X-Monitor-Timestamp", "")
            want = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            if not ts or not hmac.compare_digest(want, headers.get("X-Monitor-Signature", "")):
                return "401 bad signature"
        return None

    def answer(self, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            if self.script:
                return self.script.pop(0)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        problem = self.problem(body, raw, headers)
        if problem:
            with self.lock:
                self.rejected.append(problem)
            status = 413 if problem.startswith("413") else 401 if problem.startswith("401") else 400
            return status, {}, problem.encode()
        record = {"path": path, "headers": headers, "body": body}
        request_id = parse_qs(urlsplit(path).query).get("requestId", [None])[0]
        with self.lock:
            self.received.append(record)
            if self.service == "googlechat" and request_id in self._by_request_id:
                return self._by_request_id[request_id]  # Google Chat: same requestId, same message
            self.messages.append(record)
            ok = self._success(len(self.messages))
            if request_id:
                self._by_request_id[request_id] = ok
        if self.on_accept is not None:
            self.on_accept(record)
        return ok

    def _success(self, n: int) -> Answer:
        if self.service == "googlechat":
            return 200, {}, json.dumps({"name": f"spaces/AAA/messages/m{n}", "thread": {"name": "t"}}).encode()
        return SUCCESS.get(self.service, (200, {}, b"ok"))
