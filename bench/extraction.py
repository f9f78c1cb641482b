"""Benchmark extraction through the real fetch → extract path, side by side with raw trafilatura.

Two corpora from ../shared/evaldata (read-only, never copied into the repo):

- scrapinghub-aeb: 181 pages + gold article bodies. Metric as upstream: tokens = regex \\w+, word 4-gram
  shingle multisets, per-page TP/FP/FN, per-page precision and recall, macro-averaged over pages,
  F1 = harmonic mean of the two averages.
- trafilatura-eval: 990 pages with "with" snippets (must appear) and "without" snippets (must not);
  whitespace-normalised substring tests, micro-averaged over all snippets. Also title and date
  accuracy against its metadata (pages whose gold value is not empty).

"ours" = every page served on 127.0.0.1 with `Content-Type: text/html` and no charset, fetched by
monitor.fetch.Fetcher, extracted by monitor.extract.extract_batch in the worker pool.
"raw" = `trafilatura.extract(bytes)` with its defaults on the same bytes (metadata from
`trafilatura.extract_metadata`).

    .venv/bin/python bench/extraction.py [--corpus aeb|tev|both] [--limit N] [--no-raw]

Results go to bench/results/extraction.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from monitor.config import FetchConfig  # noqa: E402
from monitor.demo.servers import BackgroundServer, _QuietHandler  # noqa: E402
from monitor.extract import ExtractInput, ExtractOutput, extract_batch, extraction_pool  # noqa: E402
from monitor.fetch import Fetcher, FetchRequest  # noqa: E402

SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").exists() else Path("/work/shared")
AEB = SHARED / "evaldata" / "scrapinghub-aeb"
TEV = SHARED / "evaldata" / "trafilatura-eval"
RESULTS = ROOT / "bench" / "results" / "extraction.json"
BATCH = 200

# ---- pages ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Page:
    key: str  # id in the corpus
    path: str  # path served on 127.0.0.1
    content: bytes


def aeb_pages(limit: int | None = None) -> tuple[list[Page], dict[str, str]]:
    gold = json.loads((AEB / "ground-truth.json").read_text(encoding="utf-8"))
    keys = sorted(gold)[:limit]
    pages = [Page(k, f"/aeb/{k}.html", gzip.decompress((AEB / "html" / f"{k}.html.gz").read_bytes()))
             for k in keys]
    return pages, {k: gold[k]["articleBody"] for k in keys}


def _tev_file(name: str) -> Path:
    for sub in ("eval", "cache"):
        p = TEV / "html" / sub / f"{name}.gz"
        if p.exists():
            return p
    raise FileNotFoundError(name)


def tev_pages(limit: int | None = None) -> tuple[list[Page], dict[str, dict[str, Any]]]:
    data = json.loads((TEV / "evaldata.json").read_text(encoding="utf-8"))
    urls = sorted(data)[:limit]
    pages = [Page(u, f"/tev/{i}.html", gzip.decompress(_tev_file(data[u]["file"]).read_bytes()))
             for i, u in enumerate(urls)]
    return pages, {u: data[u] for u in urls}


# ---- scoring -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+")
_WS = re.compile(r"\s+")


def shingles(text: str, n: int = 4) -> Counter[str]:
    tokens = _TOKEN.findall(text or "")
    return Counter(" ".join(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)))


def page_pr(gold: str, pred: str) -> tuple[float, float]:
    """Per-page precision and recall of word 4-gram shingle multisets (upstream evaluate.py method)."""
    g, p = shingles(gold), shingles(pred)
    tp, fp, fn = sum((g & p).values()), sum((p - g).values()), sum((g - p).values())
    if fp == 0 and fn == 0:
        return 1.0, 1.0
    if tp == 0:
        return 0.0, 0.0
    return tp / (tp + fp), tp / (tp + fn)


def score_aeb(gold: dict[str, str], pred: dict[str, str]) -> dict[str, float]:
    prs = [page_pr(gold[k], pred.get(k) or "") for k in gold]
    p = sum(x[0] for x in prs) / len(prs)
    r = sum(x[1] for x in prs) / len(prs)
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "pages": len(prs)}


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def score_snippets(data: dict[str, dict[str, Any]], pred: dict[str, str]) -> dict[str, float]:
    tp = fn = fp = tn = 0
    for url, d in data.items():
        out = _norm(pred.get(url) or "")
        for s in d.get("with", []):
            if _norm(s) in out:
                tp += 1
            else:
                fn += 1
        for s in d.get("without", []):
            if _norm(s) in out:
                fp += 1
            else:
                tn += 1
    p, r = tp / ((tp + fp) or 1), tp / ((tp + fn) or 1)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / ((p + r) or 1), 4),
            "accuracy": round((tp + tn) / ((tp + tn + fp + fn) or 1), 4), "pages": len(data)}


def _fold(s: str | None) -> str:
    return _norm(unicodedata.normalize("NFKC", s or "")).casefold()


def score_metadata(data: dict[str, dict[str, Any]], titles: dict[str, str | None],
                   dates: dict[str, str | None]) -> dict[str, float]:
    """Exact (case/space-folded) title match and exact YYYY-MM-DD date match, over pages with gold."""
    with_title = [u for u, d in data.items() if d.get("title")]
    with_date = [u for u, d in data.items() if d.get("date")]
    t_ok = sum(_fold(titles.get(u)) == _fold(data[u]["title"]) for u in with_title)
    d_ok = sum((dates.get(u) or "")[:10] == data[u]["date"][:10] for u in with_date)
    return {"title_accuracy": round(t_ok / (len(with_title) or 1), 4), "title_pages": len(with_title),
            "date_accuracy": round(d_ok / (len(with_date) or 1), 4), "date_pages": len(with_date)}


# ---- our path: serve → fetch → extract -----------------------------------------------------------


class _PagesHandler(_QuietHandler):
    def do_GET(self) -> None:
        pages: dict[str, bytes] = self.server.owner.pages  # type: ignore[attr-defined]
        body = pages.get(self.path)
        if body is None:
            self.send_body(404, b"not found", "text/plain")
        else:
            self.send_body(200, body, "text/html")  # no charset: the extractor must find it


class PagesServer(BackgroundServer):
    """Serves fixed bytes at fixed paths, as text/html without a charset."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages
        super().__init__(_PagesHandler)


def fetch_config() -> FetchConfig:
    return FetchConfig(allow_private=["127.0.0.1"], min_delay_s=0, per_host=8, concurrency=8,
                       respect_robots=False, retries=0, max_bytes=50_000_000)


def run_ours(pages: Sequence[Page], *, workers: int = 2, timeout_s: float = 30.0) -> dict[str, ExtractOutput]:
    """Serve the pages on 127.0.0.1, fetch them with the real Fetcher, extract with the worker pool."""
    outs: dict[str, ExtractOutput] = {}
    with PagesServer({p.path: p.content for p in pages}) as server, extraction_pool(workers) as pool:
        for i in range(0, len(pages), BATCH):
            batch = pages[i:i + BATCH]
            fetched = asyncio.run(_fetch(server.url, batch))
            inputs = [ExtractInput(f"{server.url}{p.path}", r.content or b"", r.content_type)
                      for p, r in zip(batch, fetched, strict=True)]
            for p, r, o in zip(batch, fetched, extract_batch(inputs, timeout_s=timeout_s, pool=pool),
                               strict=True):
                outs[p.key] = o if r.ok else ExtractOutput(url=p.key, status="failed", status_reason=r.error)
    return outs


async def _fetch(base: str, batch: Sequence[Page]) -> list[Any]:
    async with Fetcher(fetch_config()) as fetcher:
        return await fetcher.fetch_many([FetchRequest(f"{base}{p.path}") for p in batch])


# ---- raw trafilatura -----------------------------------------------------------------------------


def _raw_one(content: bytes) -> tuple[str, str | None, str | None]:
    import trafilatura

    text = trafilatura.extract(content) or ""
    meta = trafilatura.extract_metadata(content)
    return text, (meta.title if meta else None), (meta.date if meta else None)


def run_raw(pages: Sequence[Page], workers: int = 2) -> dict[str, tuple[str, str | None, str | None]]:
    with ProcessPoolExecutor(max_workers=workers) as ex:
        got = list(ex.map(_raw_one, [p.content for p in pages], chunksize=8))
    return {p.key: g for p, g in zip(pages, got, strict=True)}


# ---- main ----------------------------------------------------------------------------------------


def _date(o: ExtractOutput) -> str | None:
    return o.published.date().isoformat() if o.published else None


def bench_aeb(limit: int | None, raw: bool, workers: int) -> dict[str, Any]:
    pages, gold = aeb_pages(limit)
    t0 = time.perf_counter()
    ours = run_ours(pages, workers=workers)
    res: dict[str, Any] = {"ours": score_aeb(gold, {k: o.text or "" for k, o in ours.items()}),
                           "ours_seconds": round(time.perf_counter() - t0, 1),
                           "ours_extractors": dict(Counter(o.extractor or o.status for o in ours.values()))}
    if raw:
        t0 = time.perf_counter()
        rr = run_raw(pages, workers)
        res["raw"] = score_aeb(gold, {k: v[0] for k, v in rr.items()})
        res["raw_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def bench_tev(limit: int | None, raw: bool, workers: int) -> dict[str, Any]:
    pages, data = tev_pages(limit)
    t0 = time.perf_counter()
    ours = run_ours(pages, workers=workers)
    res: dict[str, Any] = {
        "ours": score_snippets(data, {k: o.text or "" for k, o in ours.items()})
        | score_metadata(data, {k: o.title for k, o in ours.items()}, {k: _date(o) for k, o in ours.items()}),
        "ours_seconds": round(time.perf_counter() - t0, 1),
        "ours_extractors": dict(Counter(o.extractor or o.status for o in ours.values())),
    }
    if raw:
        t0 = time.perf_counter()
        rr = run_raw(pages, workers)
        res["raw"] = (score_snippets(data, {k: v[0] for k, v in rr.items()})
                      | score_metadata(data, {k: v[1] for k, v in rr.items()}, {k: v[2] for k, v in rr.items()}))
        res["raw_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _print(name: str, res: dict[str, Any]) -> None:
    print(f"\n{name}")
    keys = [k for k in ("precision", "recall", "f1", "accuracy", "title_accuracy", "date_accuracy")
            if k in res["ours"]]
    print(f"{'':8}" + "".join(f"{k:>16}" for k in keys) + f"{'seconds':>10}")
    for who in ("raw", "ours"):
        if who in res:
            print(f"{who:8}" + "".join(f"{res[who][k]:>16.4f}" for k in keys)
                  + f"{res.get(who + '_seconds', 0):>10}")
    print("extractor paths (ours):", res["ours_extractors"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=("aeb", "tev", "both"), default="both")
    ap.add_argument("--limit", type=int, default=None, help="first N pages of each corpus (quick runs)")
    ap.add_argument("--no-raw", action="store_true", help="skip raw trafilatura")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not AEB.exists():
        sys.exit(f"evaluation data not found under {SHARED / 'evaldata'}")
    import trafilatura

    results: dict[str, Any] = {"trafilatura": trafilatura.__version__, "limit": args.limit,
                               "note": "measured on a shared 2-core machine; seconds are indicative"}
    if args.corpus in ("aeb", "both"):
        results["scrapinghub_aeb"] = bench_aeb(args.limit, not args.no_raw, args.workers)
        _print("scrapinghub-aeb (macro P/R over pages, 4-gram shingles)", results["scrapinghub_aeb"])
    if args.corpus in ("tev", "both"):
        results["trafilatura_eval"] = bench_tev(args.limit, not args.no_raw, args.workers)
        _print("trafilatura-eval (micro over snippets; title/date over pages with gold)",
               results["trafilatura_eval"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
