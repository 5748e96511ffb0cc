import json
import tracemalloc

import pytest
import scrapy
from itemadapter import ItemAdapter

from scrapy_llm_extract.extraction import InvalidInput, Preparer
from scrapy_llm_extract.schema import SchemaError

from .helpers import make_config

PAGE = """<html><head><title>Blue mug</title>
<script type="application/ld+json">{"@type": "Product", "name": "Blue mug", "sku": "MUG-1"}</script>
</head><body><h1>Blue mug</h1><p>Price 12,99 €</p><script>var x = 1;</script></body></html>"""


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    title = scrapy.Field(json_schema_extra={"type": "string"})
    sku = scrapy.Field()


def prepare(item, **settings):
    return Preparer(make_config(**settings)).prepare(ItemAdapter(item))


def user_message(prepared):
    return prepared.request.body["messages"][1]["content"]


def test_item_becomes_a_request_with_its_class_schema():
    prepared = prepare(Product(url="https://shop.example/mug", html=PAGE))
    assert prepared.url == "https://shop.example/mug"
    assert prepared.schema.name == "Product"
    assert list(prepared.schema.schema["properties"]) == ["title", "sku"]
    content = user_message(prepared)
    assert '"sku":"MUG-1"' in content
    assert "Price 12,99 €" in content
    assert "var x" not in content


def test_bytes_are_decoded_by_their_declared_charset():
    page = PAGE.replace("<head>", '<head><meta charset="windows-1252">').encode("cp1252")
    content = user_message(prepare(Product(html=page)))
    assert "12,99 €" in content


def test_json_and_plain_text_sources_are_extracted_too():
    as_json = json.dumps({"name": "Blue mug", "offers": {"price": "12.99"}})
    assert "12.99" in user_message(prepare(Product(html=as_json)))
    assert "Blue mug, 12.99 EUR" in user_message(prepare(Product(html="Blue mug, 12.99 EUR")))


@pytest.mark.parametrize(
    "source", ["", "   ", b"", "<html><body><script>x()</script></body></html>"]
)
def test_empty_pages_are_invalid_input(source):
    with pytest.raises(InvalidInput) as info:
        prepare(Product(html=source))
    assert info.value.kind == "empty_page"


def test_non_text_sources_are_invalid_input():
    with pytest.raises(InvalidInput) as info:
        prepare(Product(html=12))
    assert info.value.kind == "source_type"


def test_a_15_mb_page_is_cut_to_the_budget_using_under_3_5_page_sizes_of_memory():
    """Python allocations only (tracemalloc does not see libxml2's); speed is measured in
    bench/bench_slimming.py."""
    # Distinct rows: the slimmer drops repeated lines, so a repeated row would shrink to one.
    rows = (f"<tr><td>Spare part {n}</td><td>Fits model X{n}</td></tr>" for n in range(250_000))
    page = PAGE.replace("</body>", "<table>" + "".join(rows) + "</table></body>")
    assert len(page) > 15_000_000
    prepare(Product(html=PAGE))  # imports and tokenizer loads are not the page's cost
    tracemalloc.start()
    prepared = prepare(Product(html=page), LLM_EXTRACT_MAX_INPUT_TOKENS=4000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Measured 2.62 page sizes (the page as UTF-8 for the parser, and its text): one more
    # copy of the page fails this.
    assert peak < 3.5 * len(page)
    assert prepared.request.truncated
    assert prepared.request.prompt_tokens < 4000 + 500
    assert '"sku":"MUG-1"' in user_message(prepared)


def test_plain_dicts_need_a_configured_schema():
    with pytest.raises(SchemaError, match="LLM_EXTRACT_SCHEMA"):
        prepare({"html": PAGE})
    prepared = prepare(
        {"html": PAGE},
        LLM_EXTRACT_SCHEMA={"title": "Mug", "type": "object", "properties": {"sku": {}}},
    )
    assert prepared.schema.name == "Mug"
    assert list(prepared.schema.schema["properties"]) == ["sku"]
    by_path = prepare({"html": PAGE}, LLM_EXTRACT_SCHEMA="tests.test_extraction.Product")
    assert by_path.schema.name == "Product"


def test_has_source():
    preparer = Preparer(make_config())
    assert preparer.has_source(ItemAdapter(Product(html="x")))
    assert not preparer.has_source(ItemAdapter(Product(url="u")))


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 800, "binary data"),
        ("<p>" + "\x01\x02\x03\x1b" * 5000 + "</p>", "mostly non-printable"),
    ],
)
def test_non_text_sources_are_refused_not_sent(source, reason):
    with pytest.raises(InvalidInput, match=reason) as info:
        prepare(Product(html=source))
    assert info.value.kind == "not_text"
    assert "source field" in str(info.value)
