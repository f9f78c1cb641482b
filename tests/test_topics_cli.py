"""`monitor topics check` and `monitor topics try` through the real CLI app."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import app

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seeds" / "000_b15008eb12104f57.txt"
SEED_PAGE = ROOT / "src" / "monitor" / "demo" / "site" / "nusantara" / "berita" / "rencana-perdamaian-28-poin.html"


def _table_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 2 and cells[0] and cells[1] in ("yes", "no"):
            rows[cells[0]] = cells[1]
    return rows


def test_try_on_the_seed_page_explains_the_match() -> None:
    res = CliRunner().invoke(app, ["topics", "try", "--config", str(ROOT / "config" / "demo"), str(SEED_PAGE)],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.output)
    assert rows["ukraine-peace-talks"] == "yes" and rows["energy-grid-attacks"] == "no"
    assert "lang=id" in res.output and "Witkoff" in res.output


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seeds is not next to the repository")
def test_try_on_the_plain_text_seed() -> None:
    res = CliRunner().invoke(app, ["topics", "try", "--config", str(ROOT / "config"), str(SEED)],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert _table_rows(res.output)["ukraine-peace-talks"] == "yes"


def test_check_reports_a_syntax_error_with_topic_and_position(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "monitor.toml").write_text("")
    (cfg / "sources.toml").write_text("")
    (cfg / "topics.toml").write_text('[[topics]]\nid = "broken"\nname = "Broken"\nquery = "peace AND (talks"\n')
    res = CliRunner().invoke(app, ["topics", "check", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "broken" in res.output and "position" in res.output
