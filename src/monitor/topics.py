"""Topic tagging: analysts' Lucene-style queries evaluated against articles in many languages.

Query language (parsed with luqum; see config/topics.toml for a reminder aimed at analysts)
------------------------------------------------------------------------------------------
* ``a AND b``, ``a OR b``, ``NOT a``, ``-a``, ``+a``, ``( ... )``. Terms separated only by spaces are
  AND-ed (``peace plan`` = ``peace AND plan``), like a web search engine; write OR explicitly.
  As in Lucene, AND binds tighter than OR: ``a OR b AND c`` = ``a OR (b AND c)``.
* ``"peace plan"``: the words in this order, next to each other.
* ``"peace plan"~5``: proximity, the words in ANY order, all within a window of (words - 1 + 5)
  positions. This is also the "term near term" form: ``"Putin Trump"~10`` = Putin and Trump at most
  10 words apart (11 positions). Windows never span title and text.
* ``negosiasi*``: trailing wildcard (prefix, at least 2 letters), also inside phrases
  (``"peace pla*"``). No leading/inner wildcards, no ``?``, no fuzzy ``word~2``, no ranges, no
  regexes, no boosts (use ``weights``): all of those are reported as syntax errors.
* ``title:(...)`` / ``text:...``: field scoping. Default field = title and text. Any other field is
  an error.
* A word that splits into several tokens (``cessez-le-feu``, ``l'Ukraine``) is a phrase.

Matching
--------
Text is tokenised on Unicode word boundaries (letters/digits, with their combining marks; Han and
kana are one token per character). Each token is normalised: NFKC, casefold, combining marks
stripped (so é→e, ё→е, й→и, ї→і: Cyrillic stays Cyrillic), and a few letters without a
decomposition folded (ł→l, ı→i, ø→o, đ→d, æ→ae, œ→oe, þ→th).

With ``transliterate = true`` a topic compares *transliteration keys* instead, computed from the
normalised token (``translit_key``):

1. anyascii, keep only a-z and 0-9 (drops the apostrophe of ь/ъ);
2. ``tsch``→``ch``, ``sch``→``sh``, ``kh``→``h``, ``w``→``v``;
3. every run of ``i``/``y``/``j`` → ``i`` (Zelenskyy, Zelenskyi, Zelenskiy, Zelenskij, Selenskyj's
   ``yj``, Kyiv/Kiiv/Kyjiw all collapse);
4. doubled letters → one (Rossiya/Rosiya).

So Зеленский / Зеленський / Zelensky / Zelenskyi / Zelenskyy → ``zelenski``; Київ / Kyiv / Kyjiw →
``kiv``; Харків / Kharkiv / Harkiv → ``harkiv``. Keys are deliberately loose: in a transliterating
topic "jet" also matches "yet". Not collapsed: S/Z (German Selenskyj → ``selenski``), e/ie/ye.

Performance
-----------
A document is tokenised and normalised once (per-token results are cached), giving a postings
dict ``token → positions``. Every distinct document token is then probed once against ONE table of
all exact terms of all topics, and against one table of all prefixes (one probe per distinct prefix
length). Topics none of whose terms occurred are skipped without evaluation (unless their query can
be true on an empty document, e.g. ``NOT x``). 100 topics cost about the same as one.

Scoring
-------
Without ``weights`` a matching topic scores 1.0. With ``weights`` (EMM style) each key is itself a
query (a word, ``"a phrase"``, ``prefix*``...) and the score is the sum of the weights of the keys
found (each counted once; negative weights allowed). A topic matches when its boolean query
(``query`` OR the query of the document's language) is true — or it has no query, only weights —
AND score >= threshold.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from anyascii import anyascii
from luqum import tree as lt
from luqum.exceptions import IllegalCharacterError, ParseError
from luqum.thread import parse as luqum_parse

from monitor.config import TopicConfig
from monitor.errors import ConfigError
from monitor.models import TopicMatch

__all__ = [
    "TopicSet",
    "TopicSyntaxError",
    "check_topics",
    "explain_text",
    "normalize_token",
    "tokenize",
    "translit_key",
]

FIELDS = ("title", "text")
_TEXT_BASE = 1 << 24  # positions of text tokens start here, so no phrase/window spans both fields
_SNIPPET = 160
_MAX_PARTS = 20


class TopicSyntaxError(ConfigError):
    """A topic query (or weight key) that cannot be compiled; names the topic key and position."""


# --------------------------------------------------------------------------------------------
# Tokenising and normalising

_MARKS = (
    "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
    "\u0900-\u0dff\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u1ab0-\u1aff\u1dc0-\u1dff\u200c\u200d"
    "\u20d0-\u20ff\ufe20-\ufe2f\u00ad"
)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# An apostrophe between two Cyrillic letters is part of the word (Ukrainian перемир'я, об'єкт);
# elsewhere it separates (French l'Ukraine).
_CYR_APOS = "(?<=[\u0400-\u04ff])['\u2019\u02bc](?=[\u0400-\u04ff])"
_WORD = rf"[\w{_MARKS}]+"
_TOKEN_RE = re.compile(rf"{_WORD}(?:{_CYR_APOS}{_WORD})*")
_PIECE_RE = re.compile(rf"(?:[^\W_]|[{_MARKS}])+")  # underscores separate words
_APOS = str.maketrans("", "", "'\u2019\u02bc")
_CJK_RE = re.compile(rf"[{_CJK}]")
_FOLD = str.maketrans({"ł": "l", "ı": "i", "ø": "o", "đ": "d", "ð": "d", "æ": "ae", "œ": "oe", "þ": "th"})

_norm_cache: dict[str, tuple[str, ...]] = {}
_translit_cache: dict[str, str] = {}
_CACHE_MAX = 500_000


def _strip_marks(s: str) -> str:
    d = unicodedata.normalize("NFD", s)
    return "".join(c for c in d if not unicodedata.combining(c) and c not in "\u200c\u200d\u00ad")


def _normalize_uncached(raw: str) -> tuple[str, ...]:
    s = unicodedata.normalize("NFKC", raw).casefold().translate(_APOS)
    if not s.isascii():
        s = unicodedata.normalize("NFC", _strip_marks(s)).translate(_FOLD)
    out: list[str] = []
    for piece in _PIECE_RE.findall(s):  # NFKC may split a token; "_" separates
        if _CJK_RE.search(piece):
            buf = ""
            for ch in piece:
                if _CJK_RE.match(ch):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(ch)
                else:
                    buf += ch
            if buf:
                out.append(buf)
        else:
            out.append(piece)
    return tuple(out)


def normalize_token(raw: str) -> tuple[str, ...]:
    """The normalised token(s) of one raw token: usually one, several for CJK or NFKC splits."""
    got = _norm_cache.get(raw)
    if got is None:
        if len(_norm_cache) > _CACHE_MAX:
            _norm_cache.clear()
        got = _norm_cache[raw] = _normalize_uncached(raw)
    return got


def tokenize(text: str) -> list[str]:
    """Normalised tokens of a text, in order (what queries are compared with)."""
    return [t for m in _TOKEN_RE.finditer(text) for t in normalize_token(m.group())]


_TR_RULES = [
    (re.compile("tsch"), "ch"),
    (re.compile("sch"), "sh"),
    (re.compile("kh"), "h"),
    (re.compile("w"), "v"),
]
_TR_IYJ = re.compile("[iyj]+")
_TR_DOUBLE = re.compile(r"([a-z])\1+")
_TR_KEEP = re.compile("[^a-z0-9]+")


def translit_key(token: str) -> str:
    """Loose Latin key of a normalised token, for transliterating topics (rules in the module doc)."""
    got = _translit_cache.get(token)
    if got is None:
        s = _TR_KEEP.sub("", anyascii(token).lower())
        for rx, rep in _TR_RULES:
            s = rx.sub(rep, s)
        s = _TR_DOUBLE.sub(r"\1", _TR_IYJ.sub("i", s))
        if len(_translit_cache) > _CACHE_MAX:
            _translit_cache.clear()
        got = _translit_cache[token] = s or token
    return got


def _field_spans(s: str) -> list[tuple[int, int]]:
    """Character span of each token position of a field (computed only to explain a match)."""
    spans: list[tuple[int, int]] = []
    for m in _TOKEN_RE.finditer(s):
        normed = normalize_token(m.group())
        st, en = m.span()
        if len(normed) == 1:
            spans.append((st, en))
        else:
            one_each = len(normed) == en - st  # e.g. CJK: one token per character
            spans.extend((st + i, st + i + 1) if one_each else (st, en) for i in range(len(normed)))
    return spans


@dataclass(slots=True)
class _Doc:
    title: str
    text: str
    postings: dict[str, list[int]]
    _spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def span(self, pos: int) -> tuple[str, int, int]:
        fld, i = ("text", pos - _TEXT_BASE) if pos >= _TEXT_BASE else ("title", pos)
        spans = self._spans.get(fld)
        if spans is None:
            spans = self._spans[fld] = _field_spans(self.source(fld))
        s, e = spans[i]
        return fld, s, e

    def source(self, fld: str) -> str:
        return self.text if fld == "text" else self.title


def _analyse(title: str, text: str) -> _Doc:
    postings: dict[str, list[int]] = {}
    get = _norm_cache.get
    for base, s in ((0, title), (_TEXT_BASE, text)):
        if not s:
            continue
        normed = [get(raw) or normalize_token(raw) for raw in _TOKEN_RE.findall(s)]
        flat = [t for n in normed for t in n]
        for pos, tok in enumerate(flat, base):
            lst = postings.get(tok)
            if lst is None:
                postings[tok] = [pos]
            else:
                lst.append(pos)
    return _Doc(title, text, postings)


# --------------------------------------------------------------------------------------------
# Compiled query nodes

# A hit: (query text of the leaf, first position, last position)
_Hit = tuple[str, int, int]
_Hits = dict[int, list[int]]


def _in_field(plist: list[int], fld: str | None) -> list[int]:
    if fld is None:
        return plist
    cut = bisect_left(plist, _TEXT_BASE)
    return plist[:cut] if fld == "title" else plist[cut:]


class _Node:
    def ev(self, hits: _Hits) -> list[_Hit] | None:  # None: false; list: true, with what matched
        raise NotImplementedError

    def tids(self) -> set[int]:
        return set()


@dataclass(slots=True)
class _Term(_Node):
    tid: int
    fld: str | None
    text: str

    def ev(self, hits: _Hits) -> list[_Hit] | None:
        plist = hits.get(self.tid)
        if not plist:
            return None
        plist = _in_field(plist, self.fld)
        return [(self.text, plist[0], plist[0])] if plist else None

    def tids(self) -> set[int]:
        return {self.tid}


@dataclass(slots=True)
class _Phrase(_Node):
    tid_list: list[int]
    slop: int | None  # None: exact order, adjacent; int: any order within a window
    fld: str | None
    text: str
    gate_tid: int = -1  # the term with the longest key: the most selective one to pre-check

    def ev(self, hits: _Hits) -> list[_Hit] | None:
        lists = []
        for t in self.tid_list:
            plist = hits.get(t)
            if not plist:
                return None
            plist = _in_field(plist, self.fld)
            if not plist:
                return None
            lists.append(plist)
        n = len(lists)
        if self.slop is None:
            rest = [set(pl) for pl in lists[1:]]
            for p in lists[0]:
                if all(p + i + 1 in s for i, s in enumerate(rest)):
                    return [(self.text, p, p + n - 1)]
            return None
        width = n - 1 + self.slop
        merged = sorted((p, i) for i, pl in enumerate(lists) for p in pl)
        counts = [0] * n
        have = 0
        lo = 0
        for hi, (p, i) in enumerate(merged):
            if counts[i] == 0:
                have += 1
            counts[i] += 1
            while merged[lo][0] < p - width:
                j = merged[lo][1]
                counts[j] -= 1
                if counts[j] == 0:
                    have -= 1
                lo += 1
            if have == n:
                window = merged[lo : hi + 1]
                return [(self.text, window[0][0], p)]
        return None

    def tids(self) -> set[int]:
        return set(self.tid_list)


@dataclass(slots=True)
class _And(_Node):
    children: list[_Node]

    def ev(self, hits: _Hits) -> list[_Hit] | None:
        out: list[_Hit] = []
        for c in self.children:
            r = c.ev(hits)
            if r is None:
                return None
            out.extend(r)
        return out

    def tids(self) -> set[int]:
        return set().union(*(c.tids() for c in self.children))


@dataclass(slots=True)
class _Or(_Node):
    children: list[_Node]

    def ev(self, hits: _Hits) -> list[_Hit] | None:
        out: list[_Hit] | None = None
        for c in self.children:
            r = c.ev(hits)
            if r is not None:
                out = (out or []) + r
        return out

    def tids(self) -> set[int]:
        return set().union(*(c.tids() for c in self.children))


@dataclass(slots=True)
class _Not(_Node):
    child: _Node

    def ev(self, hits: _Hits) -> list[_Hit] | None:
        return [] if self.child.ev(hits) is None else None

    def tids(self) -> set[int]:
        return self.child.tids()


def _gate(node: _Node) -> set[int] | None:
    """Terms of which at least one must occur for `node` to be true (None: no such set, e.g. NOT)."""
    if isinstance(node, _Term):
        return {node.tid}
    if isinstance(node, _Phrase):
        return {node.gate_tid}
    if isinstance(node, _Or):
        out: set[int] = set()
        for c in node.children:
            g = _gate(c)
            if g is None:
                return None
            out |= g
        return out
    if isinstance(node, _And):
        gates = [g for g in map(_gate, node.children) if g is not None]
        return min(gates, key=len) if gates else None
    return None


class _Terms:
    """All terms of all topics: exact and prefix tables, for the normalised and the translit forms."""

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.prefix: dict[str, int] = {}
        self.exact_tr: dict[str, int] = {}
        self.prefix_tr: dict[str, int] = {}
        self.n = 0

    def id_for(self, key: str, is_prefix: bool, translit: bool) -> int:
        table = (
            (self.prefix_tr if is_prefix else self.exact_tr)
            if translit
            else (self.prefix if is_prefix else self.exact)
        )
        tid = table.get(key)
        if tid is None:
            tid = table[key] = self.n
            self.n += 1
        return tid

    def freeze(self) -> None:
        self.prefix_lens = sorted({len(k) for k in self.prefix})
        self.prefix_tr_lens = sorted({len(k) for k in self.prefix_tr})
        self.need_translit = bool(self.exact_tr or self.prefix_tr)


class _Fail(Exception):
    def __init__(self, pos: int, problem: str) -> None:
        super().__init__(problem)
        self.pos, self.problem = pos, problem


def _pos(node: lt.Item) -> int:
    p = getattr(node, "pos", None)
    return int(p) if p is not None else 0


_WILD_TAIL = re.compile(r"\*+$")


class _Builder:
    def __init__(self, terms: _Terms, translit: bool) -> None:
        self.terms, self.translit = terms, translit

    def key(self, tok: str) -> str:
        return translit_key(tok) if self.translit else tok

    def _tokens(self, raw: str, node: lt.Item) -> list[tuple[str, bool]]:
        """(normalised token, is_prefix) for a word or phrase body; checks wildcard use."""
        raw = raw.replace("\\", "")
        if "?" in raw:
            raise _Fail(_pos(node), f"'?' wildcards are not supported in {raw!r} (use a trailing *)")
        out: list[tuple[str, bool]] = []
        for m in _TOKEN_RE.finditer(raw):
            is_prefix = raw[m.end() : m.end() + 1] == "*"
            if m.start() > 0 and raw[m.start() - 1] == "*":
                raise _Fail(_pos(node), f"only trailing * wildcards are supported: {raw!r}")
            toks = normalize_token(m.group())
            for i, t in enumerate(toks):
                out.append((t, is_prefix and i == len(toks) - 1))
        if not out:
            raise _Fail(_pos(node), f"{raw!r} has no letters or digits to match")
        for t, is_prefix in out:
            if is_prefix and len(self.key(t)) < 2:
                raise _Fail(_pos(node), f"wildcard prefix {t!r}* is too short (at least 2 letters)")
        return out

    def _leaf(self, toks: list[tuple[str, bool]], slop: int | None, fld: str | None, text: str) -> _Node:
        keys = [self.key(t) for t, _ in toks]
        tids = [self.terms.id_for(k, p, self.translit) for k, (_, p) in zip(keys, toks, strict=True)]
        if len(tids) == 1:
            return _Term(tids[0], fld, text)
        longest = max(range(len(keys)), key=lambda i: len(keys[i]))
        return _Phrase(tids, slop, fld, text, tids[longest])

    def build(self, node: lt.Item, fld: str | None = None) -> _Node:
        shown = (f"{fld}:" if fld else "") + str(node).strip()
        if isinstance(node, lt.SearchField):
            name = node.name.lower()
            if name not in FIELDS:
                raise _Fail(_pos(node), f"unknown field {node.name!r} (use title: or text:)")
            if fld is not None and fld != name:
                raise _Fail(_pos(node), f"field {name!r} inside field {fld!r}")
            return self.build(node.expr, name)
        if isinstance(node, lt.Group | lt.FieldGroup):
            return self.build(node.expr, fld)
        if isinstance(node, lt.AndOperation | lt.UnknownOperation):
            return _And([self.build(c, fld) for c in node.children])
        if isinstance(node, lt.OrOperation):
            return _Or([self.build(c, fld) for c in node.children])
        if isinstance(node, lt.Not | lt.Prohibit):
            return _Not(self.build(node.a, fld))
        if isinstance(node, lt.Plus):
            return self.build(node.a, fld)
        if isinstance(node, lt.Word):
            value = node.value
            if value.upper() in ("AND", "OR", "NOT", "&&", "||"):
                raise _Fail(_pos(node), f"unexpected operator {value!r}")
            return self._leaf(self._tokens(value, node), None, fld, shown)
        if isinstance(node, lt.Phrase):
            return self._leaf(self._tokens(node.value.strip('"'), node), None, fld, shown)
        if isinstance(node, lt.Proximity):
            if not isinstance(node.term, lt.Phrase):
                raise _Fail(_pos(node), "proximity ~N applies to a phrase")
            slop = int(float(node.degree)) if node.degree is not None else 1
            return self._leaf(self._tokens(node.term.value.strip('"'), node.term), slop, fld, shown)
        if isinstance(node, lt.Fuzzy):
            raise _Fail(_pos(node), f'fuzzy {node!s} is not supported (for nearness write "a b"~N)')
        if isinstance(node, lt.Boost):
            raise _Fail(_pos(node), f"boost {node!s} is not supported (use the topic's weights)")
        if isinstance(node, lt.Regex):
            raise _Fail(_pos(node), "regular expressions are not supported")
        if isinstance(node, lt.Range | lt.From | lt.To):
            raise _Fail(_pos(node), "ranges are not supported")
        raise _Fail(_pos(node), f"unsupported query element {str(node).strip()!r}")


_LUQUM_POS = re.compile(r"at position (\d+)")


def _parse(query: str) -> lt.Item:
    try:
        return luqum_parse(query)
    except IllegalCharacterError as exc:
        m = _LUQUM_POS.search(str(exc))
        bad = str(exc).split("'")[1] if "'" in str(exc) else "?"
        problem = "unclosed quote" if bad.startswith('"') else f"illegal character {bad[:1]!r}"
        raise _Fail(int(m.group(1)) if m else 0, problem) from None
    except ParseError as exc:
        msg = str(exc)
        m = _LUQUM_POS.search(msg)
        if m:
            tok = re.search(r"unexpected\s+'(.*)' at position", msg)
            return_pos = int(m.group(1))
            raise _Fail(return_pos, f"unexpected {tok.group(1)!r}" if tok else msg) from None
        raise _Fail(len(query), "unexpected end of query (unclosed parenthesis or missing term?)") from None


def _compile_query(query: str, builder: _Builder) -> _Node:
    if not query.strip():
        raise _Fail(0, "empty query")
    return builder.build(_parse(query))


# --------------------------------------------------------------------------------------------
# Topics


@dataclass(slots=True)
class _Topic:
    cfg: TopicConfig
    main: _Node | None
    langs: dict[str, _Node]
    weights: list[tuple[str, float, _Node]]
    tids: frozenset[int] = frozenset()
    always: bool = False  # true on a document without any of its terms (e.g. "NOT x")


def _lang_key(lang: str | None) -> str | None:
    if not lang:
        return None
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0] or None


_OPERATORS = re.compile(r'["()]|\b(?:AND|OR|NOT)\b|(?:^|\s)[-+]|:')


def _weight_query(key: str) -> str:
    """A weight key with several words and no query syntax is a phrase: "gencatan senjata"."""
    key = key.strip()
    if len(key.split()) > 1 and not _OPERATORS.search(key):
        return f'"{key}"'
    return key


def _compile_topic(t: TopicConfig, terms: _Terms, source_file: str) -> _Topic:
    b = _Builder(terms, t.transliterate)

    def comp(q: str, key: str) -> _Node:
        try:
            return _compile_query(q, b)
        except _Fail as f:
            raise TopicSyntaxError(
                source_file, key, f"syntax error at position {f.pos}: {f.problem}"
            ) from None

    base = f"topics.{t.id}"
    main = comp(t.query, f"{base}.query") if t.query.strip() else None
    langs = {
        (_lang_key(lang) or lang): comp(q, f"{base}.queries.{lang}")
        for lang, q in t.queries.items()
        if q.strip()
    }
    weights = [(k, float(w), comp(_weight_query(k), f"{base}.weights.{k}")) for k, w in t.weights.items()]
    if main is None and not langs and not weights:
        raise ConfigError(source_file, f"{base}.query", "topic has no query, no queries and no weights")
    nodes: list[_Node] = [n for n in [main, *langs.values()] if n is not None] + [w[2] for w in weights]
    # Pre-check: the topic can only match if one of these terms occurs (query nodes; or weight
    # nodes for a weights-only topic), so most topics are skipped without evaluating their tree.
    gate_nodes = [n for n in [main, *langs.values()] if n is not None] or [w[2] for w in weights]
    gates = [_gate(n) for n in gate_nodes]
    top = _Topic(t, main, langs, weights)
    if any(g is None for g in gates):
        top.always = True
    else:
        top.tids = frozenset(set().union(*(g for g in gates if g is not None)))
    top.always = top.always or any(n.ev({}) is not None for n in nodes)
    return top


@dataclass(slots=True)
class TopicSet:
    """Compiled topics; `tag` evaluates all of them in one pass over a document."""

    _topics: list[_Topic]
    _terms: _Terms
    last_stats: dict[str, int] = field(default_factory=dict)
    _tok_cache: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def compile(cls, topics: Sequence[TopicConfig], source_file: str = "topics.toml") -> TopicSet:
        terms = _Terms()
        compiled = [_compile_topic(t, terms, source_file) for t in topics]
        terms.freeze()
        return cls(compiled, terms)

    @property
    def ids(self) -> list[str]:
        return [t.cfg.id for t in self._topics]

    def _term_ids(self, tok: str) -> tuple[int, ...]:
        """All term ids (of all topics) that a normalised document token matches."""
        T = self._terms
        found: list[int] = []
        _probe(tok, T.exact, T.prefix, T.prefix_lens, found)
        if T.need_translit:
            _probe(translit_key(tok), T.exact_tr, T.prefix_tr, T.prefix_tr_lens, found)
        return tuple(found)

    def _lookup(self, doc: _Doc) -> _Hits:
        """Probe every distinct document token once against the terms of ALL topics.

        The answer per token is cached (vocabulary repeats across articles), so a warm lookup is one
        dict probe per distinct token, whatever the number of topics."""
        hits: _Hits = {}
        merged: set[int] = set()
        cache = self._tok_cache
        misses = 0
        for tok, plist in doc.postings.items():
            tids = cache.get(tok)
            if tids is None:
                misses += 1
                if len(cache) > _CACHE_MAX:
                    cache.clear()
                tids = cache[tok] = self._term_ids(tok)
            for tid in tids:
                if tid in hits:
                    hits[tid] = hits[tid] + plist
                    merged.add(tid)
                else:
                    hits[tid] = plist
        for tid in merged:
            hits[tid] = sorted(set(hits[tid]))
        self.last_stats = {
            "tokens": sum(map(len, doc.postings.values())),
            "unique": len(doc.postings),
            "probes": len(doc.postings),
            "cache_misses": misses,
            "term_hits": len(hits),
        }
        return hits

    def tag(
        self, article_id: str, title: str | None, text: str | None, lang: str | None = None
    ) -> list[TopicMatch]:
        doc = _analyse(title or "", text or "")
        hits = self._lookup(doc)
        found = hits.keys()
        lk = _lang_key(lang)
        out: list[TopicMatch] = []
        evaluated = 0
        for top in self._topics:
            if not top.always and top.tids.isdisjoint(found):
                continue
            evaluated += 1
            m = self._eval_topic(top, hits, lk)
            if m is not None:
                score, which, parts, wmatched = m
                out.append(
                    TopicMatch(article_id, top.cfg.id, score, _explain(doc, which, parts, wmatched, top))
                )
        self.last_stats["topics_evaluated"] = evaluated
        return out

    @staticmethod
    def _eval_topic(
        top: _Topic, hits: _Hits, lk: str | None
    ) -> tuple[float, str, list[_Hit], dict[str, float]] | None:
        which = ""
        parts: list[_Hit] | None = None
        if top.main is not None:
            parts = top.main.ev(hits)
            which = "any"
        if parts is None:
            for lang, node in top.langs.items():
                if lk is not None and lang != lk:
                    continue
                parts = node.ev(hits)
                if parts is not None:
                    which = lang
                    break
        has_query = top.main is not None or bool(top.langs)
        if has_query and parts is None:
            return None
        parts = parts or []
        score = 1.0
        wmatched: dict[str, float] = {}
        if top.weights:
            score = 0.0
            for key, w, node in top.weights:
                r = node.ev(hits)
                if r is not None:
                    score += w
                    wmatched[key] = w
                    if not has_query or len(parts) < _MAX_PARTS:
                        parts = parts + r
            if not has_query:
                which = "weights"
        if score < top.cfg.threshold:
            return None
        return round(score, 6), which, parts, wmatched

    def tag_many(self, docs: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[TopicMatch]:
        out: list[TopicMatch] = []
        for article_id, title, text, lang in docs:
            out.extend(self.tag(article_id, title, text, lang))
        return out


# --------------------------------------------------------------------------------------------
# Explanations

_WS = re.compile(r"\s+")


def _probe(tok: str, exact: dict[str, int], prefix: dict[str, int], lens: Sequence[int], found: list[int]) -> None:
    """Add the ids of the exact term and of every prefix (wildcard) term that `tok` matches."""
    tid = exact.get(tok)
    if tid is not None:
        found.append(tid)
    for k in lens:
        if k > len(tok):
            break
        tid = prefix.get(tok[:k])
        if tid is not None:
            found.append(tid)


def _surface(doc: _Doc, first: int, last: int) -> tuple[str, str]:
    fld, s, _ = doc.span(first)
    _, _, e = doc.span(last)
    src = doc.source(fld)
    if e - s > 60:  # a wide proximity window: show the two ends
        _, _, e1 = doc.span(first)
        s2 = doc.span(last)[1]
        return fld, f"{src[s:e1]} … {src[s2:e]}"
    return fld, _WS.sub(" ", src[s:e])


def _snippet(src: str, s: int, e: int) -> str:
    a = max(0, s - (_SNIPPET - (e - s)) // 3)
    b = min(len(src), a + _SNIPPET)
    a = max(0, min(a, b - _SNIPPET))
    if a > 0:
        sp = src.find(" ", a, s)
        a = sp + 1 if sp != -1 else a
    if b < len(src):
        sp = src.rfind(" ", e, b)
        b = sp if sp != -1 else b
    body = _WS.sub(" ", src[a:b]).strip()
    return ("..." if a > 0 else "") + body + ("..." if b < len(src) else "")


def _explain(
    doc: _Doc, which: str, hits: list[_Hit], weights: dict[str, float], top: _Topic
) -> dict[str, Any]:
    parts: list[str] = []
    terms: list[str] = []
    fields: list[str] = []
    seen: set[str | tuple[int, int]] = set()
    for text, first, last in sorted(hits, key=lambda h: h[1]):
        if text in seen or (first, last) in seen or len(parts) >= _MAX_PARTS:
            continue  # one entry per query clause, and per place in the article
        seen.update((text, (first, last)))
        fld, surf = _surface(doc, first, last)
        parts.append(text)
        terms.append(surf)
        fields.append(fld)
    snippet = ""
    if hits:
        in_text = [h for h in hits if h[1] >= _TEXT_BASE]
        pool = sorted(in_text or hits, key=lambda h: h[1])
        spans = [(h[0], doc.span(h[1])[1], doc.span(h[2])[2]) for h in pool]
        fld = "text" if in_text else "title"

        def density(i: int) -> int:  # distinct clauses in a snippet-wide window starting near hit i
            lo, hi = spans[i][1] - 40, spans[i][1] + _SNIPPET - 40
            return len({q for q, a, b in spans if a >= lo and b <= hi})

        best = max(range(len(spans)), key=lambda i: (density(i), -i))
        snippet = _snippet(doc.source(fld), spans[best][1], spans[best][2])
    exp: dict[str, Any] = {
        "parts": parts,
        "terms": terms,
        "fields": fields,
        "snippet": snippet,
        "lang_query": which,
    }
    if top.weights:
        exp["weights"] = weights
        exp["threshold"] = top.cfg.threshold
    return exp


def explain_text(explanation: dict[str, Any]) -> str:
    """One short line: 'matched "peace plan" (title), Witkoff (text): "...snippet..."'."""
    items: list[str] = []
    seen: set[tuple[str, str]] = set()
    terms = explanation.get("terms") or []
    fields = explanation.get("fields") or []
    for term, fld in zip(terms, fields, strict=False):
        if (term.casefold(), fld) in seen:
            continue
        seen.add((term.casefold(), fld))
        shown = f'"{term}"' if " " in term else term
        items.append(f"{shown} ({fld})")
    more = len(terms) - len(seen)
    line = "matched " + (", ".join(items[:6]) if items else "(no positive terms)")
    if len(items) > 6:
        line += f" and {len(items) - 6} more"
    elif more > 0 and not items:
        line += f" and {more} more"
    lq = explanation.get("lang_query")
    if lq and lq not in ("any", "weights"):
        line += f" [{lq} query]"
    snippet = explanation.get("snippet")
    if snippet:
        line += f': "{snippet}"'
    return line


# --------------------------------------------------------------------------------------------
# Validation for the CLI


_LANG_RE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]+)?$")


def check_topics(topics: Sequence[TopicConfig], source_file: str = "topics.toml") -> list[str]:
    """Every problem found in the topics, one readable line each; empty when all is fine."""
    problems: list[str] = []
    seen: set[str] = set()
    for t in topics:
        if t.id in seen:
            problems.append(f"{source_file}: topics.{t.id}: topic id used twice")
        seen.add(t.id)
        for lang in t.queries:
            if not _LANG_RE.match(lang):
                problems.append(
                    f"{source_file}: topics.{t.id}.queries.{lang}: not a language code like 'en' or 'pt-BR'"
                )
        try:
            top = _compile_topic(t, _Terms(), source_file)
        except ConfigError as exc:
            problems.append(str(exc))
            # report the other queries of this topic too
            for lang, q in t.queries.items():
                try:
                    _compile_query(q, _Builder(_Terms(), t.transliterate))
                except _Fail as f:
                    line = (
                        f"{source_file}: topics.{t.id}.queries.{lang}: "
                        f"syntax error at position {f.pos}: {f.problem}"
                    )
                    if line not in problems:
                        problems.append(line)
            continue
        if top.always:
            problems.append(
                f"{source_file}: topics.{t.id}: the query matches documents without any of its "
                "terms (a query made only of NOT?)"
            )
        if t.weights:
            best = sum(w for w in t.weights.values() if w > 0)
            if best < t.threshold:
                problems.append(
                    f"{source_file}: topics.{t.id}.threshold: {t.threshold} can never be reached "
                    f"(positive weights sum to {best})"
                )
        elif t.threshold > 1.0:
            problems.append(
                f"{source_file}: topics.{t.id}.threshold: {t.threshold} > 1.0 without weights: "
                "the topic can never match"
            )
    return problems
