"""The Prefect API a one-off run starts for itself (monitor.ops.prefect_api), in real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, sys, time
from prefect import flow, get_client, task
from monitor.ops import prefect_api

@task
def half(n: int) -> int:
    return n // 2

@flow(name="probe")
def probe() -> int:
    return half.submit(82).result() + 1

with prefect_api() as url:
    result = probe()
    with get_client(sync_client=True) as client:
        runs = [r.name for r in client.read_flow_runs()]
        for _ in range(50):  # the task run recorder writes task runs from their events, a moment later
            task_runs = client.read_task_runs()
            if task_runs:
                break
            time.sleep(0.2)
    server_code_here = "prefect.server.api.server" in sys.modules
with prefect_api(startup_s=0.0) as late:  # an API that does not answer in time: Prefect's own mode then
    pass
print(json.dumps({"url": url, "result": result, "runs": len(runs), "task_runs": len(task_runs),
                  "server_code_here": server_code_here,
                  "late": late}))
"""


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def test_a_run_without_an_api_url_gets_an_ephemeral_api_without_importing_the_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING")
    out = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["url"] and got["url"].startswith("http://127.0.0.1:")
    assert got["result"] == 42 and got["runs"] == 1  # the flow run is recorded on that API
    assert got["task_runs"] == 1  # and its task run: the services left off are not the task run recorder
    assert got["server_code_here"] is False  # the ~70 MB of server code stayed in the server's process
    assert got["late"] is None
    assert "ephemeral Prefect API did not answer within 0s" in out.stderr  # and the run says so
    assert not _port_open(got["url"])  # and the server was stopped with the run


def test_a_configured_api_is_used_as_it_is(prefect_harness: None) -> None:
    from prefect.settings import PREFECT_API_URL

    from monitor.ops import prefect_api

    before = PREFECT_API_URL.value()
    with prefect_api() as url:
        assert url is None
        assert PREFECT_API_URL.value() == before


def test_the_ephemeral_api_leaves_unused_services_off_unless_the_user_turns_them_on() -> None:
    from monitor.ops import ephemeral_api_env

    env = ephemeral_api_env({"PATH": "/bin"}, {})
    assert env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] == "false"
    assert env["PREFECT__SERVER_EPHEMERAL"] == "1" and env["PATH"] == "/bin"
    mine = ephemeral_api_env({"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true"},
                             {"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true"})
    assert mine["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "true"  # the environment wins
    assert mine["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] == "true"  # and so does the profile
