"""Fetch benchmark: 2,000 pages from 20 hosts, all on loopback (127.0.0.1 … 127.0.0.20).

Each host is a real threaded HTTP server that counts how many requests it is serving at once and
keeps the maximum; the point is that no host ever sees more concurrent requests than
`fetch.per_host`, while the global limit keeps many hosts busy in parallel. Prints pages/s and the
per-host maxima (seen by the servers and by the Fetcher) and writes bench/results/fetch.json.

Usage: .venv/bin/python bench/fetch.py [--pages 2000] [--hosts 20] [--per-host 2]
       [--concurrency 32] [--delay 0.01] [--work-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.config import FetchConfig
from monitor.fetch import Fetcher, FetchRequest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ("<!doctype html><html><head><title>Bench page</title></head><body><article>"
        + "<p>Benchmark body text for the polite fetcher. </p>" * 200 + "</article></body></html>").encode()


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, work_s: float) -> None:
        super().__init__((host, 0), CountingHandler)
        self.work_s = work_s
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.served = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # clients closing kept-alive connections at the end are not errors


class CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        srv: CountingServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
        try:
            time.sleep(srv.work_s)
            status, body = (404, b"no robots") if self.path == "/robots.txt" else (200, PAGE)
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with srv.lock:
                srv.active -= 1
                srv.served += 1


def run(pages: int, hosts: int, per_host: int, concurrency: int, delay: float, work_ms: float) -> dict[str, Any]:
    servers = [CountingServer(f"127.0.0.{i + 1}", work_ms / 1000) for i in range(hosts)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    cfg = FetchConfig(allow_private=["127.0.0.0/8"], per_host=per_host, concurrency=concurrency,
                      min_delay_s=delay, retries=0)
    urls = [f"http://127.0.0.{i % hosts + 1}:{servers[i % hosts].server_address[1]}/story/page-{i}.html"
            for i in range(pages)]

    async def go() -> tuple[list[Any], dict[str, int]]:
        async with Fetcher(cfg) as f:
            res = await f.fetch_many([FetchRequest(u) for u in urls])
            return res, f.max_concurrency_seen

    started = time.perf_counter()
    results, fetcher_max = asyncio.run(go())
    seconds = time.perf_counter() - started
    for s in servers:
        s.shutdown()
        s.server_close()
    server_max = {f"{s.server_address[0]!s}:{s.server_address[1]}": s.max_active for s in servers}
    ok = sum(1 for r in results if r.ok)
    return {
        "pages": pages, "hosts": hosts, "ok": ok, "errors": sorted({r.error for r in results if r.error})[:5],
        "seconds": round(seconds, 3), "pages_per_s": round(ok / seconds, 1),
        "per_host_limit": per_host, "concurrency": concurrency, "min_delay_s": delay, "server_work_ms": work_ms,
        "max_concurrent_per_host_server": max(server_max.values()),
        "max_concurrent_per_host_fetcher": max(fetcher_max.values()),
        "limit_held": max(server_max.values()) <= per_host and max(fetcher_max.values()) <= per_host,
        "served_per_host": sorted({s.served for s in servers}),
        "server_max_by_host": server_max,
        # the floor politeness imposes: each host serves pages/hosts requests, min_delay apart
        "politeness_floor_s": round(pages / hosts * delay, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "measured on a shared 2-core machine under load from other work"},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--per-host", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.01)
    ap.add_argument("--work-ms", type=float, default=5.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fetch.json"))
    a = ap.parse_args()
    report = run(a.pages, a.hosts, a.per_host, a.concurrency, a.delay, a.work_ms)
    print(json.dumps({k: v for k, v in report.items() if k != "server_max_by_host"}, indent=2))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not report["limit_held"]:
        raise SystemExit("per-host limit exceeded")


if __name__ == "__main__":
    main()
