"""Config: one pydantic model per file; a wrong file gives one line naming file, key and problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_settings
from monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(folder: Path, monitor: str, sources: str = "", topics: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "monitor.toml").write_text(monitor)
    (folder / "sources.toml").write_text(sources)
    (folder / "topics.toml").write_text(topics)
    return folder


def test_repo_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BASE", "http://127.0.0.1:1")
    monkeypatch.setenv("DEMO_WEBHOOK", "http://127.0.0.1:2/hook")
    s = load_settings(ROOT / "config" / "demo")
    assert len(s.sources) >= 7 and any(t.id == "ukraine-peace-talks" for t in s.topics)
    load_settings(ROOT / "config")


@pytest.mark.parametrize(("monitor", "key", "problem"), [
    ("[fetch]\ntimeout = 3\n", "fetch.timeout", "unknown key"),
    ("[fetch]\nconcurrency = 'many'\n", "fetch.concurrency", "valid integer"),
    ("[fetch]\nper_host = 0\n", "fetch.per_host", "greater than or equal to 1"),
    ("[storage\npath = 1\n", "(syntax)", "line 1"),
    ("[[alerts.channels]]\nname = 'x'\ntype = 'telegraph'\nurl = 'https://h/x'\n", "alerts.channels.0.type",
     "Input should be"),
])
def test_bad_monitor_toml_names_file_key_problem(tmp_path: Path, monitor: str, key: str, problem: str) -> None:
    folder = _write(tmp_path / "cfg", monitor)
    with pytest.raises(ConfigError) as err:
        load_settings(folder)
    assert err.value.file.endswith("monitor.toml")
    assert err.value.key == key
    assert problem in err.value.problem


def test_missing_env_var_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_WEBHOOK", raising=False)
    folder = _write(tmp_path / "cfg", "[[alerts.channels]]\nname = 'a'\ntype = 'slack'\nurl = '${NOPE_WEBHOOK}'\n")
    with pytest.raises(ConfigError, match="NOPE_WEBHOOK is not set"):
        load_settings(folder)


def test_duplicate_source_id(tmp_path: Path) -> None:
    src = "[[sources]]\nid='a'\nurl='https://x.org/f'\n[[sources]]\nid='a'\nurl='https://y.org/f'\n"
    folder = _write(tmp_path / "cfg", "", src)
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(folder)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path) -> None:
    folder = _write(tmp_path / "cfg", "[fetch]\nconcurrency = -3\n")
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "monitor.toml: fetch.concurrency:" in lines[0] and "Traceback" not in proc.stderr


def test_webhook_secret_not_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "https://hooks.slack.com/services/T1/B2/very-secret-token"
    folder = _write(tmp_path / "cfg", "[[alerts.channels]]\nname = 'a'\ntype = 'slack'\nurl = '${HOOK}'\n"
                    "topics = ['nope']\n")
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check", "--config", str(folder)],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                            "HOOK": secret})
    assert proc.returncode == 2
    assert "very-secret-token" not in proc.stdout + proc.stderr
