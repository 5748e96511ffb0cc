"""OpenAI clients built from the crawler's settings.

Clients never retry by themselves (``max_retries=0``): :mod:`.retry` does, so
that every retry is counted. ``LLM_EXTRACT_EMULATOR_DIR`` plugs the bundled
emulator in through the SDK's ``http_client`` transport hook, so an offline
run still exercises the real SDK end to end.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from .config import Config

EMULATOR_BASE_URL = "http://emulator.invalid/v1"
EMULATOR_API_KEY = "sk-emulator"


def _client_options(config: Config, asynchronous: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"max_retries": 0, "timeout": config.timeout}
    if config.emulator_dir is not None:
        from .emulator import emulator_transport

        transport = emulator_transport(config.emulator_dir)
        client_class = httpx2.AsyncClient if asynchronous else httpx2.Client
        options["http_client"] = client_class(transport=transport)
        options["base_url"] = config.base_url or EMULATOR_BASE_URL
        options["api_key"] = config.api_key or EMULATOR_API_KEY
        return options
    if config.api_key:
        options["api_key"] = config.api_key
    if config.base_url:
        options["base_url"] = config.base_url
    return options


def async_client(config: Config) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(**_client_options(config, asynchronous=True))


def sync_client(config: Config) -> openai.OpenAI:
    return openai.OpenAI(**_client_options(config, asynchronous=False))
