"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

from scrapy.settings import Settings

from scrapy_llm_extract.config import Config


def make_config(**settings: Any) -> Config:
    return Config.from_settings(Settings(settings))
