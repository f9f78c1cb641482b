"""trafilatura's author search (`metadata.extract_author`, 2.3.1) with its XPaths as Python predicates.

Part of the extract stage. trafilatura finds a byline with three XPaths (`xpaths.AUTHOR_XPATHS`) after
pruning comments, sidebars, dates and figures (`AUTHOR_DISCARD_XPATHS`) from a copy of the page. Those
XPaths test attributes with EXSLT regular expressions, which lxml runs as a Python callback for every
element: 7.0 ms per call on the evaluation pages, the dearest part of a page's metadata. Here each
XPath is the same test written as a predicate over one walk of the tree (document order, as XPath
returns nodes), and the text of a match is trafilatura's `trim` of its `itertext`, as there.

The search runs on the page itself, not on a pruned copy: what pruning would delete is found first
and its matches skipped (`_author_without_copy` says why the rest read the same). Only a match that
holds pruned content prunes a copy, with trafilatura's own `prune_unwanted_nodes`: 47 of the 1,171
evaluation pages. 2.4 ms per call instead of 7.0.

`tests/test_extract.py` checks that `extract_author` here equals trafilatura's on every evaluation
page; an upgrade of trafilatura that changes its XPaths fails that test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from copy import deepcopy
from typing import Any

Element = Any  # lxml.html.HtmlElement; lxml is imported lazily with trafilatura

# AUTHOR_DISCARD_XPATHS[0]: .//*[self::a or self::div or self::section or self::span][...]
_DISCARD_TAGS = ("a", "div", "section", "span")
_DISCARD_ID = re.compile("^comments|comment-?list|ProductReviews")
_DISCARD_CLASS = re.compile("^[Cc]omments|commentlist|comments-list|sidebar|is-hidden|quote|embedly-instagram|"
                            "article-(?:share|support)|print|category|meta-date|meta-reviewer")

# AUTHOR_XPATHS: specific, almost generic, last resort
_SPECIFIC_TAGS = frozenset({"a", "address", "div", "link", "p", "span", "strong"})
_SPECIFIC_CLASS = re.compile("author-?name|AuthorName|authorName")
_GENERIC_TAGS = frozenset({"a", "div", "h3", "h4", "p", "span"})
_GENERIC_ID = re.compile("author|zuozhe|bianji|xiaobian")
_GENERIC_CLASS = re.compile("author|channel-name|zuozhe|bianji|xiaobian|submitted-by|posted-by|journalist-name")
_LAST_ID = re.compile("[Aa]uthor")
_LAST_CLASS = re.compile("[Aa]uthor|screenname|writer|[Bb]yline")


def _discarded(el: Element) -> bool:
    get = el.get
    ident, cls = get("id"), get("class")
    return (ident == "comments" or cls in ("comments", "title", "date")
            or (ident is not None and _DISCARD_ID.search(ident) is not None)
            or (cls is not None and _DISCARD_CLASS.search(cls) is not None)
            or "Figure" in (get("data-component") or ""))


def _discard_sections(tree: Element) -> list[Element]:
    return [el for el in tree.iter(*_DISCARD_TAGS) if el is not tree and _discarded(el)]


def _discard_time_and_figures(tree: Element) -> list[Element]:
    return list(tree.iter("time", "figure"))


DISCARD: list[Callable[[Element], list[Element]]] = [_discard_sections, _discard_time_and_figures]


def _string_value(el: Element) -> str:
    return "".join(el.itertext())


def _is_specific(el: Element, tag: str) -> bool:
    if tag == "author":
        return True
    if tag not in _SPECIFIC_TAGS:
        return False
    get = el.get
    cls = get("class")
    return (get("rel") == "author" or get("id") == "author" or cls == "author"
            or get("itemprop") == "author name" or get("data-testid") in ("AuthorCard", "AuthorURL")
            or (cls is not None and _SPECIFIC_CLASS.search(cls) is not None)
            # `rel='me'` in trafilatura's XPath: a child element <rel> whose text is "me"
            or any(_string_value(child) == "me" for child in el.iterchildren("rel")))


def _is_generic(el: Element, tag: str) -> bool:
    if tag not in _GENERIC_TAGS:
        return False
    get = el.get
    cls, ident = get("class"), get("id")
    return (cls in ("byline", "username", "byl", "BBL") or "author" in (get("itemprop") or "")
            or (ident is not None and _GENERIC_ID.search(ident) is not None)
            or (cls is not None and _GENERIC_CLASS.search(cls) is not None))


def _is_last_resort(el: Element) -> bool:
    get = el.get
    cls, ident = get("class"), get("id")
    return ("Byline" in (get("data-component") or "") or "author" in (get("itemprop") or "")
            or (ident is not None and _LAST_ID.search(ident) is not None)
            or (cls is not None and _LAST_CLASS.search(cls) is not None))


# An element none of these finds in its class or id, without any rarer attribute the searches test
# and not selected by its tag cannot be selected: one regular expression rejects most elements.
_ANY_CLASS = re.compile("uthor|yline|username|channel-name|zuozhe|bianji|xiaobian|submitted-by|posted-by|"
                        "journalist-name|screenname|writer|^byl$|^BBL$")
_ANY_ID = re.compile("uthor|zuozhe|bianji|xiaobian")
_RARE_ATTRIBUTES = frozenset({"itemprop", "rel", "data-testid", "data-component"})


def author_candidates(tree: Element) -> tuple[list[Element], list[Element], list[Element]]:
    """What each of trafilatura's three author XPaths selects in `tree`, in document order."""
    from lxml.etree import Element as element_nodes  # iter(Element): elements only, as `*` selects

    specific: list[Element] = []
    generic: list[Element] = []
    last: list[Element] = []
    # <author> elements and the parents of <rel> ones are selected by tag (C-level tag filters: cheap)
    by_tag = {*tree.iter("author"), *(r.getparent() for r in tree.iter("rel"))}
    for el in tree.iter(element_nodes):
        get = el.get
        cls, ident = get("class"), get("id")
        if ((cls is None or _ANY_CLASS.search(cls) is None) and (ident is None or _ANY_ID.search(ident) is None)
                and _RARE_ATTRIBUTES.isdisjoint(el.keys()) and el not in by_tag):
            continue
        tag = el.tag
        if _is_specific(el, tag):
            specific.append(el)
        if _is_generic(el, tag):
            generic.append(el)
        if _is_last_resort(el):
            last.append(el)
    return specific, generic, last


def _byline_text(elem: Element, len_limit: int) -> str | None:
    """A match's text, if trafilatura's `extract_metainfo` would take it."""
    from trafilatura.utils import trim

    content = trim(" ".join(elem.itertext()))
    return str(content) if content and 2 < len(content) < len_limit else None


def _first_author(tree: Element, len_limit: int) -> str | None:
    """trafilatura's `extract_metainfo(tree, AUTHOR_XPATHS, len_limit)`."""
    for results in author_candidates(tree):
        for elem in results:
            if (content := _byline_text(elem, len_limit)) is not None:
                return content
    return None


def _removed_by_pruning(tree: Element) -> set[Element]:
    """The roots of what `prune_unwanted_nodes(tree, AUTHOR_DISCARD_XPATHS)` deletes, found without deleting.

    Its second XPath (//time|//figure) runs after the first has deleted: a <time> inside a deleted
    section is gone either way, so every <time> and <figure> can be counted.
    """
    return {*_discard_sections(tree), *_discard_time_and_figures(tree)}


def _pruned_author(tree: Element) -> str | None:
    """trafilatura's way: prune a copy, then search it."""
    from trafilatura.htmlprocessing import prune_unwanted_nodes

    return _first_author(prune_unwanted_nodes(deepcopy(tree), DISCARD), len_limit=120)  # DISCARD is called like XPaths


def _author_without_copy(tree: Element, len_limit: int = 120) -> str | None:
    """What `_pruned_author` returns, searched in the page itself.

    A match that pruning would delete (it or an ancestor is pruned) is skipped. A match that pruning
    would not touch has the same text in the pruned copy: deleting an element changes only its
    parent's text or its previous sibling's tail. A match with a pruned descendant is the one case
    whose text would differ: then the copy is pruned after all.
    """
    candidates = author_candidates(tree)
    if not any(candidates):
        return None
    removed = _removed_by_pruning(tree)
    holds_removed = {a for el in removed for a in el.iterancestors()}
    for results in candidates:
        for elem in results:
            if elem in removed or any(a in removed for a in elem.iterancestors()):
                continue
            if elem in holds_removed:
                return _pruned_author(tree)
            if (content := _byline_text(elem, len_limit)) is not None:
                return content
    return None


def extract_author(tree: Element) -> str | None:
    """The page's author(s) as trafilatura's `extract_author` finds them; the tree is not changed."""
    from trafilatura.metadata import normalize_authors

    author = _author_without_copy(tree)
    return normalize_authors(None, author) if author else None
