"""The JSON Schema the model must answer with, in OpenAI's strict form.

Fields come from the item class through itemadapter (Scrapy ``Field``
``json_schema_extra`` metadata, dataclass, attrs or pydantic annotations).
Strict structured outputs accept a narrow dialect: every property required,
``null`` expressed as a type, ``additionalProperties: false`` on every object,
and a limited keyword set. Requests with anything else are refused by the API,
for every row of a batch, so the schema is normalised here once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from itemadapter import ItemAdapter

#: Keywords strict mode accepts that matter for extraction; everything else
#: (format, pattern, lengths, bounds, defaults, titles, $ref) is dropped.
STRICT_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
    }
)
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


class SchemaError(ValueError):
    """The item class or LLM_EXTRACT_SCHEMA cannot give a usable schema."""


def schema_name(name: str) -> str:
    """A ``json_schema.name`` the API accepts (``^[a-zA-Z0-9_-]{1,64}$``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "extraction"


def item_class_schema(item_class: type) -> dict[str, Any]:
    """The JSON Schema itemadapter derives from ``item_class``."""
    if not ItemAdapter.is_item_class(item_class) or item_class is dict:
        raise SchemaError(
            f"{item_class.__qualname__} declares no fields to extract; set LLM_EXTRACT_SCHEMA"
            " to a JSON Schema dict or to the import path of an item class."
        )
    return ItemAdapter.get_json_schema(item_class)


def strict_schema(schema: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Turn ``schema`` (an object schema) into OpenAI strict form, without ``exclude`` fields."""
    if schema.get("type", "object") != "object" or not schema.get("properties"):
        raise SchemaError("The extraction schema must be an object with at least one property.")
    excluded = set(exclude)
    properties = {
        name: _strict_property(prop)
        for name, prop in schema["properties"].items()
        if name not in excluded
    }
    if not properties:
        raise SchemaError(
            "Every field of the extraction schema is an input field (source, url, priority);"
            " declare the fields to extract."
        )
    return _strict_object(properties, schema.get("description"))


def _strict_object(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "object"}
    if description:
        result["description"] = description
    result["properties"] = properties
    result["required"] = list(properties)
    result["additionalProperties"] = False
    return result


def _strict_property(prop: Mapping[str, Any]) -> dict[str, Any]:
    if "anyOf" in prop:
        options = [_strict_property(option) for option in prop["anyOf"]]
        if not any(option.get("type") == "null" for option in options):
            options.append({"type": "null"})
        result: dict[str, Any] = {"anyOf": options}
        if prop.get("description"):
            result["description"] = prop["description"]
        return result
    types = prop.get("type") or "string"
    types = [types] if isinstance(types, str) else list(types)
    if "properties" in prop:
        nested = _strict_object(
            {name: _strict_property(sub) for name, sub in prop["properties"].items()},
            prop.get("description"),
        )
        nested["type"] = ["object", "null"]
        return nested
    if "null" not in types:
        types.append("null")
    result = {key: value for key, value in prop.items() if key in STRICT_KEYWORDS}
    result["type"] = types[0] if len(types) == 1 else types
    if "enum" in result and None not in result["enum"]:
        result["enum"] = [*result["enum"], None]
    if "items" in prop:
        result["items"] = _strict_items(prop["items"])
    elif "array" in types:
        result["items"] = {"type": "string"}
    return result


def _strict_items(items: Mapping[str, Any]) -> dict[str, Any]:
    if "properties" in items:
        return _strict_object({n: _strict_property(p) for n, p in items["properties"].items()})
    return {key: value for key, value in items.items() if key in STRICT_KEYWORDS} or {
        "type": "string"
    }


def response_format(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``response_format`` request parameter for ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def validation_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks a strict ``schema`` (empty when it conforms)."""
    if "anyOf" in schema:
        if any(not validation_errors(value, option, path) for option in schema["anyOf"]):
            return []
        return [f"{path}: matches none of the allowed shapes"]
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else types
        if not any(_is_type(value, name) for name in allowed):
            return [f"{path}: expected {'/'.join(allowed)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']!r}"]
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        errors = [
            f"{path}: missing {name!r}" for name in schema.get("required", ()) if name not in value
        ]
        if schema.get("additionalProperties") is False:
            errors += [f"{path}: unexpected {name!r}" for name in value if name not in properties]
        for name, sub in value.items():
            if name in properties:
                errors += validation_errors(sub, properties[name], f"{path}.{name}")
        return errors
    if isinstance(value, list) and "items" in schema:
        return [
            error
            for index, element in enumerate(value)
            for error in validation_errors(element, schema["items"], f"{path}[{index}]")
        ]
    return []


#: Compiled checks by schema identity; the schema is kept so that its id stays its own.
_compiled: dict[int, tuple[Mapping[str, Any], Callable[[Any], bool]]] = {}
_COMPILED_MAX = 256


def conforms(value: Any, schema: Mapping[str, Any]) -> bool:
    """Whether :func:`validation_errors` would find nothing, at a fraction of its cost: the
    check is compiled once per schema object (collect-batches checks every answer)."""
    found = _compiled.get(id(schema))
    if found is None or found[0] is not schema:
        if len(_compiled) >= _COMPILED_MAX:
            _compiled.clear()
        found = _compiled[id(schema)] = (schema, _compile(schema))
    return found[1](value)


def _compile(schema: Mapping[str, Any]) -> Callable[[Any], bool]:
    """A predicate with the very rules of :func:`validation_errors`, decided once."""
    if "anyOf" in schema:
        options = [_compile(option) for option in schema["anyOf"]]
        return lambda value: any(check(value) for check in options)
    checks: list[Callable[[Any], bool]] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if {"number", "integer"}.isdisjoint(allowed):  # no bool or float subtleties
            classes = tuple(cls for name in allowed for cls in JSON_TYPES.get(name, ()))
            checks.append(lambda value: isinstance(value, classes))
        else:
            checks.append(lambda value: any(_is_type(value, name) for name in allowed))
    if "enum" in schema:
        enum = schema["enum"]
        checks.append(lambda value: value in enum)
    if "properties" in schema:
        properties = {name: _compile(sub) for name, sub in schema["properties"].items()}
        required = tuple(schema.get("required", ()))
        closed = schema.get("additionalProperties") is False

        def object_conforms(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            if any(name not in value for name in required):
                return False
            for name, sub in value.items():
                check = properties.get(name)
                if check is None:
                    if closed:
                        return False
                elif not check(sub):
                    return False
            return True

        checks.append(object_conforms)
    if "items" in schema:
        element = _compile(schema["items"])
        checks.append(
            lambda value: not isinstance(value, list) or all(element(one) for one in value)
        )
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, JSON_TYPES.get(name, ()))
