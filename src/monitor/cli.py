"""The `monitor` command: verbs over the pipeline; typed errors become one-line messages."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.errors import ConfigError, MonitorError, mask_secrets

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Watch news sources and tell analysts what is new about the stories they track.")
topics_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help="Check and try topic queries.")
app.add_typer(topics_app, name="topics")
alerts_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help="Try alert channels.")
app.add_typer(alerts_app, name="alerts")
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Config folder (monitor.toml, sources.toml)")]
DEFAULT_CONFIG = Path(os.environ.get("MONITOR_CONFIG", "config"))


def quiet_prefect(log_dir: Path) -> None:
    """Send Prefect's own logging to a file: the terminal shows progress and the summary only."""
    log_dir.mkdir(parents=True, exist_ok=True)
    from monitor import logging_setup

    logging_setup.configure(log_dir / "monitor.log")


@contextmanager
def progress_reporter(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    if not enabled:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=False) as prog:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=max(total, 1))
            prog.update(tasks[stage], completed=done if total else 1, total=max(total, 1))

        yield report


def summary_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"Run {stats['run_id']}", title_justify="left")
    for col in ("source", "links", "new", "fetched", "stored", "failed", "note"):
        table.add_column(col, justify="right" if col not in ("source", "note") else "left")
    for sid, s in sorted(stats["sources"].items()):
        note = s.get("skipped") or s.get("error") or (f"{s['warnings']} warnings" if s.get("warnings") else "")
        table.add_row(sid, str(s["links"]), str(s["new"]), str(s["fetched"]), str(s["stored"]),
                      str(s["failed"]), mask_secrets(note or "")[:70])
    return table


def print_summary(stats: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        console.print_json(json.dumps(stats, default=str))
        return
    if fmt == "quiet":
        return
    console.print(summary_table(stats))
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats["statuses"].items())) or "none"
    console.print(f"articles stored: {sum(stats['statuses'].values())} ({statuses})")
    console.print(f"tagged: {stats['tagged']}   developments: {stats['developments']}   "
                  f"alerts: {stats['alerts_sent']} sent, {stats['alerts_pending']} pending, "
                  f"{stats['alerts_failed']} failed   time: {stats['seconds']}s")
    console.print(f"database:  {stats['database']}")
    console.print(f"dashboard: {stats['dashboard']}")


def error_line(exc: BaseException) -> str:
    """One terminal line for an error: OS errors name the path they hit; secrets are masked."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return "error: " + mask_secrets(" ".join(text.splitlines()))


def fail(exc: BaseException) -> None:
    if os.environ.get("MONITOR_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    typer.echo(error_line(exc), err=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def run_cycle(config: Path, fmt: str, log_dir: Path | None = None) -> dict[str, Any]:
    from monitor.config import load_settings

    settings = load_settings(config)  # validate before starting anything
    quiet_prefect(log_dir or settings.db_path.parent / "logs")
    from flows.ingest import run_once

    with progress_reporter(fmt == "table" and sys.stderr.isatty()) as report:
        stats = run_once(str(config), progress=report)
    if stats.get("skipped") and fmt != "json":
        err_console.print(stats["skipped"], markup=False)
        return stats
    print_summary(stats, fmt)
    return stats


FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table | json | quiet")]


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG, fmt: FormatOpt = "table") -> None:
    """Run one monitoring cycle over every source."""
    try:
        run_cycle(config, fmt)
    except MonitorError as exc:
        fail(exc)


@app.command()
def demo(fmt: FormatOpt = "table",
         config: Annotated[Path, typer.Option("--config", "-c")] = Path("config/demo")) -> None:
    """Offline demo: serve the bundled news site on 127.0.0.1 and run one real cycle against it."""
    from monitor.demo.runner import run_demo

    try:
        run_demo(config, fmt)
    except MonitorError as exc:
        fail(exc)


@app.command()
def check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Validate the config folder (monitor.toml, sources.toml, topics.toml)."""
    from monitor.config import load_settings
    from monitor.topics import check_topics

    try:
        settings = load_settings(config)
        problems = check_topics(settings.topics, str(settings.config_dir / settings.monitor.topics_file))
    except MonitorError as exc:
        fail(exc)
        return
    for p in problems:
        typer.echo(mask_secrets(p), err=True)
    if problems:
        raise typer.Exit(2)
    console.print(f"ok: {len(settings.sources)} sources, {len(settings.topics)} topics, "
                  f"{len(settings.monitor.alerts.channels)} alert channels")


@alerts_app.command("test")
def alerts_test(channel: Annotated[str, typer.Argument(help="A channel name from [[alerts.channels]]")],
                config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Send a sample message to one channel and print the service's answer (the URL stays masked)."""
    from monitor.alerts import send_test
    from monitor.config import load_settings
    from monitor.errors import mask_url

    try:
        settings = load_settings(config)
        ch = next((c for c in settings.monitor.alerts.channels if c.name == channel), None)
        answer = send_test(settings.monitor.alerts, channel)
    except MonitorError as exc:
        fail(exc)
        return
    where = mask_url(ch.url) if ch else "?"
    console.print(mask_secrets(f"{channel} ({ch.type if ch else '?'}, {where}): HTTP {answer.status} "
                               f"{answer.text}"), markup=False, highlight=False)


@topics_app.command("check")
def topics_check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Validate every topic query; report syntax errors with topic and position."""
    check(config)


@topics_app.command("try")
def topics_try(target: Annotated[str, typer.Argument(help="An article URL or a local HTML/text file")],
               config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Show, for one article, each topic's result and why it matched."""
    from monitor.config import load_settings
    from monitor.topics import TopicSet, explain_text

    try:
        settings = load_settings(config)
        topics = TopicSet.compile(settings.topics)
        title, text, lang = _load_article(target, settings)
    except MonitorError as exc:
        fail(exc)
        return
    matches = {m.topic: m for m in topics.tag("try", title, text, lang)}
    console.print(f"[bold]{title or '(no title)'}[/bold]  lang={lang or '?'}  words={len((text or '').split())}",
                  highlight=False)
    table = Table(show_lines=True)
    for col in ("topic", "match", "score", "why"):
        table.add_column(col)
    for t in settings.topics:
        m = matches.get(t.id)
        table.add_row(t.id, "yes" if m else "no", f"{m.score:g}" if m else "",
                      explain_text(m.explanation) if m else "")
    console.print(table)


def _load_article(target: str, settings: Any) -> tuple[str | None, str | None, str | None]:
    """Title, text and language of a URL (fetched politely) or a local file (HTML or plain text)."""
    from monitor.extract import ExtractInput, detect_language, extract_one

    if target.startswith(("http://", "https://")):
        from monitor.fetch import FetchRequest, fetch_all

        res = fetch_all(settings.monitor.fetch, [FetchRequest(target)])[0]
        if not res.ok:
            raise MonitorError(f"cannot fetch {target}: {res.error}")
        out = extract_one(ExtractInput(target, res.content or b"", res.content_type), min_words=0)
        return out.title, out.text, out.lang
    path = Path(target)
    if not path.is_file():
        raise MonitorError(f"no such file: {target}")
    raw = path.read_bytes()
    if path.suffix.lower() in (".html", ".htm") or raw.lstrip()[:1] == b"<":
        out = extract_one(ExtractInput(path.resolve().as_uri(), raw, "text/html"), min_words=0)
        return out.title, out.text, out.lang
    body = raw.decode("utf-8", "replace").strip()
    first, _, rest = body.partition("\n")
    lang, _conf = detect_language(body)
    return first.strip(), rest.strip() or first, lang


@app.command()
def dashboard(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Render the dashboard HTML from the analyst snapshot (never blocks a running cycle)."""
    from monitor.config import load_settings
    from monitor.dashboard import render_dashboard
    from monitor.query import AnalystSession

    try:
        settings = load_settings(config)
        with AnalystSession(settings.db_path) as session:
            out = render_dashboard(session.con, settings.resolve(settings.monitor.dashboard.path),
                                   days=settings.monitor.dashboard.days)
    except MonitorError as exc:
        fail(exc)
        return
    console.print(f"dashboard: {out}")


# ---- serve, sql, search, status (issue 8) ------------------------------------------------------

SqlFormatOpt = Annotated[str, typer.Option("--format", "-f", help="table | csv | json | parquet")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write the export to this file")]
DbOpt = Annotated[Path | None, typer.Option("--db", envvar="MONITOR_DB",
                                            help="The pipeline database (default: storage.path in monitor.toml)")]


def analyst_db(config: Path, db: Path | None) -> tuple[Path, Path | None]:
    """(database path, config folder) for read-only commands.

    Analysts need only the storage path: when the config cannot be fully loaded (a webhook secret
    that only the scheduler's environment has), `storage.path` is read from monitor.toml as written."""
    import tomllib

    from monitor.config import load_settings

    if db is not None:
        return db.expanduser().resolve(), config if config.is_dir() else None
    try:
        settings = load_settings(config)
        return settings.db_path, settings.config_dir
    except ConfigError as exc:
        try:
            raw = tomllib.loads((config / "monitor.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            raise exc from None
        path = str(raw.get("storage", {}).get("path", "data/monitor.duckdb"))
        if "${" in path:
            raise exc from None
        return Path(path).expanduser().resolve(), config.resolve()


@app.command()
def serve(config: ConfigOpt = DEFAULT_CONFIG,
          interval_seconds: Annotated[int | None, typer.Option(
              "--interval-seconds", help="Override the schedule: every N seconds (tests, demos)")] = None,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Prefect logs to the log file only")] = False,
          ) -> None:
    """Serve the ingest (and digest) flows on the schedule in monitor.toml (needs a Prefect server)."""
    from monitor.config import load_settings

    try:
        settings = load_settings(config)
        if quiet:
            quiet_prefect(settings.db_path.parent / "logs")
        from flows.serve import serve_monitor

        serve_monitor(config, interval_seconds=interval_seconds, announce=err_console.print)
    except MonitorError as exc:
        fail(exc)


def _result_table(result: Any) -> Table:
    table = Table(show_lines=False)
    for col in result.columns:
        table.add_column(col, overflow="fold", max_width=60)
    for row in result.rows():
        table.add_row(*(_cell_text(v) for v in row))
    return table


def _cell_text(value: Any) -> str:
    from datetime import datetime

    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return mask_secrets(str(value))[:300]


def _emit(result: Any, fmt: str, output: Path | None, what: str) -> None:
    from monitor.query import FORMATS, write_result

    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
    if fmt == "table":
        console.print(_result_table(result))
    elif output is not None:
        with output.open("wb") as fh:
            write_result(result, fmt, fh)
    elif fmt == "parquet":
        raise typer.BadParameter("parquet needs --output FILE")
    else:
        write_result(result, fmt, sys.stdout.buffer)
        sys.stdout.flush()
    cap = " (row cap reached: raise it with --max-rows)" if result.truncated else ""
    where = f" -> {output}" if output else ""
    if fmt == "table" or output is not None:
        err_console.print(f"{result.table.num_rows} {what}{cap} in {result.seconds} s{where}", markup=False)


@app.command()
def sql(query: Annotated[str | None, typer.Argument(
            help="SQL, or the name of a query in dashboards/ or config/queries/; none: interactive prompt")] = None,
        config: ConfigOpt = DEFAULT_CONFIG, fmt: SqlFormatOpt = "table", output: OutputOpt = None,
        max_rows: Annotated[int, typer.Option("--max-rows", help="Row cap (0: none)")] = 10_000,
        timeout: Annotated[float, typer.Option("--timeout", help="Time limit per query, seconds")] = 60.0,
        list_queries: Annotated[bool, typer.Option("--list", help="List the named queries")] = False,
        db: DbOpt = None) -> None:
    """Read-only SQL on the analyst snapshot (it never blocks a running cycle)."""
    from monitor.query import AnalystSession, describe_queries, query_dirs, repl, resolve

    try:
        db_path, config_dir = analyst_db(config, db)
        dirs = query_dirs(config_dir)
        if list_queries:
            for name, title, path in describe_queries(dirs):
                console.print(f"{name:<24} {title}  [dim]{path}[/dim]")
            return
        with AnalystSession(db_path, max_rows=max_rows, timeout_s=timeout) as session:
            if query is None:
                _interactive(session, dirs, repl)
                return
            _emit(session.query(resolve(query, dirs)), fmt, output, "rows")
    except MonitorError as exc:
        fail(exc)


def _interactive(session: Any, dirs: Any, repl: Any) -> None:
    import contextlib

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())

    def show(result: Any) -> None:
        _emit(result, "table", None, "rows")

    repl(session, input, show, lambda text: err_console.print(text, markup=False), dirs)


@app.command()
def search(text: Annotated[str, typer.Argument(help="Words to find (BM25 ranking; accents and case ignored)")],
           config: ConfigOpt = DEFAULT_CONFIG,
           lang: Annotated[str | None, typer.Option("--lang", help="Only articles in this language")] = None,
           limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
           fmt: SqlFormatOpt = "table", output: OutputOpt = None, db: DbOpt = None) -> None:
    """Full-text search over stored articles (DuckDB fts, on the analyst snapshot)."""
    from monitor.query import AnalystSession
    from monitor.query import search as run_search

    try:
        db_path, _ = analyst_db(config, db)
        with AnalystSession(db_path) as session:
            _emit(run_search(session, text, lang=lang, limit=limit), fmt, output, "articles")
    except MonitorError as exc:
        fail(exc)


@app.command()
def status(config: ConfigOpt = DEFAULT_CONFIG,
           last: Annotated[int, typer.Option("--last", "-n", help="How many runs")] = 10,
           fmt: FormatOpt = "table", db: DbOpt = None) -> None:
    """Last runs and source health (from the analyst snapshot), and whether a run is in flight.

    Exit code 1 when the last run failed or a source is failing (for scripts: `--format quiet`)."""
    from dataclasses import asdict

    from monitor.ops import read_status
    from monitor.query import AnalystSession
    from monitor.snapshot import snapshot_path

    try:
        db_path, _ = analyst_db(config, db)
        with AnalystSession(db_path) as session:
            st = read_status(session.con, db_path, snapshot_path(db_path), last)
    except MonitorError as exc:
        fail(exc)
        return
    if fmt == "json":
        console.print_json(json.dumps(asdict(st), default=str))
    elif fmt != "quiet":
        _print_status(st)
    unhealthy = (st.runs and st.runs[0]["status"] == "failed") or any(
        (s["consecutive_failures"] or 0) > 0 for s in st.sources)
    if unhealthy:
        raise typer.Exit(1)


def _print_status(st: Any) -> None:
    flight = f"a run is in flight ({st.in_flight.describe()})" if st.in_flight else "no run in flight"
    console.print(f"{flight}; snapshot published {st.snapshot_published or 'never'}", markup=False)
    runs = Table(title="Last runs", title_justify="left")
    for col in ("run", "started", "status", "seconds", "stored", "failed", "developments", "alerts sent"):
        runs.add_column(col)
    for r in st.runs:
        runs.add_row(r["run_id"], f"{r['started_at']:%Y-%m-%d %H:%M:%S}" if r["started_at"] else "",
                     r["status"] or "", str(r["seconds"] or ""), str(r["articles_stored"]), str(r["failed"]),
                     str(r["developments"]), str(r["alerts_sent"] if r["alerts_sent"] is not None else ""))
    console.print(runs)
    health = Table(title="Source health", title_justify="left")
    for col in ("source", "last success", "last new article", "failures", "polls", "avg ms", "last error"):
        health.add_column(col)
    for s in st.sources:
        health.add_row(s["id"], f"{s['last_success']:%Y-%m-%d %H:%M}" if s["last_success"] else "never",
                       f"{s['last_new_article']:%Y-%m-%d %H:%M}" if s["last_new_article"] else "never",
                       str(s["consecutive_failures"] or 0), str(s["polls"] or 0),
                       str(s["avg_latency_ms"] or ""), mask_secrets(s["last_error"] or "")[:60])
    console.print(health)


def _stored_flow(name: str, config: Path, fmt: str) -> None:
    """Run flows/reprocess.py's `reprocess` or `retag` on the configured database (no fetching)."""
    from monitor.config import load_settings

    try:
        settings = load_settings(config)
        quiet_prefect(settings.db_path.parent / "logs")
        from flows import reprocess as flows_reprocess

        from monitor.ops import prefect_api

        with prefect_api():
            stats = getattr(flows_reprocess, name)(str(config))
    except MonitorError as exc:
        fail(exc)
        return
    if fmt == "json":
        console.print_json(json.dumps(stats, default=str))
    elif fmt != "quiet":
        for key, value in stats.items():
            console.print(f"{key}: {value}", markup=False)


@app.command()
def reprocess(config: ConfigOpt = DEFAULT_CONFIG, fmt: FormatOpt = "table") -> None:
    """Re-extract stored articles from their stored HTML, re-tag and re-detect (no fetching)."""
    _stored_flow("reprocess", config, fmt)


@app.command()
def retag(config: ConfigOpt = DEFAULT_CONFIG, fmt: FormatOpt = "table") -> None:
    """Re-evaluate the current topics on stored articles; log topics added/removed in retag_log."""
    _stored_flow("retag", config, fmt)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # a data or log folder that is full, read-only or not a folder
        try:
            fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("MONITOR_DEBUG"):
            raise
        typer.echo(f"error: internal error: {type(exc).__name__}: {mask_secrets(str(exc))[:300]} "
                   "(run with MONITOR_DEBUG=1 for the traceback)", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
