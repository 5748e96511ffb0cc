"""Learned rules in real crawls: the second crawl of a shop is answered without the model."""

import re
import subprocess
import sys

import scrapy
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from tests.collect_helpers import collect
from tests.test_example_demo import run_demo
from tests.test_realtime_crawl import Recorder, expected_fields, product_page, spooled_urls

RULES = "llm_extract/rules"


class SourcedProduct(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    llm_extract_error = scrapy.Field()
    extracted_by = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    sku = scrapy.Field()


class ShopSpider(scrapy.Spider):
    """Crawls ``pages`` one after the other: a page is requested once the item of the page
    before it has left the pipelines (CONCURRENT_ITEMS = 1), so learning follows page order."""

    name = "shop"

    def __init__(self, pages, **kwargs):
        super().__init__(**kwargs)
        self.pages = pages

    async def start(self):
        yield self.request(0)

    def request(self, index):
        url, priority = self.pages[index]
        return scrapy.Request(url, cb_kwargs={"index": index, "priority": priority})

    def parse(self, response, index, priority):
        yield SourcedProduct(url=response.url, html=response.text, priority=priority)
        if index + 1 < len(self.pages):
            yield self.request(index + 1)


def settings(tmp_path, emulator, **extra):
    return {
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_SCHEMA": "tests.test_rules_crawl.SourcedProduct",
        "LLM_EXTRACT_RULES": True,
        "LLM_EXTRACT_RULES_DIR": str(tmp_path / "rules"),
        "LLM_EXTRACT_RULES_MIN_PAGES": 3,
        "LLM_EXTRACT_RULES_AUDIT_START": 0.0,
        "LLM_EXTRACT_RULES_AUDIT_RATE": 0.0,
        "LLM_EXTRACT_SOURCE_INFO_FIELD": "extracted_by",
        "LLM_EXTRACT_PRICES": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
        "CONCURRENT_ITEMS": 1,  # with ShopSpider's chained requests: pages strictly in order
        **extra,
    }


async def crawl(config, pages):
    crawler = get_crawler(ShopSpider, config)
    recorder = Recorder(crawler)
    await crawler.crawl_async(pages=pages)
    stats = crawler.stats.get_stats()
    return {k.removeprefix(RULES + "/"): v for k, v in stats.items() if k.startswith(RULES)}, (
        recorder
    )


@deferred_f_from_coro_f
async def test_the_second_crawl_of_a_shop_is_answered_by_rules(tmp_path, local_site, emulator):
    urls = [local_site.url(f"/product/{n}") for n in range(1, 21)]
    first, _ = await crawl(settings(tmp_path, emulator), [(url, "high") for url in urls])
    assert first["model"] == 3  # LLM_EXTRACT_RULES_MIN_PAGES, then the rules answer
    assert first["answered"] == 17
    assert first["promoted"] >= 4  # a rule or more for each field
    calls = len(emulator.requests())
    assert calls == first["model"]

    # Second crawl, batch route: rule-answered items leave extracted at once, nothing spooled.
    second, recorder = await crawl(settings(tmp_path, emulator), [(url, "low") for url in urls])
    assert second["answered"] == 20
    assert "model" not in second
    assert len(emulator.requests()) == calls
    assert spooled_urls(tmp_path) == []
    assert second["saved_usd"] > 0
    for n, url in enumerate(urls, 1):
        item = recorder.items[url]
        assert {k: item[k] for k in ("title", "price", "currency")} == expected_fields(n)
        assert item["sku"] == f"SKU-{n}"
        assert "jsonld:Product.offers.price" in item["extracted_by"]["price"]


@deferred_f_from_coro_f
async def test_a_changed_page_goes_back_to_the_model(tmp_path, local_site, emulator):
    urls = [local_site.url(f"/product/{n}") for n in range(1, 9)]
    await crawl(settings(tmp_path, emulator), [(url, "high") for url in urls])
    # The shop's Open Graph title now differs from its JSON-LD name and heading.
    changed = local_site.add(
        "/changed",
        local_site.page("/product/9").replace(
            'content="Product 9"', 'content="Product 9 - Summer sale"'
        ),
    )
    stats, recorder = await crawl(
        settings(tmp_path, emulator), [(url, "high") for url in [*urls, changed]]
    )
    assert stats["answered"] == 8
    assert stats["model"] == 1
    assert stats["alarm/disagree"] == 1
    assert recorder.items[changed]["extracted_by"]["title"] == "model"


@deferred_f_from_coro_f
async def test_a_batch_crawl_learns_its_template_from_a_few_real_time_pages(
    tmp_path, local_site, emulator
):
    urls = [local_site.url(f"/product/{n}") for n in range(1, 13)]
    config = settings(tmp_path, emulator, LLM_EXTRACT_RULES_REALTIME_PAGES=4)
    stats, recorder = await crawl(config, [(url, "low") for url in urls])
    # Three pages teach the rules (LLM_EXTRACT_RULES_MIN_PAGES), the other nine are answered.
    assert stats["learning_realtime"] == 3
    assert stats["answered"] == 9
    assert spooled_urls(tmp_path) == []
    assert set(recorder.items) == set(urls)
    assert recorder.items[urls[0]]["extracted_by"]["price"] == "model"
    assert recorder.items[urls[-1]]["extracted_by"]["price"] != "model"


@deferred_f_from_coro_f
async def test_collection_learns_from_batch_answers_for_the_next_crawl(
    tmp_path, local_site, emulator
):
    urls = [local_site.url(f"/product/{n}") for n in range(1, 11)]
    config = settings(tmp_path, emulator)
    first, _ = await crawl(config, [(url, "low") for url in urls])
    assert "answered" not in first  # nothing learned yet: every page spooled
    assert sorted(spooled_urls(tmp_path)) == sorted(urls)

    collected = await collect(config)
    assert collected.stats.get_value("llm_extract/collect/rows/extracted") == len(urls)
    assert collected.stats.get_value(f"{RULES}/promoted") >= 4  # a rule or more per field

    second, recorder = await crawl(config, [(url, "low") for url in urls])
    assert second["answered"] == len(urls)
    assert "model" not in second
    for n, url in enumerate(urls, 1):
        assert {k: recorder.items[url][k] for k in ("title", "price", "currency")} == (
            expected_fields(n)
        )


@deferred_f_from_coro_f
async def test_batch_answers_collected_on_another_machine_teach_a_third_one(
    tmp_path, local_site, emulator, s3_server, s3_spool
):
    """With an s3:// spool, each machine its own rules dir: machine A crawls to batch, B
    collects and learns from the batch answers (the pages travel with their rows), and a crawl
    on C is answered by the rules B published to the store."""
    urls = [local_site.url(f"/product/{n}") for n in range(1, 11)]

    def machine(name):
        return settings(
            tmp_path,
            emulator,
            **s3_server.settings(s3_spool),
            LLM_EXTRACT_SPOOL_STAGING_DIR=str(tmp_path / name / "staging"),
            LLM_EXTRACT_RULES_DIR=str(tmp_path / name / "rules"),
        )

    first, _ = await crawl(machine("a"), [(url, "low") for url in urls])
    assert "answered" not in first  # nothing learned yet: every page spooled
    collected = await collect(machine("b"))
    assert collected.stats.get_value("llm_extract/collect/rows/extracted") == len(urls)
    assert collected.stats.get_value(f"{RULES}/promoted") >= 4  # a rule or more per field
    assert not [k for k in collected.stats.get_stats() if k.startswith(f"{RULES}/failed")]

    calls = len(emulator.requests())
    third, recorder = await crawl(machine("c"), [(url, "low") for url in urls])
    assert third["answered"] == len(urls)
    assert "model" not in third and "failed/load" not in third
    assert len(emulator.requests()) == calls
    for n, url in enumerate(urls, 1):
        assert {k: recorder.items[url][k] for k in ("title", "price", "currency")} == (
            expected_fields(n)
        )


@deferred_f_from_coro_f
async def test_a_page_whose_real_time_call_failed_is_learned_from_its_batch_answer(
    tmp_path, local_site, emulator
):
    """An urgent page whose real-time call fails falls back to batch; its row keeps its page,
    so its batch answer teaches the rules like any spooled page's."""
    url = local_site.add("/slow", product_page(3, text="Special offer [[emulator:hang]]"))
    config = settings(
        tmp_path,
        emulator,
        LLM_EXTRACT_RULES_MIN_PAGES=1,
        LLM_EXTRACT_TIMEOUT=0.5,
        LLM_EXTRACT_MAX_RETRIES=0,
    )
    first, _ = await crawl(config, [(url, "high")])
    assert first["model"] == 1 and "promoted" not in first
    assert spooled_urls(tmp_path) == [url]
    collected = await collect(config)
    assert collected.stats.get_value(f"{RULES}/promoted") >= 4


@deferred_f_from_coro_f
async def test_real_time_learning_is_capped_per_template(tmp_path, local_site, emulator):
    urls = [local_site.url(f"/product/{n}") for n in range(1, 9)]
    config = settings(
        tmp_path, emulator, LLM_EXTRACT_RULES_REALTIME_PAGES=2, LLM_EXTRACT_RULES_MIN_PAGES=5
    )
    stats, recorder = await crawl(config, [(url, "low") for url in urls])
    assert stats["learning_realtime"] == 2
    assert len(recorder.items) == 2  # the rest went to the spool, as without rules
    assert len(spooled_urls(tmp_path)) == 6


def test_the_demo_shows_rules_answering_a_repeated_crawl(tmp_path):
    """``python3 example_project/demo.py --rules``: two crawls of the shop, then collection."""
    project, result = run_demo(tmp_path, "--rules")
    assert result.returncode == 0, result.stderr[-5000:]
    lines = {int(m[1]): (int(m[2]), int(m[3])) for m in CRAWL_LINE.finditer(result.stdout)}
    assert set(lines) == {1, 2}
    for rules, model in lines.values():
        assert rules + model == 48
    assert lines[2][0] > 0  # the second crawl answered pages without the model
    listing = subprocess.run(
        [sys.executable, "-m", "scrapy_llm_extract.rules", ".scrapy/llm_extract_rules"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "* jsonld:Product.offers.price" in listing


CRAWL_LINE = re.compile(r"crawl (\d): (\d+) answered by rules, (\d+) by the model")
