"""Alert delivery against receivers on 127.0.0.1 that behave like each chat service.

Real DuckDB outbox in tmp_path, real HTTP; the crash test kills a real delivery process with SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor import alerts
from monitor.config import AlertsConfig, ChannelConfig
from monitor.models import Development
from monitor.store import Store, open_store
from receivers import ServiceReceiver

SERVICES = ["slack", "discord", "teams", "googlechat", "mattermost", "generic"]
TOKEN = "secret-token-0123456789"
HOSTILE = "<!channel> @everyone <@U024BE7LH> <script>alert(1)</script> & *bold* " + "word " * 1000
NOW = datetime(2025, 11, 20, 9, 0, tzinfo=UTC)


def _dev(i: int, story: int, title: str | None = None, kind: str = "update") -> Development:
    return Development(id=f"dev{i:03d}", kind=kind, story_id=f"story{story}", topic="peace",  # type: ignore[arg-type]
                       article_id=f"a{i}",
                       score=1.0, what_is_new={"new_facts": {"names": ["Geneva"], "numbers": ["19"]}},
                       compared_with=[], first_seen=NOW, source_id="wire",
                       title=title or f"Story {story}: development {i}", url=f"https://news.example/{i}", lang="en")


def _contexts(devs: list[Development]) -> list[alerts.AlertContext]:
    return [alerts.AlertContext(d, "Peace talks", "Globalwire", NOW, 3, ["de", "en"], "") for d in devs]


def _channel(service: str, recv: ServiceReceiver | str, **kw: Any) -> ChannelConfig:
    base = recv if isinstance(recv, str) else recv.url
    url = f"{base}/services/T000/B000/{TOKEN}"
    return ChannelConfig(name=f"ch-{service}", type=service, url=url, **kw)  # type: ignore[arg-type]


def _cfg(*channels: ChannelConfig, **kw: Any) -> AlertsConfig:
    return AlertsConfig(channels=list(channels), **({"backoff_s": 0.0, "timeout_s": 5.0} | kw))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "alerts.duckdb") as st:
        yield st


def _enqueue(store: Store, cfg: AlertsConfig, devs: list[Development]) -> int:
    return store.enqueue_alerts(alerts.outbox_rows(cfg.channels, _contexts(devs)))


def _states(store: Store) -> dict[str, int]:
    return dict(store.con.execute("SELECT state, count(*) FROM alerts GROUP BY state").fetchall())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _texts(payload: Any) -> list[str]:
    """Every string in a payload (where article text could end up)."""
    if isinstance(payload, dict):
        return [t for v in payload.values() for t in _texts(v)]
    if isinstance(payload, list):
        return [t for v in payload for t in _texts(v)]
    return [payload] if isinstance(payload, str) else []


# ---- shape, escaping, limits --------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_hostile_title_is_delivered_neutralised_and_cut(service: str, store: Store) -> None:
    with ServiceReceiver(service) as recv:
        cfg = _cfg(_channel(service, recv))
        _enqueue(store, cfg, [_dev(1, 1, title=HOSTILE, kind="new_story")])
        report = alerts.deliver_pending(store, cfg)
    assert recv.rejected == [] and report.sent == 1 and len(recv.messages) == 1
    body = recv.messages[0]["body"]
    texts = " ".join(_texts(body))
    if service == "generic":  # the documented schema carries the raw fields; escaping is the receiver's job
        assert body["schema"] == "news-monitor.alert/1" and body["title"] == HOSTILE
        return
    for mention in ("<!channel>", "@everyone", "<@U024BE7LH>"):
        assert mention not in texts
    if service in ("slack", "googlechat"):  # formats that render HTML-like markup (Google Chat cards)
        assert "<script>" not in " ".join(_texts(body.get("cardsV2") or body.get("blocks")))
    assert "word word" in texts and "…" in texts  # delivered, and cut with an ellipsis
    assert len(texts) < len(HOSTILE) * 2
    if service == "slack":
        assert "&lt;!channel&gt;" in texts and "&lt;script&gt;" in texts
    if service == "discord":
        assert body["allowed_mentions"] == {"parse": []}
        assert len(body["embeds"][0]["title"]) <= 256 and body["embeds"][0]["title"].endswith("…")
    if service == "googlechat":
        assert "&lt;script&gt;" in texts
    if service == "teams":
        assert body["attachments"][0]["content"]["type"] == "AdaptiveCard"
    assert recv.messages[0]["headers"]["Idempotency-Key"] == alerts.alert_id("dev001", f"ch-{service}")


@pytest.mark.parametrize("service", SERVICES)
def test_digest_of_50_developments_in_8_stories_is_one_fitting_message(service: str, store: Store) -> None:
    devs = [_dev(i, i % 8, title=f"Story {i % 8} development {i} " + "long words " * 40,
                 kind="new_story" if i < 8 else "update") for i in range(50)]
    with ServiceReceiver(service) as recv:
        cfg = _cfg(_channel(service, recv, mode="digest", digest_cron="0 8 * * *"))
        assert _enqueue(store, cfg, devs) == 50
        assert _states(store) == {"held": 50}
        assert alerts.deliver_pending(store, cfg).sent == 0  # held for the digest
        report = alerts.deliver_digests(store, cfg, force=True)
        again = alerts.deliver_digests(store, cfg, force=True)
    assert recv.rejected == [] and len(recv.messages) == 1  # the receiver checked the service's limits
    assert report.digests == 1 and report.sent == 50 and again.digests == 0
    assert _states(store) == {"sent": 50}
    texts = " ".join(_texts(recv.messages[0]["body"]))
    for story in range(8):
        assert f"Story {story} development {story}" in texts  # every story is in the one message
    body = recv.messages[0]["body"]
    if service == "slack":
        assert len(body["blocks"]) <= 50
    if service == "discord":
        assert alerts.discord_total(body) <= 6000 and len(body["embeds"]) == 8


def test_digest_waits_for_its_schedule(store: Store) -> None:
    with ServiceReceiver("slack") as recv:
        cfg = _cfg(_channel("slack", recv, mode="digest", digest_cron="0 8 * * *"))
        _enqueue(store, cfg, [_dev(1, 1)])
        store.con.execute("UPDATE alerts SET created_at = ?", [datetime(2025, 11, 20, 7, 0, tzinfo=UTC)])
        assert alerts.deliver_digests(store, cfg, datetime(2025, 11, 20, 7, 59, tzinfo=UTC)).digests == 0
        assert alerts.deliver_digests(store, cfg, datetime(2025, 11, 20, 8, 1, tzinfo=UTC)).digests == 1
    assert len(recv.messages) == 1


# ---- failures and retries -----------------------------------------------------------------------


def test_receiver_down_for_a_whole_run_then_up_gets_each_alert_exactly_once(store: Store) -> None:
    port = _free_port()
    cfg = _cfg(_channel("slack", f"http://127.0.0.1:{port}"))
    _enqueue(store, cfg, [_dev(i, i) for i in range(5)])
    down = alerts.deliver_pending(store, cfg)  # connection refused
    assert (down.sent, down.pending) == (0, 5) and _states(store) == {"pending": 5}
    attempts = store.con.execute("SELECT sum(attempts) FROM alerts").fetchone()
    assert attempts == (1,)  # a channel that is down costs one attempt per run, not one per alert
    with ServiceReceiver("slack", port=port) as recv:
        up = alerts.deliver_pending(store, cfg)
        later = alerts.deliver_pending(store, cfg)
    assert (up.sent, later.sent) == (5, 0) and _states(store) == {"sent": 5}
    keys = [m["headers"]["Idempotency-Key"] for m in recv.received]
    assert sorted(keys) == sorted(alerts.alert_id(f"dev{i:03d}", "ch-slack") for i in range(5))


@pytest.mark.parametrize(("service", "headers", "body"), [
    ("slack", {"Retry-After": "0.2"}, b"rate_limited"),
    ("discord", {}, b'{"message": "You are being rate limited.", "retry_after": 0.2, "global": false}'),
    ("googlechat", {"Retry-After": "0"}, b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}'),
])
def test_429_is_waited_out_within_the_run(service: str, headers: dict[str, str], body: bytes,
                                          store: Store) -> None:
    with ServiceReceiver(service) as recv:
        recv.fail_next(1, 429, headers, body)
        cfg = _cfg(_channel(service, recv))
        _enqueue(store, cfg, [_dev(1, 1), _dev(2, 2)])
        report = alerts.deliver_pending(store, cfg)
    assert report.sent == 2 and len(recv.messages) == 2 and _states(store) == {"sent": 2}


def test_long_retry_after_leaves_the_alert_pending_until_then(store: Store) -> None:
    with ServiceReceiver("discord") as recv:
        recv.fail_next(1, 429, {}, b'{"retry_after": 120.0, "global": false}')
        cfg = _cfg(_channel("discord", recv))
        _enqueue(store, cfg, [_dev(1, 1)])
        report = alerts.deliver_pending(store, cfg)
        again = alerts.deliver_pending(store, cfg)  # not due yet
    assert (report.pending, again.sent, len(recv.messages)) == (1, 0, 0)
    wait = store.scalar("SELECT epoch(next_attempt_at - now()) FROM alerts")
    assert 60 < wait <= 120


def test_500_backs_off_and_permanent_4xx_fails(store: Store) -> None:
    with ServiceReceiver("slack") as slack, ServiceReceiver("teams") as teams:
        slack.fail_next(1, 500)
        teams.fail_next(1, 404, body=b"webhook not found")
        cfg = _cfg(_channel("slack", slack), _channel("teams", teams), backoff_s=30.0)
        _enqueue(store, cfg, [_dev(1, 1), _dev(2, 2)])
        report = alerts.deliver_pending(store, cfg)
    rows = dict(store.con.execute(
        "SELECT channel, list(state ORDER BY state) FROM alerts GROUP BY channel").fetchall())
    assert rows == {"ch-slack": ["pending", "pending"], "ch-teams": ["failed", "sent"]}
    assert (report.sent, report.failed, report.pending) == (1, 1, 2)
    err = store.scalar("SELECT last_error FROM alerts WHERE channel = 'ch-slack' AND attempts = 1")
    assert "HTTP 500" in err
    wait = store.scalar("SELECT max(epoch(next_attempt_at - now())) FROM alerts WHERE channel = 'ch-slack'")
    assert 10 < wait <= 30


def test_slow_answer_within_timeout_is_sent_once_and_past_it_is_retried(store: Store) -> None:
    with ServiceReceiver("generic") as recv:
        recv.delay_s = 0.3
        cfg = _cfg(_channel("generic", recv), timeout_s=5.0)
        _enqueue(store, cfg, [_dev(1, 1)])
        assert alerts.deliver_pending(store, cfg).sent == 1
        recv.delay_s = 1.0
        short = _cfg(_channel("generic", recv), timeout_s=0.3)
        _enqueue(store, short, [_dev(2, 2)])
        assert alerts.deliver_pending(store, short).pending == 1  # the answer came too late
        recv.delay_s = 0.0
        assert alerts.deliver_pending(store, short).sent == 1
        assert recv.wait_for(3) == 3
    # the documented duplicate case: the service got the late one and then the retry, same key
    keys = Counter(m["headers"]["Idempotency-Key"] for m in recv.received)
    assert keys[alerts.alert_id("dev001", "ch-generic")] == 1
    assert keys[alerts.alert_id("dev002", "ch-generic")] == 2


def test_generic_webhook_is_signed(store: Store) -> None:
    with ServiceReceiver("generic", secret="s3cr3t-signing-key") as recv:
        good = _cfg(_channel("generic", recv, secret="s3cr3t-signing-key"))
        _enqueue(store, good, [_dev(1, 1)])
        assert alerts.deliver_pending(store, good).sent == 1
        bad = _cfg(ChannelConfig(name="ch-bad", type="generic", url=f"{recv.url}/hook", secret="wrong-key-123"))
        _enqueue(store, bad, [_dev(2, 2)])
        assert alerts.deliver_pending(store, bad).failed == 1  # 401: permanent
    assert len(recv.messages) == 1 and recv.rejected == ["401 bad signature"]
    assert recv.messages[0]["headers"]["X-Monitor-Signature"].startswith("sha256=")


def test_apprise_url_reaches_a_json_endpoint(store: Store) -> None:
    with ServiceReceiver("apprise") as recv:
        cfg = _cfg(ChannelConfig(name="ch-apprise", type="apprise",
                                 url=f"json://127.0.0.1:{recv.port}/hook/{TOKEN}"))
        _enqueue(store, cfg, [_dev(1, 1, title="<!channel> Geneva talks")])
        report = alerts.deliver_pending(store, cfg)
    assert report.sent == 1 and len(recv.messages) == 1
    body = recv.messages[0]["body"]
    assert "Geneva talks" in body["message"] and "<!channel>" not in body["message"]


# ---- crash between sending and recording --------------------------------------------------------

DELIVER = textwrap.dedent("""
    import sys
    from monitor.alerts import deliver_pending
    from monitor.config import AlertsConfig
    from monitor.store import open_store
    cfg = AlertsConfig.model_validate_json(open(sys.argv[2]).read())
    with open_store(sys.argv[1]) as store:
        print(deliver_pending(store, cfg))
""")


@pytest.mark.parametrize("service", ["slack", "googlechat"])
def test_sigkill_between_send_and_record(service: str, tmp_path: Path) -> None:
    db, cfg_file = tmp_path / "crash.duckdb", tmp_path / "alerts.json"
    with ServiceReceiver(service) as recv:
        cfg = _cfg(_channel(service, recv))
        cfg_file.write_text(cfg.model_dump_json())
        with open_store(db) as st:
            _enqueue(st, cfg, [_dev(i, i) for i in range(5)])
        proc: list[subprocess.Popen[bytes]] = []

        def kill_on_third(_: dict[str, Any]) -> None:
            if len(recv.received) == 3:  # the service accepted it; the sender has not recorded it
                os.kill(proc[0].pid, signal.SIGKILL)

        recv.on_accept = kill_on_third
        proc.append(subprocess.Popen([sys.executable, "-c", DELIVER, str(db), str(cfg_file)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        proc[0].wait(timeout=60)
        assert proc[0].returncode == -signal.SIGKILL, proc[0].stderr.read() if proc[0].stderr else ""
        recv.on_accept = None
        with open_store(db) as st:
            assert _states(st) == {"sent": 2, "pending": 3}
            assert alerts.deliver_pending(st, cfg).sent == 3
            assert _states(st) == {"sent": 5}
    keys = Counter(m["headers"]["Idempotency-Key"] for m in recv.received)
    third = recv.received[2]["headers"]["Idempotency-Key"]  # in flight when the sender was killed
    # documented guarantee: every alert arrives; only the one in flight at the crash is sent twice,
    # with the same idempotency key
    assert set(keys) == {alerts.alert_id(f"dev{i:03d}", f"ch-{service}") for i in range(5)}
    assert {k: n for k, n in keys.items() if n > 1} == {third: 2}
    # Google Chat's requestId turns the resend into the same message: the space shows each alert once
    assert len(recv.messages) == (5 if service == "googlechat" else 6)


# ---- secrets ------------------------------------------------------------------------------------


def test_webhook_urls_never_reach_logs_or_output(store: Store, caplog: pytest.LogCaptureFixture,
                                                 capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    with ServiceReceiver("slack") as recv:
        recv.fail_next(5, 404, body=f"no_service for /services/T000/B000/{TOKEN}".encode())
        refused = f"http://127.0.0.1:{_free_port()}"
        cfg = _cfg(_channel("slack", recv), _channel("discord", refused))
        _enqueue(store, cfg, [_dev(1, 1)])
        report = alerts.deliver_pending(store, cfg)
        folder = tmp_path / "cfg"
        folder.mkdir()
        (folder / "monitor.toml").write_text(
            '[[alerts.channels]]\nname = "down"\ntype = "slack"\nurl = "${TEST_HOOK}"\n')
        (folder / "sources.toml").write_text("")
        (folder / "topics.toml").write_text("")
        env = os.environ | {"TEST_HOOK": f"{refused}/services/T000/B000/{TOKEN}"}
        cli = subprocess.run([sys.executable, "-m", "monitor.cli", "alerts", "test", "down", "-c", str(folder)],
                             capture_output=True, text=True, env=env, timeout=60)
    assert report.failed == 1 and report.pending == 1
    errors = [r[0] for r in store.con.execute("SELECT last_error FROM alerts").fetchall()]
    out = capfd.readouterr()
    assert cli.returncode == 1 and "error:" in cli.stderr and "/***" in cli.stderr
    for text in [caplog.text, out.out, out.err, cli.stdout, cli.stderr, *errors]:
        assert TOKEN not in text
    assert "127.0.0.1" in caplog.text  # httpx did log the requests, masked


def test_alerts_test_command_prints_the_service_answer(tmp_path: Path) -> None:
    with ServiceReceiver("googlechat") as recv:
        folder = tmp_path / "cfg"
        folder.mkdir()
        (folder / "monitor.toml").write_text(
            '[[alerts.channels]]\nname = "team-chat"\ntype = "googlechat"\nurl = "${TEST_HOOK}"\n')
        (folder / "sources.toml").write_text("")
        (folder / "topics.toml").write_text("")
        env = os.environ | {"TEST_HOOK": f"{recv.url}/v1/spaces/AAA/messages?key=k&token={TOKEN}"}
        cli = subprocess.run([sys.executable, "-m", "monitor.cli", "alerts", "test", "team-chat", "-c", str(folder)],
                             capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "HTTP 200" in cli.stdout and "spaces/AAA/messages/m1" in cli.stdout and TOKEN not in cli.stdout
    assert len(recv.messages) == 1 and recv.messages[0]["body"]["cardsV2"]
    assert json.dumps(recv.messages[0]["body"]).count("news-monitor test message") >= 1
