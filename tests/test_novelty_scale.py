"""Novelty at scale: the store's candidate lookup decides like the whole window, and what it returns
does not grow with history outside the window (row counts, not timings; timings are in bench/novelty.py)."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import monitor.store as store_mod
from monitor import novelty
from monitor.config import NoveltyConfig
from monitor.store import CandidateQuery, Store, WindowEntry, open_store
from test_novelty_quality import article_of, load_timeline

ROOT = Path(__file__).resolve().parents[1]
BATCH = 10


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_novelty", ROOT / "bench" / "novelty.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decide(store: Store, items: list[novelty.NoveltyItem], cfg: NoveltyConfig, now: datetime,
            via_candidates: bool) -> tuple[Any, Any, Any]:
    """(result, query, candidates or None) of one batch: through the store's candidate lookup as
    detect_and_store does it, or against the whole window. Nothing is written yet."""
    prepared = novelty.prepare(items)
    q = novelty.candidate_query(prepared, cfg, now)
    if via_candidates:
        cand = store.novelty_candidates(q)
        return novelty.decide(items, prepared, cand, cfg), q, cand
    return novelty.detect(items, store.window_entries(q.since), store.window_stories(q.since), cfg), q, None


def _write(store: Store, res: Any) -> None:
    with store.transaction():
        store.write_signatures(res.signatures)
        store.upsert_stories(res.stories)


def _run(store: Store, via_candidates: bool,
         rows: list[dict[str, Any]] | None = None) -> tuple[list[tuple[Any, ...]], list[dict[str, int]]]:
    """The timeline through a real store in batches, as detect_and_store does it (or with the whole window)."""
    cfg = NoveltyConfig()
    rows = load_timeline() if rows is None else rows
    decided: list[tuple[Any, ...]] = []
    looked_up: list[dict[str, int]] = []
    for lo in range(0, len(rows), BATCH):
        batch = rows[lo:lo + BATCH]
        items = [novelty.NoveltyItem(article_of(r), [r["topic"]] if r["topic"] else []) for r in batch]
        res, _, cand = _decide(store, items, cfg, datetime.now(UTC), via_candidates)
        if cand is not None:
            looked_up.append(cand.rows)
        _write(store, res)
        decided += [(it.article.id, it.article.status, it.article.duplicate_of, it.article.story_id) for it in items]
        decided += sorted((d.id, d.kind, d.story_id, d.score, str(d.what_is_new), str(d.compared_with))
                          for d in res.developments)
    return decided, looked_up


@pytest.mark.parametrize("entry_read", ["lookup", "scan"])
def test_candidates_decide_like_the_whole_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 entry_read: str) -> None:
    """Both ways of reading the candidate entries (by id, or by a scan of the window) decide alike."""
    monkeypatch.setattr(store_mod, "WINDOW_SCAN_RATIO", 0 if entry_read == "lookup" else 10**9)
    with open_store(tmp_path / "window.duckdb") as store:
        whole, _ = _run(store, via_candidates=False)
    with open_store(tmp_path / "cand.duckdb") as store:
        via, looked_up = _run(store, via_candidates=True)
    assert via == whole
    assert sum(1 for d in via if d[1] == "update") >= 5  # the comparison covered real decisions
    # and the lookup did narrow the window: fewer entries than the window held
    assert sum(r["entries"] for r in looked_up) > 0


def test_lookup_rows_do_not_grow_with_history_outside_the_window(tmp_path: Path) -> None:
    bench = _bench()
    with open_store(tmp_path / "empty.duckdb") as store:
        empty, empty_rows = _run(store, via_candidates=True)
    with open_store(tmp_path / "history.duckdb") as store:
        # 20,000 articles over the year before the window (the timeline starts 19 Nov 2025)
        bench.synthesize(store, 20_000, datetime(2025, 10, 1, tzinfo=UTC), chunk=10_000, vocab_size=5_000)
        assert store.scalar("SELECT count(*) FROM article_facts") > 20_000 * 15
        assert store.scalar("SELECT count(*) FROM story_fact_keys") > 0
        full, full_rows = _run(store, via_candidates=True)
    assert full_rows == empty_rows
    assert full == empty
    assert sum(r["df"] for r in full_rows) > 0 and sum(r["stories"] for r in full_rows) > 0


@pytest.mark.parametrize("dist", ["dense", "realistic"])
def test_candidates_decide_like_the_whole_window_on_a_full_window(tmp_path: Path, dist: str) -> None:
    """Synthetic facts (bench distributions) inside the window: the story score bound loses no story."""
    bench = _bench()
    cfg = NoveltyConfig()
    out = []
    fetched: list[int] = []
    in_window: list[int] = []
    for via_candidates in (False, True):
        with open_store(tmp_path / f"{dist}-{via_candidates}.duckdb") as store:
            bench.synthesize(store, 5_000, bench.END, span_days=13, chunk=5_000, vocab_size=5_000, dist=dist)
            items = bench.new_items(200, bench.END, vocab_size=5_000, dist=dist)
            for lo in range(0, len(items), 50):
                res, q, cand = _decide(store, items[lo:lo + 50], cfg, bench.END, via_candidates)
                if cand is not None:
                    fetched.append(cand.rows["stories"])
                    in_window.append(len(store.window_stories(q.since)))
                _write(store, res)
            out.append([(it.article.id, it.article.status, it.article.story_id) for it in items])
    assert out[0] == out[1]
    joined = sum(1 for _, status, sid in out[1] if status == "ok" and sid and sid.startswith("s-syn-"))
    if dist == "dense":
        assert joined > 0  # some new articles joined stored stories: the comparison is not trivial
    # the score bound fetched only a part of the window's stories (the rest cannot take any article)
    assert sum(fetched) < sum(in_window) / 2


@pytest.mark.parametrize("entry_read", ["lookup", "scan"])
def test_candidate_entries_carry_only_the_batchs_facts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       entry_read: str) -> None:
    """An entry's other facts never weigh in a decision: the lookup returns each entry's facts that the
    batch holds, in stored order, and leaves the rest in the store."""
    monkeypatch.setattr(store_mod, "WINDOW_SCAN_RATIO", 0 if entry_read == "lookup" else 10**9)
    bench = _bench()
    with open_store(tmp_path / "facts.duckdb") as store:
        bench.synthesize(store, 2_000, bench.END, span_days=13, chunk=2_000, vocab_size=2_000, dist="dense")
        items = bench.new_items(50, bench.END, vocab_size=2_000, dist="dense")
        q = novelty.candidate_query(novelty.prepare(items), NoveltyConfig(), bench.END)
        window = {e.article_id: e for e in store.window_entries(q.since)}
        # and two stored articles come back: one as a copy (its hash), one as a near copy (its MinHash)
        copied, near = list(window.values())[:2]
        assert copied.content_hash and near.minhash
        q = replace(q, hashes=[*q.hashes, copied.content_hash], minhashes=[*q.minhashes, near.minhash])
        cand = store.novelty_candidates(q)
    wanted = set(q.facts)
    assert len(cand.entries) >= 10
    for e in cand.entries:
        assert e.facts == [f for f in window[e.article_id].facts if f in wanted], e.article_id
    returned = sum(len(e.facts) for e in cand.entries)
    assert 0 < returned < sum(len(window[e.article_id].facts) for e in cand.entries)
    # an entry comes without its hash and MinHash only if it shares neither with the batch
    batch_bands = [set(band) for band in zip(*(novelty._bands(m) for m in q.minhashes), strict=True)]
    far = [e for e in cand.entries if e.minhash is None]
    for e in cand.entries:
        full = window[e.article_id]
        if e.minhash is None:
            assert e.content_hash is None and full.content_hash not in q.hashes
            assert full.minhash is not None
            assert not any(band in seen for band, seen in zip(novelty._bands(full.minhash), batch_bands,
                                                               strict=True))
        else:
            assert (e.minhash, e.content_hash) == (full.minhash, full.content_hash)
    assert 0 < len(far) < len(cand.entries)
    assert {copied.article_id, near.article_id} <= {e.article_id for e in cand.entries if e.minhash}


def _df_by_scan(store: Store, since: datetime) -> dict[str, int]:
    """The window document frequency straight from article_facts (what fact_day_keys must add up to)."""
    rows = store.con.execute("SELECT fact, count(*) FROM article_facts WHERE first_seen >= ? GROUP BY fact",
                             [since]).fetchall()
    return {f: int(n) for f, n in rows}


def test_window_df_from_day_counts_equals_a_scan(tmp_path: Path) -> None:
    """fact_day_keys (whole days, sealed day by day, late articles added to sealed days) plus the partial
    first day from article_facts give exactly the scan's counts, for window starts anywhere in a day."""
    rng = random.Random(5)
    vocab = [f"k{i}" for i in range(40)] + ["#12", "#345"]
    t0 = datetime(2025, 11, 3, 7, 30, tzinfo=UTC)
    entries = [WindowEntry(f"a{i}", f"s{i % 17}", t0 + timedelta(minutes=37 * i), None, None,
                           sorted(set(rng.sample(vocab, rng.randint(1, 8)))), f"src{i % 3}")
               for i in range(400)]  # ~10 days
    late = [e for i, e in enumerate(entries) if i % 23 == 5]
    timely = [e for e in entries if e not in late]
    starts = [t0 + timedelta(hours=h, minutes=m) for h in (0, 13, 24 + 5, 72, 100, 150, 190) for m in (0, 17)]
    starts += [datetime(2025, 11, d, tzinfo=UTC) for d in (4, 6, 9)]  # exactly at midnight
    with open_store(tmp_path / "df.duckdb") as store:
        for lo in range(0, len(timely), 25):
            with store.transaction():
                store.write_signatures(timely[lo:lo + 25])
        sealed = store.scalar("SELECT day FROM fact_days_sealed")
        # days before the sealed one hold one row per fact
        assert store.scalar("SELECT count(*) FROM (SELECT fact, day FROM fact_day_keys WHERE day < ? "
                            "GROUP BY ALL HAVING count(*) > 1)", [sealed]) == 0
        assert sealed >= store.scalar("SELECT min(day) FROM fact_day_keys") + 8
        with store.transaction():
            store.write_signatures(late)  # into sealed days
        for since in starts:
            q = CandidateQuery(since=since, echo_since=since, until=since, surge_since=since, hashes=[],
                               facts=vocab, minhashes=[])
            got = store.novelty_candidates(q).df
            assert got == _df_by_scan(store, since), since
            assert sum(got.values()) > 0


def test_an_upgraded_store_decides_like_a_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrations 70-72 and 74 backfill story_fact_keys, fact_days (keyed into fact_day_keys) and
    story_keys from the rows of a store written under the earlier schema: the second half of the
    timeline is then decided as on a store that had the new tables all along."""
    rows = load_timeline()
    half = len(rows) // 2
    new_db, old_db = tmp_path / "new.duckdb", tmp_path / "old.duckdb"
    with open_store(new_db) as store:
        _run(store, via_candidates=True, rows=rows[:half])
    every = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in every if m[0] <= 2])
    with open_store(old_db) as store:
        store.con.execute(f"ATTACH '{new_db}' AS src (READ_ONLY)")
        store.con.execute("INSERT INTO article_signatures SELECT * FROM src.article_signatures")
        store.con.execute("INSERT INTO stories SELECT * FROM src.stories")
    monkeypatch.setattr(store_mod, "MIGRATIONS", every)
    with open_store(old_db) as old, open_store(new_db) as new:
        assert {70, 71, 72, 74} <= {r[0] for r in old.con.execute("SELECT version FROM schema_migrations").fetchall()}
        for sql in ("SELECT fact, day, sum(n) FROM fact_day_keys GROUP BY ALL ORDER BY ALL",
                    "SELECT DISTINCT fact, story FROM story_fact_keys ORDER BY ALL",
                    "SELECT DISTINCT story, id FROM story_keys ORDER BY ALL"):
            assert old.con.execute(sql).fetchall() == new.con.execute(sql).fetchall(), sql
        assert old.scalar("SELECT count(*) FROM fact_day_keys") > 0
        upgraded, _ = _run(old, via_candidates=True, rows=rows[half:])
        native, _ = _run(new, via_candidates=True, rows=rows[half:])
    assert upgraded == native
    assert any(d[1] == "update" for d in native)
