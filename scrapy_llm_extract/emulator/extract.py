"""The emulator's stand-in for a model: copy values out of the page's structured data.

The emulator is not a language model. To give tests and demos plausible
answers it reads the structured data of the user message (the prompt format
of the design: ``key: value`` lines, ``ld+json: <compact JSON>`` lines, or raw
HTML with ``<script type="application/ld+json">``, ``<meta>`` and
``itemprop``) and fills each schema property with a value whose key matches:

- a key matches a property when its last segment equals the property name,
  case-insensitively (``og:title`` -> ``title``, ``itemprop price`` -> ``price``;
  JSON-LD keys anywhere in the tree count, e.g. ``offers.price``), the
  shallowest match first, then in document order;
- failing that, the aliases in :data:`ALIASES`, in order, where a pattern
  matches the trailing segments of a key (``brand.name`` is the ``name``
  inside a JSON-LD ``brand``);
- values are coerced to the property's type; a property with no usable value
  gets null (or, if the schema forbids null, an empty value of its type).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import lxml.etree
import lxml.html

Path = tuple[str, ...]
Entry = tuple[Path, Any]

#: property name -> key patterns tried, in order, when no key has the property's name.
ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("name", "og:title"),
    "currency": ("priceCurrency", "product:price:currency"),
    "brand": ("brand.name",),
    "availability": ("offers.availability",),
    "price": ("product:price:amount",),
}

_SEGMENTS = re.compile(r"[:\s.]+")
_STRUCTURED = re.compile(r"<structured_data>(.*?)</structured_data>", re.S)
_LINE = re.compile(r"^(.+?)(?::\s+|:$)(.*)$")
_HTML_HINT = re.compile(r"<(script|meta)\b|itemprop=", re.I)
_NUMBER = re.compile(r"-?\d[\d.,\s]*")


def _segments(key: str) -> Path:
    return tuple(s.lower() for s in _SEGMENTS.split(key.strip()) if s)


def _json_entries(data: Any, prefix: Path) -> Iterator[Entry]:
    """Every key of a JSON tree, breadth first so shallow keys come first."""
    queue: deque[tuple[Path, Any]] = deque([(prefix, data)])
    while queue:
        path, node = queue.popleft()
        if isinstance(node, Mapping):
            for key, value in node.items():
                child = (*path, *_segments(str(key)))
                yield child, value
                queue.append((child, value))
        elif isinstance(node, list):
            queue.extend((path, value) for value in node)


def _line_entries(text: str) -> Iterator[Entry]:
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        key, value = match.group(1).strip(), match.group(2).strip()
        if key.lower() == "ld+json":
            try:
                yield from _json_entries(json.loads(value), ())
            except ValueError:
                continue
        else:
            yield _segments(key), value


def _html_entries(text: str) -> Iterator[Entry]:
    try:
        root = lxml.html.fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return
    for script in root.xpath('//script[@type="application/ld+json"]'):
        try:
            yield from _json_entries(json.loads(script.text_content()), ())
        except ValueError:
            continue
    for meta in root.xpath("//meta[@content]"):
        key = meta.get("property") or meta.get("name") or meta.get("itemprop")
        if key:
            yield _segments(key), meta.get("content")
    for element in root.xpath("//*[@itemprop]"):
        value = element.get("content") or element.text_content().strip()
        yield ("itemprop", *_segments(element.get("itemprop"))), value


def structured_entries(text: str) -> list[Entry]:
    """The (key path, value) pairs of a user message, in document order."""
    sections = _STRUCTURED.findall(text)
    entries = [entry for section in sections for entry in _line_entries(section)]
    if not sections:
        entries.extend(_line_entries(text))
    if _HTML_HINT.search(text):
        entries.extend(_html_entries(text))
    return entries


def _types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, list):
        return [str(t) for t in declared]
    if isinstance(declared, str):
        return [declared]
    variants = schema.get("anyOf") or []
    return [t for variant in variants for t in _types(variant)]


def _branch(schema: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The part of a (possibly ``anyOf``) schema that describes ``kind`` values."""
    for variant in schema.get("anyOf") or []:
        if kind in _types(variant):
            return variant  # type: ignore[no-any-return]
    return schema


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _NUMBER.search(value)
    if not match:
        return None
    digits = match.group(0).replace(" ", "").rstrip(".,")
    if "," in digits and "." in digits:
        digits = (
            digits.replace(",", "")
            if digits.rfind(".") > digits.rfind(",")
            else (digits.replace(".", "").replace(",", "."))
        )
    elif "," in digits:
        head, _, tail = digits.rpartition(",")
        digits = f"{head.replace(',', '')}.{tail}" if len(tail) != 3 else digits.replace(",", "")
    try:
        return float(digits)
    except ValueError:
        return None


_MISSING = object()


def coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` as the schema's type, or ``_MISSING`` when it cannot be one."""
    types = _types(schema)
    enum = schema.get("enum")
    for kind in types:
        result: Any = _MISSING
        if (
            kind == "string"
            and isinstance(value, str | int | float)
            and not isinstance(value, bool)
        ):
            result = str(value)
        elif kind == "string" and isinstance(value, Mapping) and "name" in value:
            result = coerce(value["name"], {"type": "string"})
        elif kind == "number":
            result = _MISSING if (number := _number(value)) is None else number
        elif kind == "integer":
            number = _number(value)
            result = _MISSING if number is None or number != int(number) else int(number)
        elif kind == "boolean":
            text = str(value).strip().lower()
            if isinstance(value, bool):
                result = value
            elif text in ("true", "yes", "1"):
                result = True
            elif text in ("false", "no", "0"):
                result = False
        elif kind == "array":
            items = _branch(schema, "array").get("items", {})
            values = value if isinstance(value, list) else [value]
            coerced = [coerce(v, items) for v in values]
            result = [v for v in coerced if v is not _MISSING]
        elif kind == "object" and isinstance(value, Mapping):
            result = fill(_branch(schema, "object"), list(_json_entries(value, ())))
        if result is _MISSING:
            continue
        if enum is not None:
            matches = [e for e in enum if str(e).lower() == str(result).lower()]
            if not matches:
                continue
            result = matches[0]
        return result
    return _MISSING


def _empty(schema: Mapping[str, Any]) -> Any:
    """A schema-valid value standing for "nothing found"."""
    types = _types(schema)
    if "null" in types:
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = types[0] if types else "null"
    if kind == "object":
        return fill(schema, [])
    return {"string": "", "number": 0, "integer": 0, "boolean": False, "array": []}.get(kind)


def _pick(name: str, schema: Mapping[str, Any], entries: list[Entry]) -> Any:
    wanted = name.lower()
    exact = sorted((e for e in entries if e[0] and e[0][-1] == wanted), key=lambda e: len(e[0]))
    for _, value in exact:
        if (result := coerce(value, schema)) is not _MISSING:
            return result
    for pattern in ALIASES.get(wanted, ()):
        tail = _segments(pattern)
        matches = sorted(
            (e for e in entries if e[0][-len(tail) :] == tail), key=lambda e: len(e[0])
        )
        for _, value in matches:
            if (result := coerce(value, schema)) is not _MISSING:
                return result
    return _empty(schema)


def fill(schema: Mapping[str, Any], entries: list[Entry]) -> dict[str, Any]:
    """A schema-valid object whose values come from ``entries`` (see the module doc)."""
    properties: Mapping[str, Any] = schema.get("properties") or {}
    return {name: _pick(name, prop, entries) for name, prop in properties.items()}
