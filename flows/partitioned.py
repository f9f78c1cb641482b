"""Partitioned ingest for several Prefect workers writing one DuckLake store (docs/scaling.md).

A cycle (`ingest-cycle`) starts one `ingest-partition` run per partition on the process work pool.
Sources are assigned to partitions by a stable hash of their host, so every URL of a host is polled
by one run only and the fetcher's per-host politeness holds across workers. Partition runs discover,
fetch, extract and tag in parallel, then stage their articles in the lake. When every partition has
finished, the cycle runs novelty over all staged articles in the single-machine order, stores them
and delivers the outbox. Every lake write (polls, staging, novelty+store, outbox) holds the Prefect
global concurrency limit `monitor-store-writer` (1 slot), so the writer always sees every other
writer's commits: dedup, story linking and alert idempotency stay what they are on one machine.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from prefect import Flow, flow, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment

from flows.ingest import (
    _chunks,
    _record_polls,
    _source_health_alerts,
    deliver,
    detect_and_store,
    discover,
    extract_and_tag,
    fetch_batch,
    quoted,
)
from monitor import lake, sources
from monitor.config import Settings, SourceConfig, load_settings
from monitor.errors import MonitorError
from monitor.extract import extraction_pool
from monitor.models import Link, RunStats
from monitor.store import Store, open_store
from monitor.topics import TopicSet

WRITER_LIMIT = "monitor-store-writer"
WORK_POOL = "monitor-pool"
PARTITION_DEPLOYMENT = "ingest-partition/monitor-partition"
WRITER_WAIT_S = 1800.0


def partition_of(url: str, partitions: int) -> int:
    """The partition of a URL: a stable hash of its host name (ports ignored: one host, one partition)."""
    host = (urlsplit(url).hostname or "").lower()
    return int(hashlib.sha1(host.encode()).hexdigest(), 16) % partitions


def sources_of(settings: Settings, partition: int, partitions: int) -> list[SourceConfig]:
    return [s for s in settings.sources if partition_of(s.url, partitions) == partition]


@contextmanager
def writer(settings: Settings) -> Iterator[Store]:
    """The lake, opened while holding the one writer slot (strict: a missing limit is an error)."""
    with concurrency(WRITER_LIMIT, occupy=1, timeout_seconds=WRITER_WAIT_S, strict=True), \
            open_store(settings.db_path, storage=settings.monitor.storage) as store:
        yield store


def ensure_writer_limit() -> None:
    """Create the writer limit (1 slot) if missing; same as `prefect gcl create monitor-store-writer --limit 1`."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(WRITER_LIMIT, 1)


# ---- one partition (runs on a worker) ---------------------------------------------------------


@flow(name="ingest-partition", log_prints=False)
def ingest_partition(config_dir: str, cycle_id: str, partition: int, partitions: int) -> dict[str, Any]:
    """Discover, fetch, extract and tag this partition's sources; stage the results in the lake."""
    settings = load_settings(config_dir)
    mine = settings.model_copy(update={"sources": sources_of(settings, partition, partitions)})
    now = datetime.now(UTC)
    with open_store(settings.db_path, storage=settings.monitor.storage) as store:
        states = store.source_states()
    docs = discover(quoted(mine), quoted(states), now)
    links = sources.dedupe_links(ln for d in docs for ln in d.links)
    with open_store(settings.db_path, storage=settings.monitor.storage) as store:
        known = store.known_article_ids(ln.article_id for ln in links)
    todo = _new_links(links, known, settings.monitor.fetch.max_links_per_source)
    staged = _extract(mine, todo)
    stats = RunStats(run_id=cycle_id)
    with writer(settings) as store, store.transaction():
        _record_polls(store, docs, stats, now, settings.monitor.schedule.interval_minutes or 30)
        lake.stage(store.con, cycle_id, partition, staged)
    return {"partition": partition, "sources": [s.id for s in mine.sources], "staged": len(staged)}


def _new_links(links: list[Link], known: set[str], per_source: int) -> list[tuple[int, Link]]:
    """(position within its source, link) of the unknown links, capped per source like `ingest`."""
    out: list[tuple[int, Link]] = []
    for sid in sorted({ln.source_id for ln in links}):
        fresh = [ln for ln in links if ln.source_id == sid and ln.article_id not in known]
        out.extend(enumerate(fresh[:per_source]))
    return out


def _extract(settings: Settings, todo: list[tuple[int, Link]]) -> list[lake.Staged]:
    topics = TopicSet.compile(settings.topics)
    out: list[lake.Staged] = []
    with extraction_pool(settings.monitor.extract.workers if todo else 0) as pool:
        for batch in _chunks(todo, settings.monitor.fetch.batch_size):
            links = [ln for _, ln in batch]
            fetched = fetch_batch(quoted(settings), quoted(links))
            arts, matches = extract_and_tag(quoted(settings), quoted(topics), quoted(links), quoted(fetched), pool)
            for (seq, ln), art in zip(batch, arts, strict=True):
                out.append(lake.Staged(ln.source_id, seq, art, [m for m in matches if m.article_id == art.id]))
    return out


# ---- the cycle (fan out, wait, then the one writer) -------------------------------------------


@flow(name="ingest-cycle", log_prints=False)
def ingest_cycle(config_dir: str, partitions: int = 2, deployment: str = PARTITION_DEPLOYMENT,
                 poll_s: float = 1.0) -> dict[str, Any]:
    """One monitoring cycle over every source, fanned out to `partitions` runs on the work pool."""
    settings = load_settings(config_dir)
    cycle_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    ensure_writer_limit()
    with writer(settings) as store:
        store.start_run(cycle_id)
        store.sync_sources([(s.id, s.url, s.kind, s.name) for s in settings.sources])
    runs = [run_deployment(deployment, timeout=0, parameters={
        "config_dir": config_dir, "cycle_id": cycle_id, "partition": p, "partitions": partitions})
        for p in range(partitions)]
    failed = _wait([cast(FlowRun, r).id for r in runs], poll_s)
    if failed:
        with writer(settings) as store:
            store.finish_run(cycle_id, "failed", {"run_id": cycle_id, "error": f"partitions failed: {failed}"})
        raise MonitorError(f"cycle {cycle_id}: partition runs did not complete: {failed}")
    with writer(settings) as store:
        return commit(settings, store, cycle_id)


def _wait(run_ids: list[Any], poll_s: float) -> list[str]:
    """Block until every run is final; return the names of those that did not complete."""
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state and r.state.is_final() for r in runs):
                return [f"{r.name}: {r.state.name if r.state else '?'}" for r in runs
                        if not (r.state and r.state.is_completed())]
            time.sleep(poll_s)


def commit(settings: Settings, store: Store, cycle_id: str) -> dict[str, Any]:
    """Novelty, store and outbox over a cycle's staged articles, then delivery (caller holds the writer)."""
    started = time.monotonic()
    stats = RunStats(run_id=cycle_id, database=settings.monitor.storage.data_path)
    names = {t.id: t.name for t in settings.topics}
    stats.alerts_queued += _source_health_alerts(store, settings)
    rows = lake.staged(store.con, cycle_id)
    for batch in _chunks(rows, settings.monitor.fetch.batch_size):
        arts = [r.article for r in batch]
        counts = detect_and_store(quoted(settings), store, cycle_id, quoted(arts),
                                  quoted([m for r in batch for m in r.matches]), quoted(names))
        for a in arts:
            stats.source(a.source_id).stored += 1
            stats.statuses[a.status] = stats.statuses.get(a.status, 0) + 1
        stats.tagged += counts["tagged"]
        stats.developments += counts["developments"]
        stats.alerts_queued += counts["queued"]
    now = datetime.now(UTC)
    for sid in sorted({r.source_id for r in rows}):
        store.con.execute("UPDATE sources SET last_new_article = ? WHERE id = ?", [now, sid])
    lake.clear_staged(store.con, cycle_id)
    report = deliver(quoted(settings), store)
    stats.alerts_sent, stats.alerts_pending, stats.alerts_failed = report.sent, report.pending, report.failed
    stats.seconds = round(time.monotonic() - started, 2)
    store.finish_run(cycle_id, "ok", stats.as_dict())
    return stats.as_dict()


def deploy_partitions(project_dir: str, work_pool: str = WORK_POOL) -> Any:
    """Register the partition deployment on a process work pool (code read from project_dir)."""
    src = cast(Flow[..., Any], ingest_partition.from_source(
        source=project_dir, entrypoint="flows/partitioned.py:ingest_partition"))
    return src.deploy(name=PARTITION_DEPLOYMENT.split("/")[1], work_pool_name=work_pool, print_next_steps=False)


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="partitioned ingest on a Prefect work pool")
    ap.add_argument("command", choices=["deploy", "cycle"])
    ap.add_argument("--config", default="config")
    ap.add_argument("--project", default=".")
    ap.add_argument("--partitions", type=int, default=2)
    args = ap.parse_args()
    if args.command == "deploy":
        print(deploy_partitions(args.project))
    else:
        print(json.dumps(ingest_cycle(args.config, partitions=args.partitions), default=str))
