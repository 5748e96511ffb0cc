"""The pipeline's own decisions, on items that never reach the API."""

import json
import logging

import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract import Addon, BatchSubmitExtension, LLMExtractPipeline


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    title = scrapy.Field()
    llm_extract_error = scrapy.Field()


class NotAnItem:
    html = "<p>hello</p>"


async def open_pipeline(tmp_path, **settings):
    settings = {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_EMULATOR_DIR": str(tmp_path / "emulator"),
        **settings,
    }
    crawler = get_crawler(scrapy.Spider, settings)
    crawler.spider = crawler._create_spider("test")
    pipeline = LLMExtractPipeline.from_crawler(crawler)
    await pipeline.open_spider()
    return crawler, pipeline


@deferred_f_from_coro_f
async def test_unknown_item_types_pass_through_counted_and_logged(tmp_path, caplog):
    crawler, pipeline = await open_pipeline(tmp_path)
    item = NotAnItem()
    with caplog.at_level(logging.WARNING):
        assert await pipeline.process_item(item) is item
    assert crawler.stats.get_value("llm_extract/invalid_input/item_type") == 1
    assert "NotAnItem is not an item type" in caplog.text
    await pipeline.close_spider()


@deferred_f_from_coro_f
async def test_items_without_a_page_pass_untouched(tmp_path):
    crawler, pipeline = await open_pipeline(tmp_path)
    item = Product(url="u", title="kept")
    assert await pipeline.process_item(item) is item
    assert dict(item) == {"url": "u", "title": "kept"}
    assert crawler.stats.get_value("llm_extract/skipped/no_source") == 1
    await pipeline.close_spider()


@deferred_f_from_coro_f
async def test_empty_pages_pass_on_with_the_reason(tmp_path, caplog):
    crawler, pipeline = await open_pipeline(tmp_path)
    item = Product(url="u", html="<html><body> </body></html>")
    assert await pipeline.process_item(item) is item
    assert item["llm_extract_error"].startswith("invalid_input: ")
    assert crawler.stats.get_value("llm_extract/invalid_input/empty_page") == 1
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    await pipeline.close_spider()


def skip_everything(item, spider):
    return "skip"


@deferred_f_from_coro_f
async def test_router_skip_passes_items_untouched(tmp_path):
    crawler, pipeline = await open_pipeline(
        tmp_path, LLM_EXTRACT_ROUTER="tests.test_pipeline.skip_everything"
    )
    item = Product(url="u", html="<p>page</p>")
    assert await pipeline.process_item(item) is item
    assert item["html"] == "<p>page</p>"
    assert crawler.stats.get_value("llm_extract/routed/skip") == 1
    await pipeline.close_spider()


@deferred_f_from_coro_f
async def test_router_answers_outside_the_three_routes_are_errors(tmp_path):
    _, pipeline = await open_pipeline(tmp_path, LLM_EXTRACT_ROUTER=lambda item, spider: "later")
    with pytest.raises(ValueError, match="must return one of realtime, batch, skip"):
        await pipeline.process_item(Product(html="<p>page</p>"))
    await pipeline.close_spider()


@pytest.mark.parametrize("workers", [0, 1])
@deferred_f_from_coro_f
async def test_batch_items_are_spooled_alike_with_or_without_prepare_workers(tmp_path, workers):
    crawler, pipeline = await open_pipeline(tmp_path, LLM_EXTRACT_PREPARE_WORKERS=workers)
    await pipeline.workers.start()
    item = Product(url="https://shop.example/1", html="<h1>Blue mug</h1><p>12,99 €</p>")
    with pytest.raises(DropItem, match="spooled"):
        await pipeline.process_item(item)
    await pipeline.close_spider()
    assert pipeline.spool.run is not None
    (requests_file,) = pipeline.spool.run.path.glob("requests-*.jsonl")
    row = json.loads(requests_file.read_bytes())
    expected = pipeline.preparer.prepare(ItemAdapter(item)).request.body_json
    assert json.dumps(row["body"], ensure_ascii=False, separators=(",", ":")) == expected
    assert crawler.stats.get_value("llm_extract/prepare/in_workers") == (workers or None)


def test_addon_enables_pipeline_and_extension():
    crawler = get_crawler(scrapy.Spider, {"ADDONS": {Addon: 100}})
    assert LLMExtractPipeline in crawler.settings.getdict("ITEM_PIPELINES")
    assert BatchSubmitExtension in crawler.settings.getdict("EXTENSIONS")


def test_addon_keeps_a_project_chosen_priority():
    crawler = get_crawler(
        scrapy.Spider,
        {
            "ADDONS": {Addon: 100},
            "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 900},
        },
    )
    pipelines = crawler.settings.getdict("ITEM_PIPELINES")
    assert list(pipelines.values()) == [900]


@deferred_f_from_coro_f
async def test_binary_sources_pass_on_with_the_reason_counted_and_logged(tmp_path, caplog):
    crawler, pipeline = await open_pipeline(tmp_path)
    item = Product(url="u", html=b"%PDF-1.7\n" + bytes(range(256)) * 800)
    with caplog.at_level(logging.WARNING):
        assert await pipeline.process_item(item) is item
    assert item["llm_extract_error"].startswith("invalid_input: the source is binary data")
    assert crawler.stats.get_value("llm_extract/invalid_input/not_text") == 1
    assert crawler.stats.get_value("llm_extract/prompt/tokens") is None
    assert "binary data" in caplog.text
    await pipeline.close_spider()


@pytest.mark.parametrize("workers", [0, 1])
@deferred_f_from_coro_f
async def test_pages_the_drop_rules_would_empty_are_counted(tmp_path, workers, caplog):
    crawler, pipeline = await open_pipeline(tmp_path, LLM_EXTRACT_PREPARE_WORKERS=workers)
    await pipeline.workers.start()
    emptied = Product(url="u1", html="<footer><p>Brass desk lamp, 49,90 €</p></footer>")
    normal = Product(url="u2", html="<h1>Desk lamp</h1><p>49,90 €</p><footer>Imprint</footer>")
    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract.pipeline"):
        for item in (emptied, normal):
            with pytest.raises(DropItem, match="spooled"):
                await pipeline.process_item(item)
    await pipeline.close_spider()
    assert crawler.stats.get_value("llm_extract/slim/fallback") == 1
    assert [r.getMessage() for r in caplog.records if "drop rules" in r.getMessage()] == [
        "Slimming's drop rules would have emptied u1 or taken its main heading; it is sent"
        " slimmed without them (llm_extract/slim/fallback)."
    ]
    assert crawler.stats.get_value("llm_extract/prepare/in_workers") == (2 if workers else None)
