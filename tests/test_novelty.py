"""Novelty: the seed and its English original are one story; detection is deterministic."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trafilatura

from monitor.config import NoveltyConfig
from monitor.extract import content_hash
from monitor.models import Article
from monitor.novelty import NoveltyItem, detect, name_key

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEED = SHARED / "seeds" / "000_b15008eb12104f57.txt"
ORIGINAL = ROOT / "src/monitor/demo/site/globalwire/news/us-russia-secret-28-point-plan.html"
TOPIC = ["ukraine-peace-talks"]


def _article(aid: str, source: str, lang: str, title: str | None, text: str, at: datetime) -> Article:
    return Article(id=aid, url=f"https://{source}.example/{aid}", source_id=source, status="ok", title=title,
                   text=text, lang=lang, published=at, content_hash=content_hash(text))


def _seed_text() -> str:
    lines: list[str] = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        if line.strip() and line not in lines:  # the seed repeats some lines (captions, headline)
            lines.append(line)
    return "\n".join(lines)


def test_names_get_one_key_across_scripts() -> None:
    for spellings in (["Zelensky", "Зеленський", "Selenskyj", "Zelenskyi"], ["Witkoff", "Віткофф", "Уиткофф"],
                      ["Yermak", "Єрмак", "Ермак", "Jermak", "Iermak"], ["Vance", "Венса", "Вэнса"],
                      ["Kyslytsya", "Кислиця", "Kyslyzja"], ["Merz", "Мерц"]):
        assert len({name_key(s) for s in spellings}) == 1, spellings


@pytest.mark.skipif(not SEED.exists(), reason=f"seed not found at {SEED} (needs ../shared next to the repo)")
def test_seed_and_its_english_original_are_one_story() -> None:
    html = ORIGINAL.read_text(encoding="utf-8")
    text = trafilatura.extract(html) or ""
    meta = trafilatura.extract_metadata(html)
    assert len(text.split()) > 150
    original = _article("en-original", "globalwire", "en", meta.title if meta else None, text,
                        datetime(2025, 11, 19, 16, 40, tzinfo=UTC))
    seed_lines = _seed_text().splitlines()
    seed = _article("seed", "nusantara", "id", seed_lines[0], "\n".join(seed_lines[1:]),
                    datetime(2025, 11, 20, 3, 15, tzinfo=UTC))
    res = detect([NoveltyItem(original, TOPIC), NoveltyItem(seed, TOPIC)], [], [], NoveltyConfig())
    assert original.story_id is not None and seed.story_id == original.story_id
    flagged = [(d.kind, d.article_id) for d in res.developments if d.kind != "surge"]
    assert flagged == [("new_story", "en-original")]
    # and in the other order (the translation seen first), still one story and one development
    for a in (original, seed):
        a.status, a.story_id, a.duplicate_of = "ok", None, None
    seed.published = datetime(2025, 11, 19, 10, 0, tzinfo=UTC)
    res = detect([NoveltyItem(original, TOPIC), NoveltyItem(seed, TOPIC)], [], [], NoveltyConfig())
    assert seed.story_id == original.story_id
    assert [(d.kind, d.article_id) for d in res.developments if d.kind != "surge"] == [("new_story", "seed")]


def test_detection_is_deterministic() -> None:
    from test_novelty_quality import article_of, load_timeline

    rows = load_timeline()

    def once(order: list[dict[str, object]]) -> tuple[dict[str, str | None], list[tuple[str, str, str]]]:
        arts = [article_of(r) for r in order]
        topics = {r["id"]: [r["topic"]] if r["topic"] else [] for r in order}
        res = detect([NoveltyItem(a, topics[a.id]) for a in arts], [], [], NoveltyConfig())  # type: ignore[arg-type]
        return ({a.id: a.story_id for a in arts},
                sorted((d.id, d.kind, d.story_id) for d in res.developments))

    first = once(rows)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert once(rows) == first
    assert once(shuffled) == first  # input order does not matter: articles are decided in time order
    assert len({s for s in first[0].values()}) > 3 and first[1]


def test_signatures_are_datasketchs_affine32_minhash_bit_for_bit() -> None:
    """Stored signatures were made by datasketch 2; minhash_of must keep making exactly those."""
    datasketch = pytest.importorskip("datasketch")
    from monitor.novelty import NUM_PERM, SCHEME, _shingles, minhash_of

    texts = ["", "one", "Zelensky met Witkoff in Geneva on Sunday.", "Перемовини тривали шість годин " * 40]
    texts += [SEED.read_text(encoding="utf-8")] if SEED.exists() else []
    rng = random.Random(3)
    words = ["talks", "peace", "plan", "Geneva", "Kyiv", "Moscow", "28", "points", "officials", "said", "envoy"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 400))) for _ in range(200)]
    for text in texts:
        ref = datasketch.MinHash(num_perm=NUM_PERM, seed=7, scheme=SCHEME)
        ref.update_batch(list(_shingles(text)))
        got = minhash_of(text)
        assert got.dtype.name == "uint32" and got.tobytes() == ref.hashvalues.astype("uint32").tobytes(), text[:60]
