"""RealtimeExtractor against scripted HTTP answers (the SDK's transport hook, no network).

Each test scripts what the API answers; the real SDK sends the requests. The
crawl tests against the emulator are in test_realtime_crawl.py.
"""

import asyncio
import json
import logging
import subprocess
import sys

import httpx2
import openai
import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.emulator import Emulator, EmulatorTransport
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.realtime import RealtimeExtractor
from scrapy_llm_extract.results import (
    API_ERROR,
    CONNECTION,
    INVALID_JSON,
    RATE_LIMITED,
    REFUSAL,
    TIMEOUT,
    Extracted,
    Failure,
    Usage,
)
from tests.conftest import product_page
from tests.helpers import make_config

FAKE_KEY = "sk-test-DISTINCTIVE-9f3c1a7e5b"
PREFIX = "llm_extract/realtime"


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()


def completion(content, *, prompt_tokens=1000, completion_tokens=20, cached_tokens=0, **message):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        },
    }


GOOD = completion(json.dumps({"title": "Product 1", "price": "11.25"}))


def error(status, message="failed", headers=None):
    return httpx2.Response(status, headers=headers or {}, json={"error": {"message": message}})


class FakeClock:
    """Time that moves only when the test advances it: sleepers wait for that.

    Every wait asked for is noted in ``waits`` as (time asked, seconds), and in
    ``log`` as ("wait", time, seconds), where others may log their own events.
    :meth:`until` waits for a condition on what the code under test did,
    re-checked on each change.
    """

    def __init__(self):
        self.now = 1000.0
        self.waits = []
        self.log = []
        self._sleepers = []
        self._changed = asyncio.Event()

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.waits.append((self.now, seconds))
        self.log.append(("wait", self.now, seconds))
        woken = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, woken))
        self.changed()
        await woken

    def changed(self):
        self._changed.set()

    async def until(self, condition):
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def advance(self, seconds):
        """Move time on, waking the sleepers that are due."""
        self.move_to(self.now + seconds)

    def move_to(self, now):
        self.now = now
        due = [woken for wake, woken in self._sleepers if wake <= self.now]
        self._sleepers = [(wake, woken) for wake, woken in self._sleepers if wake > self.now]
        for woken in due:
            woken.set_result(None)
        self.changed()

    async def run(self, *coroutines):
        """Run the coroutines together; whenever all unfinished ones sleep, move time to
        the first wake-up. Their results, in order."""
        tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
        for task in tasks:
            task.add_done_callback(lambda _: self.changed())

        def settled():
            unfinished = sum(not task.done() for task in tasks)
            return unfinished == 0 or len(self._sleepers) == unfinished

        while not all(task.done() for task in tasks):
            await self.until(settled)
            if self._sleepers:
                self.move_to(min(wake for wake, _ in self._sleepers))
        return [task.result() for task in tasks]


class ScriptedAPI:
    """Answers chat-completion calls in turn from a script; records what it was sent, and
    when by ``clock``."""

    def __init__(self, *answers, clock=None):
        self.answers = list(answers)
        self.clock = clock
        self.requests = []
        self.times = []

    def __call__(self, request):
        self.requests.append(request.read())
        if self.clock is not None:
            self.times.append(self.clock())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx2.Response):
            return answer
        return httpx2.Response(200, json=answer)


class TimedEmulatorTransport(EmulatorTransport):
    """The emulator, logging each call ("sent", time, None) and answer ("answered", time,
    status) in ``clock.log`` (a FakeClock), counting the calls in flight, and holding every
    answer until ``answering`` is set."""

    def __init__(self, emulator, clock):
        super().__init__(emulator)
        self.clock = clock
        self.answering = asyncio.Event()
        self.answering.set()
        self.in_flight = self.peak = 0

    async def handle_async_request(self, request):
        self.clock.log.append(("sent", self.clock(), None))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.clock.changed()
        try:
            await self.answering.wait()
            response = await super().handle_async_request(request)
        finally:
            self.in_flight -= 1
        self.clock.log.append(("answered", self.clock(), response.status_code))
        return response


def make_extractor(api, clock=None, **settings):
    """An extractor whose SDK client answers from ``api`` (a handler or an httpx2 transport),
    timing its waits by ``clock`` (a FakeClock) if given."""
    settings = {"LLM_EXTRACT_SCHEMA": "tests.test_realtime.Product", **settings}
    config = make_config(**settings)
    transport = api if isinstance(api, httpx2.AsyncBaseTransport) else httpx2.MockTransport(api)
    client = openai.AsyncOpenAI(
        api_key=FAKE_KEY,
        base_url="http://api.invalid/v1",
        max_retries=0,
        timeout=config.timeout,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    stats = MemoryStatsCollector(get_crawler())
    timing = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    return RealtimeExtractor(config, stats, client=client, **timing), Preparer(config), stats


def prepare(preparer, n=1, text=""):
    item = Product(url=f"http://shop.test/product/{n}", html=product_page(n, text=text))
    return preparer.prepare(ItemAdapter(item))


def realtime_stats(stats):
    return {
        key[len(PREFIX) + 1 :]: value
        for key, value in stats.get_stats().items()
        if key.startswith(PREFIX)
    }


@deferred_f_from_coro_f
async def test_success_sends_the_prepared_bytes_and_counts_tokens_and_cost():
    api = ScriptedAPI(completion(GOOD["choices"][0]["message"]["content"], cached_tokens=400))
    extractor, preparer, stats = make_extractor(api)
    prepared = prepare(preparer)
    outcome = await extractor.extract(prepared)
    await extractor.close()
    assert outcome == Extracted(
        {"title": "Product 1", "price": "11.25"},
        Usage(prompt_tokens=1000, completion_tokens=20, cached_tokens=400),
        "gpt-4o-mini-2024-07-18",
    )
    assert api.requests == [prepared.request.body_json.encode()]
    counted = realtime_stats(stats)
    cost = counted.pop("cost_usd")
    assert counted == {
        "requests": 1,
        "succeeded": 1,
        "input_tokens": 1000,
        "output_tokens": 20,
        "cached_tokens": 400,
    }
    # gpt-4o-mini: 600 fresh at 0.15, 400 cached at 0.075, 20 out at 0.60 per million.
    assert cost == pytest.approx((600 * 0.15 + 400 * 0.075 + 20 * 0.60) / 1e6)


@deferred_f_from_coro_f
async def test_retries_are_counted_and_honour_retry_after_then_succeed():
    clock = FakeClock()
    api = ScriptedAPI(
        error(429, "slow down", {"retry-after-ms": "150"}),
        error(503, "overloaded", {"retry-after-ms": "50"}),
        GOOD,
        clock=clock,
    )
    extractor, preparer, stats = make_extractor(api, clock)
    [outcome] = await clock.run(extractor.extract(prepare(preparer)))
    await extractor.close()
    assert isinstance(outcome, Extracted)
    assert realtime_stats(stats)["retried"] == 2
    # Exactly the waits the server asked for, and no call before its wait was over.
    assert clock.waits == [(1000.0, 0.15), (1000.15, pytest.approx(0.05))]
    assert api.times == [1000.0, 1000.15, pytest.approx(1000.2)]


@pytest.mark.parametrize(
    ("answer", "kind", "advice", "retried"),
    [
        (error(429, "slow down", {"retry-after-ms": "1"}), RATE_LIMITED, "LLM_EXTRACT_RPM", 2),
        (error(500, "boom", {"retry-after-ms": "1"}), API_ERROR, "LLM_EXTRACT_MAX_RETRIES", 2),
        (error(400, "bad schema"), API_ERROR, "LLM_EXTRACT_MODEL", 0),
        (httpx2.ReadTimeout("slow"), TIMEOUT, "LLM_EXTRACT_TIMEOUT", 2),
        (httpx2.ConnectError("refused"), CONNECTION, "LLM_EXTRACT_BASE_URL", 2),
        (httpx2.Response(200, text="<html>proxy page</html>"), API_ERROR, "not JSON", 0),
        (completion(None, refusal="I can't"), REFUSAL, "refused", 0),
        (completion("{not json"), INVALID_JSON, "not JSON", 0),
    ],
)
@deferred_f_from_coro_f
async def test_final_failures_are_outcomes_of_their_kind_with_advice(answer, kind, advice, retried):
    api = ScriptedAPI(answer)
    clock = FakeClock()
    extractor, preparer, stats = make_extractor(api, clock, LLM_EXTRACT_MAX_RETRIES=2)
    [outcome] = await clock.run(extractor.extract(prepare(preparer)))
    await extractor.close()
    assert isinstance(outcome, Failure)
    assert outcome.kind == kind
    assert advice in outcome.message
    counted = realtime_stats(stats)
    assert counted["requests"] == 1
    assert counted[f"failed/{kind}"] == 1
    assert "succeeded" not in counted
    assert counted.get("retried", 0) == retried
    assert len(api.requests) == 1 + retried


@deferred_f_from_coro_f
async def test_the_api_key_is_redacted_from_messages_and_logs(caplog):
    api = ScriptedAPI(error(401, f"Incorrect API key provided: {FAKE_KEY}."))
    extractor, preparer, _ = make_extractor(api)
    # A crawl keeps these loggers to warnings (startup.quiet_chatty_loggers): open them up.
    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="openai"),
        caplog.at_level(logging.DEBUG, logger="httpx2"),
    ):
        outcome = await extractor.extract(prepare(preparer))
    await extractor.close()
    assert outcome.kind == API_ERROR
    assert "Incorrect API key provided: [API key]" in outcome.message
    assert "LLM_EXTRACT_API_KEY" in outcome.message
    assert FAKE_KEY not in outcome.message
    assert caplog.records  # the SDK and httpx2 did log the call
    assert all(FAKE_KEY not in record.getMessage() for record in caplog.records)


@deferred_f_from_coro_f
async def test_calls_in_flight_never_exceed_the_setting(emulator):
    clock = FakeClock()
    transport = TimedEmulatorTransport(Emulator(emulator.path), clock)
    transport.answering.clear()  # unthrottled, all 12 calls would be in flight at once
    extractor, preparer, stats = make_extractor(transport, LLM_EXTRACT_CONCURRENT_REQUESTS=3)
    items = asyncio.gather(*(extractor.extract(prepare(preparer, n)) for n in range(12)))
    await clock.until(lambda: transport.in_flight >= 3)
    # Hand the loop to the other items for as long as a fourth call would take to arrive
    # without the limit (one turn, measured): turns of the loop, not time.
    for _ in range(100):
        await asyncio.sleep(0)
    transport.answering.set()
    outcomes = await items
    await extractor.close()
    assert all(isinstance(outcome, Extracted) for outcome in outcomes)
    assert transport.peak == 3
    assert realtime_stats(stats)["succeeded"] == 12


@deferred_f_from_coro_f
async def test_a_429_pauses_calls_that_start_during_its_retry_after():
    clock = FakeClock()
    calls = []

    async def api(request):
        calls.append(clock())
        clock.changed()
        if len(calls) == 1:
            return error(429, "slow down", {"retry-after-ms": "300"})
        if len(calls) == 2:  # the other item's answer comes once the 429's retry waits
            await clock.until(lambda: clock.waits)
        return httpx2.Response(200, json=GOOD)

    extractor, preparer, _ = make_extractor(api, clock, LLM_EXTRACT_CONCURRENT_REQUESTS=2)
    items = asyncio.gather(*(extractor.extract(prepare(preparer, n)) for n in range(3)))
    # The third item got the slot the second freed, then waited like the retry.
    await clock.until(lambda: len(clock.waits) == 2 or len(calls) > 2)
    assert calls == [1000.0, 1000.0]
    assert clock.waits == [(1000.0, 0.3), (1000.0, pytest.approx(0.3))]
    clock.advance(0.3)
    outcomes = await items
    await extractor.close()
    assert all(isinstance(outcome, Extracted) for outcome in outcomes)
    assert calls == [1000.0, 1000.0, 1000.3, 1000.3]


@deferred_f_from_coro_f
async def test_a_429_storm_from_the_emulator_waits_what_retry_after_asks(emulator):
    emulator.configure(rate_limit_first=3, retry_after=0.3)
    clock = FakeClock()
    transport = TimedEmulatorTransport(Emulator(emulator.path), clock)
    extractor, preparer, stats = make_extractor(transport, clock, LLM_EXTRACT_MAX_RETRIES=4)
    outcomes = await clock.run(*(extractor.extract(prepare(preparer, n)) for n in range(3)))
    await extractor.close()
    assert all(isinstance(outcome, Extracted) for outcome in outcomes)
    assert realtime_stats(stats)["retried"] == 3
    answers = [status for kind, _, status in clock.log if kind == "answered"]
    assert answers == [429, 429, 429, 200, 200, 200]
    assert clock.waits == [(1000.0, 0.3)] * 3
    # The three calls had all passed the limiter before the first 429 came back, so
    # they went out together; none went again before the Retry-After was over.
    sent = [when for kind, when, _ in clock.log if kind == "sent"]
    assert sent == [1000.0] * 3 + [1000.3] * 3


@deferred_f_from_coro_f
async def test_cache_answers_identical_requests_and_stores_only_successes(tmp_path):
    settings = {"LLM_EXTRACT_CACHE_ENABLED": True, "LLM_EXTRACT_CACHE_DIR": str(tmp_path)}
    first_api = ScriptedAPI(GOOD, completion(None, refusal="no"))
    first, preparer, _ = make_extractor(first_api, **settings)
    assert isinstance(await first.extract(prepare(preparer, 1)), Extracted)
    assert (await first.extract(prepare(preparer, 2))).kind == REFUSAL
    await first.close()

    second_api = ScriptedAPI(GOOD)
    second, preparer, stats = make_extractor(second_api, **settings)
    cached = await second.extract(prepare(preparer, 1))
    asked_again = await second.extract(prepare(preparer, 2))  # refusals are not cached
    changed = await second.extract(prepare(preparer, 1, text="new price"))
    await second.close()
    assert cached.fields == {"title": "Product 1", "price": "11.25"}
    assert isinstance(asked_again, Extracted)
    assert isinstance(changed, Extracted)
    assert len(second_api.requests) == 2
    counted = realtime_stats(stats)
    assert counted["cached"] == 1
    assert counted["succeeded"] == 3
    assert counted["input_tokens"] == 2000  # a cached answer costs nothing


@deferred_f_from_coro_f
async def test_a_broken_cache_is_counted_once_and_extraction_goes_on(tmp_path):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    api = ScriptedAPI(GOOD)
    extractor, preparer, stats = make_extractor(
        api, LLM_EXTRACT_CACHE_ENABLED=True, LLM_EXTRACT_CACHE_DIR=str(tmp_path / "cache")
    )
    outcomes = [await extractor.extract(prepare(preparer, 1)) for _ in range(2)]
    await extractor.close()
    assert all(isinstance(outcome, Extracted) for outcome in outcomes)
    assert len(api.requests) == 2
    counted = realtime_stats(stats)
    assert counted["cache_disabled"] == 1
    assert counted["succeeded"] == 2
    assert "cached" not in counted


def test_another_reactor_fails_at_start_naming_twisted_reactor(tmp_path):
    script = """
import sys

import scrapy
from scrapy.crawler import CrawlerProcess

class Spider(scrapy.Spider):
    name = "s"
    async def start(self):
        return
        yield

process = CrawlerProcess({
    "TWISTED_REACTOR": "twisted.internet.selectreactor.SelectReactor",
    "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
    "LLM_EXTRACT_API_KEY": "sk-unused",
    "LLM_EXTRACT_SPOOL_DIR": sys.argv[1],
})
process.crawl(Spider)
process.start()
"""
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (
        "[scrapy_llm_extract.startup] ERROR: scrapy-llm-extract awaits the OpenAI SDK on asyncio"
        in run.stderr
    )
    assert "TWISTED_REACTOR" in run.stderr
    assert "Spider closed (finished)" not in run.stderr


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.Response(200, text="<html>Welcome to nginx!</html>"),
        httpx2.Response(200, json={"status": "ok"}),
        httpx2.Response(200, json=[{"choices": []}]),
        httpx2.Response(200, json={"choices": "none"}),
        httpx2.Response(200, json={"choices": [{"message": "text"}]}),
        httpx2.Response(404, text="<h1>Not Found</h1>"),
        httpx2.Response(405, text="Method Not Allowed"),
    ],
    ids=["html", "other-json", "list", "choices-str", "message-str", "404", "405"],
)
@deferred_f_from_coro_f
async def test_an_endpoint_that_is_not_openai_compatible_is_named_with_what_to_check(
    answer, caplog
):
    """A wrong LLM_EXTRACT_BASE_URL (a web server, a proxy page) fails the item with advice,
    never a crash traceback, and never blames the model or the schema alone."""
    extractor, preparer, stats = make_extractor(ScriptedAPI(answer))
    with caplog.at_level(logging.INFO):
        outcome = await extractor.extract(prepare(preparer))
    await extractor.close()
    assert isinstance(outcome, Failure)
    assert outcome.kind == API_ERROR
    assert "http://api.invalid/v1/chat/completions" in outcome.message
    assert "LLM_EXTRACT_BASE_URL is an OpenAI-compatible API" in outcome.message
    assert realtime_stats(stats)[f"failed/{API_ERROR}"] == 1
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@deferred_f_from_coro_f
async def test_the_endpoint_named_in_messages_carries_no_credentials():
    extractor, preparer, _ = make_extractor(ScriptedAPI(httpx2.Response(404)))
    extractor.client = extractor.client.with_options(base_url="http://me:s3cret@proxy.test/v1")
    outcome = await extractor.extract(prepare(preparer))
    await extractor.close()
    assert "http://proxy.test/v1/chat/completions has no such model" in outcome.message
    assert "s3cret" not in outcome.message
