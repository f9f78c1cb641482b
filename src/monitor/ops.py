"""Run operations: the lock that keeps runs from overlapping, the per-run report, `monitor status`,
and the run process's malloc arena limit (`limit_malloc_arenas`).

The lock is an advisory `flock` on `<db>.run.lock` holding the owner's PID and start time. The
kernel drops it when the owner dies, so a crashed run never leaves a stale lock behind. A second run
(a schedule firing while a long run is still going, or someone typing `monitor run`) finds it taken
and skips (or waits, when asked to), and says who holds it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
