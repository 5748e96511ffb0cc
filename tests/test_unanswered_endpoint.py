"""An endpoint that takes connections and never answers: bounded, logged, and advised."""

from __future__ import annotations

import logging
import socket
import threading

import httpx2
import openai
import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.realtime import RealtimeExtractor
from scrapy_llm_extract.results import TIMEOUT, Failure
from scrapy_llm_extract.retry import RetryPolicy

from .helpers import make_config


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field()


class SilentServer:
    """Accepts every connection on 127.0.0.1, reads what comes, never writes a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections.append(connection)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        for connection in self.connections:
            connection.close()
        self._thread.join()


@deferred_f_from_coro_f
async def test_each_retry_says_why_and_the_failure_advises_for_a_silent_endpoint(caplog):
    with SilentServer() as server:
        config = make_config(
            LLM_EXTRACT_BASE_URL=server.base_url,
            LLM_EXTRACT_API_KEY="sk-test-silent-0000",
            LLM_EXTRACT_TIMEOUT=0.3,
            LLM_EXTRACT_MAX_RETRIES=2,
            LLM_EXTRACT_SCHEMA="tests.test_unanswered_endpoint.Product",
        )
        stats = MemoryStatsCollector(get_crawler())
        extractor = RealtimeExtractor(config, stats)
        item = Product(url="http://shop.test/1", html="<h1>Blue mug</h1><p>12.99 EUR</p>")
        prepared = Preparer(config).prepare(ItemAdapter(item))
        with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
            outcome = await extractor.extract(prepared)
        await extractor.close()
        attempts = len(server.connections)
    assert isinstance(outcome, Failure)
    assert outcome.kind == TIMEOUT
    assert outcome.message.startswith(
        "no answer within 0.3 s after 2 retries; the endpoint took the request but did not"
        " answer within LLM_EXTRACT_TIMEOUT (0.3 s): if it never answers, check"
        " LLM_EXTRACT_BASE_URL"
    )
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [line.split(" in ")[0] for line in retries] == [
        f"Real-time call for http://shop.test/1 failed (no answer within 0.3 s); retry {n} of 2"
        for n in (1, 2)
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if "retry" in r.getMessage())
    assert attempts == 3
    assert stats.get_value("llm_extract/realtime/retried") == 2
    assert "sk-test-silent" not in caplog.text


def timed_out() -> openai.APITimeoutError:
    return openai.APITimeoutError(request=httpx2.Request("POST", "http://127.0.0.1/v1"))


@pytest.mark.parametrize(("attempt_timeout", "retried"), [(0.0, True), (0.9, False)])
def test_no_retry_starts_that_could_end_past_the_time_budget(attempt_timeout, retried):
    """Retry 1 waits 0.25-0.5 s: with attempts of up to 0.9 s it would end past 1 s."""
    policy = RetryPolicy(max_retries=5, max_time=1.0, attempt_timeout=attempt_timeout)
    assert (policy.delay(timed_out(), 1, elapsed=0.0) is not None) is retried


def test_the_policy_takes_the_client_timeout_as_the_attempt_length():
    config = make_config(LLM_EXTRACT_TIMEOUT=7, LLM_EXTRACT_RETRY_MAX_TIME=20)
    assert RetryPolicy.from_config(config).attempt_timeout == 7
