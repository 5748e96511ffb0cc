import httpx2
import openai
import pytest

from scrapy_llm_extract.retry import RetryPolicy, retry_after


def api_error(status, headers=None):
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    error_class = {429: openai.RateLimitError, 500: openai.InternalServerError}.get(
        status, openai.BadRequestError
    )
    return error_class("failed", response=response, body=None)


def test_retry_after_headers():
    assert retry_after(api_error(429, {"retry-after": "2"})) == 2.0
    assert retry_after(api_error(429, {"retry-after-ms": "250"})) == 0.25
    assert retry_after(api_error(429, {"retry-after": "soon"})) is None
    assert retry_after(ValueError()) is None


def test_delays_honour_retry_after_and_caps():
    policy = RetryPolicy(max_retries=3, max_time=10)
    assert policy.delay(api_error(429, {"retry-after": "4"}), 1, 0) == 4
    assert policy.delay(api_error(429, {"retry-after": "4"}), 1, 7) is None  # past max_time
    assert policy.delay(api_error(500), 4, 0) is None  # past max_retries
    assert 0.25 <= policy.delay(api_error(500), 1, 0) <= 0.5
    assert 1.0 <= policy.delay(api_error(500), 3, 0) <= 2.0
    assert policy.delay(api_error(400), 1, 0) is None  # not retryable
    assert policy.delay(ValueError(), 1, 0) is None


def test_call_sync_retries_then_succeeds_and_reports_each_retry():
    failures = [api_error(429, {"retry-after-ms": "1"}), api_error(500, {"retry-after-ms": "1"})]
    seen = []

    def operation():
        if failures:
            raise failures.pop(0)
        return "ok"

    result = RetryPolicy(max_retries=2, max_time=5).call_sync(
        operation, on_retry=lambda exc, wait: seen.append((type(exc).__name__, wait))
    )
    assert result == "ok"
    assert seen == [("RateLimitError", 0.001), ("InternalServerError", 0.001)]


def test_call_sync_gives_up_with_the_last_error():
    def operation():
        raise api_error(429, {"retry-after-ms": "1"})

    with pytest.raises(openai.RateLimitError):
        RetryPolicy(max_retries=2, max_time=5).call_sync(operation)
