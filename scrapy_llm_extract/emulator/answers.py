"""One chat-completions answer, shared by real-time calls and batch rows.

Page markers (``[[emulator:<fault>]]`` in the user content) and the faults the
config injects both end up as a *fault name* here, so a fault looks the same
whether it was asked for in real time or in a batch row.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..models import request_rules
from ..tokens import count_tokens, truncate_to_tokens
from .extract import fill, structured_entries
from .noise import Noise

#: Faults a page can ask for with ``[[emulator:<name>]]`` in its content.
MARKERS = (
    "refusal",
    "length",
    "content_filter",
    "invalid_json",
    "schema_mismatch",
    "error_500",
    "error_400",
    "hang",
)
_MARKER = re.compile(r"\[\[emulator:(" + "|".join(MARKERS) + r")\]\]")

MODEL_SUFFIX = "-emulator"
#: Reasoning tokens an emulated reasoning model spends per answer, by effort: fixed, so
#: tests know usage exactly, and large enough at the default effort to eat a small budget.
REASONING_TOKENS = {
    "none": 0,
    "minimal": 24,
    "low": 256,
    "medium": 2_048,
    "high": 8_192,
    "xhigh": 16_384,
    "max": 16_384,
}
REFUSAL = "I'm sorry, I can't help with that request. (emulated refusal)"
NOT_A_MODEL = "This is the scrapy-llm-extract emulator, not a language model."


@dataclass(frozen=True)
class Answer:
    """An HTTP status and JSON body, or ``hang`` for a request that never answers."""

    status: int
    body: dict[str, Any]
    hang: bool = False


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The API's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def server_error_body() -> dict[str, Any]:
    return error_body(
        "The server had an error while processing your request. Sorry about that! (emulated)",
        "server_error",
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: list[dict[str, Any]], model: str) -> int:
    """Tokens of the input: OpenAI's documented chat framing, 3 per message plus 3."""
    total = 3
    for message in messages:
        total += 3 + count_tokens(_text(message.get("content")), model)
        if "name" in message:
            total += 1 + count_tokens(str(message["name"]), model)
    return total


def markers(body: dict[str, Any]) -> list[str]:
    """The faults the user content asks for, in order of appearance."""
    text = "\n".join(
        _text(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user"
    )
    return _MARKER.findall(text)


def check_body(body: Any) -> dict[str, Any] | None:
    """The API's 400 for a body the endpoint would reject, else None."""
    if not isinstance(body, dict):
        return error_body("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error_body("you must provide a model parameter", param="model")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and "role" in m for m in messages)
    ):
        return error_body(
            "Invalid 'messages': expected a non-empty array of messages.", param="messages"
        )
    return _check_model_params(body)


def _unsupported_parameter(name: str, instead: str = "") -> dict[str, Any]:
    return error_body(
        f"Unsupported parameter: '{name}' is not supported with this model.{instead}",
        param=name,
        code="unsupported_parameter",
    )


def _check_model_params(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400s for generation parameters the model's family refuses (models.py rules)."""
    effort = body.get("reasoning_effort")
    rules = request_rules(body["model"], effort)
    if not rules.reasoning:
        return None if effort is None else _unsupported_parameter("reasoning_effort")
    if "max_tokens" in body:
        return _unsupported_parameter("max_tokens", " Use 'max_completion_tokens' instead.")
    for name in ("temperature", "top_p"):
        if body.get(name, 1) != 1:
            return error_body(
                f"Unsupported value: '{name}' does not support {body[name]!r} with this model."
                " Only the default (1) value is supported.",
                param=name,
                code="unsupported_value",
            )
    if effort is not None and not rules.efforts:
        return _unsupported_parameter("reasoning_effort")
    if effort is not None and effort not in rules.efforts:
        return error_body(
            f"Unsupported value: 'reasoning_effort' does not support {effort!r} with this model."
            f" Supported values are: {', '.join(repr(e) for e in rules.efforts)}.",
            param="reasoning_effort",
            code="unsupported_value",
        )
    return None


def reasoning_tokens(body: dict[str, Any]) -> int:
    """Hidden reasoning the emulated model spends on ``body`` (0 for classic models)."""
    effort = body.get("reasoning_effort")
    rules = request_rules(body["model"], effort)
    if not rules.reasoning:
        return 0
    return REASONING_TOKENS[effort or rules.default_effort or "medium"]


def _content(body: dict[str, Any], noise: Noise | None) -> str:
    """The emulated model output: schema-valid JSON, or a disclaimer for free text."""
    response_format = body.get("response_format") or {}
    user_text = "\n".join(
        _text(m.get("content")) for m in body["messages"] if m.get("role") == "user"
    )
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        fields = fill(schema, structured_entries(user_text))
        if noise is not None:
            fields = noise.apply(fields, user_text)
        return json.dumps(fields, ensure_ascii=False)
    if response_format.get("type") == "json_object":
        return json.dumps({"note": NOT_A_MODEL})
    return NOT_A_MODEL


def answer(
    body: Any,
    fault: str | None = None,
    *,
    realtime: bool = True,
    now: float | None = None,
    noise: Noise | None = None,
) -> Answer:
    """The answer to one chat-completions body; ``fault`` is a config-injected fault name.

    A marker in the page wins over ``fault``. ``hang`` applies to real-time calls only.
    ``noise`` changes a seeded share of the answers (see :mod:`.noise`).
    """
    problem = check_body(body)
    if problem is not None:
        return Answer(400, problem)
    found = markers(body)
    fault = found[0] if found else fault
    if fault == "hang" and realtime:
        return Answer(0, {}, hang=True)
    if fault == "error_500":
        return Answer(500, server_error_body())
    if fault == "error_400":
        return Answer(400, error_body("Emulated invalid request.", param="messages"))
    model: str = body["model"]
    finish_reason = "stop"
    refusal: str | None = None
    content: str | None = _content(body, noise)
    if fault == "refusal":
        content, refusal = None, REFUSAL
    elif fault == "content_filter":
        content, finish_reason = None, "content_filter"
    elif fault == "invalid_json":
        content = (content or "")[: max(len(content or "") // 2, 1)] + " <not json"
    elif fault == "schema_mismatch":
        content = json.dumps({"unexpected": "emulated schema mismatch"})
    elif fault == "length":
        content = (content or "")[: len(content or "") // 2]
        finish_reason = "length"
    reasoning = reasoning_tokens(body)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int):
        # Reasoning comes first and counts against the budget: it can leave no answer at all.
        reasoning = min(reasoning, limit)
        if content is not None:
            content, cut = truncate_to_tokens(content, limit - reasoning, model)
            finish_reason = "length" if cut else finish_reason
    completion_tokens = reasoning + count_tokens(content or refusal or "", model)
    prompt = prompt_tokens(body["messages"], model)
    return Answer(
        200,
        {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time() if now is None else now),
            "model": model + MODEL_SUFFIX,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": refusal,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_emulator",
        },
    )
