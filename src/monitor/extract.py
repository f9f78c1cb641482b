"""Extraction: raw page bytes in, article fields out. Never fetches.

trafilatura runs on the response *bytes* (it detects the encoding itself), comments excluded, with
metadata, first in precision mode; when that yields fewer than PRECISION_FALLBACK_WORDS words it runs
again in its balanced mode. When the text is still short, the page's own JSON-LD `articleBody`, then
`og:description`, then the feed entry's summary are tried; a JSON-LD `articleBody` at least
STRUCTURED_RATIO times longer than the extracted text replaces it (the extractor cut the article).
`extractor` records which path produced the text. Thresholds were chosen by measurement on the
evaluation pages (bench/extraction.py, docs/extraction.md). The language comes from py3langid on the
text (the page's `lang` attribute is a hint only). Work runs in worker processes with a per-document
time limit; trafilatura's caches are reset every RESET_EVERY documents a worker has done. For the
ingest flow the workers also run `novelty.prepare` on each article they extract (`prepare_novelty`):
it is pure and per article, so it belongs next to the text on both cores, not serial in the flow.
Pages may come zstd-compressed (`ExtractInput.compressed`, `pack_fetched`): they are unpacked here,
in the worker, so that between fetch and extraction the flow holds and sends a fifth of the bytes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import signal
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import zstandard

from monitor import byline
from monitor.models import ArticleStatus, FetchResult

HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "")
EARLIEST_DATE = datetime(1995, 1, 1, tzinfo=UTC)
# precision mode first: +0.009 F1 on scrapinghub-aeb; it sometimes keeps only a fragment, and rerunning
# in balanced mode below 40 words recovers those pages (plateau 25-60 words, docs/extraction.md)
PRECISION_FALLBACK_WORDS = 40
# JSON-LD articleBody replaces an extraction it is at least twice as long as (>= 1.5 measured the same)
STRUCTURED_RATIO = 2.0
# trafilatura's LRU caches grow with the pages seen; resetting them costs a gc pass and cold caches
# (every 50 documents cost ~10%), so a worker resets them every RESET_EVERY documents (bench/pipeline.py)
RESET_EVERY = 500
# a worker's private memory grows with the pages it has parsed (heap fragments, copied-on-write pages of
# the forkserver's) and no reset of caches gives it back; the pool forks fresh workers every RENEW_AFTER
# pages it has been given (ExtractionPool.renew_if_worn; measured in docs/benchmarks.md, session 14)
RENEW_AFTER = 1000
# trafilatura's fast mode skips comparing its text with readability's and justext's, a quarter of its
# CPU. On the 1,171 evaluation pages that comparison changed 68 texts, almost all with a fast text under
# 1,000 characters; rerunning the full cascade below that (14% of pages) kept both F1 scores within
# 0.0001 of the full cascade everywhere (docs/extraction.md)
FULL_CASCADE_BELOW = 1000
# every bare_extraction call; bench/pipeline.py's equal-options ceiling uses the same
TRAFILATURA_OPTIONS: dict[str, Any] = {"include_comments": False, "with_metadata": True, "include_tables": True}
# Article.extra key of the novelty.Prepared a worker computed (flows/ingest.py pops it)
NOVELTY_PREP = "novelty_prep"


@dataclass(slots=True)
class ExtractInput:
    url: str
    content: bytes
    content_type: str | None = None
    feed_title: str | None = None
    feed_summary: str | None = None
    feed_published: datetime | None = None
    compressed: bool = False  # `content` is compress_html's zstd blob of the page


@dataclass(slots=True)
class ExtractOutput:
    url: str
    status: ArticleStatus
    status_reason: str | None = None
    title: str | None = None
    author: str | None = None
    published: datetime | None = None
    sitename: str | None = None
    description: str | None = None
    text: str | None = None
    lang: str | None = None
    lang_confidence: float | None = None
    extractor: str | None = None
    canonical_url: str | None = None
    content_hash: str | None = None
    image: str | None = None
    notes: list[str] = field(default_factory=list)
    novelty: Any = None  # novelty.Prepared of the text when asked for (prepare_novelty); else None


class ExtractionTimeout(BaseException):
    """A page's time limit, raised by SIGALRM in whatever the worker runs at that moment.

    A BaseException, not an Exception: trafilatura and its helpers catch `Exception` around many
    steps, and swallowed there the limit let the page run on to the end (or fail with an unrelated
    error from the step it cut short).
    """


_identifier: Any = None


def detect_language(text: str, hint: str | None = None) -> tuple[str | None, float | None]:
    """py3langid on the text; the page's lang attribute decides only when the text is too short."""
    global _identifier
    sample = text[:4000]
    if len(sample.strip()) < 20:
        return (hint.split("-")[0].lower() if hint else None), None
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)
    lang, prob = _identifier.classify(sample)
    return str(lang), round(float(prob), 4)


_WS = re.compile(r"\s+")
# Chinese and Japanese are written without spaces: about two such characters make a word
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def count_words(text: str) -> int:
    """Whitespace words, with runs of CJK characters counted at two characters a word."""
    cjk = len(_CJK.findall(text))
    if not cjk:
        return len(text.split())
    return len(_CJK.sub(" ", text).split()) + (cjk + 1) // 2


def normalise_for_hash(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", text).strip()


def content_hash(text: str) -> str:
    return hashlib.sha1(normalise_for_hash(text).encode("utf-8")).hexdigest()


_JSONLD_RE = re.compile(rb"<script[^>]+application/ld\+json[^>]*>(.*?)</script>", re.I | re.S)
_META_RE = re.compile(rb"<meta\s[^>]*>", re.I)
_ATTR_RE = re.compile(rb"""([a-zA-Z:_-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_LANG_RE = re.compile(rb"<html[^>]*\slang\s*=\s*[\"']?([a-zA-Z-]{2,10})", re.I)


def _jsonld_body(raw: bytes) -> str | None:
    for block in _JSONLD_RE.findall(raw[:3_000_000]):
        try:
            data = json.loads(block.decode("utf-8", "replace"))
        except ValueError:
            continue
        stack: list[Any] = [data]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, dict):
                body = node.get("articleBody")
                if isinstance(body, str) and body.strip():
                    return body.strip()
                stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return None


def _meta_content(raw: bytes, key: str) -> str | None:
    for tag in _META_RE.findall(raw[:500_000]):
        attrs = {m.group(1).lower(): (m.group(2) or m.group(3) or b"") for m in _ATTR_RE.finditer(tag)}
        name = attrs.get(b"property") or attrs.get(b"name") or b""
        if name.decode("ascii", "replace").lower() == key:
            value = attrs.get(b"content", b"").decode("utf-8", "replace").strip()
            return value or None
    return None


def _looks_binary(content: bytes) -> bool:
    head = content[:2048]
    return b"\x00" in head or head.startswith((b"%PDF", b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"PK\x03\x04"))


def _parse_date(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def plausible_date(dt: datetime | None, now: datetime) -> tuple[datetime | None, str | None]:
    """Reject dates before 1995 or more than a day in the future, saying why."""
    if dt is None:
        return None, None
    if dt < EARLIEST_DATE:
        return None, f"date {dt.date()} rejected: before 1995"
    if dt > now + timedelta(days=1):
        return None, f"date {dt.date()} rejected: in the future"
    return dt, None


def tune_trafilatura() -> None:
    """Make trafilatura cheaper to run in this process without changing what it finds. Idempotent.

    All three changes cut the cost of lxml calling back into Python while trafilatura walks and searches
    each page's tree, pass after pass. Measured on the 1,171 evaluation pages in one process, every
    extracted field equal (`tests/test_extract.py` compares them with trafilatura as shipped):

    - **Element classes picked in C.** lxml.html's parser asks a Python method
      (`HtmlElementClassLookup.lookup`) for the class of every element lxml hands to Python, about
      3,100 times a page. lxml's C lookup gives `HtmlElement` to every element, as the Python one
      does for every tag but the form controls (form, input, select, textarea, label), whose own
      classes nothing in trafilatura or htmldate uses. 26.4 -> 24.6 ms a page.
    - **Plain strings into the regular-expression tests.** The 20 XPaths in trafilatura's
      `xpaths` lists that call EXSLT `re:test` get each tested attribute as an lxml "smart string",
      which holds a proxy of its element; the same XPaths compiled with `smart_strings=False`
      pass plain strings. They select elements, never strings, so their results are the same.
      22.6 -> 21.5 ms a page.
    - **No regular-expression call for an absent attribute.** `re:test(@class, '...')` calls back into
      Python for every element the step reaches, with or without a class (an absent attribute tests
      the empty string). Each such test is guarded by the attribute's presence
      (`_guard_regex_tests`) wherever its expression cannot match the empty string, so the answer
      is the same. Those 20 XPaths over 600 bench pages' trees: 26.6 -> 23.5 ms a page.
    """
    global _TUNED
    if _TUNED:
        return
    from lxml import etree
    from lxml import html as lxml_html
    from trafilatura import xpaths
    from trafilatura.utils import HTML_PARSER

    HTML_PARSER.set_element_class_lookup(etree.ElementDefaultClassLookup(
        element=lxml_html.HtmlElement, comment=lxml_html.HtmlComment,
        pi=lxml_html.HtmlProcessingInstruction, entity=lxml_html.HtmlEntity))
    for value in vars(xpaths).values():
        if isinstance(value, list):
            for i, xp in enumerate(value):
                if isinstance(xp, etree.XPath) and "re:test" in xp.path:
                    _REPLACED.append((value, i, xp))
                    value[i] = etree.XPath(_guard_regex_tests(xp.path), namespaces={"re": xpaths.REGEXP_NS},
                                           smart_strings=False)
    _TUNED = True


# An EXSLT regular-expression test on attributes: re:test(@a|@b, 'expression'[, 'flags'])
_REGEX_TEST = re.compile(r"re:test\((@\w+(?:\|@\w+)*), '([^']*)'(?:, '(\w*)')?\)")


def _guard_regex_tests(path: str) -> str:
    """`path` with each attribute regex test that cannot match an empty string run only when one of
    its attributes is present: `re:test(@class, 'x')` becomes `((@class) and re:test(@class, 'x'))`."""
    def guarded(m: re.Match[str]) -> str:
        flags = re.IGNORECASE if "i" in (m[3] or "") else 0
        if re.search(m[2], "", flags) is not None:
            return m[0]
        return f"(({m[1]}) and {m[0]})"

    return _REGEX_TEST.sub(guarded, path)


def untune_trafilatura() -> None:
    """trafilatura as shipped again (tests compare both ways)."""
    global _TUNED
    from lxml import html as lxml_html
    from trafilatura.utils import HTML_PARSER

    HTML_PARSER.set_element_class_lookup(lxml_html.HtmlElementClassLookup())
    for value, i, xp in _REPLACED:
        value[i] = xp
    _REPLACED.clear()
    _TUNED = False


_TUNED = False
_REPLACED: list[tuple[list[Any], int, Any]] = []  # (trafilatura's list, index, its own XPath) replaced
TUNE_TRAFILATURA = True  # page_tree tunes the process first (tests turn it off to compare)


def page_tree(content: bytes) -> Any:
    """The page parsed once, as trafilatura parses it (encoding detection, repairs, size limit)."""
    from trafilatura.settings import DEFAULT_CONFIG
    from trafilatura.utils import load_html

    if TUNE_TRAFILATURA:
        tune_trafilatura()
    return load_html(content, DEFAULT_CONFIG.getint("DEFAULT", "MAX_FILE_SIZE"))


def page_metadata(tree: Any, url: str) -> Any:
    """trafilatura's `extract_metadata` (2.3.1) without the categories, tags and licence we never use.

    Those three searches walked the whole tree for 2.9 of the 9.6 ms its metadata cost a page (400
    bench pages, one process). The rest is trafilatura's own steps in trafilatura's order, with its
    configured date search, except the author search, which is `byline.extract_author` (same result,
    a third of the time). `tests/test_extract.py` checks that the fields we keep equal
    `extract_metadata`'s on evaluation pages. Reads the tree only (its searches copy it first).
    """
    from trafilatura import metadata as tm
    from trafilatura.settings import DEFAULT_CONFIG

    doc = tm.examine_meta(tree)
    if doc.author and " " not in doc.author:
        doc.author = None
    with suppress(Exception):  # as trafilatura does: its JSON-LD reader has bugs on some pages
        doc = tm.extract_meta_json(tree, doc)
    doc.title = doc.title or tm.extract_title(tree)
    doc.author = doc.author or byline.extract_author(tree)
    doc.url = doc.url or tm.extract_url(tree, url)
    if doc.url:
        doc.hostname = tm.extract_domain(doc.url, fast=True)
    dates = tm.set_date_params(DEFAULT_CONFIG.getboolean("DEFAULT", "EXTENSIVE_DATE_SEARCH"))
    dates["url"] = doc.url
    doc.date = tm.find_date(tree, **dates)
    if not doc.sitename:
        doc.sitename = tm.extract_sitename(tree)
    if doc.sitename:
        doc.sitename = doc.sitename.lstrip("@")
        if doc.sitename and "." not in doc.sitename and not doc.sitename[0].isupper():
            doc.sitename = doc.sitename.title()
    elif doc.url and (site := tm.META_URL.match(doc.url)):
        doc.sitename = site[1]
    doc.filedate = dates.get("max_date")
    doc.clean_and_trim()
    return doc


def _trafilatura_text(tree: Any, url: str, *, precision: bool) -> Any:
    """trafilatura's fast pass; its full cascade only for a page whose fast text is short
    (FULL_CASCADE_BELOW). Text only: the metadata is read once per page (`page_metadata`).
    trafilatura copies the tree it is given, so every pass starts from the same parsed page."""
    import trafilatura

    options = {**TRAFILATURA_OPTIONS, "with_metadata": False}
    fast: Any = trafilatura.bare_extraction(tree, url=url, favor_precision=precision, fast=True, **options)
    if fast is not None and len(fast.text or "") >= FULL_CASCADE_BELOW:
        return fast
    full: Any = trafilatura.bare_extraction(tree, url=url, favor_precision=precision, **options)
    if fast is None or full is None:
        return full
    fast.text, fast.raw_text, fast.body = full.text, full.raw_text, full.body
    return fast


def _trafilatura(content: bytes, url: str) -> tuple[Any, Any, str]:
    """The page's text in precision mode, or in balanced mode when that keeps more of a short text.
    Returns the text's document and the page's metadata (both None: no text), and the extractor's name."""
    tree = page_tree(content)
    if tree is None:
        return None, None, "trafilatura"
    doc, name = _trafilatura_text(tree, url, precision=True), "trafilatura"
    if _words(doc) < PRECISION_FALLBACK_WORDS:
        balanced = _trafilatura_text(tree, url, precision=False)
        if _words(balanced) > _words(doc):
            doc, name = balanced, "trafilatura-balanced"
    return doc, page_metadata(tree, url) if doc is not None else None, name


def _words(doc: Any) -> int:
    return count_words(doc.text or "") if doc is not None else 0


def extract_one(item: ExtractInput, min_words: int = 40, now: datetime | None = None) -> ExtractOutput:
    """Turn one fetched page into article fields; every outcome is a status, never an exception."""
    now = now or datetime.now(UTC)
    if item.compressed:
        try:
            item = replace(item, content=decompress_html(item.content), compressed=False)
        except zstandard.ZstdError as exc:
            return _failed(item, f"page could not be unpacked: {exc}")
    ctype = (item.content_type or "").split(";")[0].strip().lower()
    if ctype not in HTML_TYPES or _looks_binary(item.content):
        return ExtractOutput(url=item.url, status="not_article",
                             status_reason=f"content type {ctype or 'binary'} is not HTML")
    doc, meta, extractor = _trafilatura(item.content, item.url)
    out = ExtractOutput(url=item.url, status="ok", extractor=extractor)
    text = ""
    if doc is not None:
        text = (doc.text or "").strip()
        out.title, out.author, out.sitename = meta.title, meta.author, meta.sitename
        out.description, out.image = meta.description, meta.image
        out.canonical_url = meta.url if meta.url and meta.url != item.url else None
        out.published = _parse_date(meta.date)
    words = count_words(text)
    structured = _jsonld_body(item.content)
    if structured and count_words(structured) >= STRUCTURED_RATIO * max(words, 1) and words >= min_words:
        text, words, out.extractor = structured, count_words(structured), "json-ld"
    if words < min_words:
        for name, candidate in (("json-ld", structured),
                                ("og:description", _meta_content(item.content, "og:description")),
                                ("feed-summary", item.feed_summary)):
            if candidate and count_words(candidate) > words:
                text, words, out.extractor = candidate.strip(), count_words(candidate), name
            if words >= min_words:
                break
    if structured and out.extractor != "json-ld" and normalise_for_hash(text) == normalise_for_hash(structured):
        out.extractor = "json-ld"  # trafilatura's own baseline read it from the JSON-LD
    out.title = out.title or item.feed_title or _meta_content(item.content, "og:title")
    out.published, reason = plausible_date(out.published, now)
    if reason:
        out.notes.append(reason)
    if out.published is None and item.feed_published is not None:
        out.published, reason = plausible_date(item.feed_published, now)
        if reason:
            out.notes.append("feed " + reason)
    if not text:
        out.status, out.status_reason, out.extractor = "not_article", "no main text found", None
        return out
    out.text = text
    out.content_hash = content_hash(text)
    hint_m = _LANG_RE.search(item.content[:20000])
    hint = hint_m.group(1).decode("ascii") if hint_m else None
    out.lang, out.lang_confidence = detect_language(f"{out.title or ''}\n{text}", hint)
    if words < min_words:
        out.status, out.status_reason = "too_short", f"{words} words < {min_words}"
    return out


# zstd level 3: 0.43 ms a page and 5.1x smaller; level 6 took 1.27 ms for 5.5x (bench corpus, 200 pages)
_HTML_LEVEL = 3


def compress_html(content: bytes) -> bytes:
    """The page's bytes zstd-compressed, in an object of their own size.

    python-zstandard's `compress` returns bytes that keep the whole worst-case buffer it compressed
    into (about the input's size) and only report the shorter length: a 114 KB page's 24 KB blob held
    115 KB. The flow holds two batches of blobs between extraction and storage: tracemalloc counted
    60 MB of them after the first batch (bench/pipeline.py), about a fifth of that with the copy to
    an exact-size object (0.01 ms a page).
    """
    return memoryview(zstandard.ZstdCompressor(level=_HTML_LEVEL).compress(content)).tobytes()


def decompress_html(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


def pack_fetched(results: list[FetchResult]) -> list[FetchResult]:
    """Compress each fetched page's bytes in place (`FetchResult.compressed`); returns `results`.

    The blob is the copy the store keeps (build_article takes it as it is) and what the extraction
    workers receive (extract_one unpacks it). A batch's pages are ~30 MB raw and ~6 MB packed; the flow
    holds them while the batch is extracted, and the next batch's pages, fetched ahead, meanwhile.
    """
    for res in results:
        if res.content and res.error is None and not res.compressed:  # an empty body stays empty
            res.content, res.compressed = compress_html(res.content), True
    return results


# ---- worker processes -------------------------------------------------------------------------


def _alarm(signum: int, frame: Any) -> None:
    raise ExtractionTimeout()


def prepare_novelty(out: ExtractOutput) -> Any:
    """`novelty.prepare` of an extracted ok article: its MinHash and facts, with the article's text dropped.

    The stub article keeps title, lang and content_hash so that the flow can check the article it
    decides on is the one prepared here; its time and topics are the flow's to fill in.
    """
    from monitor import novelty
    from monitor.models import Article

    if out.status != "ok" or not out.text:
        return None
    stub = Article(id="", url=out.url, source_id="", status="ok", title=out.title, text=out.text,
                   lang=out.lang, content_hash=out.content_hash, fetched_at=EARLIEST_DATE)
    prepared = novelty.prepare([novelty.NoveltyItem(stub, [])])
    stub.text = None  # the text travels on the output already
    return prepared[0] if prepared else None


def _attach_novelty(out: ExtractOutput) -> None:
    try:
        out.novelty = prepare_novelty(out)
    except Exception:  # the flow then prepares it itself (and reports what fails there)
        out.novelty = None


_WARM_PAGE = b"""<html lang="en"><head><title>Talks resume in Geneva</title>
<meta property="article:published_time" content="2025-11-23T10:00:00Z"></head><body><article>
<h1>Talks resume in Geneva</h1><p>Published 23 November 2025 by Anna Example</p>
<p>Delegations from Ukraine and the United States met in Geneva on Sunday to discuss the 28-point plan,
officials said. The talks lasted six hours and will continue on Monday, according to a statement.</p>
<p>European officials said they had prepared a counter-proposal with 24 points for the meeting.</p>
</article></body></html>"""


def warm_up() -> None:
    """One extraction of a small page: loads what trafilatura, its date parser and py3langid load lazily.

    Then dateparser's tables for every locale: htmldate falls back to dateparser for about one page
    in 30, and each such call compiles the regexes of every locale not seen yet (once per process, 26 MB).
    Over the 1,171 evaluation pages in one process that cost 4.7 s cold and 0.8 s warm, for 1.5 s here,
    once in the forkserver and shared with every worker instead of paid again in each.
    And justext's all-languages stoplist (share_justext_stoplist).
    """
    from htmldate.extractors import get_external_parser

    _attach_novelty(extract_one(ExtractInput("https://example.org/news/warm-up", _WARM_PAGE, "text/html")))
    get_external_parser().get_date_data("Posted on 23 foo bar")
    share_justext_stoplist()


def share_justext_stoplist() -> None:
    """Build justext's all-languages stoplist once here, and keep it past trafilatura's cache resets.

    trafilatura hands justext the union of all its stoplists (154,000 words) for a page whose language
    justext has no list for, and justext lower-cases it into a new frozenset, kept in an LRU cache
    that trafilatura's `reset_caches` empties (every RESET_EVERY pages). Each worker built its own:
    28 MB, again after every reset. Built in the forkserver (warm_up) and returned for that one
    argument, it is shared by every worker, copy-on-write. Other stoplists go to justext as before.
    """
    import justext.core
    import trafilatura.meta  # noqa: F401  (imports justext's cached function by name: it keeps the original)
    from trafilatura import external

    cached = justext.core.define_stoplist
    if getattr(cached, "shared", None) is not None:
        return
    everything = external.JT_STOPLIST or external.jt_stoplist_init()
    lowered = cached(everything)

    def define_stoplist(stoplist: Any) -> frozenset[str]:
        return lowered if stoplist is everything else cached(stoplist)

    define_stoplist.shared = lowered  # type: ignore[attr-defined]
    define_stoplist.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    justext.core.define_stoplist = define_stoplist


_done_since_reset = 0


def _maybe_reset_caches() -> None:
    global _done_since_reset
    _done_since_reset += 1
    if _done_since_reset >= RESET_EVERY:
        from trafilatura.meta import reset_caches

        reset_caches()
        _done_since_reset = 0


def _failed(item: ExtractInput, why: str) -> ExtractOutput:
    return ExtractOutput(url=item.url, status="failed", status_reason=why)


def _worker_extract(item: ExtractInput, min_words: int, timeout_s: float,
                    with_novelty: bool = False) -> ExtractOutput:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        out = extract_one(item, min_words)
        if with_novelty:
            _attach_novelty(out)
        return out
    except ExtractionTimeout:
        return _failed(item, f"extraction exceeded {timeout_s:g}s")
    except Exception as exc:  # a parser bug on one page must not cost the batch
        return _failed(item, f"extraction error: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _maybe_reset_caches()


def _worker_extract_many(items: Sequence[ExtractInput], min_words: int, timeout_s: float,
                         with_novelty: bool) -> list[ExtractOutput]:
    """One pool task: several pages, each under its own time limit."""
    return [_worker_extract(item, min_words, timeout_s, with_novelty) for item in items]


class ExtractionPool:
    """The extraction worker processes: a process pool that replaces itself when it breaks or wears.

    A worker killed by the kernel (out of memory) or crashed in C code breaks a ProcessPoolExecutor
    for good: every later submit raises. `restart` kills what is left and starts a new pool, so a
    run goes on with its next pages (see `extract_batch`). Forkserver: safe to start from Prefect's
    threads; the forkserver imports, warms and freezes what workers need once (monitor._preload).
    Workers also wear: their private memory grows with the pages they have parsed (heap fragments,
    copied-on-write pages of the forkserver's), so after `renew_after` pages `renew_if_worn` lets
    them finish their tasks and forks fresh ones.
    """

    def __init__(self, workers: int, renew_after: int = RENEW_AFTER):
        self.workers = workers
        self.renew_after = renew_after
        self.restarts = self.renewals = 0
        self._lock = threading.Lock()  # submits, restarts and renewals: never a submit to a pool shutting down
        self._start()

    def _start(self) -> None:
        """A new pool (its workers fork on the first submits), with no pages given and no task held yet."""
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["monitor._preload"])
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        self._pages = 0  # pages submitted to the current workers
        self._inflight: list[Future[Any]] = []

    def submit(self, fn: Any, *args: Any, pages: int = 1) -> Future[Any]:
        """Submit a task of `pages` pages; a pool broken since the last one (a worker killed idle) is restarted."""
        with self._lock:
            try:
                fut = self._pool.submit(fn, *args)
            except BrokenProcessPool:
                self._restart()
                fut = self._pool.submit(fn, *args)
            self._pages += pages
            self._inflight = [f for f in self._inflight if not f.done()]
            self._inflight.append(fut)
            return fut

    def renew_if_worn(self) -> None:
        """Once the workers have been given `renew_after` pages: wait for their tasks, then fork new workers.

        Waits outside the lock (a hung task is another batch's to time out), then renews only if no
        task was submitted meanwhile.
        """
        if self._pages < self.renew_after:
            return
        wait(list(self._inflight))
        with self._lock:
            if self._pages < self.renew_after or any(not f.done() for f in self._inflight):
                return
            self._pool.shutdown(wait=True)
            self._start()
            self.renewals += 1

    def _processes(self) -> dict[int, Any]:
        # ProcessPoolExecutor has no public view of its workers before Python 3.14
        return dict(getattr(self._pool, "_processes", None) or {})

    def worker_pids(self) -> list[int]:
        """The workers' process ids (none before the first task is submitted)."""
        return list(self._processes())

    def restart(self) -> None:
        """Kill the workers (a stuck one never returns by itself) and start a new pool."""
        with self._lock:
            self._restart()

    def _restart(self) -> None:
        for proc in self._processes().values():
            with suppress(Exception):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._start()
        self.restarts += 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def extraction_pool(workers: int) -> Iterator[ExtractionPool | None]:
    """`workers` extraction processes, or None (extract in this process) for 0."""
    if workers <= 0:
        yield None
        return
    pool = ExtractionPool(workers)
    try:
        yield pool
    finally:
        pool.shutdown()


def _backstop(timeout_s: float, pages: int) -> float:
    # the in-worker alarm normally fires first, page by page; this is for a stuck C call
    return timeout_s * 2 * pages + 5


def extract_batch(items: Sequence[ExtractInput], *, min_words: int = 40, timeout_s: float = 30.0,
                  pool: ExtractionPool | None = None, with_novelty: bool = False) -> list[ExtractOutput]:
    """Extract a batch, in order. A document over its time limit is `failed`, never a stalled batch.

    A worker that dies (killed, crashed) or hangs past the backstop takes its pool's pending tasks
    with it: the pool is restarted and those pages are extracted again one at a time, so that only
    the page that kills or hangs a worker again is `failed`, and the batch and the run go on.
    `with_novelty`: each ok output also carries `novelty.Prepared` of its text (see prepare_novelty).
    """
    if pool is None:
        outs = []
        for item in items:
            try:
                outs.append(extract_one(item, min_words))
                if with_novelty:
                    _attach_novelty(outs[-1])
            except Exception as exc:
                outs.append(_failed(item, f"extraction error: {type(exc).__name__}: {exc}"))
        return outs
    pool.renew_if_worn()
    size = pages_per_task(len(items))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    futures: list[Future[list[ExtractOutput]]] = [
        pool.submit(_worker_extract_many, chunk, min_words, timeout_s, with_novelty, pages=len(chunk))
        for chunk in chunks
    ]
    results: list[ExtractOutput | None] = []
    broken = False
    for chunk, fut in zip(chunks, futures, strict=True):
        try:
            results.extend(fut.result(timeout=0 if broken else _backstop(timeout_s, len(chunk))))
        except (BrokenProcessPool, FutureTimeout):
            broken = True  # every task still pending is lost with the pool: redo them below
            results.extend([None] * len(chunk))
        except Exception as exc:  # e.g. a result that cannot be unpickled: these pages, not the run
            results.extend(_failed(item, f"worker failed: {type(exc).__name__}") for item in chunk)
    if broken:
        pool.restart()
        results = [out or _extract_alone(pool, item, min_words, timeout_s, with_novelty)
                   for item, out in zip(items, results, strict=True)]
    return [out for out in results if out is not None]


def _extract_alone(pool: ExtractionPool, item: ExtractInput, min_words: int, timeout_s: float,
                   with_novelty: bool) -> ExtractOutput:
    """One page in a task of its own, after its pool broke: a page that breaks it again is the culprit."""
    backstop = _backstop(timeout_s, 1)
    try:
        (out,) = pool.submit(_worker_extract_many, [item], min_words, timeout_s, with_novelty).result(
            timeout=backstop)
        return out
    except FutureTimeout:
        pool.restart()
        return _failed(item, f"extraction exceeded {backstop:g}s (its worker hung and was killed)")
    except BrokenProcessPool:
        pool.restart()
        return _failed(item, "extraction worker died on this page (killed or crashed)")
    except Exception as exc:
        return _failed(item, f"worker failed: {type(exc).__name__}")


# Pages per pool task. Each task costs the flow process's pool threads a round trip (queue the
# pickled task, read and unpickle the result, settle the future) under the GIL its stages share.
# bench/pipeline.py-style run of 2,000 articles: those threads took 0.64 CPU ms an article with one
# page per task, 0.19 with 8 (issue #10). Each page keeps its own time limit inside the task.
PAGES_PER_TASK = 8


def pages_per_task(pages: int) -> int:
    """Up to PAGES_PER_TASK pages per task, but at least ~8 tasks per batch so that workers share it evenly."""
    return max(1, min(PAGES_PER_TASK, pages // 8))


def build_article(link: Any, fetched: Any, out: ExtractOutput | None, *, keep_html: bool) -> Any:
    """Combine what the feed said, what the fetch got and what extraction found into one Article."""
    from monitor.models import Article

    art = Article(id=link.article_id, url=link.url, source_id=link.source_id, status="failed",
                  feed_title=link.title, feed_summary=link.summary, feed_published=link.published,
                  title=link.title, published=link.published,
                  fetched_at=fetched.fetched_at if fetched else None,
                  final_url=fetched.final_url if fetched else None)
    if fetched is None or fetched.error:
        art.status_reason = f"fetch failed: {fetched.error if fetched else 'not fetched'}"
        return art
    if out is None:
        art.status_reason = "not extracted"
        return art
    art.status, art.status_reason = out.status, out.status_reason
    for name in ("title", "author", "sitename", "description", "text", "lang", "lang_confidence",
                 "extractor", "canonical_url", "content_hash"):
        value = getattr(out, name)
        if value is not None:
            setattr(art, name, value)
    art.published = out.published or link.published
    if (out.published and link.published and out.published.time() == datetime.min.time()
            and out.published.date() == link.published.date()):
        art.published = link.published  # the page gave only a day; the feed knows the time
    if out.notes:
        art.extra["notes"] = out.notes
    if out.novelty is not None:
        art.extra[NOVELTY_PREP] = out.novelty
    if keep_html and fetched.content and out.status != "not_article":
        art.html = fetched.content if fetched.compressed else compress_html(fetched.content)
    return art
