"""Small real HTTP servers on 127.0.0.1 for the offline demo and the tests.

`SiteServer` serves a folder, replacing `{{BASE}}` in text files with its own root URL.
`WebhookReceiver` answers POSTs like a chat service and records every body it accepted; it can be
told to answer with a status (e.g. 429 with Retry-After, 500) for the next N requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TEXT_TYPES = {
    ".html": "text/html; charset=utf-8", ".xml": "application/xml", ".json": "application/json",
    ".txt": "text/plain; charset=utf-8", ".css": "text/css",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class BackgroundServer:
    """Run a handler class on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_body(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class SiteHandler(_QuietHandler):
    def do_GET(self) -> None:
        server: SiteServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path.endswith("/"):
            path += "index.html"
        target = (server.root / path.lstrip("/")).resolve()
        server.requests.append(path)
        if server.root not in target.parents or not target.is_file():
            self.send_body(404, b"not found", "text/plain")
            return
        body = target.read_bytes()
        ctype = TEXT_TYPES.get(target.suffix, "application/octet-stream")
        if target.suffix in TEXT_TYPES:
            body = body.replace(b"{{BASE}}", server.url.encode())
        self.send_body(200, body, ctype)

    do_HEAD = do_GET


class SiteServer(BackgroundServer):
    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root.resolve()
        self.requests: list[str] = []
        super().__init__(SiteHandler, port)


class WebhookHandler(_QuietHandler):
    def do_POST(self) -> None:
        recv: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        status, headers, answer = recv.next_answer(self.path, body)
        if 200 <= status < 300:
            with recv.lock:
                recv.received.append({"path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(body or b"null")})
        self.send_body(status, answer, "text/plain; charset=utf-8" if answer[:1] != b"{"
                       else "application/json", headers)


class WebhookReceiver(BackgroundServer):
    """A chat webhook on 127.0.0.1 that records what it accepted (Slack answers 200 `ok`)."""

    def __init__(self, port: int = 0, ok_body: bytes = b"ok") -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.ok_body = ok_body
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.hook: Callable[[str, bytes], tuple[int, dict[str, str], bytes] | None] | None = None
        super().__init__(WebhookHandler, port)

    def fail_next(self, n: int, status: int = 500, headers: dict[str, str] | None = None,
                  body: bytes = b"error") -> None:
        with self.lock:
            self.script.extend([(status, headers or {}, body)] * n)

    def next_answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.hook is not None:
            got = self.hook(path, body)
            if got is not None:
                return got
        with self.lock:
            if self.script:
                return self.script.pop(0)
        return 200, {}, self.ok_body
