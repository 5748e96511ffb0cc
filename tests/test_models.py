import pytest

from scrapy_llm_extract.models import UNKNOWN_MODEL, cost_usd, model_info


def test_dated_snapshots_find_their_family():
    assert model_info("gpt-4o-mini-2024-07-18") == model_info("gpt-4o-mini")
    assert model_info("gpt-4o-2024-08-06").input_price == 2.50
    assert model_info("someone-elses-model") == UNKNOWN_MODEL


def test_batch_is_half_price_and_ignores_the_cache_discount():
    info = model_info("gpt-4o-mini")
    realtime = cost_usd(info, 1_000_000, 1_000_000)
    assert realtime == pytest.approx(0.75)
    assert cost_usd(info, 1_000_000, 1_000_000, batch=True) == pytest.approx(realtime / 2)
    assert cost_usd(info, 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.075)
    assert cost_usd(info, 1_000_000, 0, cached_tokens=1_000_000, batch=True) == pytest.approx(0.075)


def test_price_overrides():
    overrides = {"gpt-4o-mini": {"input": 1.0}, "my-deployment": {"input": 2, "output": 4}}
    assert model_info("gpt-4o-mini", overrides).input_price == 1.0
    assert model_info("gpt-4o-mini", overrides).output_price == 0.60
    assert model_info("my-deployment", overrides).output_price == 4
