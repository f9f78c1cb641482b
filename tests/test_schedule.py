"""`monitor serve` against a real `prefect server start`: scheduled runs happen and store data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from monitor.snapshot import snapshot_path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], sig: int, wait_s: float) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """A real Prefect server (SQLite in tmp) on a free 127.0.0.1 port; yields its API URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-server"), PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
               PREFECT_LOGGING_LEVEL="WARNING")
    log = (tmp_path / "prefect-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited: {(tmp_path / 'prefect-server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prefect server did not become healthy in 90 s")
            time.sleep(1)
        yield url
    finally:
        _stop(proc, signal.SIGTERM, 30)
        log.close()


def _ok_runs(db: Path) -> list[tuple[str, int]]:
    """(run id, articles in the database) for each finished run, read from the analyst snapshot."""
    snap = snapshot_path(db)
    if not snap.exists():
        return []
    con = duckdb.connect(str(snap), read_only=True)
    try:
        total = con.execute("SELECT count(*) FROM articles").fetchone()
        rows = con.execute("SELECT id FROM runs WHERE status = 'ok' ORDER BY started_at").fetchall()
    finally:
        con.close()
    return [(r[0], int(total[0]) if total else 0) for r in rows]


@pytest.mark.slow
def test_served_flow_runs_on_schedule(prefect_server: str, demo_config: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "prefect-client"),
               PREFECT_RUNNER_POLL_FREQUENCY="2", PREFECT_LOGGING_LEVEL="WARNING")
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    serving = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "serve", "-c", str(demo_config), "--interval-seconds", "15"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    db = tmp_path / "demo.duckdb"
    try:
        deadline = time.monotonic() + 110
        runs: list[tuple[str, int]] = []
        while len(runs) < 2:
            assert serving.poll() is None, f"monitor serve exited: {log_path.read_text()[-3000:]}"
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than 2 scheduled runs in time ({runs}); serve log: "
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(2)
            runs = _ok_runs(db)
        # the flow run turns COMPLETED (and its artifact appears) just after the snapshot is published
        for _ in range(30):
            flow_runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}, timeout=10).json()
            scheduled = [r for r in flow_runs if r["auto_scheduled"] and r["deployment_id"]]
            artifacts = httpx.post(f"{prefect_server}/artifacts/filter", json={
                "artifacts": {"key": {"any_": ["ingest-run"]}}}, timeout=10).json()
            reported = {run_id for run_id, _ in runs if any(run_id in str(a["data"]) for a in artifacts)}
            if len(scheduled) >= 2 and len(reported) == len(runs):
                break
            time.sleep(1)
    finally:
        _stop(serving, signal.SIGINT, 40)
        log.close()
    assert serving.returncode is not None
    assert runs[0][1] > 0, "the first scheduled run stored articles"
    assert len(scheduled) >= 2, f"completed runs that the scheduler created: {len(scheduled)}"
    assert {r["parameters"]["config_dir"] for r in scheduled} == {str(demo_config.resolve())}
    assert reported == {run_id for run_id, _ in runs}, "every stored run left its markdown artifact"


def test_each_run_leaves_a_runs_row_and_a_markdown_artifact(prefect_harness: None, demo_config: Path,
                                                           tmp_path: Path) -> None:
    from flows.ingest import ingest
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from monitor.store import open_store

    stats = ingest(str(demo_config))
    with open_store(tmp_path / "demo.duckdb", read_only=True) as store:
        row = store.con.execute("SELECT status, articles_stored, developments FROM run_history "
                                "WHERE run_id = ?", [stats["run_id"]]).fetchone()
    assert row == ("ok", sum(stats["statuses"].values()), stats["developments"])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-run"])))
    mine = [a for a in artifacts if stats["run_id"] in str(a.data)]
    assert len(mine) == 1 and mine[0].type == "markdown"
    text = str(mine[0].data)
    assert "| links found | new | fetched | stored | failed | developments | alerts |" in text
    for sid, s in stats["sources"].items():
        assert f"| {sid} | {s['links']} | {s['new']} | {s['fetched']} | {s['stored']} | {s['failed']} |" in text
    assert f"developments: {stats['developments']}" in text
