import dataclasses

import attrs
import pydantic
import pytest
import scrapy

from scrapy_llm_extract.schema import (
    SchemaError,
    conforms,
    item_class_schema,
    response_format,
    schema_name,
    strict_schema,
    validation_errors,
)

INPUTS = ("html", "url", "priority")


class ScrapyProduct(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    priority = scrapy.Field()
    title = scrapy.Field(json_schema_extra={"type": "string", "description": "Product name"})
    price = scrapy.Field(json_schema_extra={"type": "number", "minimum": 0})
    sku = scrapy.Field()


@dataclasses.dataclass
class DataclassProduct:
    url: str
    html: str | None = None
    title: str | None = None
    price: float | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


@attrs.define
class AttrsProduct:
    url: str
    html: str | None = None
    title: str | None = None
    in_stock: bool | None = None


class PydanticProduct(pydantic.BaseModel):
    url: str
    html: str | None = None
    title: str = pydantic.Field(description="Product name", max_length=200)
    price: float | None = None


def assert_strict(schema):
    """OpenAI strict mode: every object closed and fully required, nulls allowed."""
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            assert_strict(option)
        return
    if "properties" in schema:
        assert schema["additionalProperties"] is False
        assert schema["required"] == list(schema["properties"])
        for prop in schema["properties"].values():
            assert_strict(prop)
            assert "null" in (
                [prop["type"]] if isinstance(prop.get("type"), str) else prop.get("type", [])
            ) or any(option.get("type") == "null" for option in prop.get("anyOf", []))
    for keyword in ("format", "pattern", "minimum", "maxLength", "default", "title"):
        assert keyword not in schema
    if "items" in schema:
        assert_strict(schema["items"])


@pytest.mark.parametrize(
    ("item_class", "expected"),
    [
        (ScrapyProduct, ["title", "price", "sku"]),
        (DataclassProduct, ["title", "price", "tags"]),
        (AttrsProduct, ["title", "in_stock"]),
        (PydanticProduct, ["title", "price"]),
    ],
)
def test_item_classes_give_strict_schemas_without_input_fields(item_class, expected):
    schema = strict_schema(item_class_schema(item_class), exclude=INPUTS)
    assert list(schema["properties"]) == expected
    assert schema["type"] == "object"
    assert_strict(schema)


def test_field_metadata_is_kept_and_untyped_fields_become_nullable_strings():
    schema = strict_schema(item_class_schema(ScrapyProduct), exclude=INPUTS)
    assert schema["properties"]["title"] == {
        "type": ["string", "null"],
        "description": "Product name",
    }
    assert schema["properties"]["price"] == {"type": ["number", "null"]}
    assert schema["properties"]["sku"] == {"type": ["string", "null"]}


def test_nested_objects_enums_and_unions_are_made_strict():
    schema = strict_schema(
        {
            "type": "object",
            "properties": {
                "offer": {
                    "type": "object",
                    "properties": {"price": {"type": "number", "format": "decimal"}},
                },
                "availability": {"type": "string", "enum": ["InStock", "OutOfStock"]},
                "size": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
            },
        }
    )
    assert_strict(schema)
    assert schema["properties"]["availability"]["enum"] == ["InStock", "OutOfStock", None]
    assert {"type": "null"} in schema["properties"]["size"]["anyOf"]
    assert schema["properties"]["offer"]["type"] == ["object", "null"]


def test_plain_dict_class_and_empty_schemas_are_refused():
    with pytest.raises(SchemaError, match="LLM_EXTRACT_SCHEMA"):
        item_class_schema(dict)
    with pytest.raises(SchemaError):
        strict_schema({"type": "object", "properties": {"html": {}}}, exclude=INPUTS)
    with pytest.raises(SchemaError):
        strict_schema({"type": "array"})


def test_schema_name_and_response_format():
    assert schema_name("My Product.v2") == "My_Product_v2"
    assert schema_name("x" * 100) == "x" * 64
    fmt = response_format({"type": "object"}, "Product")
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "Product", "strict": True, "schema": {"type": "object"}},
    }


def test_validation_errors():
    schema = strict_schema(item_class_schema(DataclassProduct), exclude=INPUTS)
    assert validation_errors({"title": "Mug", "price": 3, "tags": ["a"]}, schema) == []
    assert validation_errors({"title": None, "price": None, "tags": None}, schema) == []
    errors = validation_errors({"title": 1, "price": True, "tags": [2], "extra": 1}, schema)
    assert "$: missing 'title'" not in errors
    assert "$: unexpected 'extra'" in errors
    assert any(error.startswith("$.title") for error in errors)
    assert any(error.startswith("$.price") for error in errors)  # booleans are not numbers
    assert "$.tags[0]: expected string, got int" in errors
    assert validation_errors({"title": "x"}, schema) == ["$: missing 'price'", "$: missing 'tags'"]
    assert validation_errors([], schema) == ["$: expected object, got list"]


def test_the_compiled_check_agrees_with_validation_errors():
    schema = strict_schema(item_class_schema(DataclassProduct), exclude=INPUTS)
    enum = {"type": "object", "properties": {"a": {"enum": ["x", 1]}}, "required": ["a"]}
    nested = {
        "type": "object",
        "additionalProperties": False,
        "required": ["rows"],
        "properties": {
            "rows": {
                "type": "array",
                "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            }
        },
    }
    values = [
        {"title": "Mug", "price": 3, "tags": ["a"]},
        {"title": None, "price": None, "tags": None},
        {"title": 1, "price": True, "tags": [2], "extra": 1},
        {"title": "x"},
        {"title": "x", "price": 2.5, "tags": []},
        {"title": "x", "price": False, "tags": []},
        {"title": "x", "price": 1, "tags": ["a", None]},
        [],
        "text",
        None,
        {"a": "x"},
        {"a": 1},
        {"a": True},
        {"a": "y"},
        {"rows": [1, None, 2.0]},
        {"rows": [1, 2.5]},
        {"rows": [True]},
        {"rows": []},
        {"rows": [], "more": 1},
        {"rows": "1"},
    ]
    for candidate in (schema, enum, nested):
        for value in values:
            assert conforms(value, candidate) == (validation_errors(value, candidate) == []), (
                value,
                candidate,
            )
