"""The example's shop and spider, without the package: what the crawl feeds it.

The end-to-end test (test_example_e2e.py) checks extraction; these check the
inputs it depends on: each template carries the product's data the way it
claims to, the "New listing" badge is where the catalogue says, and the
spider finds every product page exactly once through the loopback shop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parsel import Selector
from scrapy import signals
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
sys.path.insert(0, str(EXAMPLE))

from shopdemo.items import Product  # noqa: E402
from shopdemo.shop.catalog import CATALOG, TEMPLATES, ShopProduct  # noqa: E402
from shopdemo.shop.pages import format_price, render  # noqa: E402
from shopdemo.spiders.products import ProductsSpider  # noqa: E402


def page(path: str) -> Selector:
    rendered = render(path, {})
    assert rendered is not None, path
    return Selector(text=rendered[1])


def json_ld(selector: Selector) -> list[Any]:
    return [json.loads(text) for text in selector.xpath(_LD_JSON).getall()]


_LD_JSON = '//script[@type="application/ld+json"]/text()'


def first_of(template: str) -> ShopProduct:
    return next(product for product in CATALOG if product.template == template)


def test_catalog_is_varied_and_unambiguous() -> None:
    assert 40 <= len(CATALOG) <= 60
    assert len({product.path for product in CATALOG}) == len(CATALOG)
    assert len({product.sku for product in CATALOG}) == len(CATALOG)
    assert {product.template for product in CATALOG} == set(TEMPLATES)
    assert len({product.template for product in CATALOG if product.new_listing}) >= 3


def test_jsonld_pages_describe_the_product_in_one_script() -> None:
    product = first_of("jsonld")
    (data,) = json_ld(page(product.path))
    assert (data["name"], data["sku"], data["brand"]["name"]) == (
        product.title,
        product.sku,
        product.brand,
    )
    assert (data["offers"]["price"], data["offers"]["priceCurrency"]) == (
        product.price,
        product.currency,
    )


def test_market_pages_list_offers_before_a_breadcrumb() -> None:
    product = first_of("market")
    data, breadcrumb = json_ld(page(product.path))
    assert data["offers"][0]["price"] == product.price
    assert breadcrumb["@type"] == "BreadcrumbList"


def test_microdata_pages_have_no_json_ld() -> None:
    product = first_of("microdata")
    selector = page(product.path)
    assert json_ld(selector) == []
    assert selector.css('[itemprop="sku"]::attr(content)').get() == product.sku
    assert selector.css('[itemprop="price"]::attr(content)').get() == product.price
    assert selector.css('meta[property="og:title"]::attr(content)').get() == product.title


def test_text_pages_state_the_data_only_in_prose() -> None:
    product = first_of("text")
    selector = page(product.path)
    assert json_ld(selector) == []
    assert selector.css("[itemprop], meta[property]").getall() == []
    text = " ".join(selector.css("main ::text").getall())
    assert format_price(product) in text and product.sku in text


def test_the_new_listing_badge_marks_exactly_the_new_listings() -> None:
    for product in CATALOG:
        badge = page(product.path).css("[data-new-listing]::text").get()
        assert badge == ("New listing" if product.new_listing else None), product.path


def test_unknown_paths_are_not_found() -> None:
    assert render("/p/no-such-product", {}) is None
    assert render("/c/kitchen", {"page": ["99"]}) is None


@deferred_f_from_coro_f
async def test_spider_yields_every_product_once_then_stops_the_shop() -> None:
    items: list[Product] = []

    def collect(item: Product) -> None:
        items.append(item)

    crawler = get_crawler(ProductsSpider, {"ROBOTSTXT_OBEY": True})
    crawler.signals.connect(collect, signal=signals.item_scraped)
    await crawler.crawl_async()

    assert sorted(urlsplit(item["url"]).path for item in items) == sorted(
        product.path for product in CATALOG
    )
    urgent = {product.path for product in CATALOG if product.new_listing}
    for item in items:
        expected = "high" if urlsplit(item["url"]).path in urgent else "normal"
        assert item["priority"] == expected
        assert item["html"].startswith("<!DOCTYPE html>")
    assert crawler.stats.get_value("robotstxt/response_status_count/200") == 1
    spider = crawler.spider
    assert isinstance(spider, ProductsSpider)
    assert not spider.shop.running
