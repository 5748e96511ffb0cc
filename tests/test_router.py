from datetime import UTC, datetime, timedelta

import pytest
import scrapy

from scrapy_llm_extract.router import (
    BATCH,
    REALTIME,
    DefaultRouter,
    checked_route,
    resolve_router,
    timestamp_age,
)

from .helpers import make_config

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def router(**settings):
    return DefaultRouter(make_config(**settings), clock=lambda: NOW)


@pytest.mark.parametrize("priority", ["high", "HIGH", " High "])
def test_high_priority_goes_real_time(priority):
    assert router()({"priority": priority}, None) == REALTIME


@pytest.mark.parametrize("priority", [None, "low", "higher", 1])
def test_other_priorities_go_to_batch(priority):
    assert router()({"priority": priority}, None) == BATCH


@pytest.mark.parametrize(
    "timestamp",
    [
        NOW - timedelta(seconds=10),
        (NOW - timedelta(seconds=10)).replace(tzinfo=None),
        (NOW - timedelta(seconds=10)).timestamp(),
        (NOW - timedelta(seconds=10)).isoformat(),
        "2026-11-25T11:59:50Z",
    ],
)
def test_fresh_timestamps_go_real_time(timestamp):
    assert router()({"timestamp": timestamp}, None) == REALTIME


@pytest.mark.parametrize("timestamp", [NOW - timedelta(seconds=301), "not a date", [1]])
def test_old_or_unreadable_timestamps_go_to_batch(timestamp):
    assert router()({"timestamp": timestamp}, None) == BATCH


def test_max_age_and_field_names_are_settings():
    custom = router(
        LLM_EXTRACT_REALTIME_MAX_AGE=30,
        LLM_EXTRACT_TIMESTAMP_FIELD="listed_at",
        LLM_EXTRACT_PRIORITY_FIELD="urgency",
    )
    assert custom({"listed_at": NOW - timedelta(seconds=20)}, None) == REALTIME
    assert custom({"listed_at": NOW - timedelta(seconds=40)}, None) == BATCH
    assert custom({"urgency": "high"}, None) == REALTIME
    assert custom({"priority": "high"}, None) == BATCH


def test_timestamp_age():
    assert timestamp_age(NOW, NOW) == 0
    assert timestamp_age(None, NOW) is None


def always_skip(item, spider):
    return "skip"


class RoutedSpider(scrapy.Spider):
    name = "routed"

    def llm_extract_router(self, item, spider):
        return "realtime"


def test_custom_routers_by_setting_import_path_and_spider_attribute():
    assert resolve_router(make_config(LLM_EXTRACT_ROUTER=always_skip), None)({}, None) == "skip"
    by_path = make_config(LLM_EXTRACT_ROUTER="tests.test_router.always_skip")
    assert resolve_router(by_path, None)({}, None) == "skip"
    spider = RoutedSpider()
    assert resolve_router(by_path, spider)({}, spider) == "realtime"
    assert isinstance(resolve_router(make_config(), scrapy.Spider("plain")), DefaultRouter)


def test_router_answers_are_checked():
    assert checked_route("batch") == "batch"
    with pytest.raises(ValueError, match="LLM_EXTRACT_ROUTER"):
        checked_route("later")
