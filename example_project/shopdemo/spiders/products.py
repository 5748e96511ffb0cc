"""``scrapy crawl products``: every product page of the example shop, as items.

The spider does no parsing of product data: it hands each page's HTML to
scrapy-llm-extract (enabled in settings.py) and only decides urgency. Pages
with a "New listing" badge get ``priority = "high"`` and are extracted in
real time, during the crawl; the others go to the Batch API at half the
price and come back from ``scrapy collect-batches``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy import signals
from scrapy.http import Response, TextResponse

from ..items import Product
from ..shop.server import ShopServer


class ProductsSpider(scrapy.Spider):
    name = "products"

    async def start(self) -> AsyncIterator[Any]:
        # The shop lives as long as the spider: started here, stopped on close.
        self.shop = ShopServer()
        self.crawler.signals.connect(self.stop_shop, signal=signals.spider_closed)
        yield scrapy.Request(f"{self.shop.start()}/", callback=self.parse)

    def stop_shop(self) -> None:
        self.shop.stop()

    def parse(self, response: Response) -> Iterator[Any]:
        """Home and category pages: follow categories, pagination and products."""
        assert isinstance(response, TextResponse)  # the shop serves HTML only
        yield from response.follow_all(css="a.product-card__link", callback=self.parse_product)
        yield from response.follow_all(css="nav.categories a, a[rel=next]", callback=self.parse)

    def parse_product(self, response: Response) -> Iterator[Any]:
        assert isinstance(response, TextResponse)
        new_listing = bool(response.css("[data-new-listing]"))
        yield Product(
            url=response.url,
            html=response.text,
            priority="high" if new_listing else "normal",
        )
        yield from response.follow_all(css="a.related__link", callback=self.parse_product)
