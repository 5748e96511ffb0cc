"""What the package knows of each model: price, context window, and the body it accepts.

Prices are USD per million tokens for real-time calls, as OpenAI publishes
them; the Batch API costs half of both (OpenAI's batch price list, which
shows no cached-input price for batch, so prompt-cache discounts are not
assumed to stack with it). ``LLM_EXTRACT_PRICES`` overrides or extends the
table without a release. A name is priced only if it is in the table, or is
a dated snapshot of a name in it: a misspelt model is unknown, never priced
as its neighbour, and an unknown price is None, never $0.

Reasoning models (gpt-5, o-series) refuse what older models take: any
``temperature`` or ``top_p`` but the default, and ``max_tokens``. Their hidden
reasoning tokens are billed as output and count against
``max_completion_tokens``, so their requests ask for the lowest
``reasoning_effort`` the model accepts and add an allowance for reasoning to
the answer's budget. :func:`request_params` is the one place that shapes the
generation parameters of a body; the emulator refuses bodies by the same rules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class ModelInfo:
    context_window: int
    #: None: the price is unknown, and so is any cost computed with it.
    input_price: float | None
    output_price: float | None
    cached_input_price: float | None = None

    @property
    def priced(self) -> bool:
        return self.input_price is not None and self.output_price is not None


MODELS: dict[str, ModelInfo] = {
    "gpt-4o-mini": ModelInfo(128_000, 0.15, 0.60, 0.075),
    "gpt-4o": ModelInfo(128_000, 2.50, 10.00, 1.25),
    "gpt-4.1-nano": ModelInfo(1_047_576, 0.10, 0.40, 0.025),
    "gpt-4.1-mini": ModelInfo(1_047_576, 0.40, 1.60, 0.10),
    "gpt-4.1": ModelInfo(1_047_576, 2.00, 8.00, 0.50),
    "gpt-5-nano": ModelInfo(400_000, 0.05, 0.40, 0.005),
    "gpt-5-mini": ModelInfo(400_000, 0.25, 2.00, 0.025),
    "gpt-5": ModelInfo(400_000, 1.25, 10.00, 0.125),
    "gpt-5.1": ModelInfo(400_000, 1.25, 10.00, 0.125),
    "o4-mini": ModelInfo(200_000, 1.10, 4.40, 0.275),
    "o3-mini": ModelInfo(200_000, 1.10, 4.40, 0.55),
    "o3": ModelInfo(200_000, 2.00, 8.00, 0.50),
    "o1": ModelInfo(200_000, 15.00, 60.00, 7.50),
}

#: Assumed for unknown models: the smallest context above, and no price (cost unknown).
UNKNOWN_MODEL = ModelInfo(128_000, None, None)

#: OpenAI's snapshot suffixes: "gpt-4o-mini-2024-07-18", "gpt-4-0613".
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")
_warned_unknown: set[str] = set()


def table_name(model: str) -> str | None:
    """The price-table name of ``model``: itself, or the family of a dated snapshot."""
    if model in MODELS:
        return model
    return next(
        (
            name
            for name in MODELS
            if model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name) :])
        ),
        None,
    )


def model_info(model: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> ModelInfo:
    """The table entry for ``model``, with ``LLM_EXTRACT_PRICES`` applied.

    An unknown model is warned about once per process, with the setting that fixes it.
    """
    family = table_name(model)
    info = MODELS[family] if family else UNKNOWN_MODEL
    override = (overrides or {}).get(model) or (overrides or {}).get(family or "")
    if override:
        info = ModelInfo(
            context_window=int(override.get("context_window", info.context_window)),
            input_price=_price(override.get("input", info.input_price)),
            output_price=_price(override.get("output", info.output_price)),
            cached_input_price=_price(override.get("cached_input", info.cached_input_price)),
        )
    if not info.priced and model not in _warned_unknown:
        _warned_unknown.add(model)
        logger.warning(
            "Model %r is not in scrapy-llm-extract's price table, so its cost shows as unknown"
            " and its context window is taken as %d tokens. Check the name; if it is right, set"
            " LLM_EXTRACT_PRICES = {%r: {'input': ..., 'output': ..., 'context_window': ...}}"
            " (USD per million tokens, real-time prices).",
            model,
            info.context_window,
            model,
        )
    return info


def _price(value: Any) -> float | None:
    return None if value is None else float(value)


def cost_usd(
    info: ModelInfo,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    batch: bool = False,
) -> float | None:
    """What a call costs, None if the model's price is unknown.

    ``output_tokens`` is the API's ``completion_tokens``, which includes reasoning
    tokens. Cached input is billed at the cached price in real time only.
    """
    if info.input_price is None or info.output_price is None:
        return None
    if batch:
        total = input_tokens * info.input_price + output_tokens * info.output_price
        return total * BATCH_DISCOUNT / 1_000_000
    cached_price = (
        info.cached_input_price if info.cached_input_price is not None else info.input_price
    )
    fresh = input_tokens - cached_tokens
    total = (
        fresh * info.input_price + cached_tokens * cached_price + output_tokens * info.output_price
    )
    return total / 1_000_000


def add_costs(*costs: float | None) -> float | None:
    """A total of costs that is unknown as soon as one of them is."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def rounded_usd(cost: float | None) -> float | None:
    """A cost for the stats: to the micro-dollar, or None."""
    return None if cost is None else round(cost, 6)


def format_usd(cost: float | None) -> str:
    """A cost for tables and log lines: four decimals, or "unknown"."""
    return "unknown" if cost is None else f"{cost:.4f}"


# Request bodies ----------------------------------------------------------------------------

#: ``reasoning_effort`` values of OpenAI's API spec, lowest first.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: Output tokens added to LLM_EXTRACT_MAX_OUTPUT_TOKENS for reasoning, by effort. Generous on
#: purpose: only tokens used are billed, and a budget spent on reasoning leaves no answer.
REASONING_ALLOWANCE = {
    "none": 0,
    "minimal": 2_048,
    "low": 8_192,
    "medium": 16_384,
    "high": 32_768,
    "xhigh": 65_536,
    "max": 65_536,
}
#: Keys of a body that only the model's rules decide (dropped when a body changes model).
GENERATION_KEYS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "reasoning_effort",
)


@dataclass(frozen=True)
class RequestRules:
    """What a model family accepts in a chat-completions body."""

    reasoning: bool = False
    #: ``reasoning_effort`` values accepted, lowest first; empty: the parameter is refused.
    efforts: tuple[str, ...] = ()
    #: The effort the model uses when the body names none.
    default_effort: str | None = None


CLASSIC = RequestRules()
#: First match wins. Efforts per OpenAI's ReasoningEffort docs: gpt-5.1 and later take "none"
#: (their default) but not "minimal", and "xhigh" from gpt-5.2; earlier gpt-5 models take
#: "minimal" but not "none"; the o-series take "low" to "high"; o1-mini and o1-preview take no
#: reasoning_effort at all. gpt-4*, gpt-3.5 and gpt-5-chat models are not reasoning models.
FAMILIES: tuple[tuple[re.Pattern[str], RequestRules], ...] = (
    (re.compile(r"(gpt-4|gpt-3\.5|chatgpt-).*"), CLASSIC),
    (re.compile(r"gpt-5-chat(-.*)?"), CLASSIC),
    (
        re.compile(r"gpt-5\.1(-.*)?"),
        RequestRules(True, ("none", "low", "medium", "high"), "none"),
    ),
    (
        re.compile(r"gpt-5\.\d+(-.*)?"),
        RequestRules(True, ("none", "low", "medium", "high", "xhigh"), "none"),
    ),
    (
        re.compile(r"gpt-5(-.*)?"),
        RequestRules(True, ("minimal", "low", "medium", "high"), "medium"),
    ),
    (re.compile(r"o1-(mini|preview)(-.*)?"), RequestRules(True, (), "medium")),
    (
        re.compile(r"o[134](-.*)?"),
        RequestRules(True, ("low", "medium", "high"), "medium"),
    ),
)
#: A reasoning model that no pattern names (an Azure deployment, say): any effort is sent as set.
UNNAMED_REASONING = RequestRules(True, REASONING_EFFORTS, "medium")


#: OpenAI models served by the Responses API only, which neither chat completions nor their
#: batches reach: the pro, codex and deep-research models.
RESPONSES_ONLY = re.compile(
    r"((gpt-5(\.\d+)?|o1|o3)-pro|(gpt-5(\.\d+)?-)?codex|o\d(-mini)?-deep-research"
    r"|computer-use-preview)(-.*)?"
)


def chat_completions_problem(model: str) -> str | None:
    """Why ``model`` cannot answer this package's chat-completions requests, or None."""
    if RESPONSES_ONLY.fullmatch(model.removeprefix("ft:")):
        return (
            f"{model} is served by OpenAI's Responses API only, and this package sends chat"
            " completions (real time and Batch API): choose a chat model such as gpt-5-mini,"
            " gpt-5.1 or gpt-4.1-mini."
        )
    return None


def request_rules(model: str, reasoning_effort: str | None = None) -> RequestRules:
    """The rules of ``model``'s family; setting an effort marks an unnamed model as reasoning."""
    name = model.removeprefix("ft:")
    for pattern, rules in FAMILIES:
        if pattern.fullmatch(name):
            return rules
    return UNNAMED_REASONING if reasoning_effort is not None else CLASSIC


_warned_effort: set[tuple[str, str]] = set()


def request_params(
    model: str, max_output_tokens: int, reasoning_effort: str | None = None
) -> dict[str, Any]:
    """The generation parameters of a body for ``model``, in the order they are sent.

    Classic models: ``max_completion_tokens`` and ``temperature: 0``. Reasoning
    models: the effort asked for if the model takes it, else the nearest below it that the
    model takes (or its lowest), and ``max_completion_tokens`` raised by that effort's
    reasoning allowance.
    """
    rules = request_rules(model, reasoning_effort)
    if not rules.reasoning:
        return {"max_completion_tokens": max_output_tokens, "temperature": 0}
    effort = reasoning_effort
    if effort not in rules.efforts:
        effort = _nearest_effort(effort, rules.efforts)
        if reasoning_effort is not None and (model, reasoning_effort) not in _warned_effort:
            _warned_effort.add((model, reasoning_effort))
            logger.warning(
                "LLM_EXTRACT_REASONING_EFFORT = %r is not accepted by %s (it takes %s): sending"
                " %s instead. Set one of the values it takes to choose.",
                reasoning_effort,
                model,
                ", ".join(rules.efforts) or "no reasoning_effort",
                repr(effort) if effort else "none",
            )
    allowance = REASONING_ALLOWANCE[effort or rules.default_effort or "medium"]
    params: dict[str, Any] = {"max_completion_tokens": max_output_tokens + allowance}
    if effort is not None:
        params["reasoning_effort"] = effort
    return params


def _nearest_effort(asked: str | None, efforts: tuple[str, ...]) -> str | None:
    """The highest of ``efforts`` not above ``asked`` (their lowest when none is)."""
    if not efforts:
        return None
    rank = REASONING_EFFORTS.index(asked) if asked in REASONING_EFFORTS else -1
    below = [e for e in efforts if REASONING_EFFORTS.index(e) <= rank]
    return below[-1] if below else efforts[0]


def retarget(
    body: Mapping[str, Any],
    model: str,
    max_output_tokens: int,
    reasoning_effort: str | None = None,
) -> dict[str, Any]:
    """``body`` for another model (escalation), with that model's generation parameters."""
    kept = {key: value for key, value in body.items() if key not in GENERATION_KEYS}
    return {**kept, "model": model, **request_params(model, max_output_tokens, reasoning_effort)}
