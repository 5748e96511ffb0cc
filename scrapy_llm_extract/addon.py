"""``Addon``: enable the package from the ``ADDONS`` setting."""

from __future__ import annotations

from scrapy.settings import BaseSettings

from .extension import BatchSubmitExtension
from .pipeline import LLMExtractPipeline

#: Before typical storage pipelines (800+), so spooled items do not reach them
#: until collect-batches brings them back extracted.
PIPELINE_PRIORITY = 400
EXTENSION_PRIORITY = 500


class Addon:
    """Adds LLMExtractPipeline and BatchSubmitExtension unless the project lists them."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.setdefault_in_component_priority_dict(
            "ITEM_PIPELINES", LLMExtractPipeline, PIPELINE_PRIORITY
        )
        settings.setdefault_in_component_priority_dict(
            "EXTENSIONS", BatchSubmitExtension, EXTENSION_PRIORITY
        )
