"""Serving: the ingest flow (and the digest flow) as Prefect deployments on the schedule in monitor.toml.

`monitor serve` calls `serve_monitor`, which needs a real Prefect server: schedules do not fire on
the ephemeral server Prefect starts for one-off runs, so PREFECT_API_URL must point at one
(`prefect server start`, SQLite by default). prefect.yaml declares the same two deployments for a
work pool and workers. Overlaps are refused twice: the deployment's concurrency limit (1, cancel the
newcomer) keeps Prefect from starting a second ingest, and the run lock in monitor.ops covers runs
started by hand or by another scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron, Interval, Schedule

from flows.digest import digest
from flows.ingest import ingest
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError, MonitorError
from monitor.ops import run_lock

INGEST_DEPLOYMENT = "monitor-ingest"
DIGEST_DEPLOYMENT = "monitor-digest"
DIGEST_LOCK_WAIT_S = 600.0


def ingest_schedule(settings: Settings, interval_seconds: int | None = None) -> Schedule:
    """The ingest schedule: `--interval-seconds` if given, else cron, else interval_minutes."""
    sched = settings.monitor.schedule
    if interval_seconds:
        return Interval(timedelta(seconds=interval_seconds), timezone=sched.timezone)
    if sched.cron:
        return Cron(sched.cron, timezone=sched.timezone)
    return Interval(timedelta(minutes=sched.interval_minutes or 30), timezone=sched.timezone)


def digest_schedules(settings: Settings) -> list[Schedule]:
    crons = sorted({ch.digest_cron for ch in settings.monitor.alerts.channels
                    if ch.enabled and ch.mode == "digest" and ch.digest_cron})
    return [Cron(c, timezone=settings.monitor.schedule.timezone) for c in crons]


@flow(name="scheduled-digest", log_prints=False)
def scheduled_digest(config_dir: str, force: bool = False) -> dict[str, Any]:
    """The digest flow behind the run lock: it waits for an ingest run in flight to finish."""
    settings = load_settings(config_dir)
    with run_lock(settings.db_path, wait_s=DIGEST_LOCK_WAIT_S) as holder:
        if holder is not None:
            return {"skipped": f"a run is still in flight after {DIGEST_LOCK_WAIT_S:g} s ({holder.describe()})"}
        return digest(config_dir, force=force)


def deployments(config_dir: str | Path, interval_seconds: int | None = None) -> list[Any]:
    """The runner deployments: ingest always, digest when a channel is in digest mode with a cron."""
    cdir = str(Path(config_dir).resolve())
    settings = load_settings(cdir)
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    out = [ingest.to_deployment(
        INGEST_DEPLOYMENT, schedule=ingest_schedule(settings, interval_seconds),
        parameters={"config_dir": cdir}, concurrency_limit=one_at_a_time,
        description=f"Poll every source of {cdir} and store what is new.", tags=["news-monitor"],
    )]
    crons = digest_schedules(settings)
    if crons:
        out.append(scheduled_digest.to_deployment(
            DIGEST_DEPLOYMENT, schedules=crons, parameters={"config_dir": cdir},
            concurrency_limit=one_at_a_time, description="Send due alert digests.", tags=["news-monitor"],
        ))
    return out


def require_server() -> str:
    """The Prefect API URL to serve against; without one, schedules would never fire."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
    if not url:
        raise ConfigError("environment", "PREFECT_API_URL",
                          "not set: schedules do not fire on Prefect's ephemeral server. Start one with "
                          "`prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return str(url)


def serve_monitor(config_dir: str | Path, interval_seconds: int | None = None,
                  announce: Callable[[str], Any] = print) -> None:
    """Serve the deployments until interrupted (Ctrl-C pauses their schedules on the way out)."""
    url = require_server()
    deps = deployments(config_dir, interval_seconds)
    announce(f"serving {', '.join(d.name for d in deps)} against {url}")
    try:
        serve(*deps, print_starting_message=False)
    except MonitorError:
        raise
    except OSError as exc:
        raise ConfigError("environment", "PREFECT_API_URL", f"cannot reach {url}: {exc}") from None


if __name__ == "__main__":
    import sys

    serve_monitor(sys.argv[1] if len(sys.argv) > 1 else "config")
