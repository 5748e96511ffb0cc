"""What a crawl checks once, at start, so that a misconfiguration stops it with one line.

The pipeline and the extension both call :func:`crawler_config`: the first
call validates the settings, warns about misspelt ``LLM_EXTRACT_*`` names and
quiets the HTTP libraries' per-call lines; a :class:`~.config.ConfigError` is
logged as one ERROR line and raised, which makes ``scrapy crawl`` exit 1.
Scrapy would also print it inside asyncio's "Task exception was never
retrieved" traceback: :class:`_AlreadyReported` keeps that copy out.

A crawl that starts but then finds it cannot go on (no schema for an item
type) closes its spider with a ``llm_extract_*`` reason; :func:`exit_nonzero`
makes the command exit 1 for it too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy import signals

from .config import Config, ConfigError, unknown_settings

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Loggers that log a line per API call at INFO or DEBUG; quiet unless the project set a level.
CHATTY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "openai")

_configs: weakref.WeakKeyDictionary[Crawler, Config] = weakref.WeakKeyDictionary()


class _AlreadyReported(logging.Filter):
    """Drops asyncio's report of a ConfigError that was logged as one line already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConfigError):
            return False
        # Twisted's reactors other than asyncio's report the failure as text.
        return f"{ConfigError.__module__}.{ConfigError.__name__}: " not in record.getMessage()


_already_reported = _AlreadyReported()


def stop_with(error: ConfigError) -> ConfigError:
    """Log ``error`` as one line and return it for raising: the crawl does not start."""
    logger.error("%s", error)
    for name in ("asyncio", "twisted"):
        logging.getLogger(name).addFilter(_already_reported)
    return error


def crawler_config(crawler: Crawler) -> Config:
    """The crawler's validated config, built (and its warnings given) once."""
    config = _configs.get(crawler)
    if config is not None:
        return config
    try:
        config = Config.from_settings(crawler.settings)
    except ConfigError as exc:
        raise stop_with(exc) from None
    for warning in unknown_settings(crawler.settings.attributes):
        logger.warning(warning)
    quiet_chatty_loggers()
    _configs[crawler] = config
    return config


def quiet_chatty_loggers() -> None:
    """httpx and the SDK log every call at INFO/DEBUG: keep them to warnings unless set."""
    for name in CHATTY_LOGGERS:
        chatty = logging.getLogger(name)
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.WARNING)


def check_spool_dir(path: Path) -> None:
    """Raise a ConfigError unless ``path`` can be created and written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"LLM_EXTRACT_SPOOL_DIR {path} cannot be created or written"
            f" ({exc.strerror or exc}): point it at a writable folder."
        ) from None


def exit_nonzero(crawler: Crawler) -> None:
    """Make ``scrapy crawl`` / ``runspider`` exit 1 once this crawl has stopped.

    Scrapy 2.19 has one exit status for a crawl: 1 when the crawler ends with no
    spider ("bootstrap failed"). So, once everything is closed and stored, the
    spider reference is dropped, and the command reports the crawl as failed.
    """

    def engine_stopped() -> None:
        crawler.spider = None

    crawler.signals.connect(engine_stopped, signal=signals.engine_stopped, weak=False)
