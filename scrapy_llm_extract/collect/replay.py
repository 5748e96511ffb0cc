"""The replay crawl: collected items go through the project's pipelines and feeds.

:func:`replay_spider` builds a spider whose ``start()`` yields the
collector's items; the pipelines' signals tell the collector what became of
each, and the pass's checkpoint waits until every feed has been stored
(``feed_exporter_closed``), so that a row counts as delivered only once the
feeds hold it. A stop (Ctrl-C, SIGTERM, ``CLOSESPIDER_*``) ends ``start()``
at the next item; what was not delivered stays pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals
from scrapy.extensions.feedexport import FeedExporter

from ..config import Config
from .collector import CollectOptions, Collector
from .ledger import DROPPED, EMITTED, ITEM_ERROR

if TYPE_CHECKING:
    from scrapy.crawler import Crawler, CrawlerProcessBase
    from twisted.python.failure import Failure


#: Seconds between two looks at whether the scraper can close (see _let_scraper_close).
CLOSE_CHECK = 0.1


def _closing(crawler: Crawler) -> bool:
    """Whether the engine is stopping or closing the spider (Scrapy has no signal for it)."""
    engine = crawler.engine
    if engine is None or not engine.running:
        return True
    slot = getattr(engine, "_slot", None)
    return slot is None or getattr(slot, "closing", None) is not None


def replay_spider(options: CollectOptions, name: str = "collect_batches") -> type[Spider]:
    """A spider class whose ``start()`` yields the collected items, for any crawler runner.

    ``llm_extract_replay`` tells LLMExtractPipeline to pass these items on untouched.
    """

    class CollectSpider(Spider):
        llm_extract_replay = True
        collector: Collector | None = None
        _feeds_closed: asyncio.Event

        @classmethod
        def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> CollectSpider:
            spider = super().from_crawler(crawler, *args, **kwargs)
            connect = crawler.signals.connect
            connect(spider.item_scraped, signal=signals.item_scraped)
            connect(spider.item_dropped, signal=signals.item_dropped)
            connect(spider.item_error, signal=signals.item_error)
            connect(spider.feeds_closed, signal=signals.feed_exporter_closed)
            connect(spider.close_collector, signal=signals.spider_closed)
            spider._feeds_closed = asyncio.Event()
            return spider

        async def start(self) -> AsyncIterator[Any]:
            # Built here, not in from_crawler: the crawler's stats exist once the crawl starts.
            assert self.crawler.stats is not None
            config = Config.from_settings(self.crawler.settings)
            self.collector = Collector(
                config,
                options,
                self.crawler.stats,
                max_in_flight=self.crawler.settings.getint("CONCURRENT_ITEMS", 100),
            )
            self._let_scraper_close()
            async for item in self.collector.items():
                yield item
                await self.collector.room()
                if _closing(self.crawler):  # before the next item is taken
                    return

        def item_scraped(self, item: Any) -> None:
            self._item_done(item, EMITTED)

        def item_dropped(self, item: Any, exception: BaseException) -> None:
            self._item_done(item, DROPPED, str(exception))

        def item_error(self, item: Any, failure: Failure) -> None:
            self._item_done(item, ITEM_ERROR, failure.getErrorMessage())

        def _item_done(self, item: Any, state: str, reason: str = "") -> None:
            if self.collector is not None:
                self.collector.item_done(item, state, reason)

        def _let_scraper_close(self) -> None:
            """Work around Scrapy 2.19: an item from start() that finishes while the spider
            closes never tells the scraper, whose close then waits for ever (this is how
            CLOSESPIDER_ITEMCOUNT and Ctrl-C hung collect-batches). Scrapy has no signal
            for "closing", so look every CLOSE_CHECK seconds until the scraper has closed."""
            scraper = getattr(self.crawler.engine, "scraper", None)
            slot = getattr(scraper, "slot", None)
            if slot is None or (slot.closing is not None and slot.closing.called):
                return
            if slot.closing is not None and slot.is_idle():
                scraper._check_if_closing()  # type: ignore[union-attr]
                return
            asyncio.get_running_loop().call_later(CLOSE_CHECK, self._let_scraper_close)

        def feeds_closed(self) -> None:
            stats = self.crawler.stats
            assert stats is not None
            failed = sum(
                value
                for key, value in stats.get_stats().items()
                if key.startswith("feedexport/failed_count/")
            )
            if failed and self.collector is not None:
                self.collector.feeds_failed()
            self._feeds_closed.set()

        async def close_collector(self) -> None:
            if self.collector is None:
                return
            if self.crawler.get_extension(FeedExporter) is not None:
                await self._feeds_closed.wait()  # FeedExporter stores them on spider_closed too
            await self.collector.checkpoint()
            await self.collector.close()

    CollectSpider.name = name
    return CollectSpider


def collect(crawler_process: CrawlerProcessBase, options: CollectOptions) -> int:
    """Run the replay crawl in ``crawler_process``; the command's exit code.

    0: every row delivered, or pending by design (batches still running);
    1: a row failed for good, a feed failed, a file or run stayed stuck, or the crawl failed.
    """
    crawler = crawler_process.create_crawler(replay_spider(options))
    crawler_process.crawl(crawler)
    crawler_process.start()
    if getattr(crawler_process, "bootstrap_failed", False):
        return 1
    spider = crawler.spider
    collector = getattr(spider, "collector", None)
    if collector is None:
        return 1
    return collector.exit_code
