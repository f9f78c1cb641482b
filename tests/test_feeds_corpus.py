"""Every file of ../shared/evaldata/feeds through our discovery code: zero crashes, and agreement with
the fixtures' expected outputs (feed-rs, rss-parser) above a floor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "evaldata" / "feeds"
BENCH = Path(__file__).resolve().parents[1] / "bench" / "feeds.py"


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_feeds", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_feeds"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not CORPUS.exists(), reason=f"feed corpus not found at {CORPUS} (../shared next to the repo)")
def test_corpus_zero_crashes_and_agreement() -> None:
    report = _bench().run_corpus(CORPUS)  # type: ignore[attr-defined]
    summary = report.as_dict()
    print({k: summary[k] for k in ("files", "links", "warnings", "errors", "crashes")})
    print(summary["agreement"])
    assert report.files > 2000
    assert report.crashes == []
    assert report.links > 1500
    checks = report.checks
    assert len(checks["feed-rs"]) >= 60 and report.agreement("feed-rs") >= 0.9
    assert len(checks["rss-parser"]) >= 25 and report.agreement("rss-parser") >= 0.9
    assert len(checks["feedparser-illformed-flagged"]) >= 15
    assert report.agreement("feedparser-illformed-flagged") == 1.0
