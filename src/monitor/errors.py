"""The project's one exception tree, and the single place that decides what is retryable.

MonitorError
├── ConfigError            a config file is wrong (names file, key, problem)
├── FetchError             an HTTP fetch failed
│   ├── RetryableFetchError    timeouts, connection resets, 429, 5xx: try again later
│   └── PermanentFetchError    4xx, too large, not allowed (SSRF, robots), redirect loop
├── SourceError            a feed/sitemap/page could not be read as a list of links
├── ExtractError           a page could not be turned into an article
├── StoreError             the database cannot be opened or written (path named)
│   ├── QueryRefused           analyst SQL that would write, or is not a query
│   └── QueryTimeout           analyst SQL past its time limit
├── OutputError            an output file (dashboard, export) cannot be written (path named)
└── AlertError             a webhook delivery failed
    ├── RetryableAlertError    429, 5xx, timeouts (with retry_after when the service said)
    └── PermanentAlertError    4xx other than 429: the channel is misconfigured

Library errors (httpx, duckdb, pydantic) are translated into these at the module that calls the
library, so callers and the CLI only ever see this tree.
"""

from __future__ import annotations

import re

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


def is_retryable_status(status: int) -> bool:
    """Retry on throttling and server trouble; every other 4xx is permanent."""
    return status in RETRYABLE_STATUS or 500 <= status < 600


class MonitorError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(MonitorError):
    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}")


class FetchError(MonitorError):
    retryable = False

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url, self.reason, self.status = url, reason, status
        super().__init__(f"{reason} ({mask_secrets(url)})")


class RetryableFetchError(FetchError):
    retryable = True

    def __init__(
        self, url: str, reason: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(url, reason, status)
        self.retry_after = retry_after


class PermanentFetchError(FetchError):
    retryable = False


class SourceError(MonitorError):
    pass


class ExtractError(MonitorError):
    pass


class StoreError(MonitorError):
    pass


class QueryRefused(StoreError):
    """The statement would change something, or is not a query."""


class QueryTimeout(StoreError):
    """The query ran past its time limit and was interrupted."""


class OutputError(MonitorError):
    pass


class AlertError(MonitorError):
    retryable = False


class RetryableAlertError(AlertError):
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentAlertError(AlertError):
    retryable = False


_URL_SECRET = re.compile(r"(https?://[^/\s]+)(/[^\s\"']*)?")


def mask_url(url: str) -> str:
    """Keep scheme and host, hide the path and query (where webhook tokens live)."""
    m = _URL_SECRET.match(url)
    if not m:
        return "***"
    return m.group(1) + ("/***" if m.group(2) and m.group(2) != "/" else "")


_registered_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a secret (a webhook URL from the environment) so that mask_secrets hides it."""
    if value and len(value) >= 8:
        _registered_secrets.add(value)


def mask_secrets(text: str) -> str:
    """Replace every registered secret in text by its masked form."""
    for secret in sorted(_registered_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask_url(secret))
    return text
