"""How a rule's value and the model's answer are compared, typed and profiled.

A rule reads text out of the page ("1.299,00 €"); the model answers typed JSON
(1299.0). Both sides go through :func:`canonical` before they are compared, so
whitespace, letter case and number formats never count as a disagreement.
:func:`shape` is the coarse profile of a value (length, digits, currency) that
the shape alarm compares against the values learned so far.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: A value a rule could not produce (matched nothing, or not of the field's type).
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()

SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
CURRENCY_SYMBOLS = "$€£¥₹₽₩"
_NUMBER = re.compile(
    rf"(?:[{CURRENCY_SYMBOLS}]|[A-Z]{{3}}\s)?\s*(-?\d(?:[\d.,'\s]*\d)?)\s*(?:[{CURRENCY_SYMBOLS}]|\s[A-Z]{{3}})?"
)
#: schema.org enumerations are values: "https://schema.org/InStock" is "InStock", as slimming
#: gives it to the model.
_SCHEMA_ORG = re.compile(r"^https?://schema\.org/", re.IGNORECASE)
_TRUE = frozenset({"true", "yes"})
_FALSE = frozenset({"false", "no"})


def clean_text(text: str) -> str:
    """Whitespace collapsed, and a schema.org enumeration URL as its bare name."""
    return _SCHEMA_ORG.sub("", " ".join(text.split()))


#: One separator before exactly three digits: "1.299 €" in Berlin, 1.299 in a lab.
_AMBIGUOUS = re.compile(r"-?[1-9]\d{0,2}[.,]\d{3}")


def parse_number(text: str) -> float | None:
    """The number a price-like text states: "1.299,00 €", "$1,299.00", "1299" -> 1299.0.

    "1.299" and "1,299" read as thousands (prices with three decimals are rarer than
    prices over a thousand); :func:`ambiguous_number` tells a rule not to answer them."""
    digits = _digits(text)
    if digits is None:
        return None
    if _AMBIGUOUS.fullmatch(digits):
        return float(digits.replace(",", "").replace(".", ""))
    if "," in digits and "." in digits:
        decimal = "." if digits.rfind(".") > digits.rfind(",") else ","
        digits = digits.replace("," if decimal == "." else ".", "").replace(",", ".")
    elif "," in digits:
        head, _, tail = digits.rpartition(",")
        digits = digits.replace(",", "") if len(tail) == 3 else f"{head.replace(',', '')}.{tail}"
    elif digits.count(".") > 1:
        digits = digits.replace(".", "")
    try:
        return float(digits)
    except ValueError:
        return None


def ambiguous_number(text: str) -> bool:
    """Whether a text states a number only its site's convention decides ("1.299")."""
    digits = _digits(text)
    return digits is not None and bool(_AMBIGUOUS.fullmatch(digits))


def _digits(text: str) -> str | None:
    """The number part of a price-like text, its spaces and apostrophes taken out."""
    match = _NUMBER.fullmatch(clean_text(text))
    return re.sub(r"[\s']", "", match.group(1)) if match else None


def canonical(value: Any) -> Any:
    """The comparison key of a value: numbers as floats, text folded, empty as None."""
    if value is None or value is MISSING:
        return value
    if isinstance(value, bool):  # as text: True == 1.0 made any "1" on a page agree with True
        return "true" if value else "false"
    if isinstance(value, int | float):
        return round(float(value), 6)
    text = clean_text(str(value))
    if not text:
        return None
    number = parse_number(text)
    return round(number, 6) if number is not None else text.casefold()


def scalar_field(schema: Mapping[str, Any]) -> bool:
    """Whether rules can answer this property: a scalar, or a scalar or null."""
    types = field_types(schema)
    return bool(types) and set(types) <= SCALAR_TYPES


def field_types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [str(t) for t in declared]
    return [t for variant in schema.get("anyOf") or [] for t in field_types(variant)]


def typed(raw: Any, schema: Mapping[str, Any]) -> Any:
    """A rule's raw text as the value the schema asks for, or MISSING if it is not one."""
    if raw is None:  # absent: null, or the empty string a strict non-null text field gets
        types = field_types(schema)
        return None if "null" in types else "" if "string" in types else MISSING
    text = clean_text(str(raw))
    for kind in field_types(schema):
        if kind == "string" and text:
            return _in_enum(text, schema)
        if kind in ("number", "integer") and ambiguous_number(text):
            continue  # a rule must not guess: the model reads the page
        if kind in ("number", "integer") and (number := parse_number(text)) is not None:
            if kind == "number":
                return number
            if number.is_integer():
                return int(number)
        if kind == "boolean" and text.casefold() in _TRUE | _FALSE:
            return text.casefold() in _TRUE
    return MISSING


def _in_enum(text: str, schema: Mapping[str, Any]) -> Any:
    enum = schema.get("enum")
    if enum is None:
        return text
    return next((e for e in enum if str(e).casefold() == text.casefold()), MISSING)


def shape(value: Any) -> str:
    """A coarse profile: the kind, the order of magnitude of its length, digits, currency."""
    if value is None or isinstance(value, bool):
        return repr(value)
    key = canonical(value)
    if key is None:
        return repr(key)
    if isinstance(key, float):
        return f"number:{len(str(int(abs(key))))}"
    text = clean_text(str(value))
    digits = sum(c.isdigit() for c in text)
    digit_class = "none" if not digits else "all" if digits == len(text) else "some"
    currency = "".join(sorted({c for c in text if c in CURRENCY_SYMBOLS}))
    return f"text:{len(text).bit_length()}:{digit_class}:{currency}"
