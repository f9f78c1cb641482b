"""The ingest flow: discover → skip known → fetch → extract → tag → detect → store → alert → dashboard.

Only wiring lives here. Work moves in batches (one task run per batch of up to `fetch.batch_size`
articles, never one per article); every article's outcome is data in the `articles` table.
Task arguments are passed `quote`d: Prefect would otherwise walk every article, link and page of a
batch looking for futures (a third of the flow process's CPU in bench/pipeline.py's py-spy profile).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.utilities.annotations import quote

from monitor import alerts, novelty, sources
from monitor.config import Settings, SourceConfig, load_settings
from monitor.dashboard import render_dashboard
from monitor.errors import MonitorError, StoreError
from monitor.extract import NOVELTY_PREP, ExtractInput, build_article, extract_batch, extraction_pool, pack_fetched
from monitor.fetch import Fetcher, FetchRequest
from monitor.models import Article, Link, RunStats, SourceDocResult, TopicMatch
from monitor.ops import LockHolder, limit_malloc_arenas, prefect_api, run_breakdown, run_lock, run_markdown
from monitor.snapshot import publish_from
from monitor.store import RECYCLE_EVERY, Store, open_store
from monitor.topics import TopicSet, explain_text

T = TypeVar("T")
Progress = Callable[[str, int, int], None]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _noop(stage: str, done: int, total: int) -> None:
    return None


def quoted(value: T) -> T:
    """`value` wrapped so that Prefect passes it to a task without walking it (see the module docstring).

    Typed as the value itself: the task body receives it unwrapped.
    """
    return cast(T, quote(value))


# ---- discovery ----------------------------------------------------------------------------------


async def _discover_source(fetcher: Fetcher, src: SourceConfig, etag: str | None,
                           last_modified: str | None) -> SourceDocResult:
    if src.kind == "article":
        return SourceDocResult(source_id=src.id, links=[Link(url=src.url, source_id=src.id, via="article")])
    total = SourceDocResult(source_id=src.id)
    queue, first = [src.url], True
    seen: set[str] = set()
    while queue and len(seen) < 50:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        res = await fetcher.fetch(FetchRequest(url, purpose="source", etag=etag if first else None,
                                               last_modified=last_modified if first else None,
                                               ignore_robots=src.ignore_robots))
        if first:
            total.latency_ms, total.status_code = res.elapsed_ms, res.status_code
            total.etag = res.headers.get("etag")
            total.last_modified = res.headers.get("last-modified")
        if res.not_modified:
            total.not_modified = first
            first = False
            continue
        first = False
        if res.error or res.content is None:
            total.error = total.error or f"{url}: {res.error}"
            continue
        parsed = sources.parse_source_document(src, res.content, res.final_url, res.content_type)
        total.links.extend(parsed.links)
        total.warnings.extend(parsed.warnings)
        if parsed.error:
            total.error = total.error or f"{url}: {parsed.error}"
        queue.extend(parsed.follow)
    total.links = sources.dedupe_links(total.links)
    return total


@task(name="discover", cache_policy=NONE)
def discover(settings: Settings, states: dict[str, Any], now: datetime) -> list[SourceDocResult]:
    """Read every due source document (one task for all sources: it is all IO wait)."""

    async def run() -> list[SourceDocResult]:
        async with Fetcher(settings.monitor.fetch) as fetcher:
            jobs = []
            for src in settings.sources:
                st = states.get(src.id)
                if not src.enabled:
                    continue
                if st and st.next_poll_after and st.next_poll_after > now:
                    jobs.append(_skipped(src.id, f"backing off until {st.next_poll_after:%Y-%m-%d %H:%M}"))
                    continue
                jobs.append(_discover_source(fetcher, src, st.etag if st else None,
                                             st.last_modified if st else None))
            return list(await asyncio.gather(*jobs))

    return asyncio.run(run())


async def _skipped(source_id: str, why: str) -> SourceDocResult:
    return SourceDocResult(source_id=source_id, error=None, warnings=[f"skipped: {why}"], not_modified=True)


# ---- per batch ----------------------------------------------------------------------------------


@task(name="fetch-batch", cache_policy=NONE)
def fetch_batch(settings: Settings, links: Sequence[Link]) -> list[Any]:
    by_source = {s.id: s for s in settings.sources}

    async def run() -> list[Any]:
        async with Fetcher(settings.monitor.fetch) as fetcher:
            reqs = [FetchRequest(ln.url, ignore_robots=by_source[ln.source_id].ignore_robots
                                 if ln.source_id in by_source else False) for ln in links]
            return await fetcher.fetch_many(reqs)

    # packed at once: the batch waits compressed for its turn to be extracted (extract.pack_fetched)
    return pack_fetched(asyncio.run(run()))


@task(name="extract-batch", cache_policy=NONE)
def extract_and_tag(settings: Settings, topics: TopicSet, links: Sequence[Link], fetched: Sequence[Any],
                    pool: Any) -> tuple[list[Article], list[Any]]:
    """Extract (in worker processes) and tag one batch; returns articles and topic matches.

    Drops each fetch result's page bytes once its article is built (the stored HTML is the article's
    compressed copy, the blob fetch_batch packed): the flow would otherwise hold them until the batch
    is stored, while the next two batches' pages are in memory too.
    """
    inputs, idx = [], []
    for i, (ln, res) in enumerate(zip(links, fetched, strict=True)):
        if res.ok:
            inputs.append(ExtractInput(ln.url, res.content, res.content_type, ln.title, ln.summary,
                                       ln.published, compressed=res.compressed))
            idx.append(i)
    outs = extract_batch(inputs, min_words=settings.monitor.extract.min_words,
                         timeout_s=settings.monitor.extract.timeout_s, pool=pool, with_novelty=True)
    by_i = dict(zip(idx, outs, strict=True))
    keep_html = settings.monitor.storage.store_html
    articles = [build_article(ln, res, by_i.get(i), keep_html=keep_html)
                for i, (ln, res) in enumerate(zip(links, fetched, strict=True))]
    del inputs
    for res in fetched:
        res.content = None
    matches = topics.tag_many((a.id, a.title, a.text, a.lang) for a in articles if a.status in ("ok",))
    return articles, matches


def detect_novelty(settings: Settings, store: Store, articles: list[Article],
                   matches: Sequence[TopicMatch]) -> novelty.NoveltyResult:
    """Duplicates, stories and developments of a batch against what is stored (ingest and reprocess).

    Exact copies of anything ever stored are found by content hash, outside the window too; the rest
    is decided against the window candidates the store returns for the batch's keys.
    """
    cfg = settings.monitor.novelty
    topics_of: dict[str, list[str]] = {}
    for m in sorted(matches, key=lambda m: (-m.score, m.topic)):
        topics_of.setdefault(m.article_id, []).append(m.topic)
    hashes = store.find_content_hashes(a.content_hash for a in articles if a.content_hash)
    for a in articles:
        if a.status == "ok" and a.content_hash in hashes and hashes[a.content_hash] != a.id:
            a.status, a.duplicate_of = "duplicate", hashes[a.content_hash]
            a.status_reason = f"same text as {a.duplicate_of}"
            a.story_id = store.story_of(a.duplicate_of)
    items = [novelty.NoveltyItem(a, topics_of.get(a.id, [])) for a in articles]
    outlets = {s.id: s.outlet_id for s in settings.sources}
    prepared = _novelty_prepared(items)
    candidates = store.novelty_candidates(novelty.candidate_query(prepared, cfg, datetime.now(UTC)))
    return novelty.decide(items, prepared, candidates, cfg, outlets)


@task(name="detect-and-store", cache_policy=NONE)
def detect_and_store(settings: Settings, store: Store, run_id: str, articles: list[Article],
                     matches: list[Any], topic_names: dict[str, str]) -> dict[str, int]:
    """Novelty against the stored window, then one transaction writes the batch and its outbox rows."""
    result = detect_novelty(settings, store, articles, matches)
    why = {(m.article_id, m.topic): explain_text(m.explanation) for m in matches}
    contexts = [_alert_context(store, d, articles, topic_names, why.get((d.article_id, d.topic), ""))
                for d in result.developments]
    ok_ids = {a.id for a in articles if a.status == "ok"}
    with store.transaction():
        stored = store.write_articles(articles, run_id, settings.monitor.storage.store_html)
        store.write_topic_matches([m for m in matches if m.article_id in ok_ids])
        store.write_signatures(result.signatures)
        store.upsert_stories(result.stories)
        devs = store.write_developments(result.developments, run_id)
        queued = store.enqueue_alerts(alerts.outbox_rows(settings.monitor.alerts.channels, contexts))
    return {"stored": stored, "developments": devs, "queued": queued,
            "tagged": len({m.article_id for m in matches})}


def _novelty_prepared(items: Sequence[novelty.NoveltyItem]) -> list[novelty.Prepared]:
    """`novelty.prepare(items)`, reusing what the extraction workers prepared for the same article.

    A worker's Prepared is used only for an article still ok with the title, language and text hash
    it was prepared from; the rest is prepared here. Same order as prepare: event time, then id.
    """
    ready: list[novelty.Prepared] = []
    rest: list[novelty.NoveltyItem] = []
    for it in items:
        a, pre = it.article, it.article.extra.pop(NOVELTY_PREP, None)
        done = pre.item.article if pre is not None else None
        if (done is not None and a.status == "ok" and a.text
                and (done.content_hash, done.title, done.lang) == (a.content_hash, a.title, a.lang)):
            ready.append(replace(pre, item=it, at=novelty.event_time(a)))
        else:
            rest.append(it)
    if not ready:
        return novelty.prepare(rest)
    return sorted([*ready, *novelty.prepare(rest)], key=lambda p: (p.at, p.item.article.id))


def _alert_context(store: Store, d: Any, batch: list[Article], topic_names: dict[str, str], why: str) -> Any:
    """What a message says beyond the development: outlet, earlier reports and their languages."""
    art = next(a for a in batch if a.id == d.article_id)
    stored, stored_langs = store.story_reach(d.story_id)
    batch_same = [a for a in batch if a.story_id == d.story_id and a.id != d.article_id
                  and novelty.event_time(a) <= novelty.event_time(art)]
    langs = sorted({*stored_langs, *(a.lang for a in batch_same if a.lang)})
    return alerts.AlertContext(development=d, topic_name=topic_names.get(d.topic, d.topic),
                               outlet=store.source_name(art.source_id), published=art.published,
                               earlier_reports=stored + len(batch_same), languages=langs, explanation=why)


@task(name="deliver-alerts", cache_policy=NONE)
def deliver(settings: Settings, store: Store) -> alerts.DeliveryReport:
    """Instant alerts, then the digests whose schedule has fired."""
    report = alerts.deliver_pending(store, settings.monitor.alerts)
    digests = alerts.deliver_digests(store, settings.monitor.alerts)
    report.sent, report.pending, report.failed = (report.sent + digests.sent, report.pending + digests.pending,
                                                  report.failed + digests.failed)
    report.digests = digests.digests
    return report


def _source_health_alerts(store: Store, settings: Settings) -> int:
    """One alert when a source reaches N consecutive failures, one when it recovers; never one per poll."""
    cfg = settings.monitor.alerts
    changes = [alerts.SourceHealth(**c) for c in store.source_health_changes(cfg.source_failing_after)]
    if not changes:
        return 0
    with store.transaction():
        queued = store.enqueue_alerts(alerts.health_rows(cfg.channels, changes))
        for c in changes:
            store.set_failing_alerted(c.source_id, not c.recovered)
    return queued


@task(name="render-dashboard", cache_policy=NONE)
def dashboard(settings: Settings, store: Store) -> str:
    return str(render_dashboard(store.con, settings.resolve(settings.monitor.dashboard.path),
                                days=settings.monitor.dashboard.days))


# ---- the flow -----------------------------------------------------------------------------------


def _record_polls(store: Store, docs: list[SourceDocResult], stats: RunStats, now: datetime,
                  interval_min: int) -> None:
    for d in docs:
        s = stats.source(d.source_id)
        s.links, s.warnings = len(d.links), len(d.warnings)
        if any(w.startswith("skipped:") for w in d.warnings):
            s.skipped = d.warnings[0]
            continue
        s.error = d.error
        ok = d.error is None or bool(d.links)
        failures = 0 if ok else (store.scalar("SELECT consecutive_failures FROM sources WHERE id = ?",
                                              [d.source_id]) or 0) + 1
        backoff = None if ok or failures < 2 else now + timedelta(
            minutes=min(interval_min * 2 ** (failures - 1), 24 * 60))
        store.record_source_poll(d.source_id, ok=ok, error=d.error, latency_ms=d.latency_ms,
                                 not_modified=d.not_modified, etag=d.etag, last_modified=d.last_modified,
                                 new_articles=0, next_poll_after=backoff, at=now)


@flow(name="ingest", log_prints=False)
def ingest(config_dir: str, progress: Progress | None = None, run_id: str | None = None) -> dict[str, Any]:
    """One monitoring cycle over every source of a config folder (skipped if another is in flight)."""
    settings = load_settings(config_dir)
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    with run_lock(settings.db_path) as holder:
        if holder is not None:
            return _skip_run(run_id, settings, holder)
        try:
            out, breakdown = _cycle(settings, progress, run_id)
        except Exception as exc:
            _mark_failed(settings, run_id, exc)
            raise
    create_markdown_artifact(key="ingest-run", markdown=run_markdown(out, breakdown),
                             description=f"ingest run {run_id}")
    return out


def _skip_run(run_id: str, settings: Settings, holder: LockHolder) -> dict[str, Any]:
    why = f"skipped: another run is in flight ({holder.describe()}) on {settings.db_path}"
    get_run_logger().warning(why)
    out = RunStats(run_id=run_id, database=str(settings.db_path)).as_dict()
    out["skipped"] = why
    create_markdown_artifact(key="ingest-run", markdown=f"# Run `{run_id}`\n\n{why}\n",
                             description=f"ingest run {run_id} (skipped)")
    return out


def _mark_failed(settings: Settings, run_id: str, exc: Exception) -> None:
    try:
        with open_store(settings.db_path) as store:
            store.finish_run(run_id, "failed", {"run_id": run_id, "error": str(exc)[:500]})
    except MonitorError:
        pass  # the original error is the one worth raising


def _publish_snapshot(store: Store, settings: Settings) -> str | None:
    """The run's data is safely stored already: a failed publish leaves analysts on the previous one."""
    try:
        published = publish_from(store.con, settings.db_path)
    except StoreError as exc:
        get_run_logger().warning("analyst snapshot not published: %s", exc)
        return None
    if published.index_error:
        get_run_logger().warning("analyst snapshot published with the previous search index (%s)",
                                 published.index_error)
    return str(published.path)


def _compact_pages(store: Store) -> int:
    """Merging the page archive's files is upkeep: if it fails, the files stay as they are (nothing is
    removed before the merged file is in place) and the next run tries again."""
    try:
        done = store.compact_pages()
    except StoreError as exc:
        get_run_logger().warning("page archive not compacted: %s", exc)
        return 0
    return done.files if done else 0


def _cycle(settings: Settings, progress: Progress | None,
           run_id: str) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    started = time.monotonic()
    limit_malloc_arenas()
    progress = progress or _noop
    topics = TopicSet.compile(settings.topics)
    topic_names = {t.id: t.name for t in settings.topics}
    stats = RunStats(run_id=run_id)
    stats.database = str(settings.db_path)
    now = datetime.now(UTC)
    with open_store(settings.db_path) as store:
        store.close_interrupted_runs()  # we hold the run lock: any 'running' row is a killed run
        store.start_run(stats.run_id)
        store.sync_sources([(s.id, s.url, s.kind, s.name) for s in settings.sources])
        progress("discover", 0, len(settings.sources))
        docs = discover(quoted(settings), quoted(store.source_states()), now)
        _record_polls(store, docs, stats, now, settings.monitor.schedule.interval_minutes or 30)
        stats.alerts_queued += _source_health_alerts(store, settings)
        progress("discover", len(settings.sources), len(settings.sources))
        links = sources.dedupe_links(ln for d in docs for ln in d.links)
        known = store.known_article_ids(ln.article_id for ln in links)
        per_source = settings.monitor.fetch.max_links_per_source
        new_links: list[Link] = []
        for sid in sorted({ln.source_id for ln in links}):
            fresh = [ln for ln in links if ln.source_id == sid and ln.article_id not in known]
            new_links.extend(fresh[:per_source])
            stats.source(sid).new = len(fresh)
        done = 0
        progress("articles", 0, len(new_links))
        with extraction_pool(settings.monitor.extract.workers if new_links else 0) as pool:
            # Pipelined so the extraction workers never wait: while batch k is extracted (its task in a
            # thread), batch k+1 is fetched and queued for extraction and batch k-1 is detected and
            # stored. Detect/store still runs one batch at a time, in order, in this thread.
            batches = list(_chunks(new_links, settings.monitor.fetch.batch_size))
            inflight: list[tuple[Sequence[Link], list[bool], Any]] = []
            fetched_next = fetch_batch(quoted(settings), quoted(batches[0])) if batches else []
            for k, batch in enumerate(batches):
                fetched = fetched_next
                # whether each page was fetched, noted now: extraction drops the page bytes (`ok` reads them)
                inflight.append((batch, [f.ok for f in fetched], extract_and_tag.submit(
                    quoted(settings), quoted(topics), quoted(batch), quoted(fetched), pool)))
                del fetched
                fetched_next = fetch_batch(quoted(settings), quoted(batches[k + 1])) if k + 1 < len(batches) else []
                while inflight and (len(inflight) > 1 or k + 1 == len(batches)):
                    done_batch, done_ok, fut = inflight.pop(0)
                    arts, matches = fut.result()
                    counts = detect_and_store(quoted(settings), store, stats.run_id, quoted(arts), quoted(matches),
                                              quoted(topic_names))
                    _count_batch(stats, arts, done_ok, counts)
                    done += len(done_batch)
                    # not after the last batch: the store is closed soon anyway (a run of up to
                    # RECYCLE_EVERY new articles never reopens it)
                    if done < len(new_links) and done // RECYCLE_EVERY > (done - len(done_batch)) // RECYCLE_EVERY:
                        store.recycle()
                    progress("articles", done, len(new_links))
                    _release(arts)
                    del arts, matches, fut
        stats.pages_compacted = _compact_pages(store)
        for sid, s in stats.sources.items():
            if s.stored:
                store.con.execute("UPDATE sources SET last_new_article = ? WHERE id = ?", [now, sid])
        report = deliver(quoted(settings), store)
        stats.alerts_sent, stats.alerts_pending, stats.alerts_failed = (report.sent, report.pending,
                                                                        report.failed)
        stats.dashboard = dashboard(quoted(settings), store)
        stats.seconds = round(time.monotonic() - started, 2)
        store.finish_run(stats.run_id, "ok", stats.as_dict())
        out = stats.as_dict()
        if not getattr(store, "lake", False):  # a DuckLake catalog takes many readers: no snapshot needed
            out["snapshot"] = _publish_snapshot(store, settings)
        breakdown = run_breakdown(store.con, stats.run_id)
    return out, breakdown


def _release(arts: list[Article]) -> None:
    """A stored batch's texts and compressed pages are not needed any more: free them now, not a batch later."""
    for a in arts:
        a.html = a.text = None


def _count_batch(stats: RunStats, arts: list[Article], fetched_ok: list[bool], counts: dict[str, int]) -> None:
    for a, ok in zip(arts, fetched_ok, strict=True):
        s = stats.source(a.source_id)
        s.fetched += 1 if ok else 0
        s.failed += 1 if a.status == "failed" else 0
        s.stored += 1
        stats.statuses[a.status] = stats.statuses.get(a.status, 0) + 1
    stats.tagged += counts["tagged"]
    stats.developments += counts["developments"]
    stats.alerts_queued += counts["queued"]


def run_once(config_dir: str, progress: Progress | None = None) -> dict[str, Any]:
    """Run one cycle (used by `monitor run` and the demo) against the configured or an ephemeral Prefect API."""
    with prefect_api():
        return ingest(config_dir, progress=progress)


if __name__ == "__main__":
    import sys

    print(run_once(sys.argv[1] if len(sys.argv) > 1 else "config"))
