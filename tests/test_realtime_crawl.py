"""Real crawls of a local site through LLMExtractPipeline, answered by the emulator.

The SDK talks to the emulator in-process (LLM_EXTRACT_EMULATOR_DIR); the site
is served on 127.0.0.1. Assertions use event order and counters, never
wall-clock thresholds.
"""

import json
import logging
import threading

import scrapy
from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.config import Config
from scrapy_llm_extract.emulator import EmulatorServer
from scrapy_llm_extract.extraction import Preparer
from tests.conftest import product_page

FAKE_KEY = "sk-proj-DISTINCTIVE-crawl-7d41e0c2"
PREFIX = "llm_extract/realtime"
#: Marker -> the failure kind the pipeline must report for it.
FAULTS = {
    "refusal": "refusal",
    "length": "length",
    "content_filter": "content_filter",
    "invalid_json": "invalid_json",
    "schema_mismatch": "schema_mismatch",
    "error_500": "api_error",
    "error_400": "api_error",
    "hang": "timeout",
}


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    llm_extract_error = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    sku = scrapy.Field()


class ProductSpider(scrapy.Spider):
    """Crawls ``pages`` ((url, priority) pairs) and yields one Product per page."""

    name = "products"

    def __init__(self, pages, **kwargs):
        super().__init__(**kwargs)
        self.pages = pages

    async def start(self):
        for url, priority in self.pages:
            yield scrapy.Request(url, cb_kwargs={"priority": priority})

    def parse(self, response, priority):
        yield Product(url=response.url, html=response.text, priority=priority)


class Recorder:
    """Crawl events in order: ("response", url), ("item", url); scraped items by URL."""

    def __init__(self, crawler):
        self.events = []
        self.items = {}
        crawler.signals.connect(self.response_received, signals.response_received)
        crawler.signals.connect(self.item_scraped, signals.item_scraped)

    def response_received(self, response, request, spider):
        self.events.append(("response", response.url))

    def item_scraped(self, item, response, spider):
        self.events.append(("item", item["url"]))
        self.items[item["url"]] = item


def crawl_settings(tmp_path, emulator, **settings):
    return {
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_SCHEMA": "tests.test_realtime_crawl.Product",
        "LLM_EXTRACT_MAX_RETRIES": 1,
        "LOG_LEVEL": "DEBUG",
        **settings,
    }


async def crawl(settings, pages):
    crawler = get_crawler(ProductSpider, settings)
    recorder = Recorder(crawler)
    await crawler.crawl_async(pages=pages)
    return crawler, recorder


def realtime_stats(crawler):
    stats = crawler.stats.get_stats()
    return {k[len(PREFIX) + 1 :]: v for k, v in stats.items() if k.startswith(PREFIX)}


def spooled_urls(tmp_path):
    """URLs of the items in the spool's sidecar files, whatever run folder they are in."""
    urls = []
    for sidecar in sorted((tmp_path / "spool").glob("*/items-*.jsonl*")):
        urls += [json.loads(line)["url"] for line in sidecar.read_text().splitlines()]
    return sorted(urls)


def expected_fields(n):
    return {"title": f"Product {n}", "price": str(round(10 + n * 1.25, 2)), "currency": "EUR"}


@deferred_f_from_coro_f
async def test_urgent_items_are_extracted_and_others_spooled_in_one_crawl(
    tmp_path, local_site, emulator
):
    settings = crawl_settings(tmp_path, emulator, LLM_EXTRACT_KEEP_SOURCE=True)
    pages = [(local_site.url(f"/product/{n}"), "high" if n % 2 else "low") for n in range(1, 9)]
    crawler, recorder = await crawl(settings, pages)
    urgent = {url for url, priority in pages if priority == "high"}
    assert set(recorder.items) == urgent
    for n in (1, 3, 5, 7):
        item = recorder.items[local_site.url(f"/product/{n}")]
        assert {k: item[k] for k in ("title", "price", "currency")} == expected_fields(n)
        assert item["sku"] == f"SKU-{n}"
    assert spooled_urls(tmp_path) == sorted(url for url, _ in pages if url not in urgent)
    assert realtime_stats(crawler)["succeeded"] == 4
    # What the emulator received is, byte for byte, what the preparer built.
    preparer = Preparer(Config.from_settings(crawler.settings))
    built = sorted(
        preparer.prepare(ItemAdapter(item)).request.body_json.encode()
        for item in recorder.items.values()
    )
    assert sorted(emulator.requests()) == built


@deferred_f_from_coro_f
async def test_a_slow_api_does_not_hold_up_the_crawl(tmp_path, local_site, emulator):
    pages = [(local_site.url(f"/product/{n}"), "high") for n in range(12)]
    downloaded = threading.Event()  # the API answers nothing until every page is in
    with EmulatorServer(emulator.path) as server:
        answer = server.emulator.handle

        def held(request):
            if request.path.endswith("/chat/completions"):
                downloaded.wait(120)  # a stuck crawl fails the test instead of hanging it
            return answer(request)

        server.emulator.handle = held
        settings = crawl_settings(
            tmp_path,
            emulator,
            LLM_EXTRACT_EMULATOR_DIR=None,
            LLM_EXTRACT_BASE_URL=server.base_url,
            LLM_EXTRACT_API_KEY=FAKE_KEY,
        )
        crawler = get_crawler(ProductSpider, settings)
        recorder = Recorder(crawler)

        def count_downloads(response, request, spider):
            if sum(kind == "response" for kind, _ in recorder.events) == len(pages):
                downloaded.set()

        crawler.signals.connect(count_downloads, signals.response_received)
        await crawler.crawl_async(pages=pages)
    assert len(recorder.items) == 12
    # Every page was downloaded while the answers were held: nothing waited for them.
    first_item = next(i for i, (kind, _) in enumerate(recorder.events) if kind == "item")
    assert sum(kind == "response" for kind, _ in recorder.events[:first_item]) == 12
    assert realtime_stats(crawler)["succeeded"] == 12


def fault_pages(local_site):
    pages = {"ok": local_site.add("/ok", product_page(0))}
    for marker in FAULTS:
        pages[marker] = local_site.add(
            f"/{marker}", product_page(1, text=f"Special offer [[emulator:{marker}]]")
        )
    return pages


@deferred_f_from_coro_f
async def test_every_failure_kind_sets_the_error_field(tmp_path, local_site, emulator, caplog):
    pages = fault_pages(local_site)
    settings = crawl_settings(
        tmp_path, emulator, LLM_EXTRACT_REALTIME_FALLBACK="error", LLM_EXTRACT_TIMEOUT=0.5
    )
    with caplog.at_level(logging.WARNING, logger="scrapy_llm_extract"):
        crawler, recorder = await crawl(settings, [(url, "high") for url in pages.values()])
    assert recorder.items[pages["ok"]]["title"] == "Product 0"
    assert "llm_extract_error" not in recorder.items[pages["ok"]]
    for marker, kind in FAULTS.items():
        error = recorder.items[pages[marker]]["llm_extract_error"]
        assert error.startswith(f"{kind}: "), (marker, error)
        # One warning per final failure, naming the page and what became of it.
        lines = [r.getMessage() for r in caplog.records if pages[marker] in r.getMessage()]
        assert len(lines) == 1, lines
        assert "llm_extract_error set" in lines[0]
    counted = realtime_stats(crawler)
    assert counted["succeeded"] == 1
    assert {k: v for k, v in counted.items() if k.startswith("failed/")} == {
        "failed/refusal": 1,
        "failed/length": 1,
        "failed/content_filter": 1,
        "failed/invalid_json": 1,
        "failed/schema_mismatch": 1,
        "failed/api_error": 2,
        "failed/timeout": 1,
    }
    assert counted["retried"] == 2  # error_500 and hang, once each (LLM_EXTRACT_MAX_RETRIES=1)
    assert spooled_urls(tmp_path) == []


@deferred_f_from_coro_f
async def test_failures_fall_back_to_the_spool(tmp_path, local_site, emulator):
    pages = fault_pages(local_site)
    settings = crawl_settings(tmp_path, emulator, LLM_EXTRACT_TIMEOUT=0.5)
    crawler, recorder = await crawl(settings, [(url, "high") for url in pages.values()])
    assert list(recorder.items) == [pages["ok"]]
    assert spooled_urls(tmp_path) == sorted(pages[marker] for marker in FAULTS)
    assert crawler.stats.get_value("llm_extract/realtime/fallback_to_batch") == len(FAULTS)


@deferred_f_from_coro_f
async def test_a_second_crawl_is_answered_from_the_cache(tmp_path, local_site, emulator):
    settings = crawl_settings(
        tmp_path, emulator, LLM_EXTRACT_CACHE_ENABLED=True, LLM_EXTRACT_CACHE_DIR=str(tmp_path)
    )
    pages = [(local_site.url(f"/product/{n}"), "high") for n in range(5)]
    first, first_recorder = await crawl(settings, pages)
    assert len(emulator.requests()) == 5
    assert "cached" not in realtime_stats(first)
    second, second_recorder = await crawl(settings, pages)
    assert len(emulator.requests()) == 5
    assert realtime_stats(second)["cached"] == 5
    assert realtime_stats(second)["succeeded"] == 5
    assert "input_tokens" not in realtime_stats(second)
    assert {u: dict(i) for u, i in second_recorder.items.items()} == {
        u: dict(i) for u, i in first_recorder.items.items()
    }


@deferred_f_from_coro_f
async def test_the_api_key_appears_in_no_log_line(tmp_path, local_site, emulator, caplog):
    emulator.configure(api_key="sk-another-key")  # every call is refused with a 401
    pages = [(local_site.url("/product/1"), "high")]
    settings = crawl_settings(tmp_path, emulator, LLM_EXTRACT_API_KEY=FAKE_KEY)
    with caplog.at_level(logging.DEBUG):
        crawler, _ = await crawl(settings, pages)
    assert crawler.stats.get_value("llm_extract/realtime/failed/api_error") == 1
    assert any("LLM_EXTRACT_API_KEY" in r.getMessage() for r in caplog.records)
    assert all(FAKE_KEY not in r.getMessage() for r in caplog.records)
    assert FAKE_KEY not in repr(crawler.stats.get_stats())
