"""Run every file of the feed/sitemap corpus (../shared/evaldata/feeds) through our discovery code.

Prints files, links, warnings and errors per corpus, the number of crashes (exceptions that escaped
`parse_source_document`, or its "parser failed" safety net), and agreement with the fixtures'
expected outputs where they exist:

- feed-rs `*.serde.json`: entry count (entries with an http(s) link) and the set of entry titles;
- rss-parser `output/*.json`: item count (items with a link) and titles;
- feedparser `Expect:` lines: a file expected to be `bozo` must carry a warning (ill-formed).

Usage: .venv/bin/python bench/feeds.py [corpus-dir]   (the test imports `run_corpus`)
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.config import SourceConfig
from monitor.sources import clean_text, parse_source_document

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "evaldata" / "feeds"
BASE = "https://corpus.example/feed"
SOURCE = SourceConfig(id="corpus", url=BASE, kind="auto", allow_offsite=True)
_HEADER = re.compile(rb"^Header:\s*Content-type:\s*(.+?)\s*$", re.I | re.M)
_EXPECT = re.compile(rb"^Expect:\s*(.+?)\s*$", re.M)
_SKIP_SUFFIXES = (".serde.json", ".txt")


@dataclass
class Check:
    name: str
    agree: bool
    detail: str = ""


@dataclass
class Report:
    files: int = 0
    links: int = 0
    follow: int = 0
    warnings: int = 0
    errors: int = 0
    crashes: list[str] = field(default_factory=list)
    by_corpus: dict[str, Counter[str]] = field(default_factory=dict)
    checks: dict[str, list[Check]] = field(default_factory=dict)
    seconds: float = 0.0

    def agreement(self, kind: str) -> float:
        got = self.checks.get(kind, [])
        return sum(c.agree for c in got) / len(got) if got else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "links": self.links, "follow": self.follow,
            "warnings": self.warnings, "errors": self.errors, "crashes": len(self.crashes),
            "crash_files": self.crashes[:20], "seconds": round(self.seconds, 2),
            "by_corpus": {k: dict(v) for k, v in sorted(self.by_corpus.items())},
            "agreement": {k: {"checked": len(v), "agree": sum(c.agree for c in v),
                              "ratio": round(self.agreement(k), 4),
                              "disagreements": [f"{c.name}: {c.detail}" for c in v if not c.agree][:10]}
                          for k, v in sorted(self.checks.items())},
        }


def corpus_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(("LICENSE", "SOURCE"))
                  and not p.name.endswith(_SKIP_SUFFIXES) and "rss-parser/output" not in p.as_posix())


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _titles(values: list[str | None]) -> Counter[str]:
    return Counter(t for t in (clean_text(v, 500) for v in values) if t)


def _expected_feed_rs(path: Path) -> tuple[int, Counter[str]] | None:
    exp = path.with_name(path.name.rsplit(".", 1)[0] + ".serde.json")
    if not exp.exists():
        return None
    data = json.loads(_text(exp.read_bytes()))
    entries = [e for e in data.get("entries", [])
               if any(str(ln.get("href", "")).strip().startswith(("http://", "https://", "/"))
                      for ln in e.get("links", []))]
    return len(entries), _titles([(e.get("title") or {}).get("content") for e in entries])


def _expected_rss_parser(path: Path) -> tuple[int, Counter[str]] | None:
    exp = path.parent.parent / "output" / (path.stem + ".json")
    if not exp.exists():
        return None
    items = json.loads(_text(exp.read_bytes())).get("feed", {}).get("items", [])
    items = [i for i in items if isinstance(i.get("link"), str) and i["link"].strip()]
    return len(items), _titles([i.get("title") if isinstance(i.get("title"), str) else None for i in items])


def _compare(name: str, got_links: list[Any], expected: tuple[int, Counter[str]]) -> Check:
    n, titles = expected
    got = _titles([ln.title for ln in got_links])
    if len(got_links) != n:
        return Check(name, False, f"{len(got_links)} links, expected {n}")
    missing = titles - got
    if missing:
        return Check(name, False, f"titles differ, e.g. {next(iter(missing))[:60]!r}")
    return Check(name, True)


def run_corpus(root: Path = DEFAULT_CORPUS) -> Report:
    report = Report()
    started = time.monotonic()
    for path in corpus_files(root):
        rel = path.relative_to(root).as_posix()
        corpus = rel.split("/", 1)[0]
        counts = report.by_corpus.setdefault(corpus, Counter())
        raw = path.read_bytes()
        m = _HEADER.search(raw[:2000])
        ctype = m.group(1).decode("ascii", "replace") if m else None
        report.files += 1
        counts["files"] += 1
        try:
            res = parse_source_document(SOURCE, raw, BASE, ctype)
        except Exception as exc:  # what the corpus exists to find
            report.crashes.append(f"{rel}: {type(exc).__name__}: {exc}")
            continue
        if res.error and res.error.startswith("parser failed"):
            report.crashes.append(f"{rel}: {res.error}")
        report.links += len(res.links)
        report.follow += len(res.follow)
        report.warnings += len(res.warnings)
        report.errors += res.error is not None
        counts["links"] += len(res.links)
        counts["warnings"] += len(res.warnings)
        counts["errors"] += res.error is not None
        _check(report, rel, path, raw, res)
    report.seconds = time.monotonic() - started
    return report


def _check(report: Report, rel: str, path: Path, raw: bytes, res: Any) -> None:
    if rel.startswith("feed-rs/"):
        exp = _expected_feed_rs(path)
        if exp is not None:
            report.checks.setdefault("feed-rs", []).append(_compare(rel, res.links, exp))
    elif rel.startswith("rss-parser/"):
        exp = _expected_rss_parser(path)
        if exp is not None:
            report.checks.setdefault("rss-parser", []).append(_compare(rel, res.links, exp))
    elif rel.startswith("feedparser/"):
        m = _EXPECT.search(raw[:3000])
        expect = m.group(1).decode("utf-8", "replace") if m else ""
        if re.match(r"^\s*bozo\b", expect):
            flagged = bool(res.warnings) or res.error is not None
            report.checks.setdefault("feedparser-illformed-flagged", []).append(
                Check(rel, flagged, "" if flagged else "ill-formed but no warning"))


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS
    if not root.exists():
        sys.exit(f"corpus not found: {root}")
    report = run_corpus(root)
    out = report.as_dict()
    print(json.dumps(out, indent=2, ensure_ascii=False))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "feeds.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
