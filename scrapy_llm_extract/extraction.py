"""From a scraped item to an extraction request: schema, slimming, budget.

This is the part of the pipeline that does not depend on the path an item
takes, kept apart from the Scrapy glue so it can be tested on plain items.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.utils.misc import load_object

from .config import Config
from .items import input_fields
from .prompt import ExtractionRequest, NoRoomForPage, RequestBuilder
from .schema import SchemaError, item_class_schema, schema_name, strict_schema
from .slim import slim_page, without_surrogates

if TYPE_CHECKING:
    from .workers import PrepareWorkers


@dataclass(frozen=True)
class ExtractionSchema:
    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """An item ready for either path."""

    request: ExtractionRequest
    schema: ExtractionSchema
    url: str | None


class InvalidInput(ValueError):
    """The item cannot be extracted; ``kind`` names why (used in stats)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str]]:
        # Raised in worker processes too: keep both arguments across pickling.
        return type(self), (self.kind, str(self))


def build_request(
    builder: RequestBuilder, source: str | bytes, url: str | None, schema: ExtractionSchema
) -> ExtractionRequest:
    """Slim the page and build its request: the CPU-heavy step, run inline or in a worker."""
    page = slim_page(source, url=url)
    if page.not_text:
        raise InvalidInput("not_text", page.not_text)
    if not page.structured and not page.text:
        raise InvalidInput("empty_page", "the page has no text or structured data")
    try:
        request = builder.build(page, url=url, schema=schema.schema, schema_name=schema.name)
    except NoRoomForPage as exc:
        raise InvalidInput("no_room", str(exc)) from None
    if page.fallback:
        request = replace(request, slim_fallback=True)
    _ = request.body_json  # serialised here (cached), so a worker sends the JSON back ready
    return request


class Preparer:
    """Turns items into requests; the schema of each item class is built once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.builder = RequestBuilder(config)
        self._schemas: dict[type, ExtractionSchema] = {}
        self._configured = self._configured_schema()

    def _configured_schema(self) -> ExtractionSchema | None:
        configured = self.config.schema
        if configured is None:
            return None
        if isinstance(configured, str):
            item_class = load_object(configured)
            return self._from_item_class(item_class)
        if isinstance(configured, dict):
            return ExtractionSchema(
                schema_name(str(configured.get("title") or "extraction")),
                strict_schema(configured, exclude=input_fields(self.config)),
            )
        raise SchemaError(
            f"LLM_EXTRACT_SCHEMA must be a JSON Schema dict or an import path, got {configured!r}."
        )

    def _from_item_class(self, item_class: type) -> ExtractionSchema:
        schema = strict_schema(item_class_schema(item_class), exclude=input_fields(self.config))
        return ExtractionSchema(schema_name(item_class.__name__), schema)

    def schema_for(self, item: Any) -> ExtractionSchema:
        """LLM_EXTRACT_SCHEMA if set, else the schema of the item's class."""
        if self._configured is not None:
            return self._configured
        item_class = type(item)
        if item_class not in self._schemas:
            self._schemas[item_class] = self._from_item_class(item_class)
        return self._schemas[item_class]

    def has_source(self, adapter: ItemAdapter) -> bool:
        return adapter.get(self.config.source_field) is not None

    def inputs(self, adapter: ItemAdapter) -> tuple[str | bytes, str | None, ExtractionSchema]:
        """The page, URL and schema of an item; InvalidInput when the page is not text."""
        source = adapter.get(self.config.source_field)
        if not isinstance(source, str | bytes):
            raise InvalidInput(
                "source_type",
                f"{self.config.source_field!r} holds a {type(source).__name__}, not str or bytes",
            )
        url = adapter.get(self.config.url_field)
        url = without_surrogates(str(url)) if url is not None else None
        return source, url, self.schema_for(adapter.item)

    def prepare(self, adapter: ItemAdapter) -> Prepared:
        """Slim the page and build its request; raise InvalidInput when there is nothing to send."""
        source, url, schema = self.inputs(adapter)
        return Prepared(build_request(self.builder, source, url, schema), schema, url)

    async def prepare_async(self, adapter: ItemAdapter, workers: PrepareWorkers) -> Prepared:
        """prepare(), slimming and counting in the worker processes when they are up."""
        source, url, schema = self.inputs(adapter)
        request = await workers.build(self.builder, source, url, schema)
        return Prepared(request, schema, url)
