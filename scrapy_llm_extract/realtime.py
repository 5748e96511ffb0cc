"""Real-time extraction: one awaited chat-completions call per urgent item.

The call is awaited under Scrapy's asyncio reactor, so a slow answer holds up
its own item only, never the crawl. Nothing in Scrapy caps work done inside a
pipeline, hence a per-crawler semaphore (``LLM_EXTRACT_CONCURRENT_REQUESTS``)
and optional request/token budgets (``LLM_EXTRACT_RPM`` / ``LLM_EXTRACT_TPM``).
Retries go through :class:`~.retry.RetryPolicy` (the SDK's are off) so that
each one is counted. Whatever happens, :meth:`RealtimeExtractor.extract`
returns an outcome: the pipeline decides what a failure becomes (batch spool
or error field), so no item is lost to an exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import openai
from scrapy.utils.asyncio import is_asyncio_available

from .cache import ResponseCache
from .client import MissingAPIKey, async_client, redact
from .config import Config
from .models import add_costs, cost_usd, model_info, rounded_usd
from .results import (
    API_ERROR,
    CONNECTION,
    RATE_LIMITED,
    TIMEOUT,
    Extracted,
    Failure,
    Outcome,
    Usage,
    parse_completion,
)
from .retry import RetryPolicy, retry_after

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from .extraction import Prepared
    from .prompt import ExtractionRequest

logger = logging.getLogger(__name__)

STATS_PREFIX = "llm_extract/realtime"
CHAT_COMPLETIONS_PATH = "/chat/completions"
#: How a server that is not an OpenAI-compatible API answers a POST to /chat/completions.
NO_SUCH_ENDPOINT = frozenset({404, 405})
#: Failure kind of an urgent item when no API key is set: spooling needs none, calls do.
NO_API_KEY = "no_api_key"
SECONDS_PER_MINUTE = 60.0


class UnsupportedReactor(RuntimeError):
    """The crawl runs on a Twisted reactor that cannot await the asyncio-based SDK."""


@dataclass
class _Bucket:
    """A minute's allowance that refills continuously; it may go into debt."""

    capacity: float
    level: float
    updated: float

    def shortfall(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is there; more than the capacity waits for a full bucket."""
        rate = self.capacity / SECONDS_PER_MINUTE
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now
        return max(min(amount, self.capacity) - self.level, 0.0) / rate


class RateLimiter:
    """Keeps real-time calls under LLM_EXTRACT_RPM / LLM_EXTRACT_TPM, and quiet after a 429.

    Token buckets hold one minute's allowance, like OpenAI's own limits, and
    refill continuously. :meth:`pause` stops every caller, not just the one
    that was told to wait, so a 429 storm is not fed by new requests.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self._requests = _Bucket(rpm, rpm, now) if rpm else None
        self._tokens = _Bucket(tpm, tpm, now) if tpm else None
        self._paused_until = now

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (a server's Retry-After)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def wait_time(self, tokens: int) -> float:
        """Take one request of ``tokens`` and return 0, or return the seconds to wait first."""
        now = self.clock()
        if now < self._paused_until:
            return self._paused_until - now
        costs = ((self._requests, 1), (self._tokens, tokens))
        wait = max(
            (bucket.shortfall(amount, now) for bucket, amount in costs if bucket is not None),
            default=0.0,
        )
        if wait > 0:
            return wait
        for bucket, amount in costs:
            if bucket is not None:
                bucket.level -= amount
        return 0.0

    async def acquire(self, tokens: int) -> None:
        while (wait := self.wait_time(tokens)) > 0:
            await self.sleep(wait)


class RealtimeExtractor:
    """Extracts one prepared item at a time, many at once, for one crawler.

    ``client`` defaults to the one :func:`~.client.async_client` builds from the
    settings; tests pass a client whose transport scripts the API's answers, and
    a fake ``clock`` and ``sleep`` for the retry and rate-limit waits.
    """

    def __init__(
        self,
        config: Config,
        stats: StatsCollector,
        client: openai.AsyncOpenAI | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not is_asyncio_available():
            raise UnsupportedReactor(
                "scrapy-llm-extract awaits the OpenAI SDK on asyncio, but this crawl runs on"
                " another Twisted reactor. Set TWISTED_REACTOR ="
                ' "twisted.internet.asyncioreactor.AsyncioSelectorReactor" (Scrapy\'s default).'
            )
        self.config = config
        self.stats = stats
        self._missing_key = ""
        try:
            self.client: openai.AsyncOpenAI | None = client or async_client(config)
        except MissingAPIKey as exc:  # a crawl that only spools needs no key: urgent items fail
            self.client, self._missing_key = None, str(exc)
        self.retry = RetryPolicy.from_config(config, clock, sleep)
        self.limiter = RateLimiter(config.rpm, config.tpm, clock, sleep)
        self.cache = (
            ResponseCache(config.cache_dir, str(self.client.base_url))
            if config.cache_enabled and self.client is not None
            else None
        )
        self._slots = asyncio.Semaphore(config.concurrent_requests)
        self._model = model_info(config.model, config.prices)
        self._cost: float | None = 0.0

    async def extract(self, prepared: Prepared) -> Outcome:
        """The extracted fields, or a failure of a named kind; never raises."""
        self._inc("requests")
        try:
            outcome = await self._extract(prepared)
        except Exception as exc:  # a bug here must not lose the item: the pipeline handles failures
            logger.error("Real-time extraction of %s crashed.", prepared.url, exc_info=True)
            outcome = Failure(API_ERROR, self._redact(f"unexpected {type(exc).__name__}: {exc}"))
        if isinstance(outcome, Extracted):
            self._inc("succeeded")
        else:
            self._inc(f"failed/{outcome.kind}")
        return outcome

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if (cache := self._working_cache()) is not None:
            cache.close()

    def _working_cache(self) -> ResponseCache | None:
        """The response cache while it works; one that turned itself off is counted once."""
        if self.cache is not None and not self.cache.usable:
            self._inc("cache_disabled")
            self.cache = None
        return self.cache

    async def _extract(self, prepared: Prepared) -> Outcome:
        if self.client is None:
            return Failure(NO_API_KEY, self._missing_key)
        request = prepared.request
        schema = prepared.schema.schema
        cache = self._working_cache()
        if cache is not None and (cached := cache.get(request.body_json)) is not None:
            outcome = parse_completion(cached, schema)
            if isinstance(outcome, Extracted):
                self._inc("cached")
                return outcome
        answer = await self._answer(request, prepared.url)
        if isinstance(answer, Failure):
            return answer
        outcome = parse_completion(answer, schema)
        self._count_usage(outcome.usage)
        if isinstance(outcome, Extracted) and (cache := self._working_cache()) is not None:
            cache.put(request.body_json, answer)
        return outcome

    async def _answer(
        self, request: ExtractionRequest, url: str | None
    ) -> dict[str, Any] | Failure:
        """The chat.completion body, after as many retries as the policy allows."""
        retries = 0

        def on_retry(exc: BaseException, wait: float) -> None:
            nonlocal retries
            retries += 1
            self._inc("retried")
            if isinstance(exc, openai.RateLimitError) and (asked := retry_after(exc)):
                self.limiter.pause(asked)
            logger.info(
                "Real-time call for %s failed (%s); retry %d of %d in %.1f s.",
                url,
                self._describe(exc),
                retries,
                self.config.max_retries,
                wait,
            )

        client = self.client
        assert client is not None  # _extract() answered for a missing key

        async def send() -> httpx2.Response:
            await self.limiter.acquire(request.prompt_tokens)
            # The generic post sends the body exactly as built (the typed create()
            # reorders keys), so the request bytes equal the batch row's body.
            return await client.post(
                CHAT_COMPLETIONS_PATH, body=request.body, cast_to=httpx2.Response
            )

        try:
            async with self._slots:
                response = await self.retry.call(send, on_retry)
        except openai.OpenAIError as exc:
            return self._api_failure(exc, retries)
        try:
            body = response.json()
        except ValueError:
            return self._not_a_completion("a body that is not JSON")
        if not _looks_like_completion(body):
            return self._not_a_completion(f"JSON that is not a chat completion ({_shape(body)})")
        return body  # type: ignore[no-any-return]

    def _not_a_completion(self, what: str) -> Failure:
        return Failure(
            API_ERROR,
            f"{self._endpoint()} answered HTTP 200 with {what}: check that LLM_EXTRACT_BASE_URL"
            " is an OpenAI-compatible API (its base URL, usually ending in /v1) and no proxy"
            " answers in its place",
        )

    def _endpoint(self) -> str:
        """The URL called, without any user:password a base URL may carry."""
        assert self.client is not None  # only named after a call
        base = self.client.base_url.copy_with(username=None, password=None)
        return str(base).rstrip("/") + CHAT_COMPLETIONS_PATH

    def _api_failure(self, exc: openai.OpenAIError, retries: int) -> Failure:
        """A final API error as a failure whose message says what to do about it."""
        after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        if isinstance(exc, openai.RateLimitError):
            kind = RATE_LIMITED
            advice = (
                "lower LLM_EXTRACT_CONCURRENT_REQUESTS or set LLM_EXTRACT_RPM / LLM_EXTRACT_TPM"
            )
        elif isinstance(exc, openai.APITimeoutError):
            kind = TIMEOUT
            advice = self._timeout_advice(exc)
        elif isinstance(exc, openai.APIConnectionError):
            kind = CONNECTION
            advice = "check the network and LLM_EXTRACT_BASE_URL"
        elif isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            kind = API_ERROR
            advice = "check LLM_EXTRACT_API_KEY or OPENAI_API_KEY"
        elif isinstance(exc, openai.APIStatusError) and exc.status_code in NO_SUCH_ENDPOINT:
            kind = API_ERROR
            advice = (
                f"{self._endpoint()} has no such model or is no chat-completions endpoint: check"
                " LLM_EXTRACT_MODEL, and that LLM_EXTRACT_BASE_URL is an OpenAI-compatible API"
                " (its base URL, usually ending in /v1)"
            )
        elif isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            kind = API_ERROR
            advice = "OpenAI kept failing; raise LLM_EXTRACT_MAX_RETRIES or try again later"
        else:
            kind = API_ERROR
            advice = "the request was refused; check LLM_EXTRACT_MODEL and the item's schema"
        return Failure(kind, f"{self._describe(exc)}{after}; {advice}")

    def _timeout_advice(self, exc: openai.APITimeoutError) -> str:
        """A connection never made, an answer never begun and a slow answer differ in cure."""
        timeout = f"LLM_EXTRACT_TIMEOUT ({self.config.timeout:g} s)"
        if isinstance(exc.__cause__, httpx2.ConnectTimeout | httpx2.PoolTimeout):
            return "the endpoint takes no connections: check LLM_EXTRACT_BASE_URL and the network"
        return (
            f"the endpoint took the request but did not answer within {timeout}: if it never"
            " answers, check LLM_EXTRACT_BASE_URL (an OpenAI-compatible API?) and any proxy;"
            f" if its answers are only slow (long pages, large outputs), raise {timeout}"
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, openai.APIStatusError):
            text = f"HTTP {exc.status_code}: {exc.message}"
        elif isinstance(exc, openai.APITimeoutError):
            waited = f"{self.config.timeout:g} s"
            if isinstance(exc.__cause__, httpx2.ConnectTimeout):
                text = f"no connection within {waited}"
            elif isinstance(exc.__cause__, httpx2.PoolTimeout):
                text = f"no free connection within {waited}"
            else:
                text = f"no answer within {waited}"
        else:
            text = str(exc) or type(exc).__name__
        return self._redact(text)

    def _redact(self, text: str) -> str:
        """Server messages may quote the key (401s do, partly): never let it reach a log."""
        return redact(text, self.client.api_key if self.client is not None else None)

    def _count_usage(self, usage: Usage) -> None:
        self._inc("input_tokens", usage.prompt_tokens)
        self._inc("output_tokens", usage.completion_tokens)
        self._inc("cached_tokens", usage.cached_tokens)
        if usage.reasoning_tokens:  # reasoning models only
            self._inc("reasoning_tokens", usage.reasoning_tokens)
        cost = cost_usd(
            self._model,
            usage.prompt_tokens,
            usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
        )
        # Summed exactly and shown to the micro-dollar; None (an unknown price) stays None,
        # since an unknown cost must not read as $0.
        self._cost = add_costs(self._cost, cost)
        self.stats.set_value(f"{STATS_PREFIX}/cost_usd", rounded_usd(self._cost))

    def _inc(self, name: str, count: int = 1) -> None:
        self.stats.inc_value(f"{STATS_PREFIX}/{name}", count)


def _looks_like_completion(body: Any) -> bool:
    """A chat.completion's shape, as far as parse_completion reads it."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return False
    return all(
        isinstance(choice, dict) and isinstance(choice.get("message", {}), dict)
        for choice in body["choices"]
    )


def _shape(body: Any) -> str:
    """What a JSON body holds, briefly, for an error message: never the body itself."""
    if isinstance(body, dict):
        return "keys: " + ", ".join(sorted(map(str, body))[:5]) if body else "an empty object"
    return f"a JSON {type(body).__name__}"
