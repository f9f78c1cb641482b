"""Unit tests of monitor.topics: query language, normalisation, explanations, one-pass lookup."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(ROOT / "src"))

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from monitor.config import TopicConfig, TopicsFile  # noqa: E402
from monitor.errors import ConfigError  # noqa: E402
from monitor.topics import (  # noqa: E402
    TopicSet,
    TopicSyntaxError,
    check_topics,
    explain_text,
    tokenize,
    translit_key,
)

SEED = Path("/work/shared/seeds/000_b15008eb12104f57.txt")


def topic(query: str = "", **kw: object) -> TopicConfig:
    return TopicConfig(id=str(kw.pop("id", "t")), name="T", query=query, **kw)  # type: ignore[arg-type]


def hits(query: str, title: str | None, text: str | None = "", lang: str | None = None, **kw: object) -> bool:
    ts = TopicSet.compile([topic(query, **kw)])
    return bool(ts.tag("a", title, text, lang))


def default_topics() -> list[TopicConfig]:
    with (ROOT / "config" / "topics.toml").open("rb") as fh:
        return TopicsFile.model_validate(tomllib.load(fh)).topics


# ---------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("query", "pos", "fragment"),
    [
        ("(ukraine OR russia))", 19, "unexpected ')'"),
        ("ukraine AND (talks", 18, "unexpected end"),
        ("ukraine AND foo:bar", 12, "unknown field 'foo'"),
        ("ukraine AND talk~2", 12, "fuzzy"),
        ("ukraine AND *alks", 12, "trailing"),
        ("ukraine AND t?lks", 12, "'?'"),
        ('ukraine AND "peace plan', 12, "unclosed quote"),
        ("ukraine^2", 0, "boost"),
        ("ukraine AND OR talks", 12, "unexpected 'OR'"),
        ("ukraine AND a*", 12, "too short"),
    ],
)
def test_syntax_errors_name_topic_and_position(query: str, pos: int, fragment: str) -> None:
    with pytest.raises(TopicSyntaxError) as ei:
        TopicSet.compile([topic(query, id="ukraine-peace-talks")])
    err = ei.value
    assert isinstance(err, ConfigError)
    assert err.file == "topics.toml"
    assert err.key == "topics.ukraine-peace-talks.query"
    assert err.problem.startswith(f"syntax error at position {pos}:"), err.problem
    assert fragment in err.problem


def test_syntax_error_in_language_query_and_weights_keys() -> None:
    with pytest.raises(TopicSyntaxError) as ei:
        TopicSet.compile([topic("a", queries={"de": "frieden AND ("})], source_file="x.toml")
    assert ei.value.key == "topics.t.queries.de" and ei.value.file == "x.toml"
    with pytest.raises(TopicSyntaxError) as ei:
        TopicSet.compile([topic("a", weights={"title:(x": 1.0})])
    assert ei.value.key.startswith("topics.t.weights")


def test_check_topics_reports_every_problem() -> None:
    problems = check_topics(
        [
            topic("ok AND fine", id="good"),
            topic("bad)", id="bad1"),
            topic("x", id="bad2", queries={"english": "y", "fr": "(z"}),
            topic("NOT x", id="negonly"),
            topic("", id="weights", weights={"a": 1.0}, threshold=5.0),
        ]
    )
    text = "\n".join(problems)
    assert "topics.bad1.query: syntax error at position 3" in text
    assert "topics.bad2.queries.english: not a language code" in text
    assert "topics.bad2.queries.fr: syntax error" in text
    assert "topics.negonly" in text and "NOT" in text
    assert "topics.weights.threshold" in text
    assert not any("good" in p for p in problems)
    assert check_topics(default_topics()) == []


def test_empty_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TopicSet.compile([topic("")])


# ---------------------------------------------------------------- boolean logic, phrases, proximity


def test_boolean_operators() -> None:
    q = "(ukraine OR kyiv) AND (ceasefire OR truce) NOT gaza"
    assert hits(q, "Kyiv backs truce", "")
    assert not hits(q, "Kyiv backs truce", "Gaza too")
    assert not hits(q, "Kyiv under attack", "")
    assert hits("ukraine -gaza", "Ukraine", "")
    assert not hits("ukraine -gaza", "Ukraine and Gaza", "")
    # implicit operator is AND
    assert hits("peace plan", "a plan for lasting peace")
    assert not hits("peace plan", "peace at last")
    # AND binds tighter than OR
    assert hits("a OR b AND c", "a")
    assert not hits("a OR b AND c", "b")


def test_phrase_is_ordered_and_adjacent() -> None:
    assert hits('"peace plan"', "", "The new peace plan, unveiled.")
    assert not hits('"peace plan"', "", "A plan for peace.")
    assert not hits('"peace plan"', "", "peace and a plan")
    # punctuation between words does not break adjacency (word tokens only)
    assert hits('"peace plan"', "", "Peace - plan")


def test_proximity_any_order_within_window() -> None:
    q = '"peace plan"~3'
    assert hits(q, "", "a plan for lasting peace")  # reversed, 2 words between
    assert hits(q, "", "peace and a new plan")
    assert not hits(q, "", "peace is what they want, and some day a plan")
    # term-near-term form
    near = '"Putin Trump"~10'
    assert hits(near, "", "Trump said on Friday he would call Putin")
    assert not hits(near, "", "Trump " + "word " * 12 + "Putin")
    # a window never spans title and text
    assert not hits(near, "Putin", "Trump")


def test_prefix_wildcards() -> None:
    assert hits("negosiasi*", "", "Negosiasinya berlangsung")
    assert hits("переговор*", "", "Переговоры в Стамбуле")
    assert not hits("negosiasi*", "", "negos")
    assert hits('"peace pla*"', "", "peace planning")
    assert hits('"мирн* план*"~1', "", "мирного плана")
    assert not hits('"мирн* план*"~1', "", "мирные жители не имели плана")


def test_field_scoping() -> None:
    assert hits("title:ukraine AND text:talks", "Ukraine", "talks resume")
    assert not hits("title:ukraine AND text:talks", "talks", "Ukraine")
    assert hits("title:(ceasefire OR truce)", "Truce holds", "")
    assert not hits('text:"peace plan"', "peace plan", "nothing")
    assert hits('text:"peace plan"', "", "peace plan")
    assert not hits("title:peace", None, "peace")


def test_multi_token_word_is_a_phrase() -> None:
    assert hits("cessez-le-feu", "", "un cessez le feu durable")
    assert not hits("cessez-le-feu", "", "le feu, cessez")
    assert hits("l'Ukraine", "", "Soutien à l’Ukraine")


# ---------------------------------------------------------------- normalisation and transliteration


def test_case_accent_width_insensitive() -> None:
    assert hits("negociacao", "", "A NEGOCIAÇÃO avança")
    assert hits("négociation", "", "negociation")
    assert hits("ukraine", "", "ＵＫＲＡＩＮＥ")  # full width
    assert hits("strasse", "", "Straße")
    assert hits("istanbul", "", "İSTANBUL")
    assert hits("zelenski", "", "Zełenski")
    assert hits("ateşkes", "", "ATEŞKES")
    assert hits("елка", "", "Ёлка")  # combining marks stripped, Cyrillic stays Cyrillic
    assert tokenize("Зеленський") == ["зеленськии"]
    assert not hits("zelensky", "", "Зеленский")  # no transliteration unless asked


def test_cjk_is_tokenised_per_character() -> None:
    assert tokenize("和平谈判") == ["和", "平", "谈", "判"]
    assert hits("和平", "", "乌克兰和平谈判")


def test_ukrainian_apostrophe_keeps_word() -> None:
    assert tokenize("перемир'я") == ["перемиря"]
    assert hits("перемир'я", "", "перемир’я")


VARIANTS = [
    "Зеленский",
    "Зеленський",
    "Zelensky",
    "Zelenskyi",
    "Zelenskyy",
    "Zelenskiy",
    "Zelenskij",
    "Zelenski",
]


@pytest.mark.parametrize("query", VARIANTS)
@pytest.mark.parametrize("doc", VARIANTS)
def test_transliteration_collapses_spelling_variants(query: str, doc: str) -> None:
    assert hits(query, "", f"President {doc} said", transliterate=True)


def test_transliteration_rules() -> None:
    assert {translit_key(t) for t in tokenize("Київ Kyiv Kyjiw Kiiv")} == {"kiv"}
    assert {translit_key(t) for t in tokenize("Харків Kharkiv Harkiv Charkiw")} - {"charkiv"} == {"harkiv"}
    assert translit_key("віткофф") == translit_key("witkoff") == "vitkof"
    assert translit_key("schoigu") == translit_key("shoigu")
    # prefixes go through the same key
    assert hits("зеленськ*", "", "Zelenskyy's office", transliterate=True)
    assert hits("zelensk*", "", "Зеленського", transliterate=True)
    assert not hits("putin", "", "Зеленський", transliterate=True)


# ---------------------------------------------------------------- languages, weights, scores


def test_language_queries_or_with_main_query() -> None:
    t = topic("ceasefire", queries={"de": "waffenruhe", "pt-BR": "trégua"})
    ts = TopicSet.compile([t])
    assert ts.tag("a", "Waffenruhe", "", "de")[0].explanation["lang_query"] == "de"
    assert ts.tag("a", "Waffenruhe", "", "de-AT")  # region stripped
    assert not ts.tag("a", "Waffenruhe", "", "fr")  # German query not run on French articles
    assert ts.tag("a", "Waffenruhe", "", None)  # unknown language: every query runs
    assert ts.tag("a", "trégua", "", "pt")[0].explanation["lang_query"] == "pt"
    assert ts.tag("a", "ceasefire", "", "fr")[0].explanation["lang_query"] == "any"


def test_weights_and_threshold() -> None:
    t = topic(
        "gaza OR hamas",
        weights={"ceasefire": 1.5, "hostage*": 1.0, "gencatan senjata": 1.5, "football": -2.0},
        threshold=2.0,
    )
    ts = TopicSet.compile([t])
    (m,) = ts.tag("a", "Gaza ceasefire", "Hostages to be released", "en")
    assert m.score == 2.5
    assert m.explanation["weights"] == {"ceasefire": 1.5, "hostage*": 1.0}
    assert m.explanation["threshold"] == 2.0
    assert not ts.tag("a", "Gaza ceasefire", "", "en")  # 1.5 < 2.0
    assert not ts.tag("a", "Ceasefire and hostages", "in Sudan", "en")  # query false
    assert not ts.tag("a", "Gaza ceasefire hostages", "football", "en")  # negative weight
    # a multi-word weight key is a phrase
    assert ts.tag("a", "Gaza", "gencatan senjata dan hostage", "id")
    assert not ts.tag("a", "Gaza", "senjata gencatan hostage", "id")
    # weights without a query: EMM-style category
    ts2 = TopicSet.compile([topic("", weights={"ceasefire": 1.0, "truce": 1.0}, threshold=2.0)])
    assert ts2.tag("a", "ceasefire and truce", "")[0].explanation["lang_query"] == "weights"
    assert not ts2.tag("a", "ceasefire", "")


def test_score_without_weights_is_one() -> None:
    (m,) = TopicSet.compile([topic("ukraine")]).tag("a", "Ukraine", "")
    assert m.score == 1.0 and isinstance(m.score, float)


# ---------------------------------------------------------------- explanation


def test_explanation_content_and_text() -> None:
    text = (
        "Officials met on Monday in Geneva. " * 5
        + "Trump's envoy Steve Witkoff presented the plan for peace to the Ukrainian delegation. "
        + "More talks are planned."
    )
    ts = TopicSet.compile([topic('(ukrain* OR kyiv) AND ("peace plan"~3 OR Witkoff) NOT gaza', id="upt")])
    (m,) = ts.tag("art1", "Kyiv weighs peace plan", text, "en")
    e = m.explanation
    json.dumps(e)  # JSON-serialisable
    assert m.article_id == "art1" and m.topic == "upt"
    assert e["parts"] == ["kyiv", '"peace plan"~3', "Witkoff", "ukrain*"]
    assert e["terms"] == ["Kyiv", "peace plan", "Witkoff", "Ukrainian"]
    assert e["fields"] == ["title", "title", "text", "text"]
    assert e["lang_query"] == "any"
    assert "Witkoff" in e["snippet"] and len(e["snippet"]) <= 170
    assert e["snippet"].startswith("...")
    assert "gaza" not in json.dumps(e).lower()  # NOT clauses are not reported as matched
    line = explain_text(e)
    assert line.startswith('matched Kyiv (title), "peace plan" (title), Witkoff (text)')
    assert '"...' in line


def test_snippet_uses_original_text() -> None:
    (m,) = TopicSet.compile([topic("zelensky", transliterate=True)]).tag(
        "a", "", "Сказав ЗЕЛЕНСЬКИЙ у Києві."
    )
    assert m.explanation["terms"] == ["ЗЕЛЕНСЬКИЙ"]
    assert m.explanation["snippet"] == "Сказав ЗЕЛЕНСЬКИЙ у Києві."


def test_explain_text_is_robust() -> None:
    assert explain_text({}) == "matched (no positive terms)"
    assert explain_text({"terms": ["a"], "fields": ["text"], "snippet": "s"}) == 'matched a (text): "s"'


# ---------------------------------------------------------------- default topics and the seed


def test_seed_matches_ukraine_peace_talks() -> None:
    raw = SEED.read_text(encoding="utf-8")
    title, _, body = raw.partition("\n")
    ts = TopicSet.compile(default_topics())
    for lang in ("id", None):
        found = {m.topic: m for m in ts.tag("seed", title, body, lang)}
        assert "ukraine-peace-talks" in found
    e = found["ukraine-peace-talks"].explanation
    assert "Witkoff" in e["terms"] and "Zelenskyi" in e["terms"]


def test_default_topic_ids() -> None:
    ts = TopicSet.compile(default_topics())
    assert ts.ids[0] == "ukraine-peace-talks" and len(ts.ids) >= 3


def test_tag_many_and_empty_inputs() -> None:
    ts = TopicSet.compile([topic("ukraine", id="u"), topic("gaza", id="g")])
    out = ts.tag_many([("1", "Ukraine", None, "en"), ("2", None, None, None), ("3", "Gaza", "Ukraine", "en")])
    assert [(m.article_id, m.topic) for m in out] == [("1", "u"), ("3", "u"), ("3", "g")]


# ---------------------------------------------------------------- one pass


def test_one_pass_lookup_does_not_grow_with_topics() -> None:
    base = default_topics()[0]
    title = "Ukraine peace talks resume"
    text = "Negotiators from Kyiv and Moscow met in Istanbul to discuss a ceasefire. " * 20
    one = TopicSet.compile([base])
    one.tag("a", title, text, "en")
    many_cfg = [
        base.model_copy(update={"id": f"t{i}", "query": base.query.replace("talks", f"talks{i}")})
        for i in range(100)
    ]
    many = TopicSet.compile(many_cfg)
    many.tag("a", title, text, "en")
    s1, s100 = one.last_stats, many.last_stats
    assert s1["tokens"] == s100["tokens"] and s1["unique"] == s100["unique"]
    # one cached probe per distinct token, however many topics
    assert s100["probes"] <= s1["probes"] * 1.5
    assert len(many.tag("a", title, text, "en")) == 100
    # topics none of whose terms occur are not even evaluated
    many.tag("b", "Weather", "Sunny, warm.", "pt")
    assert many.last_stats["topics_evaluated"] == 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=50))
def test_never_crashes_and_normalisation_is_idempotent(text: str, title: str) -> None:
    ts = TopicSet.compile([topic('"peace plan"~3 OR zelensk*', transliterate=True), topic("NOT x", id="n")])
    for m in ts.tag("a", title, text, None):
        json.dumps(m.explanation)
    toks = tokenize(text)
    assert tokenize(" ".join(toks)) == toks
