"""Which path an item takes: ``realtime``, ``batch`` (the default) or ``skip``.

Real time costs twice the batch price, so it is the exception: an item is
urgent when its priority field says ``high`` or when it carries a timestamp
younger than ``LLM_EXTRACT_REALTIME_MAX_AGE``. A project can replace the rule
with ``LLM_EXTRACT_ROUTER`` or, per spider, an ``llm_extract_router``
attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from itemadapter import ItemAdapter
from scrapy.utils.misc import load_object

from .config import ROUTES, Config

REALTIME = "realtime"
BATCH = "batch"
SKIP = "skip"


def timestamp_age(value: Any, now: datetime) -> float | None:
    """Seconds since ``value`` (datetime, epoch seconds or ISO 8601), None if unreadable."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        return None
    return (now - moment).total_seconds()


class DefaultRouter:
    """Real time for high priority or fresh items; batch for the rest."""

    def __init__(self, config: Config, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))

    def __call__(self, item: Any, spider: Any) -> str:
        adapter = ItemAdapter(item)
        priority = adapter.get(self.config.priority_field)
        if isinstance(priority, str) and priority.strip().lower() == "high":
            return REALTIME
        age = timestamp_age(adapter.get(self.config.timestamp_field), self.clock())
        if age is not None and age < self.config.realtime_max_age:
            return REALTIME
        return BATCH


def resolve_router(config: Config, spider: Any) -> Callable[[Any, Any], str]:
    """The spider's ``llm_extract_router``, else LLM_EXTRACT_ROUTER, else the default rule."""
    custom = getattr(spider, "llm_extract_router", None) or config.router
    if isinstance(custom, str):
        custom = load_object(custom)
    return custom or DefaultRouter(config)


def checked_route(route: Any) -> str:
    """Refuse a router answer outside ``ROUTES`` with a message that says where it came from."""
    if route not in ROUTES:
        raise ValueError(
            f"The LLM_EXTRACT_ROUTER / llm_extract_router callable returned {route!r};"
            f" it must return one of {', '.join(ROUTES)}."
        )
    return str(route)
