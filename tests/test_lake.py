"""The DuckLake backend on a real PostgreSQL catalog, and partitioned runs on two real Prefect workers.

PostgreSQL comes from Debian's packages and listens on 127.0.0.1 (.ci/run installs and starts it);
each test creates its own role and database with psql and drops them afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor import lake
from monitor.config import StorageConfig
from monitor.demo.servers import SiteServer, WebhookReceiver
from monitor.models import Article
from monitor.store import StoryRow, open_store

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "src" / "monitor" / "demo" / "site"
BIN = Path(sys.executable).parent
# outlets served from a second host name, so that the demo splits into two partitions by host
SECOND_HOST_OUTLETS = ("europa-heute", "kyiv-observer", "la-gazette")


def _psql_admin() -> list[str] | None:
    """How to run psql as the cluster's superuser (peer authentication over the local socket)."""
    psql = shutil.which("psql")
    if psql is None:
        return None
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", psql, "-q", "-v", "ON_ERROR_STOP=1"]
    return [psql, "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]


def _pg_ready() -> str | None:
    """None when PostgreSQL answers on 127.0.0.1:5432, else why not."""
    if _psql_admin() is None:
        return "psql not installed (.ci/run installs Debian's postgresql)"
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        return "PostgreSQL is not listening on 127.0.0.1:5432 (.ci/run starts it: pg_ctlcluster 15 main start)"
    return None


@pytest.fixture
def pg_catalog() -> Iterator[str]:
    """A fresh role and database; yields the libpq connection string DuckLake's catalog uses."""
    why = _pg_ready()
    if why:
        pytest.skip(why)
    admin = _psql_admin()
    assert admin is not None
    name = "lake_" + secrets.token_hex(4)
    password = secrets.token_hex(8)
    subprocess.run([*admin, "-c", f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
                    "-c", f"CREATE DATABASE {name} OWNER {name}"], check=True, capture_output=True)
    try:
        yield f"host=127.0.0.1 port=5432 dbname={name} user={name} password={password}"
    finally:
        subprocess.run([*admin, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                        "-c", f"DROP ROLE IF EXISTS {name}"], check=False, capture_output=True)


def test_lake_ddl_strips_keys_and_indexes() -> None:
    sql = ("CREATE TABLE a (id VARCHAR PRIMARY KEY, x INT);\nCREATE INDEX a_x ON a (x);\n"
           "CREATE TABLE b (k VARCHAR, t VARCHAR, PRIMARY KEY (k, t));\nDROP INDEX IF EXISTS a_x;")
    out = lake.lake_ddl(sql)
    assert "PRIMARY" not in out.upper() and "INDEX" not in out.upper()
    assert "CREATE TABLE a (id VARCHAR, x INT);" in out and "CREATE TABLE b (k VARCHAR, t VARCHAR);" in out


def test_extensions_load_offline_from_wheels() -> None:
    for name in ("ducklake", "postgres_scanner"):
        assert lake.extension_path(name).is_file()
    import duckdb

    con = duckdb.connect()
    lake.load_extensions(con)
    loaded = {r[0] for r in con.execute(
        "SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
    assert {"ducklake", "postgres_scanner"} <= loaded


def _article(i: int, status: str = "ok") -> Article:
    from datetime import UTC, datetime

    return Article(id=f"a{i}", url=f"https://x.test/{i}", source_id="s", status=status,  # type: ignore[arg-type]
                   title=f"t{i}", text="words " * 50, content_hash=f"h{i}",
                   fetched_at=datetime(2025, 1, 1, tzinfo=UTC), html=b"<p>x</p>")


def test_store_verbs_are_idempotent_on_a_lake(pg_catalog: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    storage = StorageConfig(backend="ducklake", catalog=pg_catalog, data_path=str(tmp_path / "data"))
    when = datetime(2025, 1, 1, tzinfo=UTC)
    story = StoryRow("s-a1", "t", when, when, "a1", ["x"], ["f1"], False, {}, [])
    for _ in range(2):  # the second pass must add nothing and change nothing
        with open_store(tmp_path / "lake.duckdb", storage=storage) as store:
            store.sync_sources([("s", "https://x.test/feed", "rss", "S")])
            assert store.write_articles([_article(1), _article(2)], "r1", store_html=True) in (0, 2)
            store.upsert_stories([story])
            store.enqueue_alerts([{"id": "al1", "development_id": "d1", "channel": "c", "kind": "new_story",
                                   "payload": {"x": 1}}])
            store.start_run("r1")
    story.title = "changed"
    with open_store(tmp_path / "lake.duckdb", storage=storage) as store:
        store.upsert_stories([story])
        counts = {t: store.scalar(f"SELECT count(*) FROM {t}") for t in
                  ("sources", "articles", "article_html", "stories", "alerts", "runs", "schema_migrations")}
        title = store.scalar("SELECT title FROM stories WHERE id = 's-a1'")
    assert counts["sources"] == 1 and counts["articles"] == 2 and counts["article_html"] == 2
    assert counts["stories"] == 1 and counts["alerts"] == 1 and counts["runs"] == 1
    assert title == "changed"
    from monitor.store import MIGRATIONS

    assert counts["schema_migrations"] == len(MIGRATIONS)


# ---- two workers, one lake ------------------------------------------------------------------------


class _LocalhostSite(SiteServer):
    """The demo site under the host name `localhost` (links in its pages say localhost too)."""

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lake_config(demo_config: Path, tmp_path: Path) -> Path:
    """The demo config with half of the outlets on a second host, plus a ducklake twin of it."""
    src = (demo_config / "sources.toml").read_text()
    for outlet in SECOND_HOST_OUTLETS:
        src = src.replace(f"${{DEMO_BASE}}/{outlet}/", f"${{DEMO_BASE_B}}/{outlet}/")
    (demo_config / "sources.toml").write_text(src)
    mon = (demo_config / "monitor.toml").read_text().replace(
        'allow_private = ["127.0.0.1"]', 'allow_private = ["127.0.0.1", "localhost"]')
    (demo_config / "monitor.toml").write_text(mon)
    lake_cfg = tmp_path / "config" / "lake"
    shutil.copytree(demo_config, lake_cfg)
    mon = mon.replace(f'path = "{tmp_path / "demo.duckdb"}"',
                      f'path = "{tmp_path / "lake.duckdb"}"\nbackend = "ducklake"\n'
                      f'catalog = "${{MONITOR_LAKE_CATALOG}}"\ndata_path = "{tmp_path / "lake-data"}"')
    (lake_cfg / "monitor.toml").write_text(mon)
    return lake_cfg


class _Prefect:
    """`prefect server start` (SQLite in tmp), a process work pool, and workers, as subprocesses."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.url,
                    "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "PREFECT_LOGGING_LEVEL": "WARNING"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, *args: str, level: str = "WARNING") -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen([str(BIN / "prefect"), *args], env={**self.env, "PREFECT_LOGGING_LEVEL": level},
                                    stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return done.stdout

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.procs[0].poll() is None, (self.logs / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("prefect server did not become healthy")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


_ARTICLES = "SELECT id, status, duplicate_of, story_id, content_hash FROM articles ORDER BY id"
_STORIES = "SELECT id, first_article_id, title, topics, facts, surged FROM stories ORDER BY id"
_DEVS = "SELECT id, kind, story_id, topic, article_id, source_id FROM development_events ORDER BY id"
_ALERTS = "SELECT id, development_id, channel, kind, state FROM alerts ORDER BY id"
_TOPICS = "SELECT article_id, topic FROM article_topics ORDER BY ALL"


def _snapshot(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {q: [tuple(r) for r in con.execute(q).fetchall()] for q in (_ARTICLES, _STORIES, _DEVS, _ALERTS, _TOPICS)}


@pytest.mark.slow
def test_two_workers_fill_the_lake_like_one_machine(
        pg_catalog: str, demo_config: Path, demo_site: SiteServer, webhook: WebhookReceiver, tmp_path: Path,
        prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest
    from flows.partitioned import partition_of

    with _LocalhostSite(SITE) as site_b:
        monkeypatch.setenv("DEMO_BASE_B", site_b.url)
        lake_cfg = _lake_config(demo_config, tmp_path)
        assert partition_of(demo_site.url, 2) != partition_of(site_b.url, 2), "the two hosts must split"

        # the reference: one machine, one DuckDB file
        ingest(str(demo_config))
        import duckdb

        with duckdb.connect(str(tmp_path / "demo.duckdb"), read_only=True) as con:
            want = _snapshot(con)
        sent_alone = len(webhook.received)
        assert want[_ARTICLES] and want[_DEVS] and sent_alone > 0

        env = {**os.environ, "MONITOR_LAKE_CATALOG": pg_catalog}
        prefect = _Prefect(tmp_path / "prefect", env)
        try:
            prefect.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(prefect.port),
                          "--no-services")
            prefect.wait_healthy()
            prefect.run(str(BIN / "prefect"), "work-pool", "create", "monitor-pool", "--type", "process")
            prefect.run(str(BIN / "prefect"), "gcl", "create", "monitor-store-writer", "--limit", "1")
            prefect.run(str(BIN / "python"), "-m", "flows.partitioned", "deploy", "--project", str(ROOT))
            for w in ("w1", "w2"):
                prefect.spawn(w, "worker", "start", "--pool", "monitor-pool", "--type", "process",
                              "--name", w, "--limit", "1", level="INFO")
            out = prefect.run(str(BIN / "python"), "-m", "flows.partitioned", "cycle", "--config",
                              str(lake_cfg), "--partitions", "2", timeout=400)
            stats = json.loads(out.strip().splitlines()[-1])
            again = json.loads(prefect.run(str(BIN / "python"), "-m", "flows.partitioned", "cycle", "--config",
                                           str(lake_cfg), "--partitions", "2", timeout=400).strip().splitlines()[-1])
            workers = _workers_used(prefect)
        finally:
            prefect.stop()

    con = lake.connect(pg_catalog, str(tmp_path / "lake-data"), read_only=True)
    got = _snapshot(con)
    for q in want:
        assert got[q] == want[q], q
    for table, key in (("articles", "id"), ("development_events", "id"), ("alerts", "id"),
                       ("alerts", "development_id, channel")):
        dupes = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)")
        assert dupes.fetchone() == (0,), f"duplicate {table} by {key}"
    assert con.execute("SELECT count(*) FROM staged_articles").fetchone() == (0,)
    assert stats["developments"] == len(want[_DEVS]) and again["developments"] == 0
    assert sum(again["statuses"].values()) == 0, "the second cycle must find every article known"
    assert len(webhook.received) == 2 * sent_alone, "the lake run delivers each alert once, like one machine"
    assert workers == {"w1", "w2"}, f"both workers must have run a partition: {workers}"


def _workers_used(prefect: _Prefect) -> set[str]:
    """Which workers ran the partition runs (from each worker's log)."""
    used = set()
    for w in ("w1", "w2"):
        log = (prefect.logs / f"{w}.log").read_text(errors="replace")
        if "for flow 'ingest-partition'" in log:
            used.add(w)
    return used
