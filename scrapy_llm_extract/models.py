"""What the package knows of each model: context window and price.

Prices are USD per million tokens for real-time calls, as OpenAI publishes
them; the Batch API costs half of both (OpenAI's batch price list, which
shows no cached-input price for batch, so prompt-cache discounts are not
assumed to stack with it). ``LLM_EXTRACT_PRICES`` overrides or extends the
table without a release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class ModelInfo:
    context_window: int
    input_price: float
    output_price: float
    cached_input_price: float | None = None


#: Longest prefix wins, so dated snapshots ("gpt-4o-mini-2024-07-18") find their family.
MODELS: dict[str, ModelInfo] = {
    "gpt-4o-mini": ModelInfo(128_000, 0.15, 0.60, 0.075),
    "gpt-4o": ModelInfo(128_000, 2.50, 10.00, 1.25),
    "gpt-4.1-nano": ModelInfo(1_047_576, 0.10, 0.40, 0.025),
    "gpt-4.1-mini": ModelInfo(1_047_576, 0.40, 1.60, 0.10),
    "gpt-4.1": ModelInfo(1_047_576, 2.00, 8.00, 0.50),
    "gpt-5-nano": ModelInfo(400_000, 0.05, 0.40, 0.005),
    "gpt-5-mini": ModelInfo(400_000, 0.25, 2.00, 0.025),
    "gpt-5": ModelInfo(400_000, 1.25, 10.00, 0.125),
}

#: Assumed for unknown models: the smallest context above, and no price (cost reads 0).
UNKNOWN_MODEL = ModelInfo(128_000, 0.0, 0.0)


def model_info(model: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> ModelInfo:
    """The table entry for ``model``, with ``LLM_EXTRACT_PRICES`` applied."""
    family = max((name for name in MODELS if model.startswith(name)), key=len, default=None)
    info = MODELS[family] if family else UNKNOWN_MODEL
    override = (overrides or {}).get(model) or (overrides or {}).get(family or "")
    if override:
        info = ModelInfo(
            context_window=int(override.get("context_window", info.context_window)),
            input_price=float(override.get("input", info.input_price)),
            output_price=float(override.get("output", info.output_price)),
            cached_input_price=override.get("cached_input", info.cached_input_price),
        )
    return info


def cost_usd(
    info: ModelInfo,
    input_tokens: int,
    output_tokens: int,
    *,
    cached_tokens: int = 0,
    batch: bool = False,
) -> float:
    """What a call costs; cached input is billed at the cached price in real time only."""
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
