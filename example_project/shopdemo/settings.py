"""Settings of the example project.

scrapy-llm-extract is enabled by its add-on; every LLM_EXTRACT_* setting keeps
its default (batch unless the item is urgent, gpt-4o-mini) except the one that
makes the example work offline: without OPENAI_API_KEY in the environment,
requests go to the bundled emulator, whose state lives in the project's data
dir (.scrapy/) so that ``scrapy crawl`` and ``scrapy collect-batches`` share
it (the package then says, once per command, that no model answers). With a
key set, nothing here changes and the example calls OpenAI.
"""

from __future__ import annotations

import os

BOT_NAME = "shopdemo"
SPIDER_MODULES = ["shopdemo.spiders"]
NEWSPIDER_MODULE = "shopdemo.spiders"

ROBOTSTXT_OBEY = True
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"

ADDONS = {"scrapy_llm_extract.Addon": 100}

if not os.environ.get("OPENAI_API_KEY"):
    # Relative to .scrapy/, like the spool (LLM_EXTRACT_SPOOL_DIR).
    LLM_EXTRACT_EMULATOR_DIR = "llm_extract_emulator"
