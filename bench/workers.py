"""Partitioned ingest into a DuckLake store: one Prefect worker vs two, on this machine.

Needs PostgreSQL on 127.0.0.1:5432 (.ci/run starts Debian's cluster) and psql as its superuser.
Each measurement gets a fresh catalog database and data path, one `prefect server start`, the process
work pool and N workers (`--limit 1` each), and times one `ingest-cycle` over the demo site split
into two partitions by host. Prints seconds and articles per second, and the two-worker ratio.

    .venv/bin/python bench/workers.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_lake import SITE, _LocalhostSite, _Prefect, _psql_admin  # noqa: E402

from monitor.demo.servers import SiteServer  # noqa: E402


def _config(tmp: Path, base_a: str, base_b: str) -> Path:
    cfg = tmp / "config"
    (cfg / "lake").mkdir(parents=True)
    (cfg / "topics.toml").write_text((ROOT / "config" / "topics.toml").read_text())
    src = (ROOT / "config" / "demo" / "sources.toml").read_text()
    for outlet in ("europa-heute", "kyiv-observer", "la-gazette"):
        src = src.replace(f"${{DEMO_BASE}}/{outlet}/", f"{base_b}/{outlet}/")
    (cfg / "lake" / "sources.toml").write_text(src.replace("${DEMO_BASE}", base_a))
    mon = (ROOT / "config" / "demo" / "monitor.toml").read_text()
    mon = mon.replace('allow_private = ["127.0.0.1"]', 'allow_private = ["127.0.0.1", "localhost"]')
    mon = mon.replace('path = "data/demo.duckdb"', f'path = "{tmp / "lake.duckdb"}"\nbackend = "ducklake"\n'
                      'catalog = "${MONITOR_LAKE_CATALOG}"\ndata_path = "${MONITOR_LAKE_DATA}"')
    mon = mon.replace('path = "data/demo-dashboard.html"', f'path = "{tmp / "dash.html"}"')
    mon = mon.split("[[alerts.channels]]")[0]  # no webhook: delivery is not what is measured
    (cfg / "lake" / "monitor.toml").write_text(mon)
    return cfg / "lake"


def _cycle(prefect: _Prefect, cfg: Path, tmp: Path, label: str, workers: int) -> tuple[float, int]:
    admin = _psql_admin()
    assert admin is not None, "psql is needed"
    name = "bench_" + secrets.token_hex(4)
    pw = secrets.token_hex(8)
    subprocess.run([*admin, "-c", f"CREATE ROLE {name} LOGIN PASSWORD '{pw}'",
                    "-c", f"CREATE DATABASE {name} OWNER {name}"], check=True, capture_output=True)
    prefect.env["MONITOR_LAKE_CATALOG"] = f"host=127.0.0.1 port=5432 dbname={name} user={name} password={pw}"
    prefect.env["MONITOR_LAKE_DATA"] = str(tmp / f"data-{label}")
    # workers (and the flow runs they start) read the catalog from their environment: fresh ones per lake
    procs = [prefect.spawn(f"w{i}-{label}", "worker", "start", "--pool", "monitor-pool", "--type", "process",
                           "--limit", "1") for i in range(workers)]
    time.sleep(5)
    try:
        t = time.perf_counter()
        out = prefect.run(sys.executable, "-m", "flows.partitioned", "cycle", "--config", str(cfg),
                          "--partitions", "2", timeout=600)
        seconds = time.perf_counter() - t
        stats = json.loads(out.strip().splitlines()[-1])
        return seconds, sum(stats["statuses"].values())
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=30)
        subprocess.run([*admin, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "-c", f"DROP ROLE {name}"],
                       check=False, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, SiteServer(SITE) as a, _LocalhostSite(SITE) as b:
        tmp = Path(d)
        cfg = _config(tmp, a.url, b.url)
        prefect = _Prefect(tmp / "prefect", dict(os.environ))
        try:
            prefect.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(prefect.port),
                          "--no-services")
            prefect.wait_healthy()
            prefect.run(str(ROOT / ".venv/bin/prefect"), "work-pool", "create", "monitor-pool", "--type", "process")
            prefect.run(sys.executable, "-m", "flows.partitioned", "deploy", "--project", str(ROOT))
            results: dict[int, list[tuple[float, int]]] = {}
            for workers in (1, 2):
                results[workers] = [_cycle(prefect, cfg, tmp, f"{workers}-{i}", workers)
                                    for i in range(args.repeat)]
        finally:
            prefect.stop()
    best = {w: min(r) for w, r in results.items()}
    for w, (sec, n) in best.items():
        print(f"{w} worker(s): {sec:6.1f} s for {n} articles  ({n / sec:5.2f} articles/s)  runs: "
              + ", ".join(f"{s:.1f}" for s, _ in results[w]))
    print(f"two workers / one worker throughput: {best[1][0] / best[2][0]:.2f}x  (nproc={os.cpu_count()})")


if __name__ == "__main__":
    main()
