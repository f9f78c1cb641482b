"""Precision/recall of the default `ukraine-peace-talks` topic on the labelled multilingual set.

tests/data/topics_labelled.jsonl: short news texts (title + a few sentences) in 11 languages, each with
the topic ids it is about. Hard negatives: war news without talks, energy strikes, other peace
processes (Gaza, Sudan, Armenia-Azerbaijan, Colombia), 'peace' in sport/culture, other Russia talks.
Run with -s to see the per-language table.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from monitor.config import TopicsFile  # noqa: E402
from monitor.topics import TopicSet, explain_text  # noqa: E402

TOPIC = "ukraine-peace-talks"
PRECISION_FLOOR = 0.95
RECALL_FLOOR = 0.90
DATA = ROOT / "tests" / "data" / "topics_labelled.jsonl"


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def test_ukraine_peace_talks_quality() -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    langs = {r["lang"] for r in rows}
    positives = sum(TOPIC in r["labels"] for r in rows)
    assert len(rows) >= 150 and len(langs) >= 10
    assert 0.35 <= positives / len(rows) <= 0.55

    with (ROOT / "config" / "topics.toml").open("rb") as fh:
        topics = TopicsFile.model_validate(tomllib.load(fh)).topics
    ts = TopicSet.compile(topics)

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tp fp fn n
    errors: list[str] = []
    for r in rows:
        found = {m.topic: m for m in ts.tag(r["id"], r["title"], r["text"], r["lang"])}
        got, want = TOPIC in found, TOPIC in r["labels"]
        c = counts[r["lang"]]
        c[3] += 1
        if got and want:
            c[0] += 1
        elif got:
            c[1] += 1
            errors.append(f"FP {r['id']}: {r['title']} | {explain_text(found[TOPIC].explanation)}")
        elif want:
            c[2] += 1
            errors.append(f"FN {r['id']}: {r['title']}")

    print(f"\n{TOPIC}: {len(rows)} texts, {len(langs)} languages, {positives} positives")
    print(f"{'lang':<6}{'n':>4}{'tp':>4}{'fp':>4}{'fn':>4}{'precision':>11}{'recall':>8}")
    for lang in sorted(counts):
        tp, fp, fn, n = counts[lang]
        print(f"{lang:<6}{n:>4}{tp:>4}{fp:>4}{fn:>4}{_ratio(tp, tp + fp):>11.3f}{_ratio(tp, tp + fn):>8.3f}")
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    print(f"{'all':<6}{len(rows):>4}{tp:>4}{fp:>4}{fn:>4}{precision:>11.3f}{recall:>8.3f}")
    for e in errors:
        print(e)

    assert precision >= PRECISION_FLOOR, errors
    assert recall >= RECALL_FLOOR, errors
