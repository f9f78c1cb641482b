"""Run operations: the lock that keeps runs from overlapping, the per-run report, `monitor status`,
the run process's malloc arena limit (`limit_malloc_arenas`) and the Prefect API a one-off run talks
to (`prefect_api`).

The lock is an advisory `flock` on `<db>.run.lock` holding the owner's PID and start time. The
kernel drops it when the owner dies, so a crashed run never leaves a stale lock behind. A second run
(a schedule firing while a long run is still going, or someone typing `monitor run`) finds it taken
and skips (or waits, when asked to), and says who holds it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO


@dataclass(slots=True, frozen=True)
class LockHolder:
    pid: int | None
    since: str | None

    def describe(self) -> str:
        return f"pid {self.pid or '?'} since {self.since or '?'}"


def lock_path(db_path: str | Path) -> Path:
    p = Path(db_path)
    return p.with_name(p.name + ".run.lock")


def _try_lock(fh: TextIO) -> bool:
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_holder(db_path: str | Path) -> LockHolder | None:
    """Who holds the run lock now, or None when no run is in flight."""
    path = lock_path(db_path)
    if not path.exists():
        return None
    with path.open("a+", encoding="utf-8") as fh:
        if _try_lock(fh):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return None
        fh.seek(0)
        return _parse_holder(fh.read())


def _parse_holder(text: str) -> LockHolder:
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError:
        data = {}
    pid = data.get("pid")
    return LockHolder(pid if isinstance(pid, int) else None, data.get("since"))


@contextmanager
def run_lock(db_path: str | Path, wait_s: float = 0.0) -> Iterator[LockHolder | None]:
    """Hold the run lock for the block; yields None when acquired, else the holder (run must skip)."""
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as fh:
        deadline = time.monotonic() + wait_s
        while not _try_lock(fh):
            if time.monotonic() >= deadline:
                fh.seek(0)
                yield _parse_holder(fh.read())
                return
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds")}))
            fh.flush()
            yield None
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ---- the per-run report (a Prefect markdown artifact) -------------------------------------------


def run_breakdown(con: Any, run_id: str) -> dict[str, dict[str, int]]:
    """Per source: developments and alerts this run produced (read from the run's own rows)."""
    out: dict[str, dict[str, int]] = {}
    rows = con.execute(
        "SELECT d.source_id, count(DISTINCT d.id), count(al.id) FROM development_events d "
        "LEFT JOIN alerts al ON al.development_id = d.id WHERE d.run_id = ? GROUP BY d.source_id",
        [run_id],
    ).fetchall()
    for sid, devs, alerts in rows:
        out[str(sid)] = {"developments": int(devs), "alerts": int(alerts)}
    return out


def _md_cell(value: Any) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")[:80]


def run_markdown(stats: dict[str, Any], breakdown: dict[str, dict[str, int]]) -> str:
    """The run summary as markdown: one row per source, then the totals."""
    lines = [
        f"# Run `{stats['run_id']}`",
        "",
        "| source | links found | new | fetched | stored | failed | developments | alerts | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sid, s in sorted(stats.get("sources", {}).items()):
        b = breakdown.get(sid, {})
        note = s.get("skipped") or s.get("error") or ""
        lines.append(f"| {_md_cell(sid)} | {s['links']} | {s['new']} | {s['fetched']} | {s['stored']} | "
                     f"{s['failed']} | {b.get('developments', 0)} | {b.get('alerts', 0)} | {_md_cell(note)} |")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(stats.get("statuses", {}).items())) or "none"
    lines += [
        "",
        f"- articles: {statuses}",
        f"- tagged: {stats.get('tagged', 0)}, developments: {stats.get('developments', 0)}",
        f"- alerts: {stats.get('alerts_queued', 0)} queued, {stats.get('alerts_sent', 0)} sent, "
        f"{stats.get('alerts_pending', 0)} pending, {stats.get('alerts_failed', 0)} failed",
        f"- time: {stats.get('seconds', 0)} s",
    ]
    if stats.get("snapshot"):
        lines.append(f"- analyst snapshot: `{stats['snapshot']}`")
    return "\n".join(lines) + "\n"


# ---- `monitor status` ---------------------------------------------------------------------------


@dataclass(slots=True)
class Status:
    runs: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    in_flight: LockHolder | None
    snapshot: str | None
    snapshot_published: str | None


def _records(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def read_status(con: Any, db_path: str | Path, snapshot: Path | None, last: int = 10) -> Status:
    """Last runs and source health from an (analyst) connection, plus whether a run is in flight."""
    runs = _records(con.execute(
        "SELECT run_id, started_at, finished_at, status, seconds, articles_stored, failed, developments, "
        "alerts_sent FROM run_history LIMIT ?", [last]))
    sources = _records(con.execute(
        "SELECT id, name, last_success, last_new_article, consecutive_failures, last_error, polls, "
        "round(avg_latency_ms) AS avg_latency_ms FROM source_health ORDER BY consecutive_failures DESC, id"))
    published = None
    if snapshot is not None and snapshot.exists():
        published = datetime.fromtimestamp(snapshot.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return Status(runs, sources, read_holder(db_path), str(snapshot) if snapshot else None, published)


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Have glibc's malloc serve the flow process's threads from at most MALLOC_ARENAS arenas.

    By default each thread that allocates gets an arena of its own (up to 8 per core), and each keeps
    the memory freed in it. In bench/pipeline.py at 20,000 articles the arenas of Prefect's task threads
    and of the extraction pool's result thread held ~185 MB resident at the flow's peak, ~95 MB with this
    (issue #10). The threads mostly run Python under the GIL, so they hardly contend for an arena. Only
    arenas not created yet are affected, so it is set before the run's own threads start.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


# How Prefect 3.9 starts its ephemeral API (prefect.server.api.server.SubprocessASGIServer): its own
# app factory under uvicorn, told by these variables that it is ephemeral (the services a run needs,
# no UI). Prefect itself would do this from inside the run's process, after importing the server's code
# there (FastAPI, SQLAlchemy, its models): ~70 MB of that process for a server that runs elsewhere.
_EPHEMERAL_API_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# Services of the ephemeral API that a one-off run has no use for, off unless the user's environment or
# Prefect profile turns them on: automations (the triggers service evaluates every event, and a run
# defines no automation), the event feed's persister (task and flow runs are still recorded: the task
# run recorder stays on) and telemetry (this machine may have no internet). 480 task runs: the API
# process's CPU 12.2-12.9 -> 10.6-10.7 s, its PSS 195-230 -> 190 MB (docs/benchmarks.md, session 13).
_EPHEMERAL_SERVICE_DEFAULTS = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
                               "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
                               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
API_STARTUP_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_healthy(url: str, proc: Any, timeout_s: float) -> bool:
    """Wait until the Prefect API at `url`, served by the child `proc`, answers its health check:
    False if `proc` exits or `timeout_s` passes first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return True
        time.sleep(0.2)
    return False


def stop_process(proc: Any, timeout_s: float = 10.0) -> None:
    """Terminate a child process, kill it if it has not ended within `timeout_s`, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drain_prefect_clients() -> None:
    """Send the logs and events Prefect still queues in this process before their API goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with suppress(Exception):  # a log that could not be sent must not fail the finished run
            service.drain_all(timeout=10)


def ephemeral_api_env(environ: Mapping[str, str], settings_env: Mapping[str, str]) -> dict[str, str]:
    """The ephemeral API's environment: ours for its unused services, under the user's environment and
    the settings of this process (its Prefect profile), under what makes it the ephemeral API."""
    return {**_EPHEMERAL_SERVICE_DEFAULTS, **environ, **settings_env, **_EPHEMERAL_API_ENV}


@contextmanager
def prefect_api(startup_s: float = API_STARTUP_S) -> Iterator[str | None]:
    """The Prefect API for this process's flow runs: the configured one, or an ephemeral one of its own.

    With PREFECT_API_URL set (a `prefect server start`, Prefect Cloud) nothing is started and None is
    yielded. Otherwise Prefect's ephemeral API is started in a subprocess as Prefect would start it,
    but from here, so that this process stays a plain API client (see _EPHEMERAL_API_ENV), and stopped
    on exit. If it does not answer within `startup_s`, None is yielded and Prefect starts its own.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    env = ephemeral_api_env(os.environ, get_current_settings().to_environment_variables(exclude_unset=True))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                            env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        if not api_healthy(url, proc, startup_s):
            stop_process(proc)
            logging.getLogger("monitor").warning(
                "the ephemeral Prefect API did not answer within %gs; Prefect starts its own", startup_s)
            yield None
            return
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_clients()
    finally:
        if proc.poll() is None:
            stop_process(proc)
