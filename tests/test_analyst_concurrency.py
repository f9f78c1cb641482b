"""An analyst holding a connection open across a run neither blocks it nor loses its data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.errors import StoreError
from monitor.ops import read_holder, run_lock
from monitor.snapshot import snapshot_path
from monitor.store import open_store

ANALYST = textwrap.dedent("""
    import sys, duckdb
    path = sys.argv[1]
    con = duckdb.connect(path, read_only=True)
    def report():
        ids = sorted(r[0] for r in con.execute("SELECT id FROM articles").fetchall())
        print(len(ids), ",".join(ids), flush=True)
    report()
    for line in sys.stdin:
        if line.strip() == "reconnect":
            con.close()
            con = duckdb.connect(path, read_only=True)
        report()
""")


class Analyst:
    """Another process with a read-only DuckDB connection it keeps open until told to reconnect."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ANALYST, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read(self) -> set[str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"analyst died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        count, ids = line.strip().split(" ", 1) if " " in line.strip() else (line.strip(), "")
        got = set(filter(None, ids.split(",")))
        assert len(got) == int(count)
        return got

    def ask(self, command: str) -> set[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def analyst_on() -> Iterator[type[Analyst]]:
    started: list[Analyst] = []

    class Tracked(Analyst):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            started.append(self)

    yield Tracked
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)


def _db_ids(db: Path) -> set[str]:
    with open_store(db, read_only=True) as store:
        return {r[0] for r in store.con.execute("SELECT id FROM articles").fetchall()}


def _only_sources(config: Path, keep: set[str]) -> str:
    """Rewrite sources.toml to the listed source ids; returns the full original text."""
    path = config / "sources.toml"
    full = path.read_text()
    blocks = full.split("[[sources]]")
    kept = [b for b in blocks[1:] if any(f'id = "{sid}"' in b for sid in keep)]
    path.write_text(blocks[0] + "".join("[[sources]]" + b for b in kept))
    return full


def test_analyst_holding_the_snapshot_across_a_run(prefect_harness: None, demo_config: Path,
                                                   tmp_path: Path, analyst_on: type[Analyst]) -> None:
    from flows.ingest import ingest

    db = tmp_path / "demo.duckdb"
    full = _only_sources(demo_config, {"globalwire", "la-gazette"})
    first = ingest(str(demo_config))
    assert first["statuses"] and "skipped" not in first
    analyst = analyst_on(snapshot_path(db))
    before = analyst.read()
    assert before == _db_ids(db)

    (demo_config / "sources.toml").write_text(full)  # the next run finds the other outlets' articles
    second = ingest(str(demo_config))  # the analyst's connection is open all through the run

    assert sum(second["statuses"].values()) > 0
    after_run = _db_ids(db)
    assert before < after_run, "the run stored new articles and kept the old ones"
    assert analyst.ask("query") == before, "the open connection keeps its consistent old snapshot"
    assert analyst.ask("reconnect") == after_run, "after reconnecting the analyst sees every new row"
    analyst.close()
    with open_store(db, read_only=True) as store:
        assert store.scalar("SELECT count(*) FROM runs WHERE status = 'ok'") == 2


def test_a_reader_on_the_pipeline_database_itself_would_block_the_writer(
        tmp_path: Path, analyst_on: type[Analyst]) -> None:
    """Why the snapshot exists: DuckDB refuses a writer while another process reads the file."""
    db = tmp_path / "monitor.duckdb"
    with open_store(db):
        pass
    analyst = analyst_on(db)
    analyst.read()
    with pytest.raises(StoreError, match="lock"), open_store(db):
        pass
    analyst.close()
    with open_store(db) as store:  # once the reader is gone the writer gets in
        assert store.scalar("SELECT count(*) FROM articles") == 0


HOLDER = textwrap.dedent("""
    import sys
    from monitor.ops import run_lock
    with run_lock(sys.argv[1]) as holder:
        assert holder is None
        print("holding", flush=True)
        sys.stdin.readline()
""")


def test_a_second_run_while_one_is_in_flight_skips_and_says_so(prefect_harness: None, demo_config: Path,
                                                               tmp_path: Path) -> None:
    from flows.ingest import ingest

    db = tmp_path / "demo.duckdb"
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        holder = read_holder(db)
        assert holder is not None and holder.pid == other.pid
        skipped = ingest(str(demo_config))
        assert f"pid {other.pid}" in skipped["skipped"] and "in flight" in skipped["skipped"]
        assert not db.exists() or not _db_ids(db), "the skipped run stored nothing"
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(10)
    assert read_holder(db) is None
    with run_lock(db) as free:
        assert free is None
    done = ingest(str(demo_config))
    assert "skipped" not in done and sum(done["statuses"].values()) > 0
