import json

import pytest

from scrapy_llm_extract import results
from scrapy_llm_extract.results import Extracted, Failure, parse_batch_row, parse_completion

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": ["string", "null"]}, "price": {"type": ["number", "null"]}},
    "required": ["title", "price"],
    "additionalProperties": False,
}


def completion(content=None, *, finish_reason="stop", refusal=None, usage=None):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": usage
        or {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "total_tokens": 110,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }


def test_success_gives_fields_usage_and_model():
    outcome = parse_completion(completion('{"title": "Mug", "price": 12.5}'), SCHEMA)
    assert outcome == Extracted(
        {"title": "Mug", "price": 12.5},
        results.Usage(prompt_tokens=100, completion_tokens=10, cached_tokens=64),
        "gpt-4o-mini-2024-07-18",
    )


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (completion(None, refusal="I can't help with that"), results.REFUSAL),
        (completion('{"title": "Mu', finish_reason="length"), results.LENGTH),
        (completion(None, finish_reason="content_filter"), results.CONTENT_FILTER),
        (completion("Sure! The title is Mug."), results.INVALID_JSON),
        (completion('{"title": "Mug"}'), results.SCHEMA_MISMATCH),
        (completion('{"title": "Mug", "price": "12"}'), results.SCHEMA_MISMATCH),
        (completion(""), results.EMPTY),
        ({"choices": []}, results.EMPTY),
    ],
)
def test_unusable_answers_are_failures_of_their_kind(body, kind):
    outcome = parse_completion(body, SCHEMA)
    assert isinstance(outcome, Failure)
    assert outcome.kind == kind
    assert outcome.message


def test_failures_keep_usage_so_their_cost_is_counted():
    outcome = parse_completion(completion("nope"), SCHEMA)
    assert outcome.usage.prompt_tokens == 100


def row(response=None, error=None):
    return {"id": "batch_req_1", "custom_id": "r-1", "response": response, "error": error}


def test_batch_output_row_uses_the_same_parser():
    body = completion(json.dumps({"title": "Mug", "price": None}))
    outcome = parse_batch_row(row({"status_code": 200, "request_id": "req", "body": body}), SCHEMA)
    assert outcome == parse_completion(body, SCHEMA)
    assert isinstance(outcome, Extracted)


@pytest.mark.parametrize(
    ("line", "kind", "text"),
    [
        (
            row(error={"code": "batch_expired", "message": "expired"}),
            results.BATCH_EXPIRED,
            "expired",
        ),
        (row(error={"code": "batch_cancelled", "message": "c"}), results.BATCH_CANCELLED, "c"),
        (row(error="plain string error"), results.API_ERROR, "plain string error"),
        (
            row({"status_code": 500, "body": {"error": {"message": "server broke"}}}),
            results.API_ERROR,
            "HTTP 500: server broke",
        ),
        (
            row({"status_code": 429, "body": {"error": {"message": "slow"}}}),
            results.RATE_LIMITED,
            "429",
        ),
        (row({"status_code": 200, "body": completion("{}")}), results.SCHEMA_MISMATCH, "missing"),
    ],
)
def test_batch_error_rows(line, kind, text):
    outcome = parse_batch_row(line, SCHEMA)
    assert isinstance(outcome, Failure)
    assert outcome.kind == kind
    assert text in outcome.message
