"""Real-time throughput: the awaited pipeline against the ideal and a blocking pipeline.

Run: ``python bench/bench_realtime.py [--items 200] [--latency 0.5] [--concurrency 32]
[--naive-items 20]``

The emulator's loopback server answers every chat call after ``--latency``
seconds. One crawl sends ``--items`` urgent items through LLMExtractPipeline;
another sends ``--naive-items`` through a pipeline that calls the synchronous
SDK inside ``process_item`` (what scrapy-llm does), which blocks the reactor so
calls run one at a time; its time is scaled to ``--items``. The headline is
the ratio to the ideal N·L/C; the speed-up over the naive pipeline is mostly
the concurrency it lacks (at most ``--concurrency``), not a cleverer call.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from typing import Any

import openai
import scrapy
from itemadapter import ItemAdapter
from mug_pages import page  # bench/ is on sys.path when a benchmark runs
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor

from scrapy_llm_extract.config import Config
from scrapy_llm_extract.emulator import EmulatorConfig, EmulatorServer
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import merge_extracted
from scrapy_llm_extract.results import Extracted, parse_completion

API_KEY = "sk-bench"


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    llm_extract_error = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    sku = scrapy.Field()


class BenchSpider(scrapy.Spider):
    """Yields ``count`` urgent items straight from start(), so the crawl is the extraction."""

    name = "bench"

    def __init__(self, count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count = count
        self.started = 0.0

    async def start(self) -> Any:
        self.started = time.perf_counter()
        for n in range(self.count):
            yield Product(url=f"https://shop.example/p/{n}", html=page(n), priority="high")


class NaivePipeline:
    """The blocking baseline: the synchronous SDK called inside process_item."""

    def __init__(self, crawler: Crawler) -> None:
        self.config = Config.from_settings(crawler.settings)
        self.preparer = Preparer(self.config)
        self.client = openai.OpenAI(
            api_key=API_KEY, base_url=self.config.base_url, max_retries=0, timeout=60
        )

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> NaivePipeline:
        return cls(crawler)

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        prepared = self.preparer.prepare(adapter)
        completion = self.client.chat.completions.create(**prepared.request.body)
        outcome = parse_completion(completion.model_dump(), prepared.schema.schema)
        if isinstance(outcome, Extracted):
            merge_extracted(adapter, outcome.fields, self.config)
        return item

    def close_spider(self) -> None:
        self.client.close()


async def timed_crawl(settings: dict[str, Any], count: int) -> tuple[float, int]:
    """Seconds from the first item to the last extracted one, and how many were extracted."""
    crawler = Crawler(BenchSpider, Settings(settings))
    finished: list[float] = []
    extracted: list[bool] = []

    def item_scraped(item: Any) -> None:
        finished.append(time.perf_counter())
        extracted.append(item.get("title") == f"Mug {item['url'].rsplit('/', 1)[1]}")

    crawler.signals.connect(item_scraped, signals.item_scraped)
    await crawler.crawl_async(count=count)
    assert isinstance(crawler.spider, BenchSpider)
    return max(finished) - crawler.spider.started, sum(extracted)


async def bench(args: argparse.Namespace, base_url: str, data_dir: str) -> None:
    common = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "LLM_EXTRACT_SCHEMA": f"{__name__}.Product",
        "LLM_EXTRACT_BASE_URL": base_url,
        "LLM_EXTRACT_API_KEY": API_KEY,
        "LLM_EXTRACT_SPOOL_DIR": f"{data_dir}/spool",
    }
    realtime = {
        **common,
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
        "LLM_EXTRACT_CONCURRENT_REQUESTS": args.concurrency,
    }
    naive = {**common, "ITEM_PIPELINES": {f"{__name__}.NaivePipeline": 300}}
    await timed_crawl(realtime, args.concurrency)  # warm-up: imports, tokenizer, connections
    awaited, awaited_ok = await timed_crawl(realtime, args.items)
    blocking, blocking_ok = await timed_crawl(naive, args.naive_items)
    blocking_scaled = blocking * args.items / args.naive_items

    n, latency, c = args.items, args.latency, args.concurrency
    ideal = n * latency / c
    waves = math.ceil(n / c) * latency
    print(f"{n} urgent items, emulator latency {latency:g} s, LLM_EXTRACT_CONCURRENT_REQUESTS {c}")
    print(f"  ideal N*L/C                        {ideal:7.2f} s")
    print(f"  floor with whole waves ceil(N/C)*L {waves:7.2f} s  (= ideal / {ideal / waves:.3f})")
    print(f"  awaited pipeline (this package)    {awaited:7.2f} s  ({awaited_ok}/{n} extracted)")
    print(
        f"  blocking SDK in process_item       {blocking_scaled:7.2f} s  (measured on"
        f" {args.naive_items} items: {blocking:.2f} s, {blocking_ok} extracted; scaled x"
        f"{n / args.naive_items:g})"
    )
    print(f"ratio ideal / awaited          {ideal / awaited:.3f}  (the headline; 1 is the best)")
    print(f"ratio wave floor / awaited     {waves / awaited:.3f}")
    print(
        f"speed-up over blocking         {blocking_scaled / awaited:.1f}x  (mostly concurrency:"
        f" the blocking pipeline makes one call at a time, this one {c})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--naive-items", type=int, default=20)
    args = parser.parse_args()
    configure_logging({"LOG_LEVEL": "WARNING"})
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    from twisted.internet import reactor as installed

    reactor: Any = installed  # the module attribute is typed as a bare object

    with tempfile.TemporaryDirectory() as data_dir:
        config = EmulatorConfig(latency=args.latency)
        with EmulatorServer(f"{data_dir}/emulator", config) as server:
            done = deferred_from_coro(bench(args, server.base_url, data_dir))
            done.addErrback(lambda failure: failure.printTraceback())
            done.addBoth(lambda _: reactor.stop())
            reactor.run()


if __name__ == "__main__":
    main()
