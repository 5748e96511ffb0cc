"""Say, once per process, that answers come from the emulator and not from a model."""

from __future__ import annotations

import logging

from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

logger = logging.getLogger(__name__)


class OfflineNotice:
    """Logs one line when LLM_EXTRACT_EMULATOR_DIR is set; not loaded otherwise."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> OfflineNotice:
        state_dir = crawler.settings.get("LLM_EXTRACT_EMULATOR_DIR")
        if not state_dir:
            raise NotConfigured("not running against the emulator")
        logger.warning(
            "OFFLINE: OPENAI_API_KEY is not set, so extraction runs against the bundled"
            " OpenAI emulator (state in .scrapy/%s). It is not a language model: it fills"
            " fields from each page's structured data only. Set OPENAI_API_KEY to use OpenAI.",
            state_dir,
        )
        return cls()
