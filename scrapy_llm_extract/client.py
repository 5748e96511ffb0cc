"""OpenAI clients built from the crawler's settings.

Clients never retry by themselves (``max_retries=0``): :mod:`.retry` does, so
that every retry is counted. ``LLM_EXTRACT_EMULATOR_DIR`` plugs the bundled
emulator in through the SDK's ``http_client`` transport hook, so an offline
run still exercises the real SDK end to end.
"""

from __future__ import annotations

import os
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


class MissingAPIKey(RuntimeError):
    """No API key in the settings nor in the environment."""


def _require_key(options: dict[str, Any]) -> None:
    if "api_key" not in options and not os.environ.get("OPENAI_API_KEY"):
        raise MissingAPIKey(
            "No OpenAI API key: set LLM_EXTRACT_API_KEY or the OPENAI_API_KEY environment"
            " variable (or LLM_EXTRACT_EMULATOR_DIR to run offline against the emulator)."
        )


def async_client(config: Config) -> openai.AsyncOpenAI:
    options = _client_options(config, asynchronous=True)
    _require_key(options)
    return openai.AsyncOpenAI(**options)


def sync_client(config: Config) -> openai.OpenAI:
    options = _client_options(config, asynchronous=False)
    _require_key(options)
    return openai.OpenAI(**options)
