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


def fail(exc: BaseException) -> None:
    if os.environ.get("MONITOR_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {mask_secrets(str(exc))}", err=True)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def run_cycle(config: Path, fmt: str, log_dir: Path | None = None) -> dict[str, Any]:
    from monitor.config import load_settings

    settings = load_settings(config)  # validate before starting anything
    quiet_prefect(log_dir or settings.db_path.parent / "logs")
    from flows.ingest import run_once

    with progress_reporter(fmt == "table" and sys.stderr.isatty()) as report:
        stats = run_once(str(config), progress=report)
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
        out = extract_one(ExtractInput(path.as_uri(), raw, "text/html"), min_words=0)
        return out.title, out.text, out.lang
    body = raw.decode("utf-8", "replace").strip()
    first, _, rest = body.partition("\n")
    lang, _conf = detect_language(body)
    return first.strip(), rest.strip() or first, lang


@app.command()
def dashboard(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Render the dashboard HTML from the database."""
    from monitor.config import load_settings
    from monitor.dashboard import render_dashboard
    from monitor.store import open_store

    try:
        settings = load_settings(config)
        with open_store(settings.db_path, read_only=True) as store:
            out = render_dashboard(store.con, settings.resolve(settings.monitor.dashboard.path))
    except MonitorError as exc:
        fail(exc)
        return
    console.print(f"dashboard: {out}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
