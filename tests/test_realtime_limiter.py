"""RateLimiter on a fake clock: budgets, debts and pauses, without sleeping."""

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.realtime import RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_no_limits_never_wait():
    clock = FakeClock()
    limiter = RateLimiter(None, None, clock=clock)
    assert all(limiter.wait_time(100_000) == 0 for _ in range(1000))


def test_requests_per_minute_allow_a_minute_then_refill_steadily():
    clock = FakeClock()
    limiter = RateLimiter(60, None, clock=clock)
    assert [limiter.wait_time(10) for _ in range(60)] == [0] * 60
    assert limiter.wait_time(10) == pytest.approx(1.0)
    assert limiter.wait_time(10) == pytest.approx(1.0)  # asking again does not take anything
    clock.now += 0.5
    assert limiter.wait_time(10) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait_time(10) == 0
    assert limiter.wait_time(10) == pytest.approx(1.0)


def test_tokens_per_minute_count_prompt_tokens():
    clock = FakeClock()
    limiter = RateLimiter(None, 1200, clock=clock)  # 20 tokens a second
    assert limiter.wait_time(800) == 0
    assert limiter.wait_time(800) == pytest.approx(20.0)  # 400 left, 400 missing
    clock.now += 20
    assert limiter.wait_time(800) == 0


def test_both_budgets_must_allow_and_a_refusal_charges_neither():
    clock = FakeClock()
    limiter = RateLimiter(2, 1200, clock=clock)  # one request every 30 s, 20 tokens a second
    assert limiter.wait_time(1000) == 0
    assert limiter.wait_time(100) == 0
    assert limiter.wait_time(1) == pytest.approx(30.0)  # out of requests, tokens to spare
    assert limiter.wait_time(1000) == pytest.approx(45.0)  # the longer shortfall wins
    clock.now += 45
    assert limiter.wait_time(1000) == 0  # refused asks took nothing: 100 + 900 tokens back
    assert limiter.wait_time(1) == pytest.approx(15.0)


def test_a_request_above_the_token_budget_waits_for_a_full_bucket_then_runs_into_debt():
    clock = FakeClock()
    limiter = RateLimiter(None, 600, clock=clock)  # 10 tokens a second
    assert limiter.wait_time(1500) == 0  # a full bucket lets it through, or it would never go
    assert limiter.wait_time(100) == pytest.approx(100.0)  # debt of 900, then 100 more
    clock.now += 100
    assert limiter.wait_time(1500) == pytest.approx(50.0)  # 100 left: waits for a full bucket


def test_pause_holds_every_caller_and_never_shortens():
    clock = FakeClock()
    limiter = RateLimiter(None, None, clock=clock)
    limiter.pause(5)
    limiter.pause(2)
    assert limiter.wait_time(1) == pytest.approx(5.0)
    clock.now += 5
    assert limiter.wait_time(1) == 0


@deferred_f_from_coro_f
async def test_acquire_sleeps_exactly_what_the_budget_asks():
    clock = FakeClock()
    limiter = RateLimiter(30, None, clock=clock, sleep=clock.sleep)  # one every 2 s
    for _ in range(32):
        await limiter.acquire(1)
    assert clock.slept == [pytest.approx(2.0)] * 2
    limiter.pause(7)
    await limiter.acquire(1)
    assert clock.slept[2] == pytest.approx(7.0)
