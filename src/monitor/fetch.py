"""Polite, safe HTTP fetching with httpx: the only module that downloads anything.

HTTP clients are built in one place (`build_client`) with explicit timeouts and limits, one per
host (`Fetcher.client`). Every request passes through:

- an SSRF guard: http/https only; hosts resolving to loopback, private, link-local, shared,
  reserved or otherwise non-public addresses are refused unless allowed by config. The guard runs
  before the request (readable reason), again on every redirect hop, and once more inside the
  connection layer on the addresses actually connected to (so a DNS answer that changes between
  check and connect cannot slip through). IPv4 addresses embedded in IPv6 forms (mapped,
  compatible, 6to4, NAT64) are judged as the IPv4 address they carry.
- robots.txt, cached per host for the Fetcher's life (Crawl-delay raises the host's minimum delay);
- a per-host concurrency limit with a minimum delay between request starts (and a pause when the
  host said Retry-After), then a global concurrency limit;
- conditional GET (ETag / Last-Modified), a redirect cap with loop detection;
- streamed bodies with a cap on the bytes on the wire *and* on the decompressed bytes (this module
  decodes gzip/deflate itself, bounded, so a compression bomb stops at the cap);
- for articles, non-text bodies (PDF, images, archives, binaries) are not downloaded: the result
  carries the content type and an empty body, and extraction records them as not_article;
- an overall deadline per attempt (a server trickling bytes cannot hold a slot forever), and
  retries with exponential backoff for retryable failures only, honouring Retry-After.

`fetch` never raises: the outcome, including a readable reason for a failure, is a FetchResult.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import ipaddress
import socket
import ssl
import time
import urllib.robotparser
import zlib
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
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
MAX_CRAWL_DELAY_S = 30.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPAT = ipaddress.ip_network("::/96")
_BINARY_MAGIC = (b"%PDF", b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"PK\x03\x04", b"\x1f\x8b", b"RIFF",
                 b"OggS", b"ID3", b"\x00\x00\x00")
# the per-request "private addresses allowed" flag, read by the connection-level guard
_allow_private_var: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_private", default=False)


@dataclass(slots=True)
class FetchRequest:
    url: str
    purpose: str = "article"  # article | source | robots
    etag: str | None = None
    last_modified: str | None = None
    ignore_robots: bool = False
    allow_private: bool = False


def user_agent(cfg: FetchConfig) -> str:
    """The User-Agent: the configured product token plus the contact URL site owners can use."""
    if cfg.contact_url and cfg.contact_url not in cfg.user_agent:
        return f"{cfg.user_agent} (+{cfg.contact_url})"
    return cfg.user_agent


# ---- address policy -----------------------------------------------------------------------------


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    """Decides whether a URL may be fetched: scheme, and the addresses its host resolves to."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.hosts = {a.lower().strip("[]") for a in allow if "/" not in a}
        self.networks = [ipaddress.ip_network(a, strict=False) for a in allow if "/" in a]

    def ip_allowed(self, ip: IPAddress) -> bool:
        if str(ip) in self.hosts or any(ip in n for n in self.networks):
            return True
        inner = embedded_ipv4(ip)
        if inner is not None:
            return self.ip_allowed(inner)
        if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
            return False
        return ip.is_global and not ip.is_multicast

    def refusal(self, host: str, ips: Iterable[IPAddress]) -> str | None:
        """Why connecting to host (resolved to ips) is refused, or None. One bad address refuses all."""
        for ip in ips:
            if not self.ip_allowed(ip):
                shown = host if host == str(ip) else f"{host} resolves to {ip}"
                return f"refused: {shown}, a non-public address (allow it in fetch.allow_private)"
        return None

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise PermanentFetchError(host, f"DNS lookup of {host} failed: {_first_line(exc)}") from None
        return list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))

    async def check(self, url: str, allow_private: bool = False) -> None:
        """Raise PermanentFetchError unless url may be fetched. Sends nothing to the host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PermanentFetchError(url, f"scheme {parts.scheme or '(none)'!r} is not allowed")
        try:
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise PermanentFetchError(url, f"bad URL: {exc}") from None
        if not host:
            raise PermanentFetchError(url, "URL has no host")
        if allow_private or host in self.hosts:
            return
        try:
            ips = await self.resolve(host, port)
        except PermanentFetchError as exc:
            raise PermanentFetchError(url, exc.reason) from None
        why = self.refusal(host, ips)
        if why:
            raise PermanentFetchError(url, why)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that re-checks the addresses it actually connects to."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if _allow_private_var.get() or host.lower() in self.policy.hosts:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        ips = await self.policy.resolve(host, port)
        why = self.policy.refusal(host, ips)
        if why:
            raise PermanentFetchError(f"{host}:{port}", why)
        last: Exception | None = None
        for ip in ips:  # connect to the checked address, never re-resolve
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise PermanentFetchError(path, "unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# ---- politeness ---------------------------------------------------------------------------------


class HostGate:
    """Per-host concurrency limit, minimum delay between request starts, pause after Retry-After."""

    def __init__(self, limit: int, min_delay: float) -> None:
        self.sem = asyncio.Semaphore(limit)
        self.limit = limit
        self.min_delay = min_delay
        self.lock = asyncio.Lock()
        self.last_start = 0.0
        self.paused_until = 0.0
        self.active = 0
        self.max_active = 0
        self.requests = 0

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def __aenter__(self) -> HostGate:
        await self.sem.acquire()
        try:
            async with self.lock:
                wait = max(self.last_start + self.min_delay, self.paused_until) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.last_start = time.monotonic()
        except BaseException:
            self.sem.release()
            raise
        self.active += 1
        self.requests += 1
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
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# ---- bodies -------------------------------------------------------------------------------------


class _Decoder:
    """Bounded Content-Encoding decoder: never produces more than `room` bytes per call."""

    def __init__(self, url: str, encoding: str) -> None:
        enc = encoding.strip().lower()
        self.z: Any = None
        if enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self.z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, auto-detected
        elif enc not in ("", "identity"):
            raise PermanentFetchError(url, f"unsupported content encoding {encoding!r}")

    def feed(self, chunk: bytes, room: int) -> bytes:
        if self.z is None:
            return chunk
        try:
            return bytes(self.z.decompress(chunk, room + 1))
        except zlib.error as exc:
            raise PermanentFetchError("", f"bad content encoding: {exc}") from None


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _is_textual(mime: str) -> bool:
    return (mime.startswith("text/") or mime.endswith("+xml") or mime.endswith("+json")
            or mime in ("application/xml", "application/json", "application/xhtml+xml"))


def looks_binary(head: bytes) -> bool:
    return b"\x00" in head[:1024] or head.startswith(_BINARY_MAGIC)


# ---- the fetcher --------------------------------------------------------------------------------


# An error page or a redirect is read (and dropped) when it is this small, so that its connection goes
# back to the host's pool: left unread, it is closed, and the next request to that host opens another
# (10 connections for 20 requests, half of them 404s, against 1: tests/test_fetch_faults.py).
DRAIN_MAX_BYTES = 64 * 1024
DRAIN_WAIT_S = 1.0


async def _drain_small_body(resp: httpx.Response) -> None:
    """Read the rest of a small answer whose body nobody needs. A big, unsized or slow one is left
    unread (its connection is closed): the answer itself, e.g. a 429's Retry-After, never waits on it."""
    declared = resp.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > DRAIN_MAX_BYTES:
        return
    with suppress(httpx.HTTPError, TimeoutError):
        await asyncio.wait_for(_discard_raw(resp), timeout=DRAIN_WAIT_S)


async def _discard_raw(resp: httpx.Response) -> None:
    async for _ in resp.aiter_raw():  # raw: a compressed error page is not inflated only to be dropped
        pass


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
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.ua = user_agent(cfg)

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            await client.aclose()

    def client(self, url: str) -> httpx.AsyncClient:
        """The host's own client. httpcore scans every connection of its pool at each request's start
        and end; one pool per host keeps that scan to the host's own connections (4 hosts, 8 each:
        1.39 -> 1.13 CPU ms a page). A transport given to the Fetcher (tests) serves one client."""
        key = _host_key(url) if self._transport is None else ""
        if key not in self.clients:
            self.clients[key] = build_client(self.cfg, self._transport, self.policy)
        return self.clients[key]

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

    async def fetch(self, req: FetchRequest, retries: int | None = None) -> FetchResult:
        """Fetch with retries; never raises."""
        started = time.monotonic()
        retries = self.cfg.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                result = await self._fetch_once(req)
                result.elapsed_ms = (time.monotonic() - started) * 1000
                return result
            except FetchError as exc:
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    return _failed(req.url, exc, started, attempt,
                                   f"; server asked to wait {retry_after:.0f}s, more than "
                                   f"{MAX_RETRY_AFTER_S:.0f}s")
                if exc.retryable and attempt < retries:
                    delay = self.cfg.backoff_s * (2**attempt)
                    if retry_after is not None:
                        self.gate(req.url).pause(retry_after)
                        delay = max(delay, retry_after)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                return _failed(req.url, exc, started, attempt)
            except Exception as exc:  # a library bug on one URL must not cost the run
                return _failed(req.url, PermanentFetchError(req.url, f"unexpected {type(exc).__name__}: "
                                                            f"{_first_line(exc)}"), started, attempt)

    async def _fetch_once(self, req: FetchRequest) -> FetchResult:
        url = req.url
        await self.policy.check(url, req.allow_private)
        headers = {}
        if req.etag:
            headers["If-None-Match"] = req.etag
        if req.last_modified:
            headers["If-Modified-Since"] = req.last_modified
        seen = {url}
        for _hop in range(self.cfg.max_redirects + 1):
            await self._check_robots(url, req)
            gate = self.gate(url)
            async with gate, self.global_sem:
                token = _allow_private_var.set(req.allow_private)
                try:
                    result = await asyncio.wait_for(self._get(url, headers, req.purpose),
                                                    timeout=self.cfg.total_timeout_s)
                except TimeoutError:
                    raise RetryableFetchError(
                        url, f"no complete answer within {self.cfg.total_timeout_s:g}s (deadline)"
                    ) from None
                finally:
                    _allow_private_var.reset(token)
            if isinstance(result, str):  # a redirect target
                nxt = urljoin(url, result)
                if nxt in seen:
                    raise PermanentFetchError(req.url, f"redirect loop: {nxt} was already visited")
                seen.add(nxt)
                try:
                    await self.policy.check(nxt, req.allow_private)
                except PermanentFetchError as exc:
                    raise PermanentFetchError(req.url, f"redirect to {nxt} {exc.reason}") from None
                url = nxt
                continue
            result.url = req.url
            return result
        raise PermanentFetchError(req.url, f"more than {self.cfg.max_redirects} redirects")

    async def _check_robots(self, url: str, req: FetchRequest) -> None:
        if not self.cfg.respect_robots or req.ignore_robots or req.purpose == "robots":
            return
        if not await self._robots_allows(url, req.allow_private):
            raise PermanentFetchError(url, "disallowed by robots.txt")

    async def _get(self, url: str, headers: dict[str, str], purpose: str) -> FetchResult | str:
        try:
            async with self.client(url).stream("GET", url, headers=headers) as resp:
                return await self._answer(url, resp, purpose)
        except FetchError as exc:
            if not exc.url:
                exc.url = url
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

    async def _answer(self, url: str, resp: httpx.Response, purpose: str) -> FetchResult | str:
        now = datetime.now(UTC)
        if resp.status_code == 304:  # httpx counts 304 among redirects
            return FetchResult(url=url, final_url=url, status_code=304, not_modified=True,
                               headers=dict(resp.headers), fetched_at=now)
        if resp.status_code in _REDIRECTS or resp.status_code >= 400:
            await _drain_small_body(resp)
        if resp.status_code in _REDIRECTS:
            location = resp.headers.get("location")
            if not location:
                raise PermanentFetchError(url, f"HTTP {resp.status_code} without Location")
            return location
        if resp.status_code >= 400:
            retry_after = _parse_retry_after(resp.headers.get("retry-after"))
            reason = f"HTTP {resp.status_code}" + (f" (Retry-After {retry_after:g}s)"
                                                    if retry_after is not None else "")
            if is_retryable_status(resp.status_code):
                raise RetryableFetchError(url, reason, resp.status_code, retry_after)
            raise PermanentFetchError(url, reason, resp.status_code)
        ctype = resp.headers.get("content-type")
        mime = _mime(ctype)
        declared = resp.headers.get("content-length", "")
        base = FetchResult(url=url, final_url=str(resp.url), status_code=resp.status_code,
                           content_type=ctype, headers=dict(resp.headers), fetched_at=now)
        if purpose == "article" and mime and not _is_textual(mime):
            base.content = b""  # not an article: the type says so, the body is never downloaded
            return base
        sniff = purpose == "article" and not mime  # unlabelled: look at the first bytes first
        if not sniff and declared.isdigit() and int(declared) > self.cfg.max_bytes:
            raise PermanentFetchError(url, f"body too large: {int(declared)} bytes declared > cap "
                                           f"{self.cfg.max_bytes}")
        base.content = await self._read_body(url, resp, sniff=sniff)
        return base

    async def _read_body(self, url: str, resp: httpx.Response, sniff: bool) -> bytes:
        cap = self.cfg.max_bytes
        decoder = _Decoder(url, resp.headers.get("content-encoding", ""))
        body = bytearray()
        wire = 0
        async for chunk in resp.aiter_raw():
            wire += len(chunk)
            if wire > cap:
                raise PermanentFetchError(url, f"body too large: over {cap} bytes")
            body.extend(decoder.feed(chunk, cap - len(body)))
            if len(body) > cap:
                raise PermanentFetchError(
                    url, f"body too large: over {cap} bytes once decompressed "
                         f"({wire} bytes on the wire; compression bomb?)")
            if sniff and len(body) >= 1024:
                sniff = False
                if looks_binary(bytes(body[:1024])):
                    return bytes(body[:1024])  # enough for extraction to see it is binary
        return bytes(body)

    async def _robots_allows(self, url: str, allow_private: bool) -> bool:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        lock = self.robots_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self.robots:
                self.robots[key] = await self._load_robots(key, allow_private)
                self._apply_crawl_delay(url, self.robots[key])
        parser = self.robots[key]
        return True if parser is None else parser.can_fetch(self.ua, url)

    def _apply_crawl_delay(self, url: str, parser: urllib.robotparser.RobotFileParser | None) -> None:
        if parser is None:
            return
        try:
            delay = parser.crawl_delay(self.ua)
        except (TypeError, ValueError):
            delay = None
        if delay:
            gate = self.gate(url)
            gate.min_delay = max(gate.min_delay, min(float(delay), MAX_CRAWL_DELAY_S))

    async def _load_robots(self, base: str, allow_private: bool) -> urllib.robotparser.RobotFileParser | None:
        res = await self.fetch(FetchRequest(f"{base}/robots.txt", purpose="robots",
                                            allow_private=allow_private), retries=0)
        parser = urllib.robotparser.RobotFileParser()
        if res.status_code in (401, 403):
            parser.disallow_all = True  # type: ignore[attr-defined]
            return parser
        if not res.ok or not res.content:
            return None  # no robots.txt (404) or unreachable: everything allowed
        parser.parse(res.content.decode("utf-8", "replace").splitlines())
        return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failed(url: str, exc: FetchError, started: float, retries_done: int, extra: str = "") -> FetchResult:
    reason = exc.reason + extra
    if retries_done:
        reason += f" (after {retries_done + 1} attempts)"
    return FetchResult(url=url, final_url=url, status_code=exc.status, error=reason,
                       retryable=exc.retryable, elapsed_ms=(time.monotonic() - started) * 1000,
                       fetched_at=datetime.now(UTC))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one loads the CA bundle (~35 ms)."""
    return httpx.create_ssl_context()


def build_client(cfg: FetchConfig, transport: httpx.AsyncBaseTransport | None = None,
                 policy: AddressPolicy | None = None) -> httpx.AsyncClient:
    """The one place an HTTP client is configured."""
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    if transport is None:
        guarded = httpx.AsyncHTTPTransport(verify=_tls_context(), limits=limits, retries=0)
        # httpx has no public hook for the network backend; the guard must see real addresses
        guarded._pool._network_backend = GuardedBackend(policy or AddressPolicy(cfg.allow_private))
        transport = guarded
    return httpx.AsyncClient(
        headers={"User-Agent": user_agent(cfg), "Accept-Encoding": "gzip, deflate"},
        timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s,
                              write=cfg.read_timeout_s, pool=cfg.total_timeout_s),
        limits=limits,
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
