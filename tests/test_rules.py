"""Learned rules as plain modules: values, what rules read, committee, audit, persistence."""

import copy
import json
import random

import pytest

from scrapy_llm_extract.rules import RuleBook
from scrapy_llm_extract.rules.book import (
    ABSENT,
    ALARM_DISAGREE,
    ALARM_MISSING,
    ALARM_SHAPE,
    ANSWERED,
    AUDIT,
    UNKNOWN,
)
from scrapy_llm_extract.rules.kinds import observe, stable_name
from scrapy_llm_extract.rules.values import MISSING, canonical, shape, typed

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": ["string", "null"]},
        "price": {"type": ["number", "null"]},
        "publisher": {"type": ["string", "null"]},
    },
}
URL = "https://books.example/b/{n}"


def page(n, *, price=None, price_class="price", ld_price=None, publisher=True, extra=""):
    """A book page: JSON-LD, an anchored price element and a "Publisher:" label."""
    price = 10 + n % 80 if price is None else price
    ld = {"@type": "Book", "name": f"Book {n:03d}", "offers": {"price": ld_price or price}}
    label = f"<p>Publisher: House {n % 3}</p>" if publisher else ""
    return (
        f'<html><head><script type="application/ld+json">{json.dumps(ld)}</script></head>'
        f'<body><main id="content"><h1>Book {n:03d}</h1><div class="buy"><div>'
        f'<span class="{price_class}">{price:.2f} €</span></div></div>{label}{extra}</main>'
        "</body></html>"
    )


def answer(n, *, price=None, publisher=True):
    return {
        "title": f"Book {n:03d}",
        "price": float(10 + n % 80 if price is None else price),
        "publisher": f"House {n % 3}" if publisher else None,
    }


def book(tmp_path=None, **kwargs):
    kwargs.setdefault("audit_start", 0.0)
    kwargs.setdefault("audit_floor", 0.0)
    return RuleBook(tmp_path, rng=random.Random(7), **kwargs)


def teach(rules, pages):
    for n in pages:
        rules.learn(rules.view(page(n), URL.format(n=n)), answer(n))


def verdict(rules, html, n=100):
    return rules.answer(rules.view(html, URL.format(n=n)), SCHEMA)


# Values and rule kinds.


@pytest.mark.parametrize("text", ["1.299,00 €", "$1,299.00", "1299", "EUR 1 299.00", " 1299.0 "])
def test_number_formats_compare_equal(text):
    assert canonical(text) == canonical(1299.0) == canonical("1299.00")


def test_text_compares_without_case_or_spacing_and_codes_stay_text():
    assert canonical("  Penguin\n Books ") == canonical("penguin books")
    assert canonical("https://schema.org/InStock") == canonical("InStock")
    assert typed("http://schema.org/InStock", {"type": "string"}) == "InStock"
    assert canonical("KIT-1037") != canonical("GAR-1037")
    assert typed("12,50 €", {"type": "number"}) == 12.5
    assert typed("12,50 €", {"type": "string"}) == "12,50 €"
    assert typed(None, {"type": "string"}) == ""  # absent, in a strict non-null field
    assert typed(None, {"type": ["number", "null"]}) is None


def test_a_price_only_the_sites_convention_reads_is_left_to_the_model():
    """A Berlin shop writes 9,99 € and 1.299 €: a rule learned on the first must not answer
    1.299 for the second (it did, on every such page)."""

    def german(n, price):
        text = (
            f"{price:.2f}".replace(".", ",") if price < 1000 else f"{price:,.0f}".replace(",", ".")
        )
        body = f'<main id="c"><h1>Ding {n}</h1><p class="price">{text} €</p></main>'
        return f"<html><body>{body}</body></html>"

    rules = book(min_pages=3)
    prices = [9.99, 49.5, 1299.0, 12.0, 2999.0, 5.49, 19.99, 7.0]
    for n, price in enumerate(prices):
        rules.learn(
            rules.view(german(n, price), URL.format(n=n)), {"title": f"Ding {n}", "price": price}
        )
    schema = {"properties": {k: SCHEMA["properties"][k] for k in ("title", "price")}}
    assert rules.answer(rules.view(german(60, 1499.0), URL), schema).reason == ALARM_SHAPE
    assert rules.answer(rules.view(german(61, 14.99), URL), schema).fields["price"] == 14.99
    assert canonical("1.299 €") == canonical("1,299") == 1299.0
    assert typed("1.299 €", {"type": "number"}) is typed("1,299", {"type": "number"}) is MISSING


def test_a_counter_showing_1_is_no_rule_for_a_boolean_field():
    """A cart counter "1" in the header agreed with every True answer (True == 1.0), was
    promoted, could not be typed as a boolean, and sent every page of the template to the
    model for ever."""

    def shop(n):
        body = f'<main id="c"><h1>Ding {n}</h1><p class="stock">true</p></main>'
        return (
            f'<html><body><header id="top"><b class="cart-count">1</b></header>{body}</body></html>'
        )

    schema = {"properties": {"title": {"type": "string"}, "in_stock": {"type": "boolean"}}}
    rules = book(min_pages=3)
    for n in range(3):
        rules.learn(rules.view(shop(n), URL.format(n=n)), {"title": f"Ding {n}", "in_stock": True})
    result = rules.answer(rules.view(shop(60), URL), schema)
    assert result.reason == ANSWERED
    assert result.fields["in_stock"] is True
    assert result.sources["in_stock"] == ["css:p.stock"]
    assert canonical(True) != canonical("1") and canonical(False) != canonical(0)


def test_shape_separates_lengths_digits_and_currency():
    assert shape(12.5) == shape("19,99 €") != shape(1299.0)
    assert shape("Penguin") != shape("Penguin 2024") != shape("£ Penguin 2024")


@pytest.mark.parametrize("name", ["price", "product__price", "btn-primary", "h2"])
def test_person_written_names_are_stable(name):
    assert stable_name(name)


@pytest.mark.parametrize("name", ["sc-bdfBwQ", "css-1x2y3z", "a8f3k2", "_3Xk9Pq", "col-12345"])
def test_generated_names_are_not_used(name):
    assert not stable_name(name)


def test_a_page_is_read_by_every_rule_kind():
    view = observe(
        page(1, extra='<meta property="og:title" content="Book 1"><b itemprop="isbn">978</b>'),
        URL.format(n=1),
    )
    assert view.values["jsonld:Book.offers.price"] == "11"
    assert view.values["css:span.price"] == "11.00 €"
    assert view.values["css:main#content>h1"] == "Book 001"
    assert view.values["label:publisher"] == "House 1"
    assert view.values["itemprop:isbn"] == "978"
    assert view.site == "books.example"
    assert observe(page(1), "http://127.0.0.1:8123/b/1").site == "127.0.0.1"


def test_generated_classes_give_no_rule_and_ambiguous_keys_are_left_out():
    twice = '<span class="price">1.00 €</span>'
    view = observe(page(1, price_class="css-1x2y3z", extra=twice), URL.format(n=1))
    assert "css:span.css-1x2y3z" not in view.values
    assert "css:span.price" in view.values
    view = observe(page(1, extra=twice), URL.format(n=1))
    assert "css:span.price" not in view.values  # 11.00 € and 1.00 €: which one?


def test_the_template_ignores_content_but_not_layout():
    assert observe(page(1), None).template == observe(page(2, publisher=False), None).template
    moved = page(1).replace('<div class="buy">', '<div class="buy-box">')
    assert observe(moved, None).template != observe(page(1), None).template


# Promotion and the committee.


def test_a_rule_is_promoted_after_min_pages_answers_in_a_row():
    rules = book(min_pages=3)
    teach(rules, range(2))
    assert verdict(rules, page(50)).reason == UNKNOWN
    teach(rules, [2])
    result = verdict(rules, page(50), 50)
    assert result.reason == ANSWERED
    assert result.fields == answer(50)
    assert "jsonld:Book.offers.price" in result.sources["price"]
    assert "css:span.price" in result.sources["price"]


def test_a_candidate_the_model_contradicts_starts_over_and_a_stale_copy_cannot_revive_it():
    from scrapy_llm_extract.rules.store import merge_template

    rules = book(min_pages=3)
    teach(rules, range(2))
    view = rules.view(page(2), URL.format(n=2))
    before = copy.deepcopy(rules.template(view))  # another machine's copy, from before
    rules.learn(view, {**answer(2), "price": 99.0})
    state = rules.template(view)
    contradicted = state.rules["price"]["css:span.price"]
    assert (contradicted.streak, contradicted.disagreements) == (0, 1)
    # Merged with a copy from before the contradiction, the contradiction stands.
    assert merge_template(before, state).rules["price"]["css:span.price"] == contradicted
    assert merge_template(state, before).rules["price"]["css:span.price"] == contradicted
    teach(rules, range(3, 5))
    assert verdict(rules, page(50)).reason == UNKNOWN  # a streak of 2 after the contradiction
    teach(rules, [5])
    assert verdict(rules, page(50)).reason == ANSWERED  # learned afresh: 3 in a row


def test_rules_that_disagree_send_the_page_to_the_model():
    rules = book(min_pages=3)
    teach(rules, range(3))
    assert verdict(rules, page(50, ld_price=70)).reason == ALARM_DISAGREE


def test_a_rule_that_matches_nothing_sends_the_page_to_the_model():
    rules = book(min_pages=3)
    teach(rules, range(3))
    result = verdict(rules, page(50, price_class="amount"))
    assert result.reason == ALARM_MISSING
    assert result.alarm_field == "price"


def test_a_value_of_an_unseen_shape_sends_the_page_to_the_model():
    rules = book(min_pages=3)
    teach(rules, range(3))
    assert verdict(rules, page(50, price=123456)).reason == ALARM_SHAPE


def test_a_field_the_model_answers_null_is_learned_as_absent():
    rules = book(min_pages=3)
    for n in range(3):
        rules.learn(
            rules.view(page(n, publisher=False), URL.format(n=n)), answer(n, publisher=False)
        )
    result = verdict(rules, page(50, publisher=False), 50)
    assert result.reason == ANSWERED
    assert result.fields["publisher"] is None
    assert result.sources["publisher"] == [ABSENT]
    # The same template now showing a publisher: the absent rule does not hold.
    assert verdict(rules, page(51), 51).reason == ANSWERED
    assert verdict(rules, page(51), 51).fields["publisher"] is None  # learned: never stated
    rules.learn(rules.view(page(51), URL.format(n=51)), answer(51))
    assert verdict(rules, page(52), 52).reason == UNKNOWN  # suspect until the next answer


def test_a_field_only_some_pages_state_is_never_answered_null_where_it_is_stated():
    """A publisher (a sale price) some pages show: once the model read it, a page showing it
    goes to the model even after a null answer reinstated the suspect ``absent`` rule."""
    rules = book(min_pages=3)
    for n in range(3):
        rules.learn(
            rules.view(page(n, publisher=False), URL.format(n=n)), answer(n, publisher=False)
        )
    rules.learn(rules.view(page(3), URL.format(n=3)), answer(3))  # absent: suspect
    rules.learn(
        rules.view(page(4, publisher=False), URL.format(n=4)), answer(4, publisher=False)
    )  # absent reinstated by a null answer; "label:publisher" agreed twice
    stated = verdict(rules, page(52), 52)
    assert (stated.reason, stated.alarm_field) == (ALARM_DISAGREE, "publisher")
    unstated = verdict(rules, page(53, publisher=False), 53)
    assert unstated.reason == ANSWERED and unstated.fields["publisher"] is None


# Audit and retirement.


def test_audit_rate_starts_high_after_a_promotion_and_decays_to_the_floor():
    rules = book(min_pages=3, audit_start=0.5, audit_floor=0.05)
    teach(rules, range(3))
    reasons = [verdict(rules, page(n), n).reason for n in range(100, 400)]
    first, last = reasons[:40], reasons[-150:]
    assert first.count(AUDIT) > last.count(AUDIT) * 2
    assert 0 < last.count(AUDIT) < 30
    assert set(reasons) == {ANSWERED, AUDIT}


def test_a_rule_contradicted_twice_in_a_row_is_retired():
    rules = book(min_pages=3)
    teach(rules, range(3))

    def drifted(n):  # span.price now shows the list price; the model reads the sale price
        html = page(n, price=10 + n + 5, ld_price=10 + n)
        return rules.learn(rules.view(html, URL.format(n=n)), answer(n))

    assert drifted(10).retired == 0
    assert verdict(rules, page(60), 60).reason == UNKNOWN  # suspect: the model answers
    assert drifted(11).retired == 3  # span.price and the two containers around it
    state = rules.template(rules.view(page(1), URL.format(n=1)))
    assert not state.rules["price"]["css:span.price"].promoted
    # The rule the model confirmed twice keeps answering, alone, under a fresh high audit rate.
    result = verdict(rules, page(60), 60)
    assert result.sources["price"] == ["jsonld:Book.offers.price"]
    assert state.answered_since_change == 1


def test_one_wrong_model_answer_does_not_retire_a_good_rule():
    rules = book(min_pages=3)
    teach(rules, range(3))
    noisy = rules.learn(rules.view(page(10), URL.format(n=10)), {**answer(10), "price": 1.0})
    assert noisy.disagreements == 1 and noisy.retired == 0
    assert verdict(rules, page(60), 60).reason == UNKNOWN  # suspect: the model decides
    confirmed = rules.learn(rules.view(page(11), URL.format(n=11)), answer(11))
    assert confirmed.retired == 0
    assert verdict(rules, page(60), 60).reason == ANSWERED


# Persistence and batch answers.


def test_a_state_a_later_version_wrote_with_more_keys_still_loads():
    from scrapy_llm_extract.rules.store import RuleState, TemplateState

    state = TemplateState(rules={"price": {"css:p.price": RuleState(streak=2, agreements=2)}})
    data = json.loads(state.to_json())
    data["added_later"] = "x"
    data["rules"]["price"]["css:p.price"]["added_later"] = 1
    assert TemplateState.from_json(json.dumps(data)) == state


def test_rules_persist_across_rule_books(tmp_path):
    first = book(tmp_path, min_pages=3)
    teach(first, range(3))
    first.close()
    second = book(tmp_path, min_pages=3)
    assert verdict(second, page(70), 70).fields == answer(70)
    second.close()


def test_a_retirement_by_another_process_on_the_same_folder_is_never_undone(tmp_path):
    """A crawl and a cron collector learn in one rules dir: the crawl's next save used to
    write its stale copy over the collector's retirement, and the retired rule answered."""
    crawl, collector = book(tmp_path, min_pages=3), book(tmp_path, min_pages=3)
    teach(crawl, range(3))
    assert "css:span.price" in verdict(crawl, page(60), 60).sources["price"]

    def drifted(n):  # span.price now shows the list price; the model reads the sale price
        return page(n, price=10 + n + 5, ld_price=10 + n)

    for n in (10, 11):  # the collector's batch answers contradict span.price twice
        collector.learn(collector.view(drifted(n), URL.format(n=n)), answer(n))
    crawl.learn(crawl.view(page(12), URL.format(n=12)), answer(12))  # the crawl learns on

    for rules in (crawl, book(tmp_path, min_pages=3)):
        result = verdict(rules, drifted(61), 61)
        assert result.reason == ANSWERED
        assert result.sources["price"] == ["jsonld:Book.offers.price"]
        assert result.fields["price"] == answer(61)["price"]


def test_a_batch_answer_is_learned_from_the_page_its_row_kept(tmp_path):
    """The page travels with its spool row (as JSON), so a collector with another rules dir,
    on another machine, learns from it; a row delivered again is learned once."""
    url = URL.format(n=1)
    kept = json.loads(json.dumps(book(tmp_path / "crawl").remember(book().view(page(1), url))))
    collector = book(tmp_path / "collector", min_pages=1)
    assert collector.learn_collected("run-1", kept, answer(1)).promoted >= 3
    assert collector.learn_collected("run-1", kept, answer(1)) is None  # learned once
    assert verdict(collector, page(5), 5).fields == answer(5)
    collector.close()
    # Learned once even by the next collection on this machine (the rules dir remembers it).
    again = book(tmp_path / "collector", min_pages=1)
    assert again.learn_collected("run-1", kept, answer(1)) is None
    assert again.learn_collected("run-2", kept, answer(1)) is not None
    again.close()


# Settings.


def test_rules_settings_are_validated_and_an_unusable_folder_is_named(tmp_path):
    from scrapy_llm_extract.config import ConfigError
    from scrapy_llm_extract.rules.gate import RulesGate
    from tests.helpers import make_config

    assert RulesGate(make_config(), stats=None).book is None  # off by default
    with pytest.raises(ConfigError, match="LLM_EXTRACT_RULES_AUDIT_RATE must be a number from 0"):
        make_config(LLM_EXTRACT_RULES_AUDIT_RATE=1.5)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    config = make_config(LLM_EXTRACT_RULES=True, LLM_EXTRACT_RULES_DIR=str(blocked))
    with pytest.raises(ConfigError, match=f"LLM_EXTRACT_RULES_DIR {blocked} cannot hold"):
        RulesGate(config, stats=None)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "rules.sqlite3").write_bytes(b"\x00garbage" * 600)
    config = make_config(LLM_EXTRACT_RULES=True, LLM_EXTRACT_RULES_DIR=str(damaged))
    with pytest.raises(ConfigError, match=r"file is not a database.*move the damaged") as refused:
        RulesGate(config, stats=None)
    assert "writable folder" not in str(refused.value)  # it is writable: the file is damaged


class Stats:
    def __init__(self):
        self.values = {}

    def inc_value(self, key, count=1):
        self.values[key] = self.values.get(key, 0) + count

    def set_value(self, key, value):
        self.values[key] = value


def test_collection_learns_a_batch_answer_through_the_gate(tmp_path):
    from itemadapter import ItemAdapter

    from scrapy_llm_extract.rules.book import Verdict
    from scrapy_llm_extract.rules.gate import RulesGate
    from tests.helpers import make_config

    config = make_config(
        LLM_EXTRACT_RULES=True,
        LLM_EXTRACT_RULES_DIR=str(tmp_path),
        LLM_EXTRACT_RULES_MIN_PAGES=1,
        LLM_EXTRACT_SOURCE_INFO_FIELD="extracted_by",
    )
    crawl = RulesGate(config, Stats())
    url = URL.format(n=1)
    record = {"custom_id": "run-1", "url": url}
    record |= crawl.spooled(Verdict(crawl.book.view(page(1), url), UNKNOWN))
    crawl.close()
    stats = Stats()
    collector = RulesGate(config, stats)
    item = {"url": url, **answer(1)}
    collector.collected(ItemAdapter(item), json.loads(json.dumps(record)), answer(1))
    collector.close()
    assert item["extracted_by"] == dict.fromkeys(answer(1), "model")
    assert stats.values["llm_extract/rules/promoted"] >= 3
    # A row whose kept page cannot be read (a hand-edited sidecar, say) costs its lesson only.
    torn = {"custom_id": "run-2", "url": url, "rules_page": {"site": "books.example"}}
    other = {"url": url}
    collector = RulesGate(config, stats)
    collector.collected(ItemAdapter(other), torn, answer(1))
    collector.close()
    assert stats.values["llm_extract/rules/failed/learn"] == 1
    assert other["extracted_by"] == dict.fromkeys(answer(1), "model")


def test_an_item_class_without_the_source_info_field_is_named_once_and_counted(tmp_path, caplog):
    import scrapy
    from itemadapter import ItemAdapter

    from scrapy_llm_extract.rules.book import Verdict
    from scrapy_llm_extract.rules.gate import RulesGate
    from tests.helpers import make_config

    class Book(scrapy.Item):
        title = scrapy.Field()

    config = make_config(
        LLM_EXTRACT_RULES=True,
        LLM_EXTRACT_RULES_DIR=str(tmp_path),
        LLM_EXTRACT_SOURCE_INFO_FIELD="extracted_by",
    )
    stats = Stats()
    gate = RulesGate(config, stats)
    for n in range(2):
        verdict = Verdict(gate.book.view(page(n), URL.format(n=n)), UNKNOWN)
        gate.learn(ItemAdapter(Book(title="x")), verdict, answer(n))
    gate.close()
    assert stats.values["llm_extract/rules/source_info_unset"] == 2
    warned = [
        r.getMessage() for r in caplog.records if "LLM_EXTRACT_SOURCE_INFO_FIELD" in r.getMessage()
    ]
    assert warned == [
        "Book has no field 'extracted_by' (LLM_EXTRACT_SOURCE_INFO_FIELD): add it to the item"
        " class to see which values came from rules (llm_extract/rules/source_info_unset)."
    ]


def test_the_rules_are_listed_per_site_with_their_counts(tmp_path, capsys):
    from scrapy_llm_extract.rules.__main__ import main

    assert main([str(tmp_path)]) == 1
    assert "No learned rules in" in capsys.readouterr().err
    rules = book(tmp_path, min_pages=3)
    teach(rules, range(3))
    rules.close()
    assert main([str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "books.example  template" in listing
    assert "3 page(s) answered by the model, e.g. https://books.example/b/0" in listing
    assert "* promoted: answers that field" in listing
    assert "* jsonld:Book.offers.price  agreed 3, disagreed 0" in listing


def test_the_listing_read_through_head_ends_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from scrapy_llm_extract.rules.store import RuleState, RuleStore, TemplateState

    store = RuleStore(tmp_path)
    state = TemplateState(rules={"price": {f"css:span.p{n}": RuleState() for n in range(20)}})
    for n in range(400):  # far more than a pipe holds: the listing blocks until head is gone
        store.save(f"shop{n}.example", "t1", state)
    store.close()
    listing = subprocess.Popen(
        [sys.executable, "-m", "scrapy_llm_extract.rules", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout.readline().startswith(b"Learned rules per site")
    listing.stdout.close()  # what "| head -1" does
    assert listing.wait(timeout=60) == 0
    assert b"Traceback" not in listing.stderr.read()


# Sharing through the spool's object store (an s3:// spool).


class RacingStore:
    """The store, where another machine publishes right after our first read (a race)."""

    def __init__(self, store, other):
        self.store, self.other, self.uri = store, other, store.uri

    def get(self, key):
        stored = self.store.get(key)
        if self.other is not None:
            other, self.other = self.other, None
            other.publish()
        return stored

    def put(self, *args, **kwargs):
        return self.store.put(*args, **kwargs)


def test_rules_published_by_two_machines_at_once_are_merged_and_a_retirement_wins(
    tmp_path, s3_server, s3_spool
):
    from scrapy_llm_extract.rules.shared import KEY, SharedRules
    from scrapy_llm_extract.rules.store import RuleState, RuleStore, TemplateState
    from tests.test_store import open_test_store

    promoted = RuleState(streak=9, agreements=9, promoted=True)
    retired = RuleState(agreements=6, disagreements=2)  # promoted, then contradicted twice
    for machine, rules in (
        ("a", {"price": {"jsonld:price": promoted}, "title": {"meta:og:title": promoted}}),
        ("b", {"price": {"jsonld:price": retired}}),
    ):
        local = RuleStore(tmp_path / machine)
        local.save("shop", "t1", TemplateState(rules=rules, shapes={"price": [machine]}))
        local.close()

    store = open_test_store(s3_server, s3_spool)
    a = SharedRules(store, tmp_path / "a")
    b = SharedRules(RacingStore(store, other=a), tmp_path / "b")
    b.publish()  # a publishes between b's read and b's write: b's write gets 412, merges, retries
    SharedRules(store, tmp_path / "a").load()
    for machine in ("a", "b"):
        state = RuleStore(tmp_path / machine).load("shop", "t1")
        assert state is not None
        assert state.rules["price"]["jsonld:price"] == retired  # more disagreements win
        assert state.rules["title"]["meta:og:title"] == promoted  # nothing lost
        assert sorted(state.shapes["price"]) == ["a", "b"]
    stored = store.get(KEY)
    assert stored is not None
    assert {e["template"] for e in json.loads(stored.body)["templates"]} == {"t1"}
    store.close()


def test_a_value_only_an_inline_script_states_is_read_between_fixed_delimiters():
    """No element, label or structured data states the stock code: a delimited rule does."""
    schema = {"type": "object", "properties": {"code": {"type": "string"}}}

    def coded(n, extra=""):
        script = f"<script>var shop = {{}};\nshop.code = 'K{n:03d}-Z';\n{extra}</script>"
        return page(n, extra=script)

    rules = book(min_pages=3)
    for n in range(3):
        rules.learn(rules.view(coded(n), URL.format(n=n)), {"code": f"K{n:03d}-Z"})
    result = rules.answer(rules.view(coded(42), URL.format(n=42)), schema)
    assert result.reason == ANSWERED
    assert result.fields == {"code": "K042-Z"}
    (key,) = result.sources["code"]
    assert key == 'regex:["shop.code = \'", "\';\\n<"]'
    # A page spooled for batch keeps what the rule read, though not its raw text.
    kept = json.loads(json.dumps(rules.remember(rules.view(coded(44), URL.format(n=44)))))
    rules.learn_collected("row-44", kept, {"code": "K044-Z"})
    assert rules.template(rules.view(coded(1), URL.format(n=1))).rules["code"][key].agreements == 4
    # The most brittle kind is a last resort: none for fields that other kinds read.
    state = rules.template(rules.view(coded(1), URL.format(n=1)))
    assert not [k for k in state.rules.get("title", {}) if k.startswith("regex:")]
    rules.learn(rules.view(coded(45), URL.format(n=45)), {"title": "Book 045"})
    assert state.rules["title"] and not [k for k in state.rules["title"] if "regex:" in k]
    # Its prefix twice on a page: the rule reads nothing there, and the page goes to the model.
    twice = rules.view(coded(43, extra="shop.code = 'X';\n"), URL.format(n=43))
    assert rules.answer(twice, schema).reason == ALARM_MISSING


def test_delimiters_must_be_long_unique_and_not_digits_only():
    from scrapy_llm_extract.rules.kinds import delimited_keys, read_delimited

    assert list(delimited_keys("<b>2024 ABC-1 2025</b>", "ABC-1")) == []  # digits-only
    assert list(delimited_keys("id=ABC-1;", "ABC-1")) == []  # under four characters
    assert list(delimited_keys("<td>ABC-12</td>", "ABC-1")) == []  # cut out of a longer code
    assert list(delimited_keys("<i>x</i><td>1</td><i>x</i><td>2</td>", "1")) == []  # not unique
    (key,) = delimited_keys("<p><td>AB &amp; C</td>", "AB &amp; C")
    assert read_delimited("<p><td>AB &amp; D</td>", key) == "AB & D"
