"""Shared fixtures: real servers on 127.0.0.1, a real Prefect (test harness), config folders in tmp."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.demo.servers import SiteServer, WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "src" / "monitor" / "demo" / "site"
SHARED = (ROOT.parent / "shared") if (ROOT.parent / "shared").exists() else Path("/work/shared")
SEED = SHARED / "seeds" / "000_b15008eb12104f57.txt"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One real (temporary) Prefect server for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def demo_site() -> Iterator[SiteServer]:
    with SiteServer(SITE) as site:
        yield site


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
def demo_config(tmp_path: Path, demo_site: SiteServer, webhook: WebhookReceiver,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of config/demo (and the default topics) writing into tmp_path."""
    cfg = tmp_path / "config"
    (cfg / "demo").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "topics.toml", cfg / "topics.toml")
    for name in ("monitor.toml", "sources.toml"):
        shutil.copy(ROOT / "config" / "demo" / name, cfg / "demo" / name)
    text = (cfg / "demo" / "monitor.toml").read_text()
    text = text.replace('path = "data/demo.duckdb"', f'path = "{tmp_path / "demo.duckdb"}"')
    text = text.replace('path = "data/demo-dashboard.html"', f'path = "{tmp_path / "dashboard.html"}"')
    (cfg / "demo" / "monitor.toml").write_text(text)
    monkeypatch.setenv("DEMO_BASE", demo_site.url)
    monkeypatch.setenv("DEMO_WEBHOOK", f"{webhook.url}/services/T000/B000/secret-token")
    return cfg / "demo"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
