import dataclasses
import datetime
import json

import pydantic
import scrapy
from itemadapter import ItemAdapter
from scrapy.utils.serialize import ScrapyJSONEncoder

from scrapy_llm_extract.items import (
    class_path,
    input_fields,
    item_record,
    merge_extracted,
    rebuild_item,
)

from .helpers import make_config


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    extracted = scrapy.Field()


@dataclasses.dataclass
class Listing:
    url: str
    title: str | None = None
    html: str | None = None


def test_input_fields_follow_the_settings():
    config = make_config(LLM_EXTRACT_OUTPUT_FIELD="extracted")
    assert set(input_fields(config)) == {
        "html",
        "url",
        "priority",
        "timestamp",
        "llm_extract_error",
        "extracted",
        "llm_extract_row_id",  # set by collect-batches: asking the model for it costs tokens
    }


def test_merge_into_the_item_drops_the_page():
    item = Product(url="u", html="<html>", title=None)
    rejected = merge_extracted(ItemAdapter(item), {"title": "Mug", "price": 3.5}, make_config())
    assert rejected == []
    assert dict(item) == {"url": "u", "title": "Mug", "price": 3.5}


def test_merge_reports_fields_the_item_cannot_take():
    item = Product(url="u", html="<html>")
    rejected = merge_extracted(ItemAdapter(item), {"title": "Mug", "colour": "blue"}, make_config())
    assert rejected == ["colour"]
    assert item["title"] == "Mug"


def test_merge_under_output_field_and_keep_source():
    config = make_config(LLM_EXTRACT_OUTPUT_FIELD="extracted", LLM_EXTRACT_KEEP_SOURCE=True)
    item = {"url": "u", "html": "<html>"}
    merge_extracted(ItemAdapter(item), {"title": "Mug"}, config)
    assert item == {"url": "u", "html": "<html>", "extracted": {"title": "Mug"}}


def test_record_round_trip_keeps_the_class_and_leaves_the_page_out():
    config = make_config()
    for item in (Product(url="u", html="<p>", title="T"), Listing(url="u", html="<p>", title="T")):
        record = json.loads(json.dumps(item_record(item, config), cls=ScrapyJSONEncoder))
        assert record["item_class"] == class_path(item)
        assert "html" not in record["fields"]
        rebuilt = rebuild_item(record)
        assert type(rebuilt) is type(item)
        assert ItemAdapter(rebuilt)["title"] == "T"
        assert ItemAdapter(rebuilt).get("html") is None


def test_unimportable_or_changed_classes_come_back_as_dicts(caplog):
    record = {"item_class": "nowhere.module:Gone", "fields": {"title": "T"}}
    assert rebuild_item(record) == {"title": "T"}
    assert rebuild_item(record) == {"title": "T"}
    assert caplog.text.count("cannot be imported") == 1  # said once per class, not per row
    changed = {"item_class": class_path(Product()), "fields": {"title": "T", "removed": 1}}
    assert rebuild_item(changed) == {"title": "T", "removed": 1}
    assert rebuild_item({"item_class": "builtins:dict", "fields": {"a": 1}}) == {"a": 1}


@dataclasses.dataclass
class DCProduct:
    url: str
    html: str
    title: str | None = None


def test_dataclasses_with_a_required_page_rebuild_as_their_class():
    config = make_config()
    item = DCProduct(url="u", html="<p>page</p>", title="T")
    record = json.loads(json.dumps(item_record(item, config), cls=ScrapyJSONEncoder))
    rebuilt = rebuild_item(record)
    assert rebuilt == DCProduct(url="u", html=None, title="T")  # type: ignore[arg-type]


class PydanticProduct(pydantic.BaseModel):
    url: str
    html: str
    seen_at: datetime.datetime | None = None
    title: str | None = None


def test_pydantic_items_with_a_required_page_rebuild_as_their_class_with_typed_fields():
    config = make_config()
    seen = datetime.datetime(2026, 11, 30, 12, 0)
    item = PydanticProduct(url="u", html="<p>page</p>", seen_at=seen, title="T")
    record = json.loads(json.dumps(item_record(item, config), cls=ScrapyJSONEncoder))
    rebuilt = rebuild_item(record)
    assert isinstance(rebuilt, PydanticProduct)
    assert ItemAdapter(rebuilt).asdict() == {
        "url": "u",
        "html": None,
        "seen_at": seen,
        "title": "T",
    }
    # A spooled value the class no longer accepts: a dict, as for any class that refuses it.
    record["fields"]["seen_at"] = "not a date"
    assert rebuild_item(record)["seen_at"] == "not a date"


def test_bytes_in_any_field_come_back_as_bytes():
    config = make_config()
    item = {"url": "u", "html": "<p>", "raw": b"\xff\x00", "list": [b"a", {"b": b"c"}]}
    record = json.loads(json.dumps(item_record(item, config)))
    assert rebuild_item(record) == {"url": "u", "raw": b"\xff\x00", "list": [b"a", {"b": b"c"}]}
