"""Dashboard: run the SQL files in `dashboards/` and render them into one self-contained HTML file.

This module owns the dashboard's data contract: each `NN_name.sql` becomes the dataset `name`
(rows as JSON objects) embedded in `template.html` together with `dashboard.css`, `dashboard.js` and
plotly.js from the installed plotly package, so the page opens from disk with no network access. The
page's JS filters by topic and date range and builds every view with textContent; a strict CSP
(scripts allowed by hash only) blocks anything injected. Values are made JSON-safe here, URLs that
are not http(s) are dropped, and the JSON block is escaped so no value can close its <script>.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Any

import duckdb

from monitor.errors import OutputError, StoreError

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dashboards"
DEFAULT_DAYS = 30
TITLE = "News monitor"

_HTTP_URL = re.compile(r"https?://[^\s/?#\\]+\S*", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PREFIX = re.compile(r"^\d+[_-]")
# the datasets whose dates bound the date filter, and the columns holding those dates
_DATED = {"developments": ("first_seen",), "topic_volume": ("day",), "stories": ("first_seen", "last_seen")}


@dataclass(slots=True)
class Query:
    name: str
    title: str
    sql: str
    path: Path


@dataclass(slots=True)
class Dataset:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


def safe_url(value: Any) -> str | None:
    """The URL if it is a plain http(s) URL, else None (so `javascript:` and friends never become links)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if _CONTROL.search(url) or not _HTTP_URL.fullmatch(url):
        return None
    return url


def _is_url_column(name: str) -> bool:
    return name == "url" or name.endswith("_url")


def json_value(value: Any) -> Any:
    """A DuckDB value as JSON: timestamps as ISO UTC (`...Z`), dates as `YYYY-MM-DD`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    return str(value)


def load_queries(folder: Path) -> list[Query]:
    """Every `*.sql` in name order; `10_stories.sql` is dataset `stories`, its `-- title:` line names it."""
    out = []
    for p in sorted(folder.glob("*.sql")):
        sql = p.read_text(encoding="utf-8")
        first = sql.splitlines()[0] if sql else ""
        title = first.split("title:", 1)[1].strip() if "title:" in first else p.stem
        out.append(Query(_PREFIX.sub("", p.stem), title, sql, p))
    return out


def run_queries(con: Any, queries: list[Query]) -> list[Dataset]:
    out = []
    for q in queries:
        try:
            cur = con.execute(q.sql)
            cols = [d[0] for d in cur.description]
            raw = cur.fetchall()
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"dashboard query {q.path.name}: {first}") from None
        out.append(Dataset(q.name, q.title, cols, [_record(cols, r) for r in raw]))
    return out


def _record(cols: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    rec = {c: json_value(v) for c, v in zip(cols, row, strict=True)}
    for c in cols:
        if _is_url_column(c):
            rec[c] = safe_url(rec[c])
    return rec


def date_bounds(datasets: list[Dataset], days: int) -> dict[str, str | None]:
    """Earliest and latest day in the dated views; the filter opens on the last `days` days of data."""
    found = sorted(
        str(r[c])[:10]
        for ds in datasets if ds.name in _DATED
        for r in ds.rows for c in _DATED[ds.name] if isinstance(r.get(c), str)
    )
    if not found:
        return {"min": None, "max": None, "default_from": None}
    lo, hi = found[0], found[-1]
    start = (date.fromisoformat(hi) - timedelta(days=days - 1)).isoformat()
    return {"min": lo, "max": hi, "default_from": max(lo, start)}


def topics_of(datasets: list[Dataset]) -> list[str]:
    seen: set[str] = set()
    for ds in datasets:
        for r in ds.rows:
            if isinstance(r.get("topic"), str):
                seen.add(r["topic"])
            seen.update(t for t in (r.get("topics") or []) if isinstance(t, str))
    return sorted(seen)


def build_payload(datasets: list[Dataset], generated_at: datetime, days: int = DEFAULT_DAYS) -> dict[str, Any]:
    return {
        "generated_at": json_value(generated_at),
        "bounds": date_bounds(datasets, days),
        "topics": topics_of(datasets),
        "datasets": {ds.name: {"title": ds.title, "columns": ds.columns, "rows": ds.rows} for ds in datasets},
    }


def embed_json(payload: Any) -> str:
    """JSON that is inert inside a <script> element: no `<`, `>` or `&` can end or open a tag."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def inline_script(code: str) -> str:
    """Code safe to place between <script> tags (a literal `</script` inside it would end the element)."""
    return re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)


def _sha256(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode() + "'"


def content_security_policy(scripts: list[str]) -> str:
    """Nothing may be fetched; only the page's own scripts (by hash) run; inline styles are for plotly."""
    hashes = " ".join(_sha256(s) for s in scripts)
    return (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'")


@lru_cache(maxsize=1)
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return inline_script(get_plotlyjs())


def render_page(payload: dict[str, Any], folder: Path = DEFAULT_DIR, title: str = TITLE) -> str:
    """The HTML page for a payload (the template's placeholders filled, CSP matching its scripts)."""
    template = Template((folder / "template.html").read_text(encoding="utf-8"))
    app_js = inline_script((folder / "dashboard.js").read_text(encoding="utf-8"))
    css = (folder / "dashboard.css").read_text(encoding="utf-8").replace("</", "<\\/")
    lib = plotly_js()
    generated = str(payload.get("generated_at") or "")[:16].replace("T", " ")
    return template.substitute(
        csp=content_security_policy([lib, app_js]), title=_html_text(title), generated=_html_text(generated),
        css=css, data_json=embed_json(payload), plotly_js=lib, app_js=app_js,
    )


def _html_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_dashboard(con: Any, out_path: Path, folder: Path | None = None, days: int = DEFAULT_DAYS) -> Path:
    """Render the dashboard of the database behind `con` into `out_path` (written atomically)."""
    src = folder or DEFAULT_DIR
    datasets = run_queries(con, load_queries(src))
    page = render_page(build_payload(datasets, datetime.now(UTC), days), src)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the dashboard {out_path}: {exc.strerror or exc}") from exc
    return out_path
