"""Stories and novelty: duplicates, story linking across languages, and new developments.

Definitions (docs/novelty.md):
- duplicate: the same text again (exact normalised-text hash, or MinHash Jaccard >= threshold on
  word 5-shingles). Linked to its original with `duplicate_of`; never flagged.
- same story: an article whose language-independent facts (names transliterated to Latin and reduced
  to a consonant key, numbers) overlap a known story's enough (IDF-weighted). Joins the story.
- new development: `new_story` (first article of a story on a tracked topic), `update` (joins a story
  and brings enough facts the story has not had), `surge` (a story reaches N independent sources
  within T hours).

Candidates: the store looks the batch's keys up in its indexes over the time window (content hash,
MinHash LSH bands, fact keys -> articles and stories, see `candidate_query` and
Store.novelty_candidates), so the cost per article does not grow with the history. `decide` works
from those candidates only. Pure: no IO.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from anyascii import anyascii

from monitor.models import (
    LSH_BANDS,
    LSH_ROWS,
    Article,
    CandidateQuery,
    Development,
    NoveltyCandidates,
    StoryBounds,
    StoryRow,
    WindowEntry,
    epoch_micros,
)

if TYPE_CHECKING:  # the extraction workers import this module: they need neither pydantic nor DuckDB
    from monitor.config import NoveltyConfig

NUM_PERM = 64
SCHEME = "affine32"  # datasketch 2's scheme, computed by minhash_of: stored signatures are 64 × uint32
SHINGLE = 5
# Languages whose common nouns are capitalised: a lone capitalised word there is not a name.
NOUN_CAPITALISING = {"de", "lb"}
_WORD = re.compile(r"\w+(?:[-'’]\w+)*", re.UNICODE)
_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:[ .,\u00a0\u202f]\d{3})+(?![\d])|\d+")
_SENT_END = re.compile(r"[.!?…:;\"“”«»]\s*$")


@dataclass(slots=True)
class NoveltyItem:
    article: Article
    topics: list[str]  # matched topic ids, best first


@dataclass(slots=True)
class Prepared:
    """An article to decide, with what every lookup needs computed once."""

    item: NoveltyItem
    at: datetime
    minhash: np.ndarray  # NUM_PERM uint32 (minhash_of)
    facts: dict[str, str]


@dataclass(slots=True)
class NoveltyResult:
    articles: list[Article]  # the same objects, with status/duplicate_of/story_id set
    signatures: list[WindowEntry] = field(default_factory=list)
    stories: list[StoryRow] = field(default_factory=list)
    developments: list[Development] = field(default_factory=list)


KEY_LEN = 5
# Capitalised words that are not names in the languages we follow (months, weekdays, titles).
COMMON_CAPITALISED = frozenset([
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
    "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "januar", "februar", "märz", "juni", "juli", "oktober", "dezember", "montag", "dienstag", "mittwoch",
    "donnerstag", "freitag", "samstag", "sonntag", "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre", "lundi", "mardi", "mercredi", "jeudi",
    "vendredi", "samedi", "dimanche", "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio",
    "agosto", "septiembre", "octubre", "noviembre", "diciembre", "lunes", "martes", "miércoles", "jueves",
    "viernes", "sábado", "domingo", "januari", "februari", "maret", "mei", "juni", "juli", "agustus",
    "oktober", "desember", "senin", "selasa", "rabu", "kamis", "jumat", "sabtu", "minggu", "president",
    "presidents", "minister", "ministers", "secretary", "general", "chancellor", "prime", "chief",
    "spokesman", "spokesperson", "envoy", "adviser", "advisor", "army", "staff", "foreign", "defence",
    "defense", "security", "council", "state", "states", "national", "special", "präsident", "präsidenten",
    "kanzler", "außenminister", "sprecher", "presiden", "menteri", "sekretaris", "jenderal", "juru", "bicara",
    "président", "ministre", "porte-parole", "presidente", "ministro",
])
_DIGRAPHS = (("sch", "s"), ("sh", "s"), ("zh", "s"), ("ch", "k"), ("kh", "k"), ("ph", "f"), ("ck", "k"),
             ("c", "k"), ("q", "k"), ("x", "ks"), ("z", "s"))
_VOWELISH = re.compile(r"[aeiouyj]+")


@functools.lru_cache(maxsize=1 << 16)  # names recur across articles; the key is a pure function of the word
def name_key(word: str) -> str:
    """A spelling-independent key: Latin transliteration with vowels merged, cut to KEY_LEN.

    Зеленский, Зеленського, Zelensky, Zelenskyi and Selenskyj all become 'salan'; Witkoff and
    Віткофф 'atkaf'. Cutting the key also absorbs most case endings of Slavic names.
    """
    s = re.sub(r"[^a-z]", "", anyascii(word).lower())
    s = re.sub(r"c(?=[eiy])", "s", s)  # Vance/Вэнса, Grace/Грейс: a soft c is an s
    s = s.replace("ts", "s")  # Merz/Мерц (Merts), Kyslytsya/Кислица
    for a, b in _DIGRAPHS:
        s = s.replace(a, b)
    s = re.sub(r"[hwv]", "", s)
    s = _VOWELISH.sub("a", s)
    s = re.sub(r"(.)\1+", r"\1", s)
    return s[:KEY_LEN]


def extract_facts(text: str, title: str | None, lang: str | None) -> dict[str, str]:
    """Language-independent facts of a text: key -> first surface form.

    Names: capitalised words not starting a sentence, not common capitalised words, and not also
    written in lower case in the same text (in German only runs of two or more, since every noun
    is capitalised there). Numbers: digit groups of two or more digits.
    """
    facts: dict[str, str] = {}
    lower_words = {w for w in _WORD.findall(f"{title or ''} {text or ''}") if w[:1].islower()}
    for chunk in (title or "", text or ""):
        _facts_from(chunk, lang, facts, lower_words)
    return facts


def _facts_from(text: str, lang: str | None, facts: dict[str, str], lower_words: set[str]) -> None:
    text = unicodedata.normalize("NFKC", text)
    for m in _NUMBER.finditer(text):
        digits = re.sub(r"\D", "", m.group(0)).lstrip("0")
        if len(digits) >= 2:
            # 800,000 / 800.000 / "800 тысяч" agree on their significant digits
            facts.setdefault("#" + digits.rstrip("0"), m.group(0))
    tokens = list(_WORD.finditer(text))
    caps: list[tuple[int, str]] = []
    for i, m in enumerate(tokens):
        w = m.group(0)
        if w[:1].isdigit():
            continue
        if not w[0].isupper() or len(w) < 3:
            continue
        start = m.start()
        before = text[max(0, start - 3):start]
        sentence_start = i == 0 or bool(_SENT_END.search(before)) or "\n" in before
        if not sentence_start:
            caps.append((i, w))
    noun_caps = (lang or "") in NOUN_CAPITALISING
    idx = {i for i, _ in caps}
    for i, w in caps:
        if noun_caps and (i - 1) not in idx and (i + 1) not in idx:
            continue
        for part in re.split(r"[-'’]", w):
            if part.casefold() in COMMON_CAPITALISED or part.lower() in lower_words:
                continue
            key = name_key(part)
            if len(key) >= 3:
                facts.setdefault(key, part)


def _shingles(text: str) -> set[bytes]:
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(words) < SHINGLE:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


def _affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch 2's affine32 parameters for (num_perm, seed): odd multipliers a, offsets b."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


_PERM_A, _PERM_B = (p.reshape(1, -1) for p in _affine32_permutations(NUM_PERM, seed=7))
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (uint32 arithmetic wraps, which is the intended mod 2^32)."""
    s1, m1, s2, m2 = _FMIX32
    hv = (hv ^ (hv >> s1)) * m1
    hv = (hv ^ (hv >> s2)) * m2
    return hv ^ (hv >> s1)


# datasketch 2's MinHash (scheme affine32, seed 7, sha1_hash32 of each shingle), computed here so
# that stored signatures stay exactly what datasketch makes (tests/test_novelty.py compares them bit
# for bit) without importing datasketch: its package imports scipy, 46 MB in every process. Hashing
# a page's shingles in one join also costs less than its call per shingle (~0.43 vs ~0.65 ms)
def minhash_of(text: str) -> np.ndarray:
    """The NUM_PERM uint32 MinHash signature of the text's word 5-shingles."""
    digests = b"".join(hashlib.sha1(s).digest()[:4] for s in _shingles(text))
    hv = _fmix32(np.frombuffer(digests, dtype="<u4").astype(np.uint32).reshape(-1, 1))
    signature: np.ndarray = (hv * _PERM_A + _PERM_B).min(axis=0)
    return signature


def _mh_bytes(hv: np.ndarray) -> bytes:
    return hv.astype(np.uint32, copy=False).tobytes()


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def event_time(a: Article) -> datetime:
    t = a.published or a.feed_published or a.fetched_at
    assert t is not None, "an article must have a time"
    return t


_BAND_BYTES = LSH_ROWS * 4  # uint32 MinHash values


def _bands(minhash: bytes) -> list[bytes]:
    """The LSH band keys of a MinHash's bytes (as stored: the uint32 values in native order), band by band."""
    return [minhash[b * _BAND_BYTES:(b + 1) * _BAND_BYTES] for b in range(LSH_BANDS)]


class Detector:
    """Holds the batch's candidates (LSH bands, fact -> stories/articles) and decides one article at a time."""

    def __init__(self, cfg: NoveltyConfig, cand: NoveltyCandidates, outlets: dict[str, str] | None = None,
                 facts: set[str] | None = None):
        """`facts`: the batch's facts, if known (a story's other facts never weigh in a score)."""
        self.cfg = cfg
        self.outlets = outlets or {}
        # one dict per band, keyed by the band's bytes (no (band, bytes) tuple per key: thousands of
        # entries are indexed for every batch, and each small object left the flow process's heap larger)
        self.buckets: list[defaultdict[bytes, set[str]]] = [defaultdict(set) for _ in range(LSH_BANDS)]
        self.minhashes: dict[str, np.ndarray] = {}
        self.by_hash: dict[str, str] = {}
        self.entry_story: dict[str, str | None] = {}
        # first_seen in integer microseconds: the echo test compares it for every article of the story,
        # and comparing aware datetimes calls the time zone's utcoffset() for both sides each time
        self.entry_us: dict[str, int] = {}
        self.stories: dict[str, StoryRow] = {s.id: s for s in cand.stories}
        self.fact_index: dict[str, set[str]] = defaultdict(set)
        # article level, for the echo test: story -> articles indexed under it, and each article's facts
        # (an article re-indexed under another story brings all of them along)
        self.story_arts: dict[str | None, set[str]] = defaultdict(set)
        self.art_facts: dict[str, set[str]] = defaultdict(set)
        self.df: Counter[str] = Counter(cand.df)
        self.n_docs = cand.n_docs
        self.story_sources: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self.changed: dict[str, StoryRow] = {}
        # the echo test only ever looks up the batch's facts: a stored entry's other facts are not indexed
        self.batch_facts = facts
        for e in cand.entries:
            self._index_entry(e, counted=False)
        for sid, t, src in cand.story_sources:
            self.story_sources[sid].append((t, self.outlets.get(src, src)))
        for s in cand.stories:
            for f in s.facts if facts is None else facts.intersection(s.facts):
                self.fact_index[f].add(s.id)

    def _index_entry(self, e: WindowEntry, duplicate: bool = False, counted: bool = True) -> None:
        """Index an entry; `counted`: add it to df/n_docs/story sources too (stored ones come counted)."""
        if e.content_hash:
            self.by_hash.setdefault(e.content_hash, e.article_id)
        if e.minhash and e.article_id not in self.minhashes:
            self.minhashes[e.article_id] = np.frombuffer(e.minhash, dtype=np.uint32)
            for bucket, key in zip(self.buckets, _bands(e.minhash), strict=True):
                bucket[key].add(e.article_id)
        moved = self.entry_story.get(e.article_id, e.story_id) != e.story_id
        self.entry_story[e.article_id] = e.story_id
        self.entry_us[e.article_id] = epoch_micros(e.first_seen)
        if not duplicate:
            self.art_facts[e.article_id].update(
                e.facts if self.batch_facts is None else self.batch_facts.intersection(e.facts))
        if moved or not duplicate:
            self.story_arts[e.story_id].add(e.article_id)
        if counted and not duplicate:
            self.n_docs += 1
            self.df.update(set(e.facts))
            if e.story_id:
                self.story_sources[e.story_id].append((e.first_seen, self.outlets.get(e.source_id, e.source_id)))

    def idf(self, key: str) -> float:
        return math.log(1 + (self.n_docs + 1) / (1 + self.df.get(key, 0)))

    def find_duplicate(self, a: Article, hv: np.ndarray) -> str | None:
        if a.content_hash and a.content_hash in self.by_hash:
            return self.by_hash[a.content_hash]
        cands: set[str] = set()
        for bucket, key in zip(self.buckets, _bands(hv.tobytes()), strict=True):
            cands |= bucket.get(key, set())  # an LSH candidate shares a whole band (datasketch's rule)
        best, best_j = None, 0.0
        for cand in sorted(cands):
            j = float(np.count_nonzero(hv == self.minhashes[cand])) / len(hv)
            if j >= self.cfg.duplicate_threshold and j > best_j:
                best, best_j = cand, j
        return best

    def best_story(self, facts: dict[str, str], topics: list[str]) -> tuple[str | None, float, list[str]]:
        """The best-scoring story that links (IDF-weighted share of the article's facts it holds).

        Only stories holding one of the facts above the article's prefix cut are scored: the facts
        below it together weigh less than the lowest share that can link, so a story holding only
        those cannot link. Each candidate's score is summed in the article's fact order, as a full
        scan would (identical floats, identical choice).
        """
        weights = {k: self.idf(k) for k in facts}
        total = sum(weights.values()) or 1.0
        floor = _floor(self.cfg, bool(topics)) * (1 - 1e-9)
        cut, reach = 0.0, set[str]()
        for k in sorted(weights, key=lambda k: (weights[k], k)):
            if cut + weights[k] >= floor * total:
                reach.update(self.fact_index.get(k, ()))
            else:
                cut += weights[k]
        scores: dict[str, float] = dict.fromkeys(reach, 0.0)
        for k, w in weights.items():  # each story's sum in fact order; per fact, the smaller set is walked
            holders = self.fact_index.get(k, set())
            for sid in (holders.intersection(reach) if len(holders) < len(reach) else reach.intersection(holders)):
                scores[sid] += w
        best, best_score = None, 0.0
        for sid, sc in sorted(scores.items()):
            story = self.stories[sid]
            if topics and story.topics and not set(topics) & set(story.topics):
                continue
            if sc / total > best_score and self._links(facts, story, sc / total, topics):
                best, best_score = sid, sc / total
        if best is None:
            return None, max((sc / total for sc in scores.values()), default=0.0), []
        held = set(self.stories[best].facts)
        return best, best_score, sorted(k for k in facts if k in held)

    def _links(self, facts: dict[str, str], story: StoryRow, score: float, topics: list[str]) -> bool:
        """Enough overlap to be the same story. Sharing a tracked topic is itself evidence, so a
        story on the article's topic needs less overlap, but at least three shared facts."""
        if score >= self.cfg.story_threshold:
            return True
        if not (topics and set(topics) & set(story.topics)):
            return False
        return score >= self.cfg.story_threshold_topic and len(set(facts) & set(story.facts)) >= 3

    def echo(self, facts: dict[str, str], story_id: str, at: datetime) -> tuple[str | None, float]:
        """The recent article of the story this one repeats most (IDF-weighted share of its facts).

        A translation or rewrite shares most of its facts with the report it follows and comes
        within `echo_hours` of it; an update shares background with the story but little with any
        one recent article (a development days later may well repeat an older one's cast).
        """
        since, until = epoch_micros(at - timedelta(hours=self.cfg.echo_hours)), epoch_micros(at)
        weights = {k: self.idf(k) for k in facts}
        total = sum(weights.values()) or 1.0
        scores: dict[str, float] = {}
        for aid in self.story_arts.get(story_id, ()):
            # an article indexed under this story once may have moved to another since
            if self.entry_story.get(aid) != story_id or not since <= self.entry_us[aid] <= until:
                continue
            held, score, hit = self.art_facts.get(aid, set()), 0.0, False
            for k, w in weights.items():  # in the article's fact order (not sum(): 3.12 compensates)
                if k in held:
                    score, hit = score + w, True
            if hit:
                scores[aid] = score
        if not scores:
            return None, 0.0
        best = min(scores, key=lambda aid: (-scores[aid], aid))
        return best, scores[best] / total

    def new_facts(self, facts: dict[str, str], story: StoryRow) -> dict[str, str]:
        known = set(story.facts)
        return {k: v for k, v in facts.items() if k not in known}

    def weigh(self, keys: Iterable[str]) -> float:
        """New numbers count 1.5, new names 1 (numbers survive translation unchanged)."""
        return sum(1.5 if k.startswith("#") else 1.0 for k in keys)

    def update_facts(self, new: dict[str, str], facts: dict[str, str], story: StoryRow,
                     outlet: str) -> tuple[dict[str, str], str | None]:
        """Which new facts make this article an update, and why ('strong' or 'confirmed').

        strong: at least two new names and new facts weighing update_min_new_facts (numbers 1.5).
        confirmed: facts first reported by another outlet and now reported again (a translation
        repeats the original's facts, so its own wording alone is never confirmed twice).
        """
        names = [k for k in new if not k.startswith("#")]
        if len(names) >= 2 and self.weigh(new) >= self.cfg.update_min_new_facts:
            return new, "strong"
        confirmed = {k: v for k, v in new.items()
                     if k in story.pending and outlet not in story.pending[k]["outlets"]}
        if self.weigh(confirmed) >= self.cfg.update_min_new_facts:
            return confirmed, "confirmed"
        return {}, None

    def surge_reached(self, story_id: str, at: datetime) -> bool:
        since = at - timedelta(hours=self.cfg.surge_hours)
        sources = {src for t, src in self.story_sources[story_id] if since <= t <= at}
        return len(sources) >= self.cfg.surge_sources


def prepare(items: Sequence[NoveltyItem]) -> list[Prepared]:
    """The articles to decide (ok, with text) in event-time order, with their MinHash and facts."""
    ordered = sorted((it for it in items if it.article.status == "ok" and it.article.text),
                     key=lambda it: (event_time(it.article), it.article.id))
    return [Prepared(it, event_time(it.article), minhash_of(it.article.text or ""),
                     extract_facts(it.article.text or "", it.article.title, it.article.lang)) for it in ordered]


def candidate_query(prepared: Sequence[Prepared], cfg: NoveltyConfig, now: datetime) -> CandidateQuery:
    """The keys and time ranges the store looks up for a batch (`now` when nothing is to be decided)."""
    first = min((p.at for p in prepared), default=now)
    last = max((p.at for p in prepared), default=now)
    return CandidateQuery(
        since=first - timedelta(hours=cfg.window_hours), echo_since=first - timedelta(hours=cfg.echo_hours),
        until=last, surge_since=first - timedelta(hours=cfg.surge_hours),
        hashes=sorted({p.item.article.content_hash for p in prepared if p.item.article.content_hash}),
        facts=sorted({k for p in prepared for k in p.facts}),
        minhashes=[_mh_bytes(p.minhash) for p in prepared] if prepared else [],
        story_bounds=lambda df, n_docs: story_bounds(prepared, df, n_docs, cfg))


# Share of `need` left to a story's common (unprobed) facts: lower probes more stories through
# commoner facts, higher lets more reached stories through the first filter (0.7 was fastest on the
# dense benchmark window; any value in (0, 1] gives the same stories).
PROBE_SHARE = 0.7


def _floor(cfg: NoveltyConfig, has_topics: bool) -> float:
    """The lowest share of an article's weight a story can link it with (`Detector._links`)."""
    return min(cfg.story_threshold, cfg.story_threshold_topic) if has_topics else cfg.story_threshold


def story_bounds(prepared: Sequence[Prepared], df: dict[str, int], n_docs: int, cfg: NoveltyConfig) -> StoryBounds:
    """What a stored story must score to be able to take one of the batch's articles.

    While the batch is decided, a fact's df grows by at most the number of the batch's other
    articles holding it, and n_docs by at most the batch size. So an upper bound of each fact's
    weight and a lower bound of each article's total hold for the whole batch: a stored story whose
    facts' upper weights sum below `need` (the article's lowest linking share of its least total)
    cannot take that article. Probes: the article's facts above a prefix of its commonest facts
    weighing under PROBE_SHARE of `need` (`cut`); a story holding none of them weighs under `need`.
    A story the batch itself extends was fetched for the article that joined it, so the bound is exact.
    """
    b = len(prepared)
    held = Counter(k for p in prepared for k in p.facts)
    out = StoryBounds([], [], [], [], [], [])
    for i, p in enumerate(prepared):
        most = {k: math.log(1 + (n_docs + b + 1) / (1 + df.get(k, 0))) for k in p.facts}
        least = sum(math.log(1 + (n_docs + 1) / (df.get(k, 0) + held[k])) for k in p.facts)
        need = _floor(cfg, bool(p.item.topics)) * least * (1 - 1e-9)
        cut = 0.0
        for k in sorted(p.facts, key=lambda k: (most[k], k)):
            probe = cut + most[k] >= PROBE_SHARE * need
            if not probe:
                cut += most[k]
            out.article.append(i)
            out.fact.append(k)
            out.weight.append(most[k])
            out.probe.append(probe)
        out.need.append(need)
        out.cut.append(cut)
    return out


def window_candidates(entries: Sequence[WindowEntry], stories: Sequence[StoryRow]) -> NoveltyCandidates:
    """A whole window as candidates (what the store's lookup narrows down; used on small windows)."""
    df: Counter[str] = Counter()
    sources: list[tuple[str, datetime, str]] = []
    for e in entries:
        df.update(set(e.facts))
        if e.story_id:
            sources.append((e.story_id, e.first_seen, e.source_id))
    return NoveltyCandidates(list(entries), list(stories), dict(df), len(entries), sources)


def detect(items: Sequence[NoveltyItem], entries: Sequence[WindowEntry], stories: Sequence[StoryRow],
           cfg: NoveltyConfig, outlets: dict[str, str] | None = None) -> NoveltyResult:
    """Decide new articles against a whole window (entries, stories); see `decide`."""
    return decide(items, prepare(items), window_candidates(entries, stories), cfg, outlets)


def decide(items: Sequence[NoveltyItem], prepared: Sequence[Prepared], cand: NoveltyCandidates,
           cfg: NoveltyConfig, outlets: dict[str, str] | None = None) -> NoveltyResult:
    """Decide duplicates, stories and developments for new articles, in event-time order.

    `prepared` is `prepare(items)`; `cand` what the window holds for them (at least the store's
    candidates for `candidate_query(prepared)`). `outlets` maps source ids to outlets, so that a
    feed and a sitemap of one outlet count once.
    """
    det = Detector(cfg, cand, outlets, {k for p in prepared for k in p.facts})
    result = NoveltyResult(articles=[it.article for it in items])
    for p in prepared:
        _decide(det, p, result)
    result.stories = sorted(det.changed.values(), key=lambda s: s.id)
    return result


def _decide(det: Detector, p: Prepared, result: NoveltyResult) -> None:
    it, a, at, mh, facts = p.item, p.item.article, p.at, p.minhash, p.facts
    dup = det.find_duplicate(a, mh)
    if dup is not None:
        a.status, a.status_reason, a.duplicate_of = "duplicate", f"same text as {dup}", dup
        a.story_id = det.entry_story.get(dup)
        entry = WindowEntry(a.id, a.story_id, at, a.content_hash, _mh_bytes(mh), sorted(facts), a.source_id)
        det._index_entry(entry, duplicate=True)
        result.signatures.append(entry)
        return
    story_id, sim, shared = det.best_story(facts, it.topics)
    devs: list[Development] = []
    topic = it.topics[0] if it.topics else None
    if story_id is None:
        story = StoryRow(id="s-" + a.id, title=a.title, first_seen=at, last_seen=at, first_article_id=a.id,
                         topics=list(it.topics), facts=sorted(facts), surged=False, pending={},
                         dev_facts=[])
        det.stories[story.id] = story
        for t in it.topics:
            devs.append(_development("new_story", a, story.id, t, 1.0,
                                     {"facts": _surface(facts), "topics": it.topics}, [], at))
    else:
        story = det.stories[story_id]
        outlet = det.outlets.get(a.source_id, a.source_id)
        new = det.new_facts(facts, story)
        echo_of, echo_sim = det.echo(facts, story.id, at)
        if echo_sim >= det.cfg.echo_threshold:
            # another report of an earlier article (translation, rewrite): its wording adds nothing new
            story.facts = sorted(set(story.facts) | set(new))
            new = {}
        flagged, why = det.update_facts(new, facts, story, outlet)
        compared = [{"story_id": story.id, "first_article_id": story.first_article_id,
                     "similarity": round(sim, 3), "shared_facts": len(shared)}]
        if echo_of:
            compared.append({"article_id": echo_of, "similarity": round(echo_sim, 3), "nearest": True})
        if flagged and topic:
            first_reports = sorted({story.pending[k]["article_id"] for k in flagged if k in story.pending})
            compared += [{"article_id": x, "reported_first": True} for x in first_reports]
            for t in it.topics:
                devs.append(_development("update", a, story.id, t, det.weigh(flagged),
                                         {"new_facts": _surface(flagged), "basis": why, "topics": it.topics},
                                         compared, at))
            story.facts = sorted(set(story.facts) | set(flagged))
            story.dev_facts = sorted(flagged)
            for k in flagged:
                story.pending.pop(k, None)
        for k, surface in new.items():
            if k in flagged:
                continue
            pend = story.pending.setdefault(k, {"surface": surface, "outlets": [], "article_id": a.id})
            if outlet not in pend["outlets"]:
                pend["outlets"] = sorted([*pend["outlets"], outlet])
        story.topics = sorted(set(story.topics) | set(it.topics))
        story.last_seen = max(story.last_seen, at)
    for k in facts:
        det.fact_index[k].add(story.id)
    a.story_id = story.id
    entry = WindowEntry(a.id, story.id, at, a.content_hash, _mh_bytes(mh), sorted(facts), a.source_id)
    det._index_entry(entry)
    result.signatures.append(entry)
    if topic and not story.surged and det.surge_reached(story.id, at):
        story.surged = True
        n = len({s for _, s in det.story_sources[story.id]})
        for t in it.topics:
            devs.append(_development("surge", a, story.id, t, float(n),
                                     {"sources": n, "within_hours": det.cfg.surge_hours}, [], at))
    det.changed[story.id] = story
    result.developments.extend(devs)


def _surface(facts: dict[str, str]) -> dict[str, list[str]]:
    names = sorted({v for k, v in facts.items() if not k.startswith("#")})
    numbers = sorted({v for k, v in facts.items() if k.startswith("#")})
    return {"names": names, "numbers": numbers}


def _development(kind: str, a: Article, story_id: str, topic: str, score: float, what: dict[str, Any],
                 compared: list[dict[str, Any]], at: datetime) -> Development:
    return Development(
        id=_stable_id(kind, story_id, topic, a.id), kind=kind,  # type: ignore[arg-type]
        story_id=story_id, topic=topic, article_id=a.id, score=score, what_is_new=what,
        compared_with=compared, first_seen=at, source_id=a.source_id, title=a.title, url=a.url, lang=a.lang,
    )
