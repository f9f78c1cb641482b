"""The digest flow: send each digest channel's held alerts as one message when its schedule fires.

`monitor run` (the ingest flow) already sends due digests at the end of every cycle; this flow exists
for deployments that want digests on their own schedule (e.g. every 5 minutes, independent of
polling), or to force one out now (`force=True`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from monitor import alerts
from monitor.config import AlertsConfig, load_settings
from monitor.store import Store, open_store


@task(name="deliver-digests", cache_policy=NONE)
def deliver_digests(store: Store, cfg: AlertsConfig, force: bool) -> alerts.DeliveryReport:
    return alerts.deliver_digests(store, cfg, datetime.now(UTC), force=force)


@flow(name="digest", log_prints=False)
def digest(config_dir: str, force: bool = False) -> dict[str, Any]:
    """Deliver the digests that are due (all of them with `force`); return what was sent."""
    settings = load_settings(config_dir)
    with open_store(settings.db_path) as store:
        report = deliver_digests(store, settings.monitor.alerts, force)
    return {"digests": report.digests, "alerts_sent": report.sent, "alerts_pending": report.pending,
            "alerts_failed": report.failed}


if __name__ == "__main__":
    import sys

    print(digest(sys.argv[1] if len(sys.argv) > 1 else "config", force="--force" in sys.argv))
