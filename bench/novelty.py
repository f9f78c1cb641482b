"""Benchmark novelty at scale: 1,000 new articles against 1,000,000 stored ones vs an empty store.

The stored history is synthetic and written straight into a real DuckDB file with Arrow + SQL:
signatures (random 64 x uint32 MinHash; fact keys: stories of ~5 articles share a template of 15
keys, each article takes 12 of them plus 6 drawn from the whole vocabulary, and 3 numbers), their
article_facts/article_bands/fact_day_keys rows, stories and story_fact_keys, spread evenly over a year (so ~38,000
articles fall in the 14-day window). The 1,000 new articles are texts built from the same
vocabulary (200 stories of 5, a tenth of them near-copies of another), published in the last day.
Each is processed the way `detect_and_store` does it, in batches of `fetch.batch_size`: candidate
lookup (Store.novelty_candidates) + decide + write (signatures, indexes, stories, developments).
Goal: full / empty <= 1.2.

Two fact distributions, each reported on its own (`DISTRIBUTIONS`): "dense" (Zipf over the whole
vocabulary: adversarial, every story shares mid-frequency keys with every batch) and "realistic"
(most of a story's facts rare, a few very common ones like country names).

    .venv/bin/python bench/novelty.py [--stored 1000000] [--new 1000] [--reps 3] [--dist both]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# monitor first: it pins OpenBLAS/OMP to one thread before numpy loads (spinning BLAS threads
# would inflate `prepare` on both stores and so flatter the ratio)
import monitor  # noqa: E402, F401, I001
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from monitor import novelty  # noqa: E402
from monitor.config import NoveltyConfig  # noqa: E402
from monitor.extract import content_hash  # noqa: E402
from monitor.models import Article  # noqa: E402
from monitor.store import FACT_DAY_KEYS_FILL, STORY_FACT_KEYS, WRITER_MEMORY_LIMIT, Store, open_store  # noqa: E402

END = datetime(2025, 12, 1, tzinfo=UTC)  # the stored history ends here; new articles come in the next day
TOPIC = "t-bench"
CONSONANTS = list("bdfgklmnprst")
VOWELS = list("aeiou")
FILLER = ["the", "talks", "on", "a", "plan", "were", "held", "after", "officials", "said", "that", "the",
          "sides", "agreed", "to", "meet", "again", "while", "critics", "warned", "of", "delays", "and",
          "the", "report", "added", "more", "details", "about", "costs", "and", "the", "timetable"]


@functools.cache
def vocabulary(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """n pseudo-names with distinct fact keys (surface form, key), in random order (Zipf rank = index)."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    keys: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        vowel = rng.random(int(rng.integers(4, 9))) < 0.4
        name = "".join(str(rng.choice(VOWELS if v else CONSONANTS)) for v in vowel).capitalize()
        key = novelty.name_key(name)
        if len(key) >= 3 and key not in seen and name.lower() not in FILLER:
            seen.add(key)
            names.append(name)
            keys.append(key)
    return names, keys


def zipf(rng: np.random.Generator, v: int, size: Any, s: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, v + 1) ** s
    return rng.choice(v, size=size, p=p / p.sum())


HEAD = 50  # "realistic": the very common keys (country names, capitals, the usual institutions)
HEAD_SHARE = 0.15  # "realistic": share of a story's or article's facts drawn from HEAD


def draw(rng: np.random.Generator, v: int, size: Any, dist: str) -> np.ndarray:
    """Fact key ranks. dense: Zipf over the whole vocabulary (every story shares mid-frequency keys
    with every batch). realistic: HEAD_SHARE from a Zipf head of HEAD keys, the rest uniform over
    the long tail (most of a story's facts are rare; a few are very common)."""
    if dist == "dense":
        return zipf(rng, v, size)
    head = rng.random(size) < HEAD_SHARE
    return np.where(head, zipf(rng, HEAD, size), HEAD + rng.integers(0, v - HEAD, size))


def _numbers(rng: np.random.Generator, size: Any) -> np.ndarray:
    n = rng.integers(11, 99_999, size=size)
    return np.where(n % 10 == 0, n + 1, n)


def synthesize(store: Store, n: int, end: datetime, span_days: int = 365, chunk: int = 250_000,
               vocab_size: int = 50_000, seed: int = 2, dist: str = "dense") -> None:
    """n stored articles (signatures + index rows) and their stories, evenly over span_days before end."""
    _, keys = vocabulary(vocab_size)
    key_arr = pa.array(keys)
    rng = np.random.default_rng(seed)
    start = end - timedelta(days=span_days)
    step_us = int(span_days * 86_400e6 / max(n, 1))
    tpl = draw(rng, vocab_size, ((n + 4) // 5, 15), dist)
    con = store.con
    # building the history is not what is measured: let it use more than the writer's bound
    con.execute("SET memory_limit = '4GB'")
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        idx = np.arange(lo, lo + m)
        pick = np.take_along_axis(tpl[idx // 5], rng.random((m, 15)).argsort(axis=1)[:, :12], axis=1)
        names = np.concatenate([pick, draw(rng, vocab_size, (m, 6), dist)], axis=1)
        name_vals = key_arr.take(pa.array(names.ravel()))
        nums = pa.array(np.char.add("#", _numbers(rng, (m, 3)).astype(str)).ravel())
        per = names.shape[1] + 3
        flat = pa.concat_arrays([name_vals, nums]).take(pa.array(np.concatenate(
            [np.arange(m * 18).reshape(m, 18), m * 18 + np.arange(m * 3).reshape(m, 3)], axis=1).ravel()))
        facts = pa.ListArray.from_arrays(pa.array(np.arange(0, m * per + 1, per, dtype=np.int32)), flat)
        mh = rng.integers(0, 2**32, size=(m, 64), dtype=np.uint32)
        minhash = pa.Array.from_buffers(pa.binary(256), m, [None, pa.py_buffer(mh.tobytes())]).cast(pa.binary())
        ids = pa.array(np.char.add("syn-", idx.astype(str)))
        syn = pa.table({
            "article_id": ids,
            "story_id": pa.array(np.char.add("s-syn-", (idx // 5 * 5).astype(str))),
            "first_seen": pa.array(start.timestamp() * 1e6 + idx * step_us, pa.int64()).cast(pa.timestamp("us", "UTC")),
            "content_hash": ids,
            "minhash": minhash,
            "facts": facts,
            "source_id": pa.array(np.char.add("src-", (idx % 50).astype(str))),
        })
        con.register("syn", syn)
        con.execute("INSERT INTO article_signatures SELECT article_id, story_id, first_seen, content_hash, minhash, "
                    "list_sort(list_distinct(facts)), source_id FROM syn ORDER BY first_seen")
        con.unregister("syn")
    con.execute("INSERT INTO article_facts SELECT unnest(facts), article_id, story_id, first_seen "
                "FROM article_signatures ORDER BY first_seen")
    con.execute("INSERT INTO article_bands SELECT r.b, md5_number_lower(s.minhash[r.b * 44 + 1:r.b * 44 + 44]), "
                "s.article_id, s.first_seen FROM article_signatures s CROSS JOIN range(5) r(b) ORDER BY s.first_seen")
    con.execute(f"""
        INSERT INTO stories SELECT story_id, 'story ' || story_id, min(first_seen), max(first_seen), min(article_id),
            ['{TOPIC}'], list_sort(list_distinct(flatten(list(facts)))), false, '{{}}'::JSON, []::VARCHAR[]
        FROM article_signatures GROUP BY story_id ORDER BY max(first_seen)""")
    con.execute(f"INSERT INTO story_fact_keys {STORY_FACT_KEYS.format(stories='stories')} ORDER BY last_seen")
    con.execute("INSERT INTO story_keys SELECT md5_number_lower(id), id, last_seen FROM stories ORDER BY last_seen")
    con.execute(FACT_DAY_KEYS_FILL)
    con.execute("CHECKPOINT")
    con.execute(f"SET memory_limit = '{WRITER_MEMORY_LIMIT}'")


def new_items(n: int, start: datetime, seed: int = 3, vocab_size: int = 50_000,
              dist: str = "dense") -> list[novelty.NoveltyItem]:
    """n new articles: stories of 5 sharing a cast of names, a tenth near-copies of an earlier one."""
    names, _ = vocabulary(vocab_size)
    rng = np.random.default_rng(seed)
    items: list[novelty.NoveltyItem] = []
    texts: list[str] = []
    for i in range(n):
        if texts and rng.random() < 0.1:
            words = texts[int(rng.integers(len(texts)))].split()
            words[int(rng.integers(len(words)))] = "reportedly"
            text = " ".join(words)
        else:
            cast = [names[j] for j in draw(np.random.default_rng(seed * 100_000 + i // 5), vocab_size, 15, dist)]
            mine = cast[:12] + [names[j] for j in draw(rng, vocab_size, 6, dist)]
            sents = []
            for k in range(0, len(mine), 2):
                filler = " ".join(rng.choice(FILLER, size=8))
                sents.append(f"On {int(_numbers(rng, 1)[0])} {filler} {mine[k]} and {' '.join(mine[k + 1:k + 2])} "
                             f"met in {filler} today.")
            text = " ".join(sents)
        texts.append(text)
        at = start + timedelta(seconds=int(i * 86_400 / n))
        art = Article(id=f"new-{seed}-{i}", url=f"https://bench.example/{seed}/{i}", source_id=f"src-{i % 50}",
                      status="ok", title=f"Report {i}", text=text, lang="en", published=at,
                      content_hash=content_hash(text))
        items.append(novelty.NoveltyItem(art, [TOPIC] if i % 3 else []))
    return items


def process(store: Store, items: list[novelty.NoveltyItem], cfg: NoveltyConfig,
            batch: int = 200) -> dict[str, Any]:
    """What detect_and_store does for the novelty part, batch by batch; seconds per phase and rows looked up."""
    t = {"prepare": 0.0, "lookup": 0.0, "decide": 0.0, "write": 0.0}
    cpu = dict.fromkeys(t, 0.0)
    rows: dict[str, int] = {}
    devs = 0
    for lo in range(0, len(items), batch):
        chunk = items[lo:lo + batch]
        marks = [(time.perf_counter(), time.process_time())]
        prepared = novelty.prepare(chunk)
        marks.append((time.perf_counter(), time.process_time()))
        cand = store.novelty_candidates(novelty.candidate_query(prepared, cfg, END))
        marks.append((time.perf_counter(), time.process_time()))
        res = novelty.decide(chunk, prepared, cand, cfg)
        marks.append((time.perf_counter(), time.process_time()))
        with store.transaction():
            store.write_signatures(res.signatures)
            store.upsert_stories(res.stories)
            devs += store.write_developments(res.developments, "bench")
        marks.append((time.perf_counter(), time.process_time()))
        for i, k in enumerate(t):
            t[k] += marks[i + 1][0] - marks[i][0]
            cpu[k] += marks[i + 1][1] - marks[i][1]
        for k, v in cand.rows.items():
            rows[k] = rows.get(k, 0) + v
    return {"seconds": sum(t.values()), "phases": {k: round(v, 3) for k, v in t.items()},
            "cpu_seconds": sum(cpu.values()), "cpu_phases": {k: round(v, 3) for k, v in cpu.items()},
            "rows": rows, "developments": devs,
            "statuses": {s: sum(1 for it in items if it.article.status == s) for s in ("ok", "duplicate")}}


def run(dist: str, stored: int, new: int, reps: int, tmp: Path) -> dict[str, Any]:
    """A store of `stored` articles with `dist` facts; `new` ones timed on it and on an empty store."""
    cfg = NoveltyConfig()
    base = tmp / f"history-{dist}.duckdb"
    t0 = time.perf_counter()
    with open_store(base) as store:
        synthesize(store, stored, END, dist=dist)
        in_window = store.scalar("SELECT count(*) FROM article_signatures WHERE first_seen >= ?",
                                 [END - timedelta(hours=cfg.window_hours)])
    build_s = time.perf_counter() - t0
    size_mb = base.stat().st_size / 1e6
    print(f"[{dist}] stored {stored:,} articles ({in_window:,} in the window) in {build_s:.1f}s, {size_mb:.0f} MB")
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
    for rep in range(reps):
        for kind in ("empty", "full"):
            db = tmp / f"{dist}-{kind}-{rep}.duckdb"
            if kind == "full":
                shutil.copy(base, db)
            items = new_items(new, END, seed=3 + rep, dist=dist)
            with open_store(db) as store:
                r = process(store, items, cfg)
            runs[kind].append(r)
            print(f"[{dist}] rep {rep} {kind:5s}: {r['seconds']:.2f}s {r['phases']} cpu {r['cpu_seconds']:.2f}s "
                  f"{r['cpu_phases']} rows {r['rows']} load {os.getloadavg()[0]:.1f}")
            db.unlink()
    base.unlink()
    empty = statistics.median(r["seconds"] for r in runs["empty"])
    full = statistics.median(r["seconds"] for r in runs["full"])
    ratio = full / empty
    cpu_empty = statistics.median(r["cpu_seconds"] for r in runs["empty"])
    cpu_full = statistics.median(r["cpu_seconds"] for r in runs["full"])
    print(f"[{dist}] empty store: {empty:.2f}s   {stored:,} store: {full:.2f}s   ratio {ratio:.3f} (goal <= 1.2); "
          f"CPU {cpu_empty:.2f}s / {cpu_full:.2f}s = {cpu_full / cpu_empty:.3f}")
    return {
        "stored": stored, "stored_in_window": in_window, "new": new, "reps": reps,
        "build_seconds": round(build_s, 1), "db_mb": round(size_mb), "empty_seconds": round(empty, 3),
        "full_seconds": round(full, 3), "ratio": round(ratio, 3), "goal": 1.2, "goal_met": ratio <= 1.2,
        # process CPU time (all threads): less sensitive than wall time to other processes on the cores
        "cpu_empty_seconds": round(cpu_empty, 3), "cpu_full_seconds": round(cpu_full, 3),
        "cpu_ratio": round(cpu_full / cpu_empty, 3), "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "same_statuses_empty_vs_full": all(a["statuses"] == b["statuses"]
                                           for a, b in zip(runs["empty"], runs["full"], strict=True)),
        "runs": runs,
    }


DISTRIBUTIONS = {
    "dense": "Zipf s=1.1 over 50,000 keys for every fact (stories of 5 share a 15-key cast from the same "
             "Zipf): every story shares mid-frequency keys with every batch (adversarial)",
    "realistic": f"{HEAD_SHARE:.0%} of facts from a Zipf head of {HEAD} very common keys (like country names), "
                 "the rest uniform over the 50,000-key long tail: most of a story's facts are rare",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stored", type=int, default=1_000_000)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dist", choices=[*DISTRIBUTIONS, "both"], default="both")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/novelty.json")
    args = ap.parse_args()
    dists = list(DISTRIBUTIONS) if args.dist == "both" else [args.dist]
    out: dict[str, Any] = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench-novelty-") as tmp:
        for dist in dists:
            out[dist] = {"facts": DISTRIBUTIONS[dist], **run(dist, args.stored, args.new, args.reps, Path(tmp))}
    out["note"] = "measured on 2 shared cores under other engineers' load; medians of reps"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    for dist in dists:
        r = out[dist]
        print(f"{dist:9s}: empty {r['empty_seconds']:.2f}s  full {r['full_seconds']:.2f}s  ratio {r['ratio']:.3f}  "
              f"(CPU ratio {r['cpu_ratio']:.3f})")


if __name__ == "__main__":
    main()
