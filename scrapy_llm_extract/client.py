"""OpenAI clients built from the crawler's settings.

Clients never retry by themselves (``max_retries=0``): :mod:`.retry` does, so
that every retry is counted. ``LLM_EXTRACT_EMULATOR_DIR`` plugs the bundled
emulator in through the SDK's ``http_client`` transport hook, so an offline
run still exercises the real SDK end to end.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx2
import openai

from .config import Config

logger = logging.getLogger(__name__)

EMULATOR_BASE_URL = "http://emulator.invalid/v1"
EMULATOR_API_KEY = "sk-emulator"


#: What an OpenAI-style secret key looks like, whole, cut short or masked as OpenAI's 401
#: quotes it ("sk-abc12***...wxyz": its first and last characters are the key's own).
_KEY_PATTERN = re.compile(r"\bsk-[A-Za-z0-9_\-*.\u2026]{6,}")


def api_key(config: Config) -> str | None:
    """The configured key, stripped: keys read from mounted secret files end in a newline,
    which httpx refuses in a header and then prints, key and all, in its error."""
    key = (config.api_key or os.environ.get("OPENAI_API_KEY") or "").strip()
    return key or None


def redact(text: str, key: str | None = None) -> str:
    """``text`` without the API key: exception texts and server messages may quote it."""
    if key:
        text = text.replace(key, "[API key]")
    return _KEY_PATTERN.sub("[API key]", text)


_announced: set[Path] = set()


def _announce_emulator(config: Config) -> None:
    """Say once per process and state dir that no model answers, and why; a key set too is
    the sign of a forgotten LLM_EXTRACT_EMULATOR_DIR."""
    assert config.emulator_dir is not None
    if config.emulator_dir in _announced:
        return
    _announced.add(config.emulator_dir)
    keys = [name for name in ("LLM_EXTRACT_API_KEY", "OPENAI_API_KEY") if _key_set(config, name)]
    unused = (
        f" {' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} set but not used: remove"
        " LLM_EXTRACT_EMULATOR_DIR to call OpenAI."
        if keys
        else ""
    )
    logger.warning(
        "OFFLINE: LLM_EXTRACT_EMULATOR_DIR is set, so requests go to the bundled OpenAI"
        " emulator (state in %s), not to a model: it copies values from each page's"
        " structured data only.%s",
        config.emulator_dir,
        unused,
    )


def _key_set(config: Config, name: str) -> bool:
    value = config.api_key if name == "LLM_EXTRACT_API_KEY" else os.environ.get(name)
    return bool((value or "").strip())


def _client_options(config: Config, asynchronous: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"max_retries": 0, "timeout": config.timeout}
    key = api_key(config)
    if config.emulator_dir is not None:
        from .emulator import emulator_transport

        _announce_emulator(config)
        transport = emulator_transport(config.emulator_dir)
        client_class = httpx2.AsyncClient if asynchronous else httpx2.Client
        options["http_client"] = client_class(transport=transport)
        options["base_url"] = config.base_url or EMULATOR_BASE_URL
        options["api_key"] = key or EMULATOR_API_KEY
        return options
    if key:
        options["api_key"] = key
    if config.base_url:
        options["base_url"] = config.base_url
    return options


class MissingAPIKey(RuntimeError):
    """No API key in the settings nor in the environment."""


def _require_key(options: dict[str, Any]) -> None:
    if "api_key" not in options:
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
