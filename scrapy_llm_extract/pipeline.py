"""``LLMExtractPipeline``: route each item to real time or to the batch spool.

Scrapy glue only: preparation lives in :mod:`.extraction` (run in the
processes of :mod:`.workers`), the real-time call in :mod:`.realtime`, the
spool in :mod:`.spool`. An urgent item waits for its
answer while the crawl goes on (``process_item`` is a coroutine awaited under
the asyncio reactor); a batch item is spooled and dropped quietly, to come
back extracted from ``scrapy collect-batches``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem
from scrapy.utils.defer import deferred_from_coro

from .config import Config
from .extraction import InvalidInput, Prepared, Preparer
from .items import item_record, merge_extracted, set_field
from .realtime import RealtimeExtractor
from .results import Extracted, Failure
from .router import BATCH, REALTIME, SKIP, checked_route, resolve_router
from .schema import SchemaError
from .spool import Spool
from .workers import PrepareWorkers

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Set on the spider that ``scrapy collect-batches`` uses to replay extracted
#: items through ITEM_PIPELINES: this pipeline passes its items on untouched.
REPLAY_ATTRIBUTE = "llm_extract_replay"


class LLMExtractPipeline:
    """Extract structured fields from each item's page, now or by batch."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = Config.from_settings(crawler.settings)
        self.stats = crawler.stats
        self.preparer = Preparer(self.config)
        self.workers = PrepareWorkers(self.config, crawler.stats)
        self.realtime = RealtimeExtractor(self.config, crawler.stats)
        self.spool = Spool.for_crawler(crawler, self.config)
        self._schema_error_reported = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LLMExtractPipeline:
        return cls(crawler)

    async def open_spider(self) -> None:
        self.router = resolve_router(self.config, self.crawler.spider)
        self.replaying = bool(getattr(self.crawler.spider, REPLAY_ATTRIBUTE, False))
        if not self.replaying:
            self.workers.start()  # up by the time the first pages arrive

    async def close_spider(self) -> None:
        await self.realtime.close()
        await self.workers.close()
        self.spool.close()

    async def process_item(self, item: Any) -> Any:
        if self.replaying:
            return item
        try:
            adapter = ItemAdapter(item)
        except TypeError:
            return self._pass_invalid(
                item, None, InvalidInput("item_type", f"{type(item).__name__} is not an item type")
            )
        route = checked_route(self.router(item, self.crawler.spider))
        self.stats.inc_value(f"llm_extract/routed/{route}")
        if route == SKIP:
            return item
        if not self.preparer.has_source(adapter):
            self.stats.inc_value("llm_extract/skipped/no_source")
            return item
        try:
            prepared = await self.preparer.prepare_async(adapter, self.workers)
        except InvalidInput as exc:
            return self._pass_invalid(item, adapter, exc)
        except SchemaError as exc:
            self._report_schema_error(exc)
            return item
        if prepared.request.truncated:
            self.stats.inc_value("llm_extract/prompt/truncated")
        if prepared.request.slim_fallback:
            self.stats.inc_value("llm_extract/slim/fallback")
            logger.info(
                "Slimming's drop rules would have emptied %s or taken its main heading; it is"
                " sent slimmed without them (llm_extract/slim/fallback).",
                prepared.url,
            )
        self.stats.inc_value("llm_extract/prompt/tokens", prepared.request.prompt_tokens)
        if route == REALTIME:
            outcome = await self.realtime.extract(prepared)
            if isinstance(outcome, Extracted):
                self._merge(adapter, outcome)
                return item
            return self._realtime_failed(item, adapter, prepared, outcome)
        assert route == BATCH
        return self._spool(item, prepared)

    def _merge(self, adapter: ItemAdapter, outcome: Extracted) -> None:
        rejected = merge_extracted(adapter, outcome.fields, self.config)
        if rejected:
            self.stats.inc_value("llm_extract/merge/rejected_fields", len(rejected))
            logger.warning(
                "%s has no field(s) %s for extracted values; add them to the item class or set"
                " LLM_EXTRACT_OUTPUT_FIELD.",
                type(adapter.item).__name__,
                ", ".join(rejected),
            )

    def _realtime_failed(
        self, item: Any, adapter: ItemAdapter, prepared: Prepared, failure: Failure
    ) -> Any:
        if self.config.realtime_fallback == BATCH:
            self.stats.inc_value("llm_extract/realtime/fallback_to_batch")
            logger.warning(
                "Real-time extraction of %s failed (%s: %s); spooled for the Batch API instead.",
                prepared.url,
                failure.kind,
                failure.message,
            )
            return self._spool(item, prepared)
        set_field(adapter, self.config.error_field, f"{failure.kind}: {failure.message}")
        logger.warning(
            "Real-time extraction of %s failed (%s: %s); passing the item on with %s set.",
            prepared.url,
            failure.kind,
            failure.message,
            self.config.error_field,
        )
        return item

    def _spool(self, item: Any, prepared: Prepared) -> Any:
        self.spool.add(prepared, item_record(item, self.config))
        if self.config.pass_pending:
            return item
        raise DropItem("spooled for batch extraction", log_level="DEBUG")

    def _pass_invalid(self, item: Any, adapter: ItemAdapter | None, exc: InvalidInput) -> Any:
        self.stats.inc_value(f"llm_extract/invalid_input/{exc.kind}")
        logger.warning("Not extracting an item: %s. It is passed on unextracted.", exc)
        if adapter is not None:
            set_field(adapter, self.config.error_field, f"invalid_input: {exc}")
        return item

    def _report_schema_error(self, exc: SchemaError) -> None:
        """A configuration error: say it once and stop the crawl rather than drop every item."""
        self.stats.inc_value("llm_extract/invalid_input/no_schema")
        if self._schema_error_reported:
            return
        self._schema_error_reported = True
        logger.error("%s Closing the spider.", exc)
        assert self.crawler.engine is not None
        self._closing = deferred_from_coro(
            self.crawler.engine.close_spider_async(reason="llm_extract_schema_error")
        )
