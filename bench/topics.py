"""Benchmark topic tagging: 100 topics x 10,000 articles, compared with trafilatura extraction time.

Texts come from /work/shared/evaldata/scrapinghub-aeb/html/*.html.gz, extracted once with trafilatura
(that extraction is timed: it is the reference cost per article), then varied (sentence rotation,
a few injected words, a seed paragraph in some) up to 10,000 articles. The 100 topics are the defaults
of config/topics.toml plus variations (renamed, with extra OR-ed terms and phrases drawn from the
corpus vocabulary). Goal: tagging time < 5% of extraction time per article.

    .venv/bin/python bench/topics.py [--articles 10000] [--topics 100]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import trafilatura  # noqa: E402

from monitor.config import TopicConfig, TopicsFile  # noqa: E402
from monitor.topics import TopicSet, tokenize  # noqa: E402

HTML_DIR = Path("/work/shared/evaldata/scrapinghub-aeb/html")
SEED = Path("/work/shared/seeds/000_b15008eb12104f57.txt")


def extract_all() -> tuple[list[tuple[str, str]], list[float]]:
    docs: list[tuple[str, str]] = []
    times: list[float] = []
    for path in sorted(HTML_DIR.glob("*.html.gz")):
        html = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        t0 = time.perf_counter()
        text = trafilatura.extract(html, favor_precision=True)
        meta = trafilatura.extract_metadata(html)
        times.append(time.perf_counter() - t0)
        if text:
            docs.append(((meta.title if meta and meta.title else "") or "", text))
    return docs, times


def make_articles(
    base: list[tuple[str, str]], n: int, rng: random.Random
) -> list[tuple[str, str, str, None]]:
    seed_par = SEED.read_text(encoding="utf-8").split("\n\n")
    vocab = sorted({w for _, t in base for w in re.findall(r"\w{5,}", t)})
    out = []
    for i in range(n):
        title, text = base[i % len(base)]
        sents = re.split(r"(?<=[.!?])\s+", text)
        k = (i // len(base)) % max(1, len(sents))
        sents = sents[k:] + sents[:k]
        sents.insert(rng.randrange(len(sents) + 1), " ".join(rng.choices(vocab, k=5)) + f" x{i}.")
        if i % 20 == 0:
            sents.append(rng.choice(seed_par))
        out.append((f"a{i}", title, " ".join(sents), None))
    return out


def make_topics(
    defaults: list[TopicConfig], n: int, base: list[tuple[str, str]], rng: random.Random
) -> list[TopicConfig]:
    words = sorted({w for _, t in base for w in tokenize(t) if len(w) > 5 and w.isalpha()})
    topics = list(defaults)
    i = 0
    while len(topics) < n:
        d = defaults[i % len(defaults)]
        extra = " OR ".join(
            [rng.choice(words), f"{rng.choice(words)[:5]}*", f'"{rng.choice(words)} {rng.choice(words)}"~3']
        )
        q = f"({d.query}) OR (title:({extra}) AND text:{rng.choice(words)})"
        topics.append(d.model_copy(update={"id": f"{d.id}-v{i}", "query": q}))
        i += 1
    return topics[:n]


def time_tagging(ts: TopicSet, articles: list[tuple[str, str, str, None]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    matches = sum(len(ts.tag(*a)) for a in articles)
    return time.perf_counter() - t0, matches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=10_000)
    ap.add_argument("--topics", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(42)

    base, ext_times = extract_all()
    ext_per_article = statistics.mean(ext_times)
    print(
        f"trafilatura: {len(ext_times)} pages, {len(base)} with text, "
        f"mean {ext_per_article * 1000:.2f} ms/article (median {statistics.median(ext_times) * 1000:.2f} ms)"
    )

    articles = make_articles(base, args.articles, rng)
    words = sum(len(a[2].split()) for a in articles) / len(articles)
    with (ROOT / "config" / "topics.toml").open("rb") as fh:
        defaults = TopicsFile.model_validate(tomllib.load(fh)).topics
    topics = make_topics(defaults, args.topics, base, rng)

    t0 = time.perf_counter()
    ts_many = TopicSet.compile(topics)
    compile_s = time.perf_counter() - t0
    ts_one = TopicSet.compile(defaults[:1])

    cold_s, _ = time_tagging(ts_many, articles[: len(base)])  # first sight of every token (cold cache)
    one_s, one_matches = time_tagging(ts_one, articles)
    many_s, many_matches = time_tagging(ts_many, articles)

    per_one = one_s / len(articles)
    per_many = many_s / len(articles)
    per_cold = cold_s / len(base)
    ratio = per_many / ext_per_article
    print(
        f"articles: {len(articles)} (mean {words:.0f} words), topics: {len(topics)}, "
        f"compile {compile_s * 1000:.1f} ms"
    )
    print(f"tagging, 1 topic:    {per_one * 1000:.3f} ms/article ({one_matches} matches)")
    print(
        f"tagging, {len(topics)} topics: {per_many * 1000:.3f} ms/article ({many_matches} matches), "
        f"x{per_many / per_one:.2f} the cost of 1 topic"
    )
    print(f"tagging, {len(topics)} topics, cold token cache: {per_cold * 1000:.3f} ms/article")
    print(
        f"tagging / extraction: {ratio * 100:.2f}% "
        f"(cold cache {per_cold / ext_per_article * 100:.2f}%), goal < 5%"
    )

    results = {
        "articles": len(articles),
        "topics": len(topics),
        "mean_words_per_article": round(words, 1),
        "extraction_ms_per_article": round(ext_per_article * 1000, 3),
        "compile_ms": round(compile_s * 1000, 2),
        "tag_ms_per_article_1_topic": round(per_one * 1000, 4),
        "tag_ms_per_article_n_topics": round(per_many * 1000, 4),
        "tag_ms_per_article_n_topics_cold_cache": round(per_cold * 1000, 4),
        "n_topics_over_1_topic": round(per_many / per_one, 3),
        "tag_over_extraction": round(ratio, 5),
        "tag_over_extraction_cold": round(per_cold / ext_per_article, 5),
        "matches_n_topics": many_matches,
        "goal_met": ratio < 0.05,
    }
    out = ROOT / "bench" / "results" / "topics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
