"""``BatchSubmitExtension``: submit the crawl's spool files, and those of dead crawls.

Scrapy glue around :mod:`.submit`. With ``LLM_EXTRACT_SUBMIT_EARLY`` each
file is submitted in a background task as soon as the spool seals it, so a
long crawl never waits for an upload; on ``spider_closed`` (an async
handler: Scrapy awaits it before the crawl ends, whatever the close reason,
Ctrl-C included) the rest is submitted, runs left by dead crawls of the same
project and spider are recovered, and one summary line is logged. The run
stays locked until then, so no other process submits its files meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals

from .client import MissingAPIKey, async_client
from .manifest import PENDING, SUBMITTED
from .models import add_costs, cost_usd, format_usd, model_info, rounded_usd
from .retry import RetryPolicy
from .spool import Run, Spool, claim_dead_runs
from .startup import crawler_config
from .submit import Submitter

if TYPE_CHECKING:
    import openai
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class BatchSubmitExtension:
    """Uploads and creates the batches of the crawl's spool files (see the module doc)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = crawler_config(crawler)
        self.spool = Spool.for_crawler(crawler, self.config)
        self.spool.hold()
        self.spool.on_sealed(self._sealed)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._attempted: set[str] = set()
        self._client: openai.AsyncOpenAI | None = None
        self._no_client = False
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> BatchSubmitExtension:
        return cls(crawler)

    def _submitter(self) -> Submitter | None:
        """A submitter, or None (said once) when no client can be built."""
        if self._no_client:
            return None
        if self._client is None:
            try:
                self._client = async_client(self.config)
            except MissingAPIKey as exc:
                self._no_client = True
                logger.error("%s Spool files stay pending for collect-batches.", exc)
                return None
        return Submitter(
            self._client, RetryPolicy.from_config(self.config), self.config.submit_check_delay
        )

    def _sealed(self, run: Run, name: str) -> None:
        if not (self.config.submit_on_close and self.config.submit_early):
            return
        self._attempted.add(name)
        submitter = self._submitter()
        if submitter is None:
            return
        task = asyncio.get_running_loop().create_task(submitter.submit_file(run, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def spider_closed(self, spider: Any, reason: str) -> None:
        self.spool.close()  # normally done by the pipeline already; idempotent
        try:
            if self.config.submit_on_close:
                await self._submit_all()
        finally:
            self.spool.finish(reason)
            self._summarise()
            if self._client is not None:
                await self._client.close()

    async def _submit_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        submitter = self._submitter()
        if submitter is None:
            return
        run = self.spool.run
        if run is not None:
            # A file whose early submission failed keeps its reason: collect retries it.
            fresh = set(run.manifest.with_status(PENDING)) - self._attempted
            await submitter.submit_pending(run, fresh)
        for dead in claim_dead_runs(
            self.config.spool_dir, project=self.config.project, spider=self.spool.spider
        ):
            try:
                await submitter.submit_pending(dead)
            finally:
                dead.finish("recovered")

    def _summarise(self) -> None:
        run = self.spool.run
        if run is None:
            return
        files = run.manifest.files.values()
        submitted = sum(1 for entry in files if entry["status"] == SUBMITTED)
        pending = sum(1 for entry in files if entry["status"] == PENDING)
        batch_cost: float | None = 0.0
        realtime_cost: float | None = 0.0
        for model, tokens in self.spool.tokens_by_model.items():
            info = model_info(model, self.config.prices)
            batch_cost = add_costs(batch_cost, cost_usd(info, tokens, 0, batch=True))
            realtime_cost = add_costs(realtime_cost, cost_usd(info, tokens, 0))
        tokens = sum(self.spool.tokens_by_model.values())
        stats = self.crawler.stats
        assert stats is not None
        stats.set_value("llm_extract/batch/batches_submitted", submitted)
        stats.set_value("llm_extract/batch/files_pending", pending)
        for key, cost in (
            ("input_cost_usd", batch_cost),
            ("realtime_input_cost_usd", realtime_cost),
        ):
            stats.set_value(f"llm_extract/batch/{key}", rounded_usd(cost))
        if batch_cost is None or realtime_cost is None:
            estimate = "Input cost unknown: no price for the model (see LLM_EXTRACT_PRICES)."
        else:
            estimate = (
                f"Estimated input cost ${format_usd(batch_cost)} at batch prices"
                f" (${format_usd(realtime_cost)} in real time); output tokens are billed on top"
                " and not estimated."
            )
        logger.info(
            "Batch spool %s: %d row(s), %d prompt tokens, %d file(s): %d submitted, %d pending. %s",
            run.path,
            self.spool.rows,
            tokens,
            len(files),
            submitted,
            pending,
            estimate,
        )
