"""Chaos suite fixtures: the session's demo site and webhook receiver, the clean reference run, and the
hook that prints the fault table at the end of the session (see chaoslib.py for the helpers).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.chaos.chaoslib import (
    FULL,
    SITE,
    TABLE,
    CleanRun,
    FaultTable,
    HookList,
    Servers,
    cli_cmd,
    cli_env,
    db_figures,
    run_cli,
    write_config,
)

from monitor.demo.servers import SiteServer, WebhookReceiver


@pytest.fixture(scope="session")
def fault_table() -> FaultTable:
    return TABLE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TABLE.rows:
        return
    terminalreporter.section("chaos: faults tried and outcomes")
    terminalreporter.write_line(f"mode: {'full (CHAOS_FULL=1)' if FULL else 'reduced (CI)'}")
    for line in TABLE.text().splitlines():
        terminalreporter.write_line(line)
    for k, v in TABLE.figures.items():
        terminalreporter.write_line(f"{k}: {v}")
    out = os.environ.get("CHAOS_REPORT")
    if out:
        Path(out).write_text(json.dumps({"full": FULL, "rows": [r.__dict__ for r in TABLE.rows],
                                         "figures": TABLE.figures}, indent=2, default=str))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """One site and one receiver for the session: URLs (hence article ids) stay the same for every run."""
    with SiteServer(SITE) as site, WebhookReceiver() as hook:
        site.requests = HookList()
        for srv in (site, hook):  # a killed client resets its connection: expected here, not news
            srv.httpd.handle_error = lambda request, address: None
        yield Servers(site, hook)


@pytest.fixture(scope="session")
def clean_run(servers: Servers, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    """One uninterrupted run of the demo cycle through the CLI: the figures every other run must reach."""
    base = tmp_path_factory.mktemp("clean")
    data = base / "data"
    config = write_config(base, data)
    servers.reset()
    db = data / "demo.duckdb"
    wal = Path(str(db) + ".wal")
    wal_max = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal wal_max
        while not stop.is_set():
            with contextlib.suppress(OSError):
                wal_max = max(wal_max, wal.stat().st_size)
            time.sleep(0.003)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    res = run_cli(cli_cmd(config), cli_env(servers), base)
    seconds = time.monotonic() - started
    stop.set()
    watcher.join()
    assert res.returncode == 0, res.stderr[-2000:]
    counts, dups = db_figures(db)
    assert counts["articles"] > 0 and counts["alerts"] > 0, counts
    assert not any(dups.values()), dups
    received = len(servers.hook.received)
    assert received == counts["alerts"]
    requests = len(servers.requests)
    TABLE.figures["clean run (CLI, wall)"] = f"{seconds:.1f}s, {counts}"
    return CleanRun(counts, seconds, requests, wal_max, received, db, config)
