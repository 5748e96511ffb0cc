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
from functools import cached_property
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import DropItem
from scrapy.utils.defer import deferred_from_coro

from .config import ConfigError
from .extraction import InvalidInput, Prepared, Preparer
from .items import (
    item_record,
    merge_extracted,
    missing_error_field,
    no_source_warning,
    set_field,
)
from .realtime import RealtimeExtractor, UnsupportedReactor
from .results import Extracted, Failure
from .router import BATCH, REALTIME, SKIP, checked_route, resolve_router
from .rules.gate import RulesGate
from .schema import SchemaError
from .spool import Spool, UnspoolableItem
from .startup import check_spool_dir, crawler_config, exit_nonzero, stop_with
from .tokens import EncodingUnavailable
from .workers import PrepareWorkers

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .rules.book import Verdict

logger = logging.getLogger(__name__)

#: Level of Scrapy's "Dropped:" line for a held-back item: NOTSET (0), under any handler's
#: level, because that line prints the whole item, page and all. The pipeline logs the URL.
SPOOLED_DROP_LOG_LEVEL = "NOTSET"

#: Set on the spider that ``scrapy collect-batches`` uses to replay extracted
#: items through ITEM_PIPELINES: this pipeline passes its items on untouched.
REPLAY_ATTRIBUTE = "llm_extract_replay"


class LLMExtractPipeline:
    """Extract structured fields from each item's page, now or by batch."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = crawler_config(crawler)
        try:
            check_spool_dir(self.config.spool_dir)  # before the first page, not at the first item
        except ConfigError as exc:
            raise stop_with(exc) from None
        self.stats = crawler.stats
        self.replaying = bool(getattr(crawler.spider, REPLAY_ATTRIBUTE, False))
        if not self.replaying:
            try:  # now: a schema or tokenizer that cannot load stops the crawl here
                _ = self.preparer
            except SchemaError as exc:
                raise stop_with(ConfigError(f"LLM_EXTRACT_SCHEMA is unusable: {exc}")) from None
            except EncodingUnavailable as exc:
                raise stop_with(ConfigError(str(exc))) from None
        self.workers = PrepareWorkers(self.config, crawler.stats)
        try:
            self.realtime = RealtimeExtractor(self.config, crawler.stats)
        except UnsupportedReactor as exc:
            raise stop_with(ConfigError(str(exc))) from None
        self.spool = Spool.for_crawler(crawler, self.config)
        try:
            self.rules = RulesGate(self.config, crawler.stats)
        except ConfigError as exc:
            raise stop_with(exc) from None
        self._schema_error_reported = False
        self._checked_classes: set[type] = set()
        self._no_source_classes: set[type] = set()
        self._rejections_said: set[tuple[type, tuple[str, ...]]] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LLMExtractPipeline:
        return cls(crawler)

    @cached_property
    def preparer(self) -> Preparer:
        """Built on first use: it loads the tokenizer (about 0.8 s), which a
        ``collect-batches`` replay, passing its items on untouched, never needs."""
        return Preparer(self.config)

    async def open_spider(self) -> None:
        self.router = resolve_router(self.config, self.crawler.spider)
        if not self.replaying:
            self.workers.start()  # up by the time the first pages arrive

    async def close_spider(self) -> None:
        await self.realtime.close()
        await self.workers.close()
        self.spool.close()
        self.rules.close()

    async def process_item(self, item: Any) -> Any:
        if self.replaying:
            return item
        try:
            adapter = ItemAdapter(item)
        except TypeError:
            return self._pass_invalid(
                item, None, InvalidInput("item_type", f"{type(item).__name__} is not an item type")
            )
        self._check_item_class(adapter)
        route = checked_route(self.router(item, self.crawler.spider))
        self.stats.inc_value(f"llm_extract/routed/{route}")
        if route == SKIP:
            return item
        if not self.preparer.has_source(adapter):
            self._no_source(adapter)
            return item
        try:
            prepared = await self.preparer.prepare_async(adapter, self.workers)
        except InvalidInput as exc:
            return self._pass_invalid(item, adapter, exc)
        except SchemaError as exc:
            self._report_schema_error(exc)
            raise DropItem(
                "no schema to extract it with", log_level=SPOOLED_DROP_LOG_LEVEL
            ) from None
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
        # Learned rules (LLM_EXTRACT_RULES): answer the page now, or learn from the model's answer.
        verdict = self.rules.consult(adapter, prepared, route)
        if verdict is not None and verdict.fields is not None:
            self._merge(adapter, Extracted(verdict.fields))
            return item
        route = self.rules.route(verdict, route)
        if route == REALTIME:
            outcome = await self.realtime.extract(prepared)
            if isinstance(outcome, Extracted):
                self.rules.learn(adapter, verdict, outcome.fields)
                self._merge(adapter, outcome)
                return item
            return self._realtime_failed(item, adapter, prepared, outcome, verdict)
        assert route == BATCH
        return self._spool(item, prepared, verdict)

    def _merge(self, adapter: ItemAdapter, outcome: Extracted) -> None:
        rejected = merge_extracted(adapter, outcome.fields, self.config)
        if rejected:
            self.stats.inc_value("llm_extract/merge/rejected_fields", len(rejected))
            said = (type(adapter.item), tuple(rejected))
            if said in self._rejections_said:  # counted every time, said once per class
                return
            self._rejections_said.add(said)
            logger.warning(
                "%s has no field(s) %s for extracted values; add them to the item class or set"
                " LLM_EXTRACT_OUTPUT_FIELD.",
                type(adapter.item).__name__,
                ", ".join(rejected),
            )

    def _realtime_failed(
        self,
        item: Any,
        adapter: ItemAdapter,
        prepared: Prepared,
        failure: Failure,
        verdict: Verdict | None,
    ) -> Any:
        if self.config.realtime_fallback == BATCH:
            self.stats.inc_value("llm_extract/realtime/fallback_to_batch")
            logger.warning(
                "Real-time extraction of %s failed (%s: %s); spooled for the Batch API instead.",
                prepared.url,
                failure.kind,
                failure.message,
            )
            return self._spool(item, prepared, verdict)
        set_field(adapter, self.config.error_field, f"{failure.kind}: {failure.message}")
        logger.warning(
            "Real-time extraction of %s failed (%s: %s); passing the item on with %s set.",
            prepared.url,
            failure.kind,
            failure.message,
            self.config.error_field,
        )
        return item

    def _spool(self, item: Any, prepared: Prepared, verdict: Verdict | None) -> Any:
        """Spool the item's request; with learned rules on, its page's values go along."""
        try:
            self.spool.add(prepared, item_record(item, self.config) | self.rules.spooled(verdict))
        except UnspoolableItem as exc:
            return self._not_spooled(item, prepared, "unspoolable_item", exc)
        except OSError as exc:
            return self._not_spooled(item, prepared, "spool_write_failed", exc)
        if self.config.pass_pending:
            return item
        logger.debug("Spooled %s for batch extraction.", prepared.url)
        raise DropItem(
            f"spooled for batch extraction: {prepared.url}", log_level=SPOOLED_DROP_LOG_LEVEL
        )

    def _not_spooled(self, item: Any, prepared: Prepared, kind: str, exc: Exception) -> Any:
        """A row the spool could not take: the item goes on, marked, rather than vanish."""
        self.stats.inc_value(f"llm_extract/batch/{kind}")
        set_field(ItemAdapter(item), self.config.error_field, f"{kind}: {exc}")
        if kind == "unspoolable_item":
            advice = "make its fields JSON-serialisable (str, numbers, bytes, lists, dicts)"
        else:
            advice = "free space there or point LLM_EXTRACT_SPOOL_DIR elsewhere"
        logger.error(
            "Could not spool %s (%s); it is passed on unextracted with %s set: %s.",
            prepared.url,
            exc,
            self.config.error_field,
            advice,
        )
        return item

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
        exit_nonzero(self.crawler)
        self._closing = deferred_from_coro(
            self.crawler.engine.close_spider_async(reason="llm_extract_schema_error")
        )

    def _check_item_class(self, adapter: ItemAdapter) -> None:
        """Say once per item class what it lacks for failures to show on its items."""
        cls = type(adapter.item)
        if cls not in self._checked_classes:
            self._checked_classes.add(cls)
            if (warning := missing_error_field(adapter, self.config)) is not None:
                logger.warning(warning)

    def _no_source(self, adapter: ItemAdapter) -> None:
        """Count an item without its page, and say once per item class which setting names it."""
        self.stats.inc_value("llm_extract/skipped/no_source")
        cls = type(adapter.item)
        if cls not in self._no_source_classes:
            self._no_source_classes.add(cls)
            logger.warning(no_source_warning(cls, self.config))
