"""Whole-pipeline benchmark: our ingest flow against the limit its own extractor sets, in one run.

    .venv/bin/python bench/pipeline.py            # 5,000 articles, 1,000-article cycle vs a 1M store (~10 min)
    .venv/bin/python bench/pipeline.py --quick    # small sizes, for development
    .venv/bin/python bench/pipeline.py --articles 20000 --skip-scale --skip-newspaper --skip-ceiling  # memory
    .venv/bin/python bench/pipeline.py --quick --profile               # + pyinstrument of the flow process
    .venv/bin/python bench/pipeline.py --prefect-server   # flows against `prefect server start`, not ephemeral

One process tree, one run (needs `pip install -e .[bench]`):
(a) ceiling: raw `trafilatura.bare_extraction` over the corpus bytes in 2 worker processes, with its
    default options (the ceiling the issue names) and with the options our extraction uses
    (`favor_precision`: the "equal-options ceiling", what our extractor costs before any overhead);
(b) ours: the real Prefect flow `flows.ingest.ingest` (discover -> fetch -> extract -> tag -> detect
    -> store -> alerts -> dashboard) on a fresh DuckDB file, the corpus served from RSS feeds on
    several ports of 127.0.0.1 by an asyncio server in its own process (bench/corpus.py);
(a'') the default-options ceiling again, after (b): the machine's speed drifts within a run, so ours
    is also given against the mean of the ceilings before and after it;
(c) newspaper4k's `Article.parse` over the same bytes in 2 worker processes;
(d) the same 1,000-article cycle on an empty store and on a store holding 1,000,000 articles
    (synthesised with SQL: articles, article_signatures, stories, article_topics; cached in the work
    folder with its full-text index). The index is rebuilt whole at most once per max(15 min,
    20 x its duration) (monitor.snapshot); the big store starts as just after such a rebuild, and the
    rebuild's time is reported on its own and spread over the runs between two rebuilds.

Politeness is switched down for the local hosts (per_host 8, min_delay_s 0, concurrency 32): the
benchmark measures the pipeline's own cost, not the delay a real site would ask for.

Prints docs/s and ratios, peak RSS of the process tree (psutil, RSS summed over processes), the share
of the flow's wall time spent in Prefect orchestration (wall minus time inside the flow body and task
bodies, measured by wrapping them), and writes bench/results/pipeline.json (compared with the
previous file when there is one).
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import psutil  # noqa: E402

import corpus  # noqa: E402
from monitor.config import FetchConfig  # noqa: E402
from monitor.extract import RESET_EVERY  # noqa: E402
from monitor.ops import api_healthy, drain_prefect_clients, prefect_api, stop_process  # noqa: E402
from monitor.snapshot import REINDEX_MAX_SHARE, REINDEX_MIN_INTERVAL_S, refresh_search_index  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pipeline.json"
HOSTS = 4
WORKERS = 2
STALL_S = 1800  # one flow run taking longer than this is reported as hung
CUTOFF = "2016-01-01"  # the synthetic history of the scale test ends here


# ---- process-tree memory ------------------------------------------------------------------------


PSS_EVERY_S, PSS_NEAR_PEAK_S = 10.0, 4.0
TIMELINE_EVERY_S = 2.0


class RssSampler:
    """Samples the RSS of this process and all its descendants; peaks per phase."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self._procs: list[psutil.Process] = []
        self._listed_at = 0.0
        self._roles: dict[int, str] = {}
        self.exclude: set[int] = set()
        self.peak_tree = 0
        self.peak_pipeline = 0
        self.peak_pss = 0
        self.peak_by_role: dict[str, int] = {}
        self.peak_pss_by_role: dict[str, int] = {}
        # the roles' PSS at the sample where the tree's PSS peaked, and when (seconds since reset)
        self.at_peak_pss: dict[str, int] = {}
        self.peak_pss_at_s = 0.0
        self.cpu_s = 0.0  # this sampler thread's own CPU: the benchmark's cost, taken out of "ours"
        # (seconds since reset, RSS MB by role) every TIMELINE_EVERY_S: where in the run memory grows
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        # listing the tree reads every /proc entry: once a second, not every sample (it was 15% of
        # the main process's CPU samples at 0.1 s)
        now = time.monotonic()
        if now - self._listed_at > 1.0:
            self._procs, self._listed_at = [self.me, *self.me.children(recursive=True)], now
        return self._procs

    def _role_of(self, proc: psutil.Process) -> str:
        if proc.pid in self.exclude:  # the corpus server: listed, but not part of the pipeline's total
            return "corpus server (not counted)"
        if proc.pid not in self._roles:
            role = _role(proc)
            if role == proc.name():  # not recognised yet (e.g. its command line not read yet): ask again
                return role
            self._roles[proc.pid] = role
        return self._roles[proc.pid]

    def _sample(self) -> tuple[int, int]:
        total = pipeline = 0
        roles: dict[str, int] = {}
        for proc in self._tree():
            try:
                rss = proc.memory_info().rss
                role = self._role_of(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            roles[role] = roles.get(role, 0) + rss
            if proc.pid not in self.exclude:
                pipeline += rss
        for role, rss in roles.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)
        since = time.monotonic() - self._started
        if not self.timeline or since - self.timeline[-1][0] >= TIMELINE_EVERY_S:
            self.timeline.append((round(since, 1), {k: mb(v) for k, v in roles.items()}))
        return total, pipeline

    def _sample_pss(self) -> tuple[int, dict[str, int]]:
        """Proportional set size of the pipeline's processes: a page shared by k processes counts 1/k.

        Summed RSS counts the forkserver's pages once in it and again in every worker forked from it;
        summed PSS is what the tree really holds. Reading it walks page tables, so it is sampled less.
        Peaks by role are kept too (each role's own peak: they need not fall on the same sample).
        """
        total = 0
        roles: dict[str, int] = {}
        for proc in self._tree():
            if proc.pid in self.exclude:
                continue
            try:
                pss = proc.memory_full_info().pss
                role = self._role_of(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                continue
            total += pss
            roles[role] = roles.get(role, 0) + pss
        for role, pss in roles.items():
            self.peak_pss_by_role[role] = max(self.peak_pss_by_role.get(role, 0), pss)
        return total, roles

    def _run(self) -> None:
        # PSS costs ~30-60 CPU ms for the tree's 6 processes (every page table walked), in this process:
        # once a second it was ~1 ms per article of "ours". So it is read when the summed RSS is within 2% of
        # its peak so far (where the PSS peak is), at most every PSS_NEAR_PEAK_S, and otherwise every
        # PSS_EVERY_S; what the sampler still costs is measured (cpu_s) and reported apart from the flow's.
        last_pss = 0.0
        while not self._stop.wait(self.interval):
            c0 = time.thread_time()
            if self._tick(time.monotonic() - last_pss):
                last_pss = time.monotonic()
            self.cpu_s += time.thread_time() - c0

    def _tick(self, since_pss: float) -> bool:
        """One RSS sample; a PSS reading too when due. Says whether PSS was read."""
        total, pipeline = self._sample()
        self.peak_tree = max(self.peak_tree, total)
        self.peak_pipeline = max(self.peak_pipeline, pipeline)
        if since_pss >= PSS_EVERY_S or (since_pss >= PSS_NEAR_PEAK_S and pipeline >= 0.98 * self.peak_pipeline):
            pss, roles = self._sample_pss()
            if pss > self.peak_pss:
                self.peak_pss, self.at_peak_pss = pss, roles
                self.peak_pss_at_s = round(time.monotonic() - self._started, 1)
            return True
        return False

    def reset(self) -> None:
        self.peak_tree = self.peak_pipeline = self.peak_pss = 0
        self.peak_by_role = {}
        self.peak_pss_by_role = {}
        self.at_peak_pss, self.peak_pss_at_s = {}, 0.0
        self.timeline, self._started = [], time.monotonic()

    def roles_mb(self, pss: bool = False) -> dict[str, float]:
        peaks = self.peak_pss_by_role if pss else self.peak_by_role
        return {k: mb(v) for k, v in sorted(peaks.items(), key=lambda kv: -kv[1])}

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tree_cpu_seconds(self) -> float:
        return sum(self.cpu_by_role().values())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU of the live tree plus its reaped children (pool workers that already exited), by role."""
        out: dict[str, float] = {}
        for proc in [self.me, *self.me.children(recursive=True)]:
            if proc.pid in self.exclude:
                continue
            try:
                t = proc.cpu_times()
                role = _role(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            out[role] = out.get(role, 0.0) + t.user + t.system + t.children_user + t.children_system
        return out


MAIN_ROLE, SAMPLER_ROLE = "bench+flow (main)", "memory sampler (benchmark, not counted)"
WORKERS_ROLE = "extraction workers (forkserver)"


def _role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    if proc.pid == os.getpid():
        return MAIN_ROLE
    for key, role in (("uvicorn", "prefect server"), ("prefect", "prefect server"),
                      ("forkserver import main", WORKERS_ROLE),
                      ("resource_tracker", "resource tracker"), ("spawn_main", "spawned workers")):
        if key in cmd:
            return role
    return proc.name()


def mb(n: int) -> float:
    return round(n / 1024 / 1024, 1)


# ---- (a) and (c): extractors over the same bytes -------------------------------------------------

_BASE: list[bytes] = []


def _init_worker() -> None:
    warnings.simplefilter("ignore")
    _BASE.extend(corpus.load_base())


Job = tuple[corpus.CorpusSet, list[int]]
JobResult = tuple[int, float, float, int]  # docs, busy seconds, CPU seconds (extraction only), with text


def _timed_pages(job: Job, extract: Callable[[bytes, str], bool]) -> JobResult:
    """`extract(page bytes, url) -> got text` over a job's pages, timing only the extraction calls."""
    s, idx = job
    busy = cpu = 0.0
    ok = 0
    for i in idx:
        raw = corpus.article_bytes(_BASE, s, i)
        t0, c0 = time.perf_counter(), time.process_time()
        ok += extract(raw, f"http://127.0.0.1{s.path(i)}")
        busy += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return len(idx), busy, cpu, ok


def _trafilatura_page(raw: bytes, url: str, favor_precision: bool) -> bool:
    import trafilatura

    from monitor.extract import TRAFILATURA_OPTIONS

    doc = trafilatura.bare_extraction(raw, url=url, favor_precision=favor_precision, **TRAFILATURA_OPTIONS)
    return bool(getattr(doc, "text", None))


def _raw_trafilatura(job: Job) -> JobResult:
    """The ceiling: trafilatura's default (balanced) mode, comments excluded, metadata and tables on."""
    return _timed_pages(job, functools.partial(_trafilatura_page, favor_precision=False))


def _equal_trafilatura(job: Job) -> JobResult:
    """bare_extraction with the options monitor.extract runs it with (its first, precision pass)."""
    return _timed_pages(job, functools.partial(_trafilatura_page, favor_precision=True))


def _newspaper_page(raw: bytes, url: str) -> bool:
    from newspaper import Article

    try:
        # newspaper4k wants text: decoding is part of its cost (trafilatura takes bytes)
        art = Article(url, fetch_images=False)
        art.download(input_html=raw.decode("utf-8", "replace"))
        art.parse()
        return bool(art.text)
    except Exception:  # e.g. its Korean tokenizer needs nltk: a failed page, not a failed run
        return False


def _newspaper(job: Job) -> JobResult:
    return _timed_pages(job, _newspaper_page)


def run_extractor(name: str, fn: Callable[[Job], JobResult],
                  s: corpus.CorpusSet, sampler: RssSampler) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # the flow's own pool owns the forkserver
    chunks = [(s, list(range(i, min(i + 20, s.n)))) for i in range(0, s.n, 20)]
    with ctx.Pool(WORKERS, initializer=_init_worker) as pool:
        pool.map(fn, [(s, [0])] * WORKERS)  # warm: imports and base pages loaded in both workers
        sampler.reset()
        cpu0, t0 = sampler.tree_cpu_seconds(), time.perf_counter()
        got = pool.map(fn, chunks, chunksize=1)
        wall = time.perf_counter() - t0
        cpu = sampler.tree_cpu_seconds() - cpu0
    n = sum(g[0] for g in got)
    busy = sum(g[1] for g in got)
    out = {"docs": n, "with_text": sum(g[3] for g in got), "wall_s": round(wall, 2),
           "docs_per_s": round(n / wall, 2),
           # extraction time only (building the page variant excluded), spread over the workers
           "docs_per_s_busy": round(n / (busy / WORKERS), 2),
           "cpu_cores_used": round(cpu / wall, 2), "peak_rss_mb": mb(sampler.peak_tree),
           # CPU seconds per document: the load-robust figure on a shared machine
           "cpu_ms_per_doc": round(1000 * sum(g[2] for g in got) / n, 2)}
    print(f"  {name}: {n} docs in {wall:.1f}s = {out['docs_per_s']} docs/s "
          f"(busy-time basis {out['docs_per_s_busy']}), {out['with_text']} with text, "
          f"{out['cpu_cores_used']} cores, {out['cpu_ms_per_doc']} CPU ms/doc", flush=True)
    return out


# ---- (b): the flow, with the time inside bodies measured ----------------------------------------

STAGES = ("discover", "fetch_batch", "extract_and_tag", "detect_and_store", "deliver", "dashboard")


@dataclass
class Timings:
    body: dict[str, float] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)  # task runs: time around the body
    cpu: dict[str, float] = field(default_factory=dict)  # task bodies: CPU of the thread running them
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, name: str, dt: float) -> None:
        d = {"body": self.body, "cpu": self.cpu}.get(kind, self.overhead)
        with self.lock:
            d[name] = d.get(name, 0.0) + dt

    def reset(self) -> None:
        self.body.clear()
        self.overhead.clear()
        self.cpu.clear()


TIMINGS = Timings()


def _timed_body(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Time a task body; `.last` keeps the latest call's seconds for TimedTask.submit's callback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            wrapper.last = dt  # type: ignore[attr-defined]
            TIMINGS.add("body", name, dt)
            TIMINGS.add("cpu", name, time.thread_time() - c0)

    return wrapper


class TimedTask:
    """Stands in for a task in the flow module: a task run's cost minus its body's is orchestration.

    For `.submit` the run is timed from the submit call to the moment its future completes (a done
    callback), so the overhead counted includes Prefect's work in the runner thread.
    """

    def __init__(self, task: Any, name: str) -> None:
        self.task, self.name = task, name
        self.before = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with TIMINGS.lock:
            before = TIMINGS.body.get(self.name, 0.0)
        t0 = time.perf_counter()
        try:
            return self.task(*args, **kwargs)
        finally:
            with TIMINGS.lock:
                body = TIMINGS.body.get(self.name, 0.0) - before
            TIMINGS.add("overhead", self.name, time.perf_counter() - t0 - body)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        fut = self.task.submit(*args, **kwargs)
        body_fn = self.task.fn

        def done(_: Any) -> None:
            TIMINGS.add("overhead", self.name, time.perf_counter() - t0 - getattr(body_fn, "last", 0.0))

        fut.add_done_callback(done)
        return fut


def instrument_flow() -> Any:
    """Time task bodies (task.fn), task runs (the module globals the flow calls) and the flow body."""
    import flows.ingest as fi

    for name in STAGES:
        task = getattr(fi, name)
        task.fn = _timed_body(task.fn, name)
        setattr(fi, name, TimedTask(task, name))
    fi.ingest.fn = _timed_body(fi.ingest.fn, "flow")
    # the analyst snapshot (full-text index + file copy) is not one of the stages: timed apart
    fi._publish_snapshot = _timed_body(fi._publish_snapshot, "snapshot")
    # the wrapper's string annotations cannot be resolved in this module; the parameters are plain str
    fi.ingest.should_validate_parameters = False
    return fi.ingest


BATCH_SIZE = FetchConfig().batch_size


def write_config(folder: Path, sets: list[corpus.CorpusSet], ports: list[int], name: str, db: Path) -> Path:
    cfg = folder / f"config-{name}-{db.stem}"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "sources.toml").write_text(corpus.sources_toml(sets, ports, name))
    (cfg / "monitor.toml").write_text(f"""
topics_file = "{ROOT / 'config' / 'topics.toml'}"
[storage]
path = "{db}"
[fetch]
allow_private = ["127.0.0.1"]
# local hosts: politeness down so that it does not dominate (a real site sets these)
per_host = 8
min_delay_s = 0
concurrency = 32
retries = 1
backoff_s = 0.2
max_links_per_source = 100000
batch_size = {BATCH_SIZE}
[extract]
workers = {WORKERS}
[dashboard]
path = "{folder / (db.stem + '-dashboard.html')}"
""")
    return cfg


def run_flow(ingest: Any, cfg: Path, n: int, sampler: RssSampler, label: str) -> dict[str, Any]:
    TIMINGS.reset()
    sampler.reset()
    roles0, sampler0, t0 = sampler.cpu_by_role(), sampler.cpu_s, time.perf_counter()
    # a hung run (e.g. a DuckDB deadlock) prints every thread's stack and ends the benchmark
    faulthandler.dump_traceback_later(STALL_S, exit=True)
    try:
        stats = ingest(str(cfg))
    finally:
        faulthandler.cancel_dump_traceback_later()
    wall = time.perf_counter() - t0
    roles = {k: v - roles0.get(k, 0.0) for k, v in sampler.cpu_by_role().items()}
    # the memory sampler runs in this process: its CPU is the benchmark's, reported apart
    roles[SAMPLER_ROLE] = sampler.cpu_s - sampler0
    roles[MAIN_ROLE] -= roles[SAMPLER_ROLE]
    cpu = sum(v for k, v in roles.items() if k != SAMPLER_ROLE)
    # before/after the flow body (flow run setup, state changes) plus every task run's time around its body
    orchestration = (wall - TIMINGS.body.get("flow", 0.0)) + sum(TIMINGS.overhead.values())
    stored = sum(stats["statuses"].values())
    snapshot_s = TIMINGS.body.get("snapshot", 0.0)
    out = {"articles": n, "stored": stored, "statuses": stats["statuses"], "wall_s": round(wall, 2),
           "docs_per_s": round(stored / wall, 2), "cpu_cores_used": round(cpu / wall, 2),
           "snapshot_s": round(snapshot_s, 2), "docs_per_s_without_snapshot": round(stored / (wall - snapshot_s), 2),
           "cpu_ms_per_doc": round(1000 * cpu / max(stored, 1), 2),
           "cpu_ms_per_doc_by_role": {k: round(1000 * v / max(stored, 1), 2) for k, v in roles.items()},
           "orchestration_s": round(orchestration, 2), "orchestration_share": round(orchestration / wall, 4),
           "stage_s": {k: round(v, 2) for k, v in TIMINGS.body.items()},
           # CPU of the thread that ran each body, per stored article: the flow process's own work by stage
           # (not DuckDB's helper threads, not the pool's result thread, not the extraction workers)
           "stage_cpu_ms_per_doc": {k: round(1000 * v / max(stored, 1), 2) for k, v in TIMINGS.cpu.items()},
           "task_overhead_s": {k: round(v, 3) for k, v in TIMINGS.overhead.items()},
           "peak_rss_mb_pipeline": mb(sampler.peak_pipeline), "peak_rss_mb_tree": mb(sampler.peak_tree),
           "peak_pss_mb_pipeline": mb(sampler.peak_pss),
           "peak_rss_mb_by_role": sampler.roles_mb(), "peak_pss_mb_by_role": sampler.roles_mb(pss=True),
           "pss_mb_at_tree_peak": {k: mb(v) for k, v in sorted(sampler.at_peak_pss.items(), key=lambda kv: -kv[1])},
           "tree_peak_at_s": sampler.peak_pss_at_s,
           "rss_timeline_mb": _tenths(sampler.timeline)}
    print(f"  {label}: {stored} articles in {wall:.1f}s = {out['docs_per_s']} docs/s, "
          f"{out['cpu_cores_used']} cores, {out['cpu_ms_per_doc']} CPU ms/doc, orchestration {orchestration:.2f}s "
          f"({100 * out['orchestration_share']:.1f}%), peak RSS {out['peak_rss_mb_pipeline']} MB summed, "
          f"{out['peak_pss_mb_pipeline']} MB PSS "
          f"(tree with corpus server {out['peak_rss_mb_tree']} MB)", flush=True)
    print(f"    stages (body seconds): {out['stage_s']}  statuses: {stats['statuses']}", flush=True)
    print(f"    stage CPU ms/doc (the thread running each body): {out['stage_cpu_ms_per_doc']}", flush=True)
    print(f"    peak RSS by process role (MB): {out['peak_rss_mb_by_role']}", flush=True)
    print(f"    peak PSS by process role (MB, counted in the pipeline total): {out['peak_pss_mb_by_role']}", flush=True)
    print(f"    PSS by role when the tree peaked, {out['tree_peak_at_s']} s into the run (MB): "
          f"{out['pss_mb_at_tree_peak']}", flush=True)
    print(f"    CPU ms/doc by process role: {out['cpu_ms_per_doc_by_role']}", flush=True)
    for role in (MAIN_ROLE, WORKERS_ROLE):
        print(f"    RSS of {role} at each tenth of the run (MB): "
              f"{[round(rss.get(role, 0)) for _, rss in out['rss_timeline_mb']]}", flush=True)
    return out


def _tenths(timeline: list[tuple[float, dict[str, float]]]) -> list[tuple[float, dict[str, float]]]:
    """The samples nearest to 10%, 20%, ... 100% of the run (the last one is the run's end)."""
    if not timeline:
        return []
    end = timeline[-1][0]
    return [min(timeline, key=lambda s: abs(s[0] - end * k / 10)) for k in range(1, 11)]


# ---- (d): a big store, synthesised ---------------------------------------------------------------


def synth_store(path: Path, n: int) -> float:
    """A store holding `n` articles over the 365 days before CUTOFF (5 per story, 1 in 10 tagged).

    At that rate (1M a year) a two-week novelty window holds ~38,000 articles.
    """
    import monitor.store as store_mod

    t0 = time.perf_counter()
    # rows go in under the initial schema; the later migrations then run on them as on a real store
    # being upgraded (so tables derived from article_signatures are backfilled by their own migration)
    every = list(store_mod.MIGRATIONS)
    store_mod.MIGRATIONS[:] = [m for m in every if m[0] <= 2]
    try:
        with store_mod.open_store(path) as store:
            _synth_rows(store.con, n)
    finally:
        store_mod.MIGRATIONS[:] = every
    with store_mod.open_store(path) as store:
        # a store that size in steady state has its search index; building it is timed on its own
        fts_s = refresh_search_index(store.con, force=True) or 0.0
        store.con.execute("CHECKPOINT")
    path.with_suffix(".json").write_text(json.dumps({"fts_rebuild_s": fts_s}))
    return time.perf_counter() - t0


def rebuild_after_cycle(path: Path) -> float:
    """The rebuild the throttle deferred during the cycle, forced and timed on the big store after it:
    1M synthetic articles plus the cycle's real ones. Real text is what outgrew the rebuild's memory
    (docs/benchmarks.md, session 8), so this is the rebuild a store that size would run."""
    import monitor.store as store_mod

    t0 = time.perf_counter()
    with store_mod.open_store(path) as store:
        refresh_search_index(store.con, force=True)
    return time.perf_counter() - t0


def mark_index_fresh(path: Path) -> None:
    """The big store as just after a scheduled search-index rebuild (the throttle then skips it).

    Opened as the pipeline's writer opens it: a plain connection's checkpoint merged the store's
    8,192-row groups into DuckDB's default size (articles: 123 row groups -> 25, the file 1.0 -> 1.4 GB),
    so until session 11 the cycle ran on a store whose row groups the pipeline never writes.
    """
    import monitor.store as store_mod

    with store_mod.open_store(path) as store:
        store.con.execute("UPDATE search_index_state SET built_at = now()")


def _synth_rows(con: Any, n: int) -> None:
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"""
        CREATE TEMP TABLE g AS SELECT i,
          left(md5('a' || i), 16) AS id,
          's-' || left(md5('a' || (i // 5 * 5)), 16) AS story_id,
          TIMESTAMPTZ '{CUTOFF} 00:00:00+00' - to_microseconds(CAST((i::DOUBLE / {n}) * 365 * 86400e6 AS BIGINT))
            AS t,
          'big-src-' || (i % 200) AS source_id,
          sha1('text' || i) AS content_hash
        FROM range({n}) r(i)
    """)
    con.execute("""
        INSERT INTO articles (id, url, source_id, status, title, text, lang, lang_confidence, extractor,
                              content_hash, story_id, published, fetched_at, first_seen, run_id)
        SELECT id, 'https://site' || (i % 500) || '.example/news/' || i || '-story.html', source_id,
               CASE WHEN i % 10 = 9 THEN 'duplicate' ELSE 'ok' END, 'Synthetic headline number ' || i,
               repeat('Synthetic article body words about ministers talks and numbers ' || (i % 977) || '. ', 6),
               'en', 0.99, 'trafilatura', content_hash, story_id, t, t, t, 'synth'
        FROM g
    """)
    con.execute("""
        INSERT INTO article_signatures
        SELECT id, story_id, t, content_hash,
               unhex(md5(id || 1) || md5(id || 2) || md5(id || 3) || md5(id || 4) || md5(id || 5)
                     || md5(id || 6) || md5(id || 7) || md5(id || 8) || md5(id || 9) || md5(id || 10)
                     || md5(id || 11) || md5(id || 12) || md5(id || 13) || md5(id || 14) || md5(id || 15)
                     || md5(id || 16)),
               ['#' || (i * 7919 % 50000), '#' || (i * 104729 % 50000), 'k' || (i // 5 % 30000),
                'k' || (i * 31 % 30000), 'k' || (i * 17 % 20000), 'k' || (i // 5 * 13 % 30000)],
               source_id
        FROM g
    """)
    con.execute("""
        INSERT INTO stories
        SELECT story_id, 'Synthetic story ' || i, t, t + INTERVAL 6 HOUR, id,
               CASE WHEN i % 50 = 0 THEN ['ukraine-peace-talks'] ELSE [] END,
               ['#' || (i * 7919 % 50000), 'k' || (i // 5 % 30000), 'k' || (i // 5 * 13 % 30000)],
               false, '{}'::JSON, []
        FROM g WHERE i % 5 = 0
    """)
    con.execute("""
        INSERT INTO article_topics
        SELECT id, 'ukraine-peace-talks', 1.5, '{}'::JSON, t FROM g WHERE i % 10 = 0
    """)
    con.execute("DROP TABLE g")


# ---- harness --------------------------------------------------------------------------------------


def dated_picks(work: Path, limit: int = 600) -> tuple[int, ...]:
    """Base pages dated from CUTOFF on (cached in the work folder: ~1 min to find)."""
    cache = work / f"picks-{limit}-{CUTOFF}.json"
    if cache.exists():
        return tuple(json.loads(cache.read_text()))
    picks = corpus.pages_dated_from(corpus.load_base(), limit, CUTOFF)
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(picks))
    return tuple(picks)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def prefect_server(run_dir: Path, ephemeral: bool) -> Iterator[str]:
    """The Prefect API the flow runs talk to.

    `ephemeral` (the default): what `monitor run` and the demo use, Prefect's ephemeral API started in
    a subprocess by monitor.ops.prefect_api, so that the flow process stays a plain API client.
    (Left to Prefect, the first flow run would start it from the flow process after importing the
    server's code there: ~70 MB more in that process, see docs/benchmarks.md, session 9.)
    Otherwise `prefect server start` (with its services, as the README deploys it for schedules) in a
    process of its own, and the flow process is a plain client of PREFECT_API_URL. At 3,000 articles
    that tree peaked at 1,029 MB PSS against 1,091 MB ephemeral; at 20,000 the server itself grew to
    382 MB against the ephemeral API's 212 MB (docs/benchmarks.md, session 8).
    """
    if ephemeral:
        with prefect_api() as url:
            yield "ephemeral" if url else "ephemeral, started by Prefect"
        return
    port = free_ports(1)[0]
    log = (run_dir / "prefect-server.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, proc, run_dir / "prefect-server.log")
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        drain_prefect_clients()  # logs and events still queued would be sent to a stopped server
        os.environ.pop("PREFECT_API_URL", None)
        stop_process(proc, timeout_s=20)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> None:
    if api_healthy(url, proc, timeout_s):
        return
    if proc.poll() is not None:
        raise RuntimeError(f"prefect server exited ({proc.returncode}): {log.read_text()[-500:]}")
    raise RuntimeError(f"prefect server not healthy after {timeout_s:.0f} s: {log}")


@contextmanager
def corpus_server(sets: list[corpus.CorpusSet], ports: list[int], sampler: RssSampler) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=corpus.serve, args=(sets, ports, ready), daemon=True)
    proc.start()
    assert proc.pid is not None
    sampler.exclude.add(proc.pid)
    if not ready.wait(120):
        proc.kill()
        raise RuntimeError("corpus server did not start")
    try:
        yield
    finally:
        proc.kill()
        proc.join()


def machine_info() -> dict[str, Any]:
    def git_describe() -> str:
        try:
            return subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "unknown"

    import duckdb
    import trafilatura

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "trafilatura": trafilatura.__version__, "duckdb": duckdb.__version__,
            "git": git_describe(), "when": datetime.now(UTC).isoformat(timespec="seconds")}


def compare(prev: dict[str, Any], cur: dict[str, Any]) -> None:
    keys = [("ceiling", "docs_per_s"), ("ceiling_equal", "docs_per_s"), ("ours", "docs_per_s"),
            ("ours", "cpu_ms_per_doc"), ("ratios", "ours_vs_equal_ceiling"), ("newspaper4k", "docs_per_s"),
            ("ratios", "ours_vs_ceiling"), ("ratios", "ours_vs_newspaper4k"), ("ours", "peak_rss_mb_pipeline"),
            ("ours", "orchestration_share"), ("scale", "ratio")]
    print(f"\ncompared with the previous run ({prev.get('machine', {}).get('git', '?')}, "
          f"{prev.get('config', {}).get('articles', '?')} articles):")
    for a, b in keys:
        old, new = (prev.get(a) or {}).get(b), (cur.get(a) or {}).get(b)
        if old is not None and new is not None:
            print(f"  {a}.{b}: {old} -> {new}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=5000)
    ap.add_argument("--cycle", type=int, default=1000, help="articles of the empty-vs-big store cycle")
    ap.add_argument("--big", type=int, default=1_000_000, help="articles in the big store")
    ap.add_argument("--quick", action="store_true", help="300 articles, 200-article cycle, 100k store")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-newspaper", action="store_true")
    ap.add_argument("--skip-ceiling", action="store_true", help="only our flow (e.g. the 20,000-article memory run)")
    ap.add_argument("--batch-size", type=int, default=None, help="fetch.batch_size for our pipeline runs")
    ap.add_argument("--profile", action="store_true", help="pyinstrument the flow run (b) into bench/results/")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "monitor-bench")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--prefect-server", action="store_true",
                    help="run the flows against `prefect server start` instead of Prefect's ephemeral API")
    args = ap.parse_args(argv)
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size or BATCH_SIZE
    if args.quick:
        args.articles, args.cycle, args.big = min(args.articles, 300), min(args.cycle, 200), min(args.big, 100_000)
    work = args.workdir
    run_dir = work / f"run-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # a private Prefect home: no lock contention with anyone else's ~/.prefect database
    os.environ["PREFECT_HOME"] = str(run_dir / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    warnings.simplefilter("ignore")

    main_set = corpus.CorpusSet("main", args.articles, 0)
    # other variants than the main set, of pages dated from CUTOFF on (or undated): the synthetic
    # history ends at CUTOFF, so the novelty window reaches as far into it as it would for fresh news
    cycle_set = corpus.CorpusSet("cycle", args.cycle, 7 * 1171 + 13,
                                 picks=() if args.skip_scale else dated_picks(work))
    warm_set = corpus.CorpusSet("warm", 20, 3 * 1171 + 5)
    sets = [main_set, cycle_set, warm_set]
    ports = free_ports(HOSTS)
    result: dict[str, Any] = {"machine": machine_info(),
                              "config": {"articles": args.articles, "cycle": args.cycle, "big_store": args.big,
                                         "hosts": HOSTS, "workers": WORKERS, "per_host": 8, "min_delay_s": 0,
                                         "concurrency": 32, "batch_size": BATCH_SIZE,
                                         "reset_every": RESET_EVERY, "store_html": True},
                              "note": "measured on a shared 2-core machine while other work ran (see loadavg)"}
    print(f"bench: {args.articles} articles on {HOSTS} hosts, load average {os.getloadavg()[0]:.2f}", flush=True)
    sampler = RssSampler().start()
    from monitor.cli import quiet_prefect

    quiet_prefect(run_dir / "logs")
    try:
        with corpus_server(sets, ports, sampler), prefect_server(run_dir, not args.prefect_server) as api:
            result["config"]["prefect_api"] = api if api.startswith("ephemeral") else "prefect server start"
            if not args.skip_ceiling:
                print("(a) ceiling: raw trafilatura.bare_extraction, 2 processes", flush=True)
                result["ceiling"] = run_extractor("trafilatura", _raw_trafilatura, main_set, sampler)
                print("(a') equal-options ceiling: bare_extraction with our options (favor_precision)", flush=True)
                result["ceiling_equal"] = run_extractor("trafilatura, our options", _equal_trafilatura, main_set,
                                                        sampler)
            ingest = instrument_flow()
            print("(b) ours: the Prefect flow, discover -> store", flush=True)
            ingest(str(write_config(run_dir, sets, ports, "warm", run_dir / "warm.duckdb")))  # Prefect warm
            cfg = write_config(run_dir, sets, ports, "main", run_dir / "main.duckdb")
            if args.profile:
                from pyinstrument import Profiler

                with Profiler(interval=0.005) as prof:
                    result["ours"] = run_flow(ingest, cfg, args.articles, sampler, "flow")
                prof_path = args.out.with_name("pipeline-profile.txt")
                prof_path.write_text(prof.output_text(unicode=False, show_all=False))
                print(f"  profile: {prof_path}")
            else:
                result["ours"] = run_flow(ingest, cfg, args.articles, sampler, "flow")
            result["ours"]["db_mb"] = mb((run_dir / "main.duckdb").stat().st_size)
            if not args.skip_ceiling:
                # the machine's speed drifts within a run: the ceiling again, so that ours is also
                # compared with the mean of a ceiling before it and one after it
                print("(a'') ceiling again, after ours", flush=True)
                result["ceiling_after"] = run_extractor("trafilatura, after", _raw_trafilatura, main_set, sampler)
            if not args.skip_newspaper:
                print("(c) newspaper4k Article.parse, 2 processes", flush=True)
                result["newspaper4k"] = run_extractor("newspaper4k", _newspaper, main_set, sampler)
            if not args.skip_scale:
                result["scale"] = scale(ingest, run_dir, work, sets, ports, args, sampler)
    finally:
        sampler.stop()
    ratios: dict[str, float] = {}
    if "ceiling" in result:
        ours, ceil, equal = result["ours"], result["ceiling"], result["ceiling_equal"]
        ratios = {"ours_vs_ceiling": round(ours["docs_per_s"] / ceil["docs_per_s"], 3),
                  "ours_without_snapshot_vs_ceiling": round(ours["docs_per_s_without_snapshot"]
                                                            / ceil["docs_per_s"], 3),
                  "ours_vs_ceiling_busy": round(ours["docs_per_s"] / ceil["docs_per_s_busy"], 3),
                  # CPU per doc, ceiling over ours: what the wall ratio would be on an otherwise idle machine
                  "ours_vs_ceiling_cpu": round(ceil["cpu_ms_per_doc"] / ours["cpu_ms_per_doc"], 3),
                  "ours_vs_equal_ceiling": round(ours["docs_per_s"] / equal["docs_per_s"], 3),
                  "ours_vs_equal_ceiling_cpu": round(equal["cpu_ms_per_doc"] / ours["cpu_ms_per_doc"], 3)}
        after = result["ceiling_after"]
        ratios["ours_vs_ceiling_after"] = round(ours["docs_per_s"] / after["docs_per_s"], 3)
        bracket = (ceil["docs_per_s"] + after["docs_per_s"]) / 2
        ratios["ours_vs_ceiling_bracketed"] = round(ours["docs_per_s"] / bracket, 3)
    if "newspaper4k" in result:
        ratios["ours_vs_newspaper4k"] = round(result["ours"]["docs_per_s"] / result["newspaper4k"]["docs_per_s"], 3)
        ratios["ours_vs_newspaper4k_cpu"] = round(result["newspaper4k"]["cpu_ms_per_doc"]
                                                  / result["ours"]["cpu_ms_per_doc"], 3)
    result["ratios"] = ratios
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report(result)
    if args.out.exists():
        with suppress(ValueError, OSError):
            compare(json.loads(args.out.read_text()), result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"written: {args.out}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def scale(ingest: Any, run_dir: Path, work: Path, sets: list[corpus.CorpusSet], ports: list[int],
          args: argparse.Namespace, sampler: RssSampler) -> dict[str, Any]:
    print(f"(d) the same {args.cycle}-article cycle on an empty store and on a {args.big:,}-article store",
          flush=True)
    from monitor.store import MIGRATIONS

    cached = work / f"big-{args.big}-m{max(v for v, _, _ in MIGRATIONS)}-{CUTOFF}-fts.duckdb"
    synth_s = None
    if not cached.exists():
        tmp = cached.with_suffix(".tmp")
        synth_s = synth_store(tmp, args.big)  # its index timing goes to cached.with_suffix(".json") already
        tmp.replace(cached)
        print(f"  synthesised the big store in {synth_s:.1f}s ({mb(cached.stat().st_size)} MB)", flush=True)
    fts_synth_s = float(json.loads(cached.with_suffix(".json").read_text())["fts_rebuild_s"])
    big = run_dir / "big.duckdb"
    shutil.copy(cached, big)
    mark_index_fresh(big)
    empty = run_flow(ingest, write_config(run_dir, sets, ports, "cycle", run_dir / "empty.duckdb"),
                     args.cycle, sampler, "empty store")
    full = run_flow(ingest, write_config(run_dir, sets, ports, "cycle", big), args.cycle, sampler,
                    f"{args.big:,}-article store")
    fts_s = rebuild_after_cycle(big)

    def store_side(r: dict[str, Any]) -> float:  # the stages that read or write the store
        st = r["stage_s"]
        return sum(st.get(k, 0.0) for k in ("discover", "detect_and_store", "deliver", "dashboard"))

    # the search index is rebuilt whole, at most once per max(15 min, 20 x its duration) (snapshot.py):
    # its share of a run, spread over the runs between two rebuilds
    every = max(REINDEX_MIN_INTERVAL_S, fts_s / REINDEX_MAX_SHARE)
    amortized = full["wall_s"] + fts_s * full["wall_s"] / every
    out = {"empty": empty, "big": full, "big_store_articles": args.big, "synth_s": synth_s,
           "ratio": round(full["wall_s"] / empty["wall_s"], 3),
           "fts_rebuild_s": round(fts_s, 1), "fts_rebuild_every_s": round(every),
           "fts_rebuild_synthetic_only_s": round(fts_synth_s, 1),
           "ratio_with_amortized_fts": round(amortized / empty["wall_s"], 3),
           # less sensitive to other load on the machine than the wall-time ratio
           "ratio_cpu": round(full["cpu_ms_per_doc"] / empty["cpu_ms_per_doc"], 3),
           "store_stages_s": [round(store_side(empty), 2), round(store_side(full), 2)]}
    print(f"  ratio {out['ratio']} (CPU per doc {out['ratio_cpu']}); store-side stages "
          f"{out['store_stages_s'][0]}s -> {out['store_stages_s'][1]}s; search index rebuild on the big store "
          f"{out['fts_rebuild_s']}s, at most every {out['fts_rebuild_every_s']}s: amortized ratio "
          f"{out['ratio_with_amortized_fts']}", flush=True)
    return out


def report(r: dict[str, Any]) -> None:
    ours = r["ours"]
    print(f"\n== results (load average {r['machine']['loadavg_at_start'][0]} at start) ==")
    print(f"ours (full flow):                   {ours['docs_per_s']} docs/s")
    if "ceiling" in r:
        print(f"ceiling (raw trafilatura, default options, {WORKERS} procs): {r['ceiling']['docs_per_s']} docs/s -> "
              f"ours is {r['ratios']['ours_vs_ceiling']}x (goal >= 0.9); by CPU per doc "
              f"{r['ratios']['ours_vs_ceiling_cpu']}x; without the analyst snapshot at the end "
              f"({ours['snapshot_s']}s) {r['ratios']['ours_without_snapshot_vs_ceiling']}x")
        print(f"the ceiling again after ours: {r['ceiling_after']['docs_per_s']} docs/s -> ours is "
              f"{r['ratios']['ours_vs_ceiling_after']}x; against the mean of the two ceilings "
              f"{r['ratios']['ours_vs_ceiling_bracketed']}x")
        print(f"equal-options ceiling (favor_precision, as ours): {r['ceiling_equal']['docs_per_s']} docs/s -> ours "
              f"is {r['ratios']['ours_vs_equal_ceiling']}x; by CPU per doc {r['ratios']['ours_vs_equal_ceiling_cpu']}x")
    if "newspaper4k" in r:
        print(f"newspaper4k ({WORKERS} procs):            {r['newspaper4k']['docs_per_s']} docs/s  -> ours is "
              f"{r['ratios']['ours_vs_newspaper4k']}x (goal >= 2); by CPU per doc "
              f"{r['ratios']['ours_vs_newspaper4k_cpu']}x")
    print(f"peak memory, pipeline tree, {ours['articles']} articles: {ours['peak_pss_mb_pipeline']} MB PSS "
          f"({ours['peak_rss_mb_pipeline']} MB RSS summed over processes; goal <= 1024 MB for 20,000)")
    print(f"Prefect orchestration: {100 * ours['orchestration_share']:.1f}% of the flow's wall time (goal <= 5%)")
    if "scale" in r:
        s = r["scale"]
        print(f"{r['config']['cycle']}-article cycle: empty store {s['empty']['wall_s']}s, "
              f"{s['big_store_articles']:,}-article store {s['big']['wall_s']}s -> {s['ratio']}x (goal <= 1.2); "
              f"by CPU per doc {s['ratio_cpu']}x")


if __name__ == "__main__":
    main()
