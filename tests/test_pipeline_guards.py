"""The pipeline's and the extension's guard paths, seen from outside: close reasons, stats,
the items that come out and what the spool holds."""

import logging

import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract import BatchSubmitExtension
from scrapy_llm_extract.cache import ResponseCache
from scrapy_llm_extract.client import EMULATOR_BASE_URL
from scrapy_llm_extract.config import Config
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.manifest import PENDING
from scrapy_llm_extract.spool import Spool, list_runs
from tests.conftest import product_page
from tests.test_realtime_crawl import (
    Product,
    Recorder,
    crawl,
    crawl_settings,
    expected_fields,
    realtime_stats,
    spooled_urls,
)
from tests.tiny_project import crawl as tiny_crawl


class PageSpider(scrapy.Spider):
    """Yields each page as a plain dict, which has no schema unless LLM_EXTRACT_SCHEMA says."""

    name = "pages"

    def __init__(self, pages, **kwargs):
        super().__init__(**kwargs)
        self.pages = pages

    async def start(self):
        for url, _ in self.pages:
            yield scrapy.Request(url)

    def parse(self, response):
        yield {"url": response.url, "html": response.text}


@deferred_f_from_coro_f
async def test_a_schema_error_closes_the_crawl_once_and_exports_no_raw_page(
    tmp_path, local_site, emulator, caplog
):
    settings = crawl_settings(tmp_path, emulator, LLM_EXTRACT_SCHEMA=None)
    pages = [(local_site.url(f"/product/{n}"), None) for n in range(6)]
    crawler = get_crawler(PageSpider, settings)
    recorder = Recorder(crawler)
    closed = []

    def spider_closed(spider, reason):
        closed.append(reason)

    crawler.signals.connect(spider_closed, scrapy.signals.spider_closed)
    with caplog.at_level(logging.ERROR, logger="scrapy_llm_extract"):
        await crawler.crawl_async(pages=pages)
    stats = crawler.stats.get_stats()
    assert closed == ["llm_extract_schema_error"]
    # Said and acted on once, however many items arrived before the close.
    errors = [r for r in caplog.records if r.name == "scrapy_llm_extract.pipeline"]
    assert len(errors) == 1
    assert stats["finish_reason"] == "llm_extract_schema_error"
    # Every item that reached the pipeline was counted and held back: exporting it would
    # export the raw page, unextracted.
    assert 1 <= stats["llm_extract/invalid_input/no_schema"] == stats["item_dropped_count"]
    assert recorder.items == {}
    assert emulator.requests() == []
    assert spooled_urls(tmp_path) == []


@pytest.mark.parametrize("pass_pending", [True, False])
@deferred_f_from_coro_f
async def test_spooled_items_are_dropped_unless_pass_pending(
    tmp_path, local_site, emulator, pass_pending
):
    settings = crawl_settings(tmp_path, emulator, LLM_EXTRACT_PASS_PENDING=pass_pending)
    pages = [(local_site.url(f"/product/{n}"), "low") for n in range(4)]
    crawler, recorder = await crawl(settings, pages)
    urls = sorted(url for url, _ in pages)
    assert spooled_urls(tmp_path) == urls
    stats = crawler.stats.get_stats()
    assert stats["llm_extract/routed/batch"] == 4
    if pass_pending:
        assert sorted(recorder.items) == urls
        assert all("title" not in item for item in recorder.items.values())  # not yet
        assert "item_dropped_count" not in stats
    else:
        assert recorder.items == {}
        assert stats["item_dropped_count"] == 4
    assert emulator.requests() == []


@deferred_f_from_coro_f
async def test_a_crash_in_real_time_extraction_sends_the_item_to_the_batch(
    tmp_path, local_site, emulator, caplog
):
    """A cached answer that is JSON but not a chat completion (a cache written by another
    tool, say) crashes the parser: the guard turns that into a failure, not a lost item."""
    settings = crawl_settings(
        tmp_path,
        emulator,
        LLM_EXTRACT_CACHE_ENABLED=True,
        LLM_EXTRACT_CACHE_DIR=str(tmp_path / "cache"),
    )
    broken, fine = local_site.url("/product/1"), local_site.url("/product/2")
    config = Config.from_settings(get_crawler(settings_dict=settings).settings)
    item = Product(url=broken, html=product_page(1), priority="high")
    body_json = Preparer(config).prepare(ItemAdapter(item)).request.body_json
    cache = ResponseCache(tmp_path / "cache", f"{EMULATOR_BASE_URL}/")
    cache.put(body_json, {"choices": ["not a choice object"]})
    cache.close()
    with caplog.at_level(logging.ERROR, logger="scrapy_llm_extract"):
        crawler, recorder = await crawl(settings, [(broken, "high"), (fine, "high")])
    assert list(recorder.items) == [fine]
    assert {k: recorder.items[fine][k] for k in ("title", "price", "currency")} == (
        expected_fields(2)
    )
    assert spooled_urls(tmp_path) == [broken]
    counted = realtime_stats(crawler)
    assert counted["failed/api_error"] == 1
    assert counted["fallback_to_batch"] == 1
    assert counted["succeeded"] == 1
    assert crawler.stats.get_value("finish_reason") == "finished"
    # The crash is logged with its traceback, for the bug report.
    [crash] = [r for r in caplog.records if r.exc_info]
    assert crash.exc_info[0] is AttributeError


@deferred_f_from_coro_f
async def test_the_extension_without_an_api_key_leaves_every_file_pending(
    tmp_path, monkeypatch, caplog
):
    """Submitting needs a key that the spooling did not: every file stays pending for
    collect-batches, and the missing key is reported once, not once a file."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_SCHEMA": "tests.test_realtime_crawl.Product",
        "LLM_EXTRACT_BATCH_MAX_REQUESTS": 2,
        "LLM_EXTRACT_SUBMIT_CHECK_DELAY": 0,
    }
    crawler = get_crawler(PageSpider, settings)
    config = Config.from_settings(crawler.settings)
    extension = BatchSubmitExtension.from_crawler(crawler)
    spool = Spool.for_crawler(crawler, config)
    preparer = Preparer(config)
    with caplog.at_level(logging.ERROR, logger="scrapy_llm_extract"):
        for n in range(5):  # three files, two of them sealed (and submitted early) meanwhile
            item = Product(url=f"https://shop.example/{n}", html=product_page(n))
            spool.add(preparer.prepare(ItemAdapter(item)), {"url": item["url"]})
        await extension.spider_closed(spider=None, reason="finished")
    [run] = list_runs(tmp_path / "spool")
    assert [entry["status"] for entry in run.manifest.files.values()] == [PENDING] * 3
    assert not run.locked
    stats = crawler.stats.get_stats()
    assert stats["llm_extract/batch/files_pending"] == 3
    assert stats["llm_extract/batch/batches_submitted"] == 0
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_a_crawl_without_an_api_key_runs_and_spools_its_urgent_items(tmp_path):
    """Spooling needs no key (collect-batches may run where the key is): the crawl runs,
    urgent items fail as no_api_key, counted, and go to the spool with what to do."""
    result = tiny_crawl(
        tmp_path,
        "LLM_EXTRACT_EMULATOR_DIR = None\nLLM_EXTRACT_ROUTER = lambda item, spider: 'realtime'\n",
        items=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "'llm_extract/realtime/failed/no_api_key': 2" in result.stderr
    assert "'llm_extract/realtime/fallback_to_batch': 2" in result.stderr
    assert "'llm_extract/batch/rows': 2" in result.stderr
    assert (
        "failed (no_api_key: No OpenAI API key: set LLM_EXTRACT_API_KEY or the OPENAI_API_KEY"
        " environment variable" in result.stderr
    )
