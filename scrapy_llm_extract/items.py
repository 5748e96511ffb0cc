"""Items in and out: reading the page, merging results, and rebuilding spooled items.

The spool keeps each item as a record (its class path and fields, without
the bulky page) so that ``scrapy collect-batches`` can rebuild the same kind
of item a day later, in another process, and hand it to the project's
pipelines as if the crawl had produced it.
"""

from __future__ import annotations

import base64
import functools
import inspect
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
        config.source_info_field,
        config.row_id_field,
    )
    return tuple(name for name in names if name)


def set_field(adapter: ItemAdapter, name: str, value: Any) -> bool:
    """Set ``name`` if the item type accepts it; say whether it did."""
    try:
        adapter[name] = value
    except KeyError:
        return False
    return True


def accepts_field(adapter: ItemAdapter, name: str) -> bool:
    """Whether the item's type has a field ``name`` (any name for a dict)."""
    names = ItemAdapter.get_field_names_from_class(type(adapter.item))
    return names is None or name in names


def missing_error_field(adapter: ItemAdapter, config: Config) -> str | None:
    """A warning when the item's type cannot hold LLM_EXTRACT_ERROR_FIELD, else None."""
    name = config.error_field
    if accepts_field(adapter, name):
        return None
    consequence = (
        "real-time failures, which LLM_EXTRACT_REALTIME_FALLBACK = 'error' passes on,"
        " will look like unextracted items"
        if config.realtime_fallback == "error"
        else "items that cannot be extracted pass on unmarked"
    )
    return (
        f"{type(adapter.item).__name__} has no field {name!r} (LLM_EXTRACT_ERROR_FIELD):"
        f" {consequence}. Add {name} = scrapy.Field() to it, or set LLM_EXTRACT_ERROR_FIELD"
        " to a field it has."
    )


def no_source_warning(cls: type, config: Config) -> str:
    """What to say about items of ``cls`` that arrive without the page."""
    name = config.source_field
    return (
        f"A {cls.__name__} item has no {name!r} field (LLM_EXTRACT_SOURCE_FIELD), so it passes"
        " on unextracted (counted in llm_extract/skipped/no_source). Put the page in"
        f" {name!r}, or set LLM_EXTRACT_SOURCE_FIELD to the field that holds it."
    )


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


#: Key of the one-key object that stands for a bytes value in a spooled record.
BYTES_TAG = "__llm_extract_bytes__"


def _to_record(value: Any) -> Any:
    """``value`` with its bytes, at any depth, as ``{BYTES_TAG: base64}`` (JSON has no bytes)."""
    if isinstance(value, bytes | bytearray):
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {key: _to_record(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_to_record(inner) for inner in value]
    if ItemAdapter.is_item(value):
        return _to_record(ItemAdapter(value).asdict())
    return value


def _from_record(value: Any) -> Any:
    """Inverse of :func:`_to_record` on a record read back from JSON."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_TAG), str):
            return base64.b64decode(value[BYTES_TAG])
        return {key: _from_record(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_from_record(inner) for inner in value]
    return value


def item_record(item: Any, config: Config) -> dict[str, Any]:
    """What the sidecar keeps of an item: its class and fields, without the page.

    Bytes are tagged so that :func:`rebuild_item` gives them back as bytes; text
    with lone surrogates survives the sidecar's JSON as escapes.
    """
    fields = {
        name: _to_record(value)
        for name, value in ItemAdapter(item).asdict().items()
        if name != config.source_field
    }
    return {"item_class": class_path(item), "fields": fields}


def _required_parameters(cls: type) -> tuple[str, ...]:
    """Constructor arguments without a default (a dataclass's ``html: str``, say)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


@functools.cache
def _item_class(path: str) -> tuple[type, tuple[str, ...]] | None:
    """The class at ``path`` and its required arguments; None (said once) when not importable.

    Once per class path: the import and the signature cost more than the rest of a
    rebuild, and collect-batches rebuilds every row of a run.
    """
    module, _, qualname = path.partition(":")
    try:
        cls = load_object(f"{module}.{qualname}")
    except (ImportError, AttributeError, ValueError, NameError):
        logger.warning(
            "Item class %s cannot be imported here; rebuilding its items as dicts. Run"
            " scrapy collect-batches from the project that crawled them.",
            path,
        )
        return None
    return cls, _required_parameters(cls)


def _rebuild_pydantic(cls: type, fields: dict[str, Any], missing: dict[str, None]) -> Any:
    """A pydantic item whose required page field was left out of the spool: its spooled
    fields validated one by one (datetimes and decimals come back typed), the missing ones
    None, as for other item classes. None when ``cls`` is no pydantic model or a field fails."""
    construct = getattr(cls, "model_construct", None)
    validator = getattr(cls, "__pydantic_validator__", None)
    if construct is None or validator is None:
        return None
    item = construct(**missing)
    try:
        for name, value in fields.items():
            validator.validate_assignment(item, name, value)
    except ValueError:
        return None
    return item


def rebuild_item(record: Mapping[str, Any]) -> Any:
    """The item a sidecar record describes, of its original class when importable.

    Required constructor arguments the record lacks (the page, left out of the
    spool, or a field added since) are passed as None (set without validation on a
    pydantic model, which would refuse None for ``html: str``).
    """
    fields = _from_record(dict(record.get("fields") or {}))
    path = record.get("item_class") or "builtins:dict"
    found = _item_class(path)
    if found is None or found[0] is dict:
        return fields
    cls, required = found
    missing = {name: None for name in required if name not in fields}
    try:
        return cls(**fields, **missing)
    except (TypeError, KeyError, ValueError) as exc:
        if (rebuilt := _rebuild_pydantic(cls, fields, missing)) is not None:
            return rebuilt
        logger.warning(
            "Could not rebuild a %s from its spooled fields (%s); passing it on as a dict.",
            path,
            exc,
        )
        return fields
