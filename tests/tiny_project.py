"""A throwaway Scrapy project in a temporary folder, crawled with ``scrapy crawl`` in a
subprocess: what a user sees on the terminal, exit status included, offline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SPIDER = """
import scrapy

from tiny.items import Product


class PagesSpider(scrapy.Spider):
    name = "pages"
    start_urls = ["data:text/html,<h1>Blue mug</h1><p>Price 12.99 EUR</p>"]

    def parse(self, response):
        for n in range(ITEMS):
            yield MAKE_ITEM
"""

ITEMS = """
import scrapy


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field(json_schema_extra={"type": "string"})
    llm_extract_error = scrapy.Field()
"""

PRODUCT = 'Product(url=f"{response.url}#{n}", html=response.text)'


def crawl(
    tmp_path: Path,
    settings: str = "",
    *,
    item: str = PRODUCT,
    items: int = 3,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``scrapy crawl pages`` in a new project whose spider yields ``items`` of ``item``."""
    project = tmp_path / "project"
    package = project / "tiny"
    (package / "spiders").mkdir(parents=True, exist_ok=True)
    (project / "scrapy.cfg").write_text("[settings]\ndefault = tiny.settings\n")
    (package / "__init__.py").write_text("")
    (package / "spiders" / "__init__.py").write_text("")
    (package / "items.py").write_text(ITEMS)
    spider = SPIDER.replace("ITEMS", str(items)).replace("MAKE_ITEM", item)
    (package / "spiders" / "pages.py").write_text(spider)
    (package / "settings.py").write_text(
        'BOT_NAME = "tiny"\nSPIDER_MODULES = ["tiny.spiders"]\nTELNETCONSOLE_ENABLED = False\n'
        'ADDONS = {"scrapy_llm_extract.Addon": 100}\n'
        f"LLM_EXTRACT_EMULATOR_DIR = {str(tmp_path / 'emulator')!r}\n"
        f"LLM_EXTRACT_SPOOL_DIR = {str(tmp_path / 'spool')!r}\n"
        "LLM_EXTRACT_PREPARE_WORKERS = 0\n" + textwrap.dedent(settings)
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SCRAPY_"))}
    return subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "pages", *args],
        cwd=project,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
