"""Polite, safe HTTP fetching with httpx: the only module that downloads anything.

One AsyncClient is built here with explicit timeouts and limits. Every request passes through:
an SSRF guard (http/https only; hosts resolving to non-public addresses refused unless allowed,
re-checked on every redirect hop), robots.txt (cached per host), a global and a per-host
concurrency limit with a minimum delay per host, conditional GET, streamed bodies with a size cap,
an overall deadline (a server trickling bytes cannot hold a slot forever), and retries with
backoff for retryable failures only, honouring Retry-After. `fetch` never raises: the outcome,
including the reason for a failure, is data in the FetchResult.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import socket
import time
import urllib.robotparser
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpx

from monitor.config import FetchConfig
from monitor.errors import (
    FetchError,
    PermanentFetchError,
    RetryableFetchError,
    is_retryable_status,
)
from monitor.models import FetchResult

MAX_RETRY_AFTER_S = 120.0


@dataclass(slots=True)
class FetchRequest:
    url: str
    purpose: str = "article"  # article | source | robots
    etag: str | None = None
    last_modified: str | None = None
    ignore_robots: bool = False
    allow_private: bool = False


class HostGate:
    """Per-host concurrency limit and minimum delay between request starts."""

    def __init__(self, limit: int, min_delay: float) -> None:
        self.sem = asyncio.Semaphore(limit)
        self.min_delay = min_delay
        self.lock = asyncio.Lock()
        self.last_start = 0.0
        self.active = 0
        self.max_active = 0

    async def __aenter__(self) -> HostGate:
        await self.sem.acquire()
        async with self.lock:
            wait = self.last_start + self.min_delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last_start = time.monotonic()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self.sem.release()


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class AddressPolicy:
    """Decides whether a URL may be fetched: scheme, and the addresses its host resolves to."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.hosts = {a.lower() for a in allow if "/" not in a}
        self.networks = [ipaddress.ip_network(a, strict=False) for a in allow if "/" in a]

    def _ip_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if str(ip) in self.hosts:
            return True
        if any(ip in n for n in self.networks):
            return True
        return ip.is_global and not ip.is_multicast

    async def check(self, url: str, allow_private: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PermanentFetchError(url, f"scheme {parts.scheme or '(none)'!r} is not allowed")
        host = (parts.hostname or "").lower()
        if not host:
            raise PermanentFetchError(url, "URL has no host")
        if allow_private or host in self.hosts:
            return
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, parts.port or 80, type=socket.SOCK_STREAM
                )
            except socket.gaierror as exc:
                raise PermanentFetchError(url, f"DNS lookup failed: {exc.strerror}") from None
            ips = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
        for ip in ips:
            if not self._ip_allowed(ip):
                raise PermanentFetchError(url, f"refused: {host} resolves to non-public address {ip}")


class Fetcher:
    """Use as `async with Fetcher(cfg) as f: await f.fetch_many(requests)`."""

    def __init__(self, cfg: FetchConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.cfg = cfg
        self.policy = AddressPolicy(cfg.allow_private)
        self.global_sem = asyncio.Semaphore(cfg.concurrency)
        self.gates: dict[str, HostGate] = {}
        self.robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self._transport = transport
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Fetcher:
        self.client = build_client(self.cfg, self._transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.aclose()

    def gate(self, url: str) -> HostGate:
        key = _host_key(url)
        if key not in self.gates:
            self.gates[key] = HostGate(self.cfg.per_host, self.cfg.min_delay_s)
        return self.gates[key]

    @property
    def max_concurrency_seen(self) -> dict[str, int]:
        return {k: g.max_active for k, g in self.gates.items()}

    async def fetch_many(self, requests: Sequence[FetchRequest]) -> list[FetchResult]:
        return list(await asyncio.gather(*(self.fetch(r) for r in requests)))

    async def fetch(self, req: FetchRequest) -> FetchResult:
        """Fetch with retries; never raises."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                result = await self._fetch_once(req)
                result.elapsed_ms = (time.monotonic() - started) * 1000
                return result
            except FetchError as exc:
                retry_after = getattr(exc, "retry_after", None)
                if exc.retryable and attempt < self.cfg.retries:
                    delay = self.cfg.backoff_s * (2**attempt)
                    if retry_after is not None:
                        if retry_after > MAX_RETRY_AFTER_S:
                            return _failed(req.url, exc, started)
                        delay = max(delay, retry_after)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                return _failed(req.url, exc, started)

    async def _fetch_once(self, req: FetchRequest) -> FetchResult:
        url = req.url
        await self.policy.check(url, req.allow_private)
        if self.cfg.respect_robots and not req.ignore_robots and req.purpose != "robots":
            if not await self._robots_allows(url, req.allow_private):
                raise PermanentFetchError(url, "disallowed by robots.txt")
        assert self.client is not None
        headers = {}
        if req.etag:
            headers["If-None-Match"] = req.etag
        if req.last_modified:
            headers["If-Modified-Since"] = req.last_modified
        for _hop in range(self.cfg.max_redirects + 1):
            async with self.global_sem, self.gate(url):
                try:
                    result = await asyncio.wait_for(
                        self._get(url, headers), timeout=self.cfg.total_timeout_s
                    )
                except TimeoutError:
                    raise RetryableFetchError(
                        url, f"no complete answer within {self.cfg.total_timeout_s:g}s"
                    ) from None
            if isinstance(result, str):  # a redirect target
                url = urljoin(url, result)
                await self.policy.check(url, req.allow_private)
                continue
            result.url = req.url
            return result
        raise PermanentFetchError(req.url, f"more than {self.cfg.max_redirects} redirects")

    async def _get(self, url: str, headers: dict[str, str]) -> FetchResult | str:
        assert self.client is not None
        try:
            async with self.client.stream("GET", url, headers=headers) as resp:
                if resp.is_redirect:
                    location = resp.headers.get("location")
                    if not location:
                        raise PermanentFetchError(url, f"HTTP {resp.status_code} without Location")
                    return location
                if resp.status_code == 304:
                    return FetchResult(url=url, final_url=url, status_code=304, not_modified=True,
                                       headers=dict(resp.headers), fetched_at=datetime.now(UTC))
                if resp.status_code >= 400:
                    reason = f"HTTP {resp.status_code}"
                    if is_retryable_status(resp.status_code):
                        raise RetryableFetchError(
                            url, reason, resp.status_code,
                            _parse_retry_after(resp.headers.get("retry-after")),
                        )
                    raise PermanentFetchError(url, reason, resp.status_code)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.cfg.max_bytes:
                    raise PermanentFetchError(
                        url, f"body too large: {int(declared)} bytes > cap {self.cfg.max_bytes}"
                    )
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self.cfg.max_bytes:
                        raise PermanentFetchError(
                            url, f"body too large: over {self.cfg.max_bytes} bytes (decompressed)"
                        )
                return FetchResult(
                    url=url, final_url=str(resp.url), status_code=resp.status_code, content=bytes(body),
                    content_type=resp.headers.get("content-type"), headers=dict(resp.headers),
                    fetched_at=datetime.now(UTC),
                )
        except FetchError:
            raise
        except httpx.TimeoutException as exc:
            raise RetryableFetchError(url, f"timeout ({type(exc).__name__})") from None
        except httpx.RemoteProtocolError as exc:
            raise RetryableFetchError(url, f"connection broken: {_first_line(exc)}") from None
        except httpx.DecodingError as exc:
            raise PermanentFetchError(url, f"bad content encoding: {_first_line(exc)}") from None
        except (httpx.ConnectError, httpx.NetworkError) as exc:
            raise RetryableFetchError(url, f"cannot connect: {_first_line(exc)}") from None
        except httpx.HTTPError as exc:
            raise PermanentFetchError(url, f"{type(exc).__name__}: {_first_line(exc)}") from None

    async def _robots_allows(self, url: str, allow_private: bool) -> bool:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        lock = self.robots_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self.robots:
                self.robots[key] = await self._load_robots(key, allow_private)
        parser = self.robots[key]
        return True if parser is None else parser.can_fetch(self.cfg.user_agent, url)

    async def _load_robots(self, base: str, allow_private: bool) -> urllib.robotparser.RobotFileParser | None:
        res = await self.fetch(FetchRequest(f"{base}/robots.txt", purpose="robots",
                                            allow_private=allow_private))
        parser = urllib.robotparser.RobotFileParser()
        if res.status_code in (401, 403):
            parser.disallow_all = True
            return parser
        if not res.ok or not res.content:
            return None  # no robots.txt (404) or unreachable: everything allowed
        parser.parse(res.content.decode("utf-8", "replace").splitlines())
        return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failed(url: str, exc: FetchError, started: float) -> FetchResult:
    return FetchResult(url=url, final_url=url, status_code=exc.status, error=exc.reason,
                       retryable=exc.retryable, elapsed_ms=(time.monotonic() - started) * 1000,
                       fetched_at=datetime.now(UTC))


def build_client(cfg: FetchConfig, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The one place an HTTP client is configured."""
    return httpx.AsyncClient(
        headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "gzip, deflate"},
        timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s,
                              write=cfg.read_timeout_s, pool=cfg.total_timeout_s),
        limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
        follow_redirects=False,
        transport=transport,
        trust_env=False,
    )


def fetch_all(cfg: FetchConfig, requests: Sequence[FetchRequest]) -> list[FetchResult]:
    """Synchronous entry point: fetch a batch concurrently and return results in request order."""

    async def run() -> list[FetchResult]:
        async with Fetcher(cfg) as fetcher:
            return await fetcher.fetch_many(requests)

    return asyncio.run(run())
