"""One retry policy for every API call the package makes.

The SDK could retry too, but then retries would be invisible to our stats and
its ceiling on ``Retry-After`` (it gives up past 120 s) would not be ours; so
clients are built with ``max_retries=0`` and every call site goes through
:class:`RetryPolicy`, which retries 429s, 5xx answers, timeouts and dropped
connections with capped exponential backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import openai

from .config import Config

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """``clock`` and ``sleep`` time the waits of :meth:`call` (tests pass fake ones)."""

    max_retries: int
    max_time: float
    #: How long one attempt may take (the client's timeout): no retry starts that could
    #: end past ``max_time``, so a call that never gets an answer gives up within it.
    attempt_timeout: float = 0.0
    base_delay: float = 0.5
    max_delay: float = 60.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], Awaitable[object]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )

    @classmethod
    def from_config(
        cls,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> RetryPolicy:
        return cls(
            max_retries=config.max_retries,
            max_time=config.retry_max_time,
            attempt_timeout=config.timeout,
            clock=clock,
            sleep=sleep,
        )

    def delay(self, exc: BaseException, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based), or None to give up."""
        if not isinstance(exc, RETRYABLE) or attempt > self.max_retries:
            return None
        asked = retry_after(exc)
        if asked is not None:
            wait = asked
        else:
            wait = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
            wait *= 0.5 + random.random() / 2  # jitter: spread retries of a burst
        if elapsed + wait + self.attempt_timeout > self.max_time:
            return None
        return wait

    def attempts(
        self, on_retry: Callable[[BaseException, float], None] | None = None
    ) -> Callable[[BaseException], float | None]:
        """A tracker for one call: given each failure, the wait before the next try, or None."""
        start = self.clock()
        count = 0

        def wait_after(exc: BaseException) -> float | None:
            nonlocal count
            count += 1
            wait = self.delay(exc, count, self.clock() - start)
            if wait is not None and on_retry is not None:
                on_retry(exc, wait)
            return wait

        return wait_after

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Await ``operation()`` until it succeeds or the policy gives up (then re-raise)."""
        wait_after = self.attempts(on_retry)
        while True:
            try:
                return await operation()
            except Exception as exc:
                if (wait := wait_after(exc)) is None:
                    raise
            await self.sleep(wait)

    def call_sync(
        self,
        operation: Callable[[], T],
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Blocking twin of :meth:`call`, for code that runs outside the reactor."""
        wait_after = self.attempts(on_retry)
        while True:
            try:
                return operation()
            except Exception as exc:
                if (wait := wait_after(exc)) is None:
                    raise
            time.sleep(wait)
