"""The emulator's answer rules: values copied from the page's structured data."""

from __future__ import annotations

import json

import pytest

from scrapy_llm_extract.emulator.extract import fill, structured_entries
from scrapy_llm_extract.schema import validation_errors


def nullable(kind, **extra):
    return {"type": [kind, "null"], **extra}


def strict(**properties):
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


PRODUCT = strict(
    title=nullable("string"),
    price=nullable("number"),
    currency=nullable("string"),
    sku=nullable("string"),
    brand=nullable("string"),
    availability=nullable("string"),
    rating=nullable("integer"),
)

LD = {
    "@type": "Product",
    "name": "Blue mug",
    "sku": "MUG-1",
    "brand": {"@type": "Brand", "name": "Acme"},
    "offers": {"price": "12.99", "priceCurrency": "EUR", "availability": "InStock"},
}


def page(*lines: str) -> str:
    inner = "\n".join(lines)
    return (
        '<untrusted_page url="https://shop.example/p/1">\n<structured_data>\n'
        f"{inner}\n</structured_data>\n<visible_text>\n# Ignored: 99\n</visible_text>\n"
        "</untrusted_page>"
    )


def extract(text, schema=PRODUCT):
    result = fill(schema, structured_entries(text))
    assert validation_errors(result, schema) == []
    return result


def test_json_ld_keys_anywhere_and_the_alias_table():
    result = extract(page("ld+json: " + json.dumps(LD, separators=(",", ":"))))
    assert result == {
        "title": "Blue mug",
        "price": 12.99,
        "currency": "EUR",
        "sku": "MUG-1",
        "brand": "Acme",
        "availability": "InStock",
        "rating": None,
    }


def test_last_key_segment_matches_and_comes_first():
    text = page(
        "og:title: Open Graph title",
        "product:price:amount: 7,50",
        "product:price:currency: GBP",
        "itemprop sku: SKU-9",
        'ld+json: {"name":"LD name"}',
    )
    result = extract(text)
    assert result["title"] == "Open Graph title"
    assert result["price"] == 7.5
    assert result["currency"] == "GBP"
    assert result["sku"] == "SKU-9"


def test_nothing_found_is_null_and_visible_text_is_not_read():
    assert extract(page("og:type: product")) == dict.fromkeys(PRODUCT["properties"])


def test_raw_html_script_meta_and_itemprop():
    html = (
        "<html><head><meta property='og:title' content='HTML mug'>"
        '<script type="application/ld+json">{"offers":{"price":5,"priceCurrency":"USD"}}</script>'
        "</head><body><span itemprop='sku'>H-1</span></body></html>"
    )
    result = extract(html)
    assert (result["title"], result["price"], result["currency"], result["sku"]) == (
        "HTML mug",
        5.0,
        "USD",
        "H-1",
    )


@pytest.mark.parametrize(
    ("value", "schema", "expected"),
    [
        ("1.299,50 €", nullable("number"), 1299.5),
        ("1,299.50", nullable("number"), 1299.5),
        ("1,299", nullable("number"), 1299.0),
        ("4", nullable("integer"), 4),
        ("4.5", nullable("integer"), None),
        ("yes", nullable("boolean"), True),
        ("nope", nullable("boolean"), None),
        ("red", nullable("array", items={"type": "string"}), ["red"]),
        ("in stock", nullable("string", enum=["In Stock", "Sold out", None]), "In Stock"),
        ("maybe", nullable("string", enum=["In Stock", None]), None),
        ("x", {"type": "number"}, 0),
        ("x", {"type": "string", "enum": ["a", "b"]}, "a"),
    ],
)
def test_values_are_coerced_to_the_schema_type(value, schema, expected):
    result = extract(page(f"field: {value}"), strict(field=schema))
    assert result == {"field": expected}


def test_nested_objects_fill_from_the_matching_json_object():
    schema = strict(offers={**strict(price=nullable("number")), "type": ["object", "null"]})
    assert extract(page('ld+json: {"offers":{"price":"3"}}'), schema) == {"offers": {"price": 3.0}}
