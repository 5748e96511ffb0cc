"""Structured data from Scrapy items with OpenAI models, in real time or by batch.

The public names are imported on first use: every ``scrapy`` invocation
imports the ``collect-batches`` command module, and the emulator runs without
Scrapy at all, so neither should pay for the OpenAI SDK on import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .addon import Addon
    from .extension import BatchSubmitExtension
    from .pipeline import LLMExtractPipeline

__all__ = ["Addon", "BatchSubmitExtension", "LLMExtractPipeline"]
__version__ = "0.1.0"

_MODULES = {
    "Addon": ".addon",
    "BatchSubmitExtension": ".extension",
    "LLMExtractPipeline": ".pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
