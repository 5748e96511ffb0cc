"""Items in and out: reading the page, merging results, and rebuilding spooled items.

The spool keeps each item as a record (its class path and fields, without
the bulky page) so that ``scrapy collect-batches`` can rebuild the same kind
of item a day later, in another process, and hand it to the project's
pipelines as if the crawl had produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from itemadapter import ItemAdapter
from scrapy.utils.misc import load_object

from .config import Config

logger = logging.getLogger(__name__)


def input_fields(config: Config) -> tuple[str, ...]:
    """Fields that feed extraction or routing and are never asked of the model."""
    names = (
        config.source_field,
        config.url_field,
        config.priority_field,
        config.timestamp_field,
        config.error_field,
        config.output_field,
    )
    return tuple(name for name in names if name)


def set_field(adapter: ItemAdapter, name: str, value: Any) -> bool:
    """Set ``name`` if the item type accepts it; say whether it did."""
    try:
        adapter[name] = value
    except KeyError:
        return False
    return True


def merge_extracted(adapter: ItemAdapter, fields: Mapping[str, Any], config: Config) -> list[str]:
    """Put extracted ``fields`` into the item; return the names the item could not take."""
    if config.output_field:
        if set_field(adapter, config.output_field, dict(fields)):
            rejected = []
        else:
            rejected = [config.output_field]
    else:
        rejected = [name for name, value in fields.items() if not set_field(adapter, name, value)]
    if not config.keep_source and config.source_field in adapter:
        del adapter[config.source_field]
    return rejected


def class_path(item: Any) -> str:
    cls = type(item)
    return f"{cls.__module__}:{cls.__qualname__}"


def item_record(item: Any, config: Config) -> dict[str, Any]:
    """What the sidecar keeps of an item: its class and fields, without the page."""
    fields = {
        name: value
        for name, value in ItemAdapter(item).asdict().items()
        if name != config.source_field
    }
    return {"item_class": class_path(item), "fields": fields}


def rebuild_item(record: Mapping[str, Any]) -> Any:
    """The item a sidecar record describes, of its original class when importable."""
    fields = dict(record.get("fields") or {})
    path = record.get("item_class") or "builtins:dict"
    module, _, qualname = path.partition(":")
    try:
        cls = load_object(f"{module}.{qualname}")
    except (ImportError, AttributeError, ValueError, NameError):
        logger.warning(
            "Item class %s cannot be imported here; rebuilding the item as a dict. Run"
            " scrapy collect-batches from the project that crawled it.",
            path,
        )
        return fields
    if cls is dict:
        return fields
    try:
        return cls(**fields)
    except (TypeError, KeyError, ValueError) as exc:
        logger.warning(
            "Could not rebuild a %s from its spooled fields (%s); passing it on as a dict.",
            path,
            exc,
        )
        return fields
