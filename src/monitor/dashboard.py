"""Dashboard: run the SQL files in `dashboards/` read-only and render one self-contained HTML file.

The page needs no network: styles and scripts are inline. Every value from articles is escaped and
only http(s) links become links (a `javascript:` URL from a hostile feed stays text).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dashboards"


@dataclass(slots=True)
class Panel:
    name: str
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def safe_link(url: Any, label: Any) -> str:
    text = html.escape(str(label if label not in (None, "") else url or ""))
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return f'<a href="{html.escape(url, quote=True)}" rel="noopener noreferrer">{text}</a>'
    return text


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return html.escape(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M"))
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape(str(value))


def load_queries(folder: Path) -> list[tuple[str, str, str]]:
    """(name, title, sql) for each `*.sql` in name order; the first line `-- title: ...` names it."""
    out = []
    for p in sorted(folder.glob("*.sql")):
        sql = p.read_text(encoding="utf-8")
        first = sql.splitlines()[0] if sql else ""
        title = first.split("title:", 1)[1].strip() if "title:" in first else p.stem
        out.append((p.stem, title, sql))
    return out


def run_panels(con: Any, folder: Path) -> list[Panel]:
    panels = []
    for name, title, sql in load_queries(folder):
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        panels.append(Panel(name, title, cols, cur.fetchall()))
    return panels


def render_table(panel: Panel) -> str:
    cols = [c for c in panel.columns if c not in ("url",)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in panel.rows:
        rec = dict(zip(panel.columns, row, strict=True))
        tds = []
        for c in cols:
            if c == "title" and "url" in rec:
                tds.append(f"<td>{safe_link(rec['url'], rec['title'])}</td>")
            else:
                tds.append(f"<td>{cell(rec[c])}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    empty = "" if panel.rows else f'<tr><td colspan="{len(cols)}">nothing yet</td></tr>'
    return (f'<section id="{html.escape(panel.name)}"><h2>{html.escape(panel.title)}</h2>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}{empty}</tbody></table></section>")


CSS = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;
width:100%;margin-bottom:2rem;font-size:.9rem}th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}h1{font-size:1.4rem}h2{font-size:1.1rem}"""


def render_html(panels: list[Panel], generated_at: datetime) -> str:
    sections = "\n".join(render_table(p) for p in panels)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>News monitor</title><style>{CSS}</style></head><body>"
        f"<h1>News monitor</h1><p>Generated {cell(generated_at)} UTC</p>{sections}</body></html>"
    )


def render_dashboard(con: Any, out_path: Path, folder: Path | None = None) -> Path:
    """Render the dashboard of the database behind `con` into `out_path` (written atomically)."""
    panels = run_panels(con, folder or DEFAULT_DIR)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(render_html(panels, datetime.now(UTC)), encoding="utf-8")
    tmp.replace(out_path)
    return out_path
