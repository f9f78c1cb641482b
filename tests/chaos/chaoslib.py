"""Chaos suite helpers (used by conftest.py and the tests): config copies of the demo, the real CLI in a
subprocess (its own process group, so SIGKILL takes the extraction workers too), process-group and
database helpers, and the fault table every test adds its rows to (printed at the end of the session,
saved as JSON to $CHAOS_REPORT when set; tests/chaos/report.py turns it into docs/reliability.md).

CHAOS_FULL=1 runs the full matrix (20 kills, more fuzz examples); the default is the reduced CI set.
CHAOS_SEED fixes the seed of the kill schedule (it is printed either way).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from monitor.demo.servers import SiteServer, WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "src" / "monitor" / "demo" / "site"
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PYTHON = sys.executable
FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")
TOKEN = "secret-token-c4a0s"  # the webhook path secret that must never show up anywhere

# what a clean run stores; equal figures after every kill + recovery is the crash-safety claim
COUNTS = {
    "articles": "SELECT count(*) FROM articles",
    "topic_matches": "SELECT count(*) FROM article_topics",
    "stories": "SELECT count(*) FROM stories",
    "developments": "SELECT count(*) FROM development_events",
    "alerts": "SELECT count(*) FROM alerts",
    "signatures": "SELECT count(*) FROM article_signatures",
}
DUPLICATES = {
    "articles": "SELECT count(*) - count(DISTINCT url) FROM articles",
    "developments": "SELECT count(*) - count(DISTINCT (story_id, article_id, kind, topic)) FROM development_events",
    "alerts": "SELECT count(*) - count(DISTINCT (development_id, channel)) FROM alerts",
    "topic_matches": "SELECT count(*) - count(DISTINCT (article_id, topic)) FROM article_topics",
}


# ---- the fault table ----------------------------------------------------------------------------


@dataclass
class FaultRow:
    fault: str
    runs: int
    passed: int
    notes: str = ""


@dataclass
class FaultTable:
    rows: list[FaultRow] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, fault: str, runs: int, passed: int, notes: str = "") -> None:
        self.rows.append(FaultRow(fault, runs, passed, notes))

    def markdown(self) -> str:
        lines = ["| fault | runs | passed | notes |", "|---|---:|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r.fault} | {r.runs} | {r.passed} | {r.notes.replace('|', '/')} |")
        return "\n".join(lines)

    def text(self) -> str:
        w = max([len(r.fault) for r in self.rows] + [5])
        out = [f"{'fault':<{w}}  runs  passed  notes"]
        for r in self.rows:
            out.append(f"{r.fault:<{w}}  {r.runs:>4}  {r.passed:>6}  {r.notes}")
        return "\n".join(out)


TABLE = FaultTable()


# ---- servers and config -------------------------------------------------------------------------


class HookList(list[str]):
    """A list whose append calls a hook: the site server appends every requested path to one."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Callable[[str], None] | None = None

    def append(self, item: str) -> None:
        super().append(item)
        if self.hook is not None:
            self.hook(item)


@dataclass
class Servers:
    site: SiteServer
    hook: WebhookReceiver

    @property
    def requests(self) -> HookList:
        return self.site.requests  # type: ignore[return-value]

    def reset(self) -> None:
        self.requests.hook = None
        self.requests.clear()
        self.hook.hook = None
        with self.hook.lock:
            self.hook.received.clear()
            self.hook.script.clear()


def write_config(folder: Path, data_dir: Path, extra_monitor: str = "") -> Path:
    """A copy of config/demo (plus the default topics) storing everything under data_dir."""
    cfg = folder / "config"
    (cfg / "demo").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config" / "topics.toml", cfg / "topics.toml")
    shutil.copy(ROOT / "config" / "demo" / "sources.toml", cfg / "demo" / "sources.toml")
    text = (ROOT / "config" / "demo" / "monitor.toml").read_text()
    text = text.replace('path = "data/demo.duckdb"', f'path = "{data_dir / "demo.duckdb"}"')
    text = text.replace('path = "data/demo-dashboard.html"', f'path = "{data_dir / "dashboard.html"}"')
    (cfg / "demo" / "monitor.toml").write_text(text + extra_monitor)
    return cfg / "demo"


def cli_env(servers: Servers, webhook_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "MONITOR_DEBUG")}
    env["DEMO_BASE"] = servers.site.url
    env["DEMO_WEBHOOK"] = webhook_url or f"{servers.hook.url}/services/T000/B000/{TOKEN}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    try:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
        if api:  # the session's Prefect test server: no ephemeral server (and no ~/.prefect) per run
            env["PREFECT_API_URL"] = api
    except Exception:
        pass
    return env


def cli_cmd(config: Path, *args: str) -> list[str]:
    return [PYTHON, "-m", "monitor.cli", "run", "--config", str(config), "--format", "quiet", *args]


def run_cli(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ---- process groups -----------------------------------------------------------------------------


def one_line_problems(rc: int, stdout: str, stderr: str) -> tuple[list[str], list[str]]:
    """What is wrong with a CLI's failure answer in general (it exited 0, printed a traceback, or said
    more or less than one stderr line), and its non-empty stderr lines for the caller's own checks."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    problems = []
    if rc == 0:
        problems.append("exit 0")
    if "Traceback" in stderr + stdout:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    return problems, lines


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live process, from /proc (no psutil needed)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            st = _stat(int(p.name))
            if st and st[1] == pgid:
                out.append(int(p.name))
    return out


def grandchildren(pid: int) -> list[int]:
    """Processes of pid's group that are not pid's direct children (extraction workers)."""
    return [m for m in group_members(pid) if m != pid and (_stat(m) or (0, 0))[0] != pid]


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# ---- database helpers ---------------------------------------------------------------------------


def db_figures(db: Path) -> tuple[dict[str, int], dict[str, int]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        counts = {k: int(con.execute(q).fetchone()[0]) for k, q in COUNTS.items()}  # type: ignore[index]
        dups = {k: int(con.execute(q).fetchone()[0]) for k, q in DUPLICATES.items()}  # type: ignore[index]
    finally:
        con.close()
    return counts, dups


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def idempotency_key(msg: dict[str, Any]) -> str | None:
    for k, v in msg["headers"].items():
        if k.lower() == "idempotency-key":
            return str(v)
    return None


# ---- the clean reference run --------------------------------------------------------------------


@dataclass
class CleanRun:
    counts: dict[str, int]
    seconds: float
    requests: int
    wal_max: int
    alerts_received: int
    db: Path
    config: Path
