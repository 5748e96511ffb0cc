"""Turn API answers into extracted fields or a failure of a named kind.

One parser serves both paths: the real-time path passes the chat.completion
body it received, the collector passes each Batch API output or error row.
A 200 answer is not yet a success: a refusal, a cut-off answer, a content
filter stop, or content that is not the object the schema asks for are
failures too, each with its own kind so stats and failures.jsonl say what
went wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import conforms, validation_errors

# Failure kinds. Extraction failures (the model answered, but not usefully):
REFUSAL = "refusal"
LENGTH = "length"
CONTENT_FILTER = "content_filter"
INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"
EMPTY = "empty"
# Request failures (no usable answer):
API_ERROR = "api_error"
RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
CONNECTION = "connection"
BATCH_EXPIRED = "batch_expired"
BATCH_CANCELLED = "batch_cancelled"
BATCH_FAILED = "batch_failed"
MISSING = "missing"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    #: Billed as output; includes ``reasoning_tokens``, as the API counts them.
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Usage:
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


@dataclass(frozen=True)
class Extracted:
    fields: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    usage: Usage = field(default_factory=Usage)
    retry_after: float | None = None


Outcome = Extracted | Failure


def parse_completion(body: Mapping[str, Any], schema: Mapping[str, Any]) -> Outcome:
    """Judge a chat.completion body against the strict ``schema`` it was asked for."""
    usage = Usage.from_body(body)
    choices = body.get("choices") or []
    if not choices:
        return Failure(EMPTY, "the answer has no choices", usage)
    choice = choices[0]
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    if message.get("refusal"):
        return Failure(REFUSAL, f"the model refused: {message['refusal']}", usage)
    if finish_reason == "length":
        return Failure(
            LENGTH,
            "the answer was cut at the output token limit; raise LLM_EXTRACT_MAX_OUTPUT_TOKENS",
            usage,
        )
    if finish_reason == "content_filter":
        return Failure(CONTENT_FILTER, "the answer was stopped by OpenAI's content filter", usage)
    content = message.get("content")
    if not content:
        return Failure(EMPTY, "the answer has no content", usage)
    try:
        fields = json.loads(content)
    except ValueError as exc:
        return Failure(INVALID_JSON, f"the answer is not JSON ({exc})", usage)
    if not conforms(fields, schema) and (errors := validation_errors(fields, schema)):
        return Failure(
            SCHEMA_MISMATCH, "the answer breaks the schema: " + "; ".join(errors[:3]), usage
        )
    return Extracted(fields, usage, body.get("model"))


def parse_batch_row(row: Mapping[str, Any], schema: Mapping[str, Any]) -> Outcome:
    """Judge one line of a batch output or error file (its custom_id is the caller's)."""
    error = row.get("error")
    if error:
        code = error.get("code") if isinstance(error, Mapping) else None
        message = error.get("message", "") if isinstance(error, Mapping) else str(error)
        kind = code if code in (BATCH_EXPIRED, BATCH_CANCELLED) else API_ERROR
        return Failure(kind, f"{code or 'error'}: {message}")
    response = row.get("response") or {}
    status = response.get("status_code")
    body = response.get("body") or {}
    if status != 200:
        api_error = body.get("error") or {} if isinstance(body, Mapping) else {}
        return Failure(
            RATE_LIMITED if status == 429 else API_ERROR,
            f"HTTP {status}: {api_error.get('message') or 'no message'}",
        )
    return parse_completion(body, schema)
