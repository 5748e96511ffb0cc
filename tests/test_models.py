import logging

import pytest

from scrapy_llm_extract.models import (
    REASONING_ALLOWANCE,
    UNKNOWN_MODEL,
    add_costs,
    chat_completions_problem,
    cost_usd,
    format_usd,
    model_info,
    request_params,
    request_rules,
    retarget,
)


def test_dated_snapshots_find_their_family():
    assert model_info("gpt-4o-mini-2024-07-18") == model_info("gpt-4o-mini")
    assert model_info("gpt-4o-2024-08-06").input_price == 2.50
    assert model_info("gpt-5-nano-2025-08-07") == model_info("gpt-5-nano")
    assert model_info("o3-2025-04-16") == model_info("o3")


@pytest.mark.parametrize(
    "name", ["gpt-4o-mnni", "gpt-4o-mini-high", "gpt-4o2", "gpt-5-nano-latest", "someone-elses"]
)
def test_a_name_that_is_not_a_snapshot_is_unknown_not_its_neighbour(name):
    assert model_info(name) == UNKNOWN_MODEL


def test_an_unknown_model_is_warned_about_once_and_costs_unknown(caplog):
    # Warnings are once per process: no other test may look this name up.
    with caplog.at_level(logging.WARNING, logger="scrapy_llm_extract.models"):
        info = model_info("gpt-4o-mnii")
        model_info("gpt-4o-mnii")
    assert [r.getMessage() for r in caplog.records] == [
        "Model 'gpt-4o-mnii' is not in scrapy-llm-extract's price table, so its cost shows as"
        " unknown and its context window is taken as 128000 tokens. Check the name; if it is"
        " right, set LLM_EXTRACT_PRICES = {'gpt-4o-mnii': {'input': ..., 'output': ...,"
        " 'context_window': ...}} (USD per million tokens, real-time prices)."
    ]
    assert cost_usd(info, 1000, 10) is None
    assert cost_usd(info, 1000, 10, batch=True) is None
    assert format_usd(cost_usd(info, 1000, 10)) == "unknown"


def test_a_priced_override_makes_an_unknown_model_known_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="scrapy_llm_extract.models"):
        info = model_info("my-deployment", {"my-deployment": {"input": 2, "output": 4}})
    assert caplog.records == []
    assert cost_usd(info, 1_000_000, 1_000_000) == pytest.approx(6.0)


def test_a_total_with_one_unknown_cost_is_unknown():
    assert add_costs(0.5, 0.25) == 0.75
    assert add_costs(0.5, None, 0.25) is None
    assert format_usd(add_costs()) == "0.0000"


def test_batch_is_half_price_and_ignores_the_cache_discount():
    # gpt-4.1-mini: input 0.40, cached input 0.10, output 1.60 per million.
    info = model_info("gpt-4.1-mini")
    realtime = cost_usd(info, 1_000_000, 1_000_000)
    assert realtime == pytest.approx(2.00)
    assert cost_usd(info, 1_000_000, 1_000_000, batch=True) == pytest.approx(realtime / 2)
    assert cost_usd(info, 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.10)
    # Batch with all input cached: half the full input price (0.20); not the cached price
    # (0.10, "cache discount instead of batch"), nor both discounts (0.05).
    cached_batch = cost_usd(info, 1_000_000, 0, cached_tokens=1_000_000, batch=True)
    assert cached_batch == pytest.approx(0.20)


def test_price_overrides():
    overrides = {"gpt-4o-mini": {"input": 1.0}, "my-deployment": {"input": 2, "output": 4}}
    assert model_info("gpt-4o-mini", overrides).input_price == 1.0
    assert model_info("gpt-4o-mini", overrides).output_price == 0.60
    assert model_info("my-deployment", overrides).output_price == 4


# Request bodies: one row per family.
CLASSIC = {"max_completion_tokens": 1000, "temperature": 0}


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("gpt-4o-mini", CLASSIC),
        ("gpt-4.1-2025-04-14", CLASSIC),
        ("gpt-5-chat-latest", CLASSIC),
        (
            "gpt-5-nano",
            {
                "max_completion_tokens": 1000 + REASONING_ALLOWANCE["minimal"],
                "reasoning_effort": "minimal",
            },
        ),
        (
            "gpt-5-mini-2025-08-07",
            {
                "max_completion_tokens": 1000 + REASONING_ALLOWANCE["minimal"],
                "reasoning_effort": "minimal",
            },
        ),
        ("gpt-5.1", {"max_completion_tokens": 1000, "reasoning_effort": "none"}),
        (
            "o3",
            {"max_completion_tokens": 1000 + REASONING_ALLOWANCE["low"], "reasoning_effort": "low"},
        ),
        (
            "o4-mini-2025-04-16",
            {"max_completion_tokens": 1000 + REASONING_ALLOWANCE["low"], "reasoning_effort": "low"},
        ),
        ("o1-mini", {"max_completion_tokens": 1000 + REASONING_ALLOWANCE["medium"]}),
    ],
)
def test_each_family_gets_the_lowest_effort_it_takes_and_room_to_reason(model, params):
    assert request_params(model, 1000) == params


def test_a_chosen_effort_is_sent_when_the_model_takes_it():
    assert request_params("gpt-5-mini", 500, "high") == {
        "max_completion_tokens": 500 + REASONING_ALLOWANCE["high"],
        "reasoning_effort": "high",
    }
    # Classic models take no reasoning_effort, whatever the setting.
    assert request_params("gpt-4o-mini", 500, "high") == {
        "max_completion_tokens": 500,
        "temperature": 0,
    }


def test_an_effort_the_model_refuses_is_replaced_by_its_lowest_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="scrapy_llm_extract.models"):
        assert request_params("o3", 100, "minimal")["reasoning_effort"] == "low"
        request_params("o3", 100, "minimal")
    assert [r.getMessage() for r in caplog.records] == [
        "LLM_EXTRACT_REASONING_EFFORT = 'minimal' is not accepted by o3 (it takes low, medium,"
        " high): sending 'low' instead. Set one of the values it takes to choose."
    ]


def test_an_effort_the_model_refuses_becomes_the_nearest_below_it_takes():
    assert request_params("gpt-5.1", 100, "xhigh")["reasoning_effort"] == "high"
    assert request_params("gpt-5.2", 100, "xhigh")["reasoning_effort"] == "xhigh"
    assert request_params("gpt-5.1", 100, "minimal")["reasoning_effort"] == "none"
    assert request_params("gpt-5-mini", 100, "max")["reasoning_effort"] == "high"
    assert request_params("gpt-5-mini", 100, "none")["reasoning_effort"] == "minimal"


@pytest.mark.parametrize(
    ("model", "chat"),
    [
        ("gpt-5-pro", False),
        ("gpt-5.2-pro-2025-12-11", False),
        ("o3-pro", False),
        ("o1-pro", False),
        ("gpt-5-codex", False),
        ("gpt-5.1-codex-max", False),
        ("codex-mini-latest", False),
        ("o4-mini-deep-research", False),
        ("o3-deep-research-2025-06-26", False),
        ("computer-use-preview", False),
        ("gpt-5", True),
        ("gpt-5.1", True),
        ("gpt-5-mini", True),
        ("o3", True),
        ("gpt-4.1-mini", True),
        ("my-pro-deployment", True),
    ],
)
def test_models_only_the_responses_api_serves_are_named(model, chat):
    problem = chat_completions_problem(model)
    assert (problem is None) is chat
    if problem:
        assert "Responses API only" in problem and "gpt-5-mini" in problem


def test_an_effort_marks_a_deployment_whose_name_hides_the_family_as_reasoning():
    assert request_rules("prod-extractor").reasoning is False
    assert request_params("prod-extractor", 100, "low") == {
        "max_completion_tokens": 100 + REASONING_ALLOWANCE["low"],
        "reasoning_effort": "low",
    }


def test_retarget_gives_a_body_the_generation_parameters_of_its_new_model():
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 300,
        "temperature": 0,
    }
    moved = retarget(body, "gpt-5-nano", 300)
    assert moved == {
        "model": "gpt-5-nano",
        "messages": body["messages"],
        "response_format": body["response_format"],
        "max_completion_tokens": 300 + REASONING_ALLOWANCE["minimal"],
        "reasoning_effort": "minimal",
    }
    assert retarget(moved, "gpt-4o", 300) == {**body, "model": "gpt-4o"}
