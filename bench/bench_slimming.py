"""What slimming saves, and whether the known values survive it.

Run: ``python bench/bench_slimming.py [--corpus PATH]``

For every page of the shared product corpus (``../shared/corpus/products``, or
``$PRODUCT_CORPUS_DIR/products``:
gzipped HTML plus ``truth.json``) this counts the gpt-4o-mini tokens of the raw
HTML and of the slimmed page, and checks that each known value (title, price,
currency, brand, sku) is still present, compared on a normalised form. The
prompt is measured as ``structured + "\\n" + text``: the exact user message
(delimiters, URL) is the request builder's and adds a constant ~30 tokens.
A plain visible-text baseline (body text without scripts and styles) is
measured in the same run, so the figures read as ratios against it. It is also
the page's text against which a page counts as emptied: its slimmed visible
text is under 20 % of it (menus and footers are dropped, so some pages are, by
design); the slimming guard's fallbacks are counted too.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import os
import re
import statistics
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lxml.html

from scrapy_llm_extract.slim import slim_page
from scrapy_llm_extract.tokens import count_tokens

MODEL = "gpt-4o-mini"
FIELDS = ("title", "price", "currency", "brand", "sku")
DEFAULT_CORPUS = Path(
    os.environ.get("PRODUCT_CORPUS_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
)
#: A currency counts as present by its code or one of its usual symbols.
CURRENCY_SYMBOLS = {
    "USD": ("$",),
    "EUR": ("€",),
    "GBP": ("£",),
    "AUD": ("$", "A$", "AU$"),
    "CAD": ("$", "C$", "CA$"),
    "JPY": ("¥", "円"),
    "INR": ("₹",),
}
_NUMBER = re.compile(r"\d[\d.,]*")
#: A page whose slimmed visible text is under this share of its text counts as emptied.
EMPTIED_SHARE = 0.2


@dataclass(frozen=True)
class Page:
    id: str
    source: bytes
    truth: dict[str, str]
    not_on_page: list[str]


def load_corpus(corpus: Path) -> Iterator[Page]:
    """The corpus pages with their known values (empty values are not known values)."""
    products = corpus / "products"
    truth = json.loads((products / "truth.json").read_text(encoding="utf-8"))
    for page_id in sorted(truth):
        known = {f: str(v) for f, v in truth[page_id].items() if f in FIELDS and str(v).strip()}
        source = gzip.decompress((products / "html" / f"{page_id}.html.gz").read_bytes())
        absent = _not_on_page(known, source.decode("utf-8", "replace"))
        on_page = {f: v for f, v in known.items() if f not in absent}
        yield Page(page_id, source, on_page, absent)


def _not_on_page(known: dict[str, str], raw: str) -> list[str]:
    """Known text values missing from the raw HTML (a reviewer's rewording): slimming cannot
    keep them. Prices and currencies come from the page's own JSON-LD, so they are there."""
    cheap = re.sub(r"\s+", "", raw.casefold())
    unsure = {
        f: v
        for f, v in known.items()
        if f not in ("price", "currency") and re.sub(r"\s+", "", v.casefold()) not in cheap
    }
    return missing_fields(unsure, raw) if unsure else []


_QUOTES = str.maketrans(
    dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'")
    | dict.fromkeys("\u201c\u201d\u201e\u2033", '"')
)


def _squash(text: str) -> str:
    """Case, whitespace, entities, curly quotes, JSON escapes, Unicode forms do not matter."""
    text = html.unescape(html.unescape(text)).translate(_QUOTES)
    return re.sub(r"[\s\\]+", "", unicodedata.normalize("NFKC", text).casefold())


def _numbers(text: str) -> set[float]:
    """Every number in ``text``, reading "1.299,00" and "1,299.00" both ways."""
    found: set[float] = set()
    for token in _NUMBER.findall(text):
        token = token.rstrip(".,")
        for decimal, thousands in ((".", ","), (",", ".")):
            candidate = token.replace(thousands, "").replace(decimal, ".")
            try:
                found.add(round(float(candidate), 2))
            except ValueError:
                continue
    return found


def missing_fields(truth: dict[str, str], prompt: str) -> list[str]:
    """The known values of a page that are not in ``prompt``."""
    squashed = _squash(prompt)
    numbers: set[float] | None = None
    missing = []
    for field, value in truth.items():
        if field == "price":
            numbers = _numbers(prompt) if numbers is None else numbers
            present = round(float(value), 2) in numbers
        elif field == "currency":
            symbols = CURRENCY_SYMBOLS.get(value.upper(), ())
            present = bool(re.search(rf"\b{re.escape(value)}\b", prompt, re.IGNORECASE)) or any(
                s in prompt for s in symbols
            )
        else:
            present = _squash(value) in squashed
        if not present:
            missing.append(field)
    return missing


def slim_prompt(source: bytes) -> str:
    page = slim_page(source)
    return page.structured + "\n" + page.text


def baseline_prompt(source: bytes) -> str:
    """What a plain text extraction sends: body text, scripts and styles removed."""
    root = lxml.html.document_fromstring(source)
    for element in root.xpath("//script|//style|//noscript|//template"):
        element.drop_tree()
    body = root.find("body")
    return re.sub(r"\s+", " ", (body if body is not None else root).text_content()).strip()


@dataclass
class Figures:
    tokens: list[int]
    seconds: list[float]
    found: dict[str, int]
    misses: list[tuple[str, str]]


def measure(pages: list[Page], convert: Callable[[bytes], str]) -> Figures:
    figures = Figures([], [], dict.fromkeys(FIELDS, 0), [])
    for page in pages:
        started = time.perf_counter()
        prompt = convert(page.source)
        figures.seconds.append(time.perf_counter() - started)
        figures.tokens.append(count_tokens(prompt, MODEL))
        missing = missing_fields(page.truth, prompt)
        figures.misses.extend((page.id, field) for field in missing)
        for field in page.truth:
            figures.found[field] += field not in missing
    return figures


def visible_chars(text: str) -> int:
    return len(re.sub(r"\s+", "", text))


def text_shares(pages: list[Page]) -> tuple[list[tuple[str, float]], int]:
    """Each page's slimmed visible text as a share of its text, and the guard's fallbacks."""
    shares, fallbacks = [], 0
    for page in pages:
        slim = slim_page(page.source)
        fallbacks += slim.fallback
        page_chars = visible_chars(baseline_prompt(page.source))
        if page_chars:
            shares.append((page.id, visible_chars(slim.text) / page_chars))
    return shares, fallbacks


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--show-misses", action="store_true", help="list every lost value")
    args = parser.parse_args()
    pages = list(load_corpus(args.corpus))
    raw = [count_tokens(page.source.decode("utf-8", "replace"), MODEL) for page in pages]
    known = {f: sum(f in page.truth for page in pages) for f in FIELDS}
    runs = {"baseline": measure(pages, baseline_prompt), "slim": measure(pages, slim_prompt)}

    print(f"{len(pages)} pages from {args.corpus}; tokens are {MODEL} (tiktoken)")
    absent = [f"{page.id}:{field}" for page in pages for field in page.not_on_page]
    print("known values not in the raw HTML (not counted):", ", ".join(absent) or "none")
    print(f"{'':28}{'raw HTML':>12}" + "".join(f"{name:>12}" for name in runs))
    rows: list[tuple[str, Callable[[Sequence[float]], float], str]] = [
        ("median tokens", statistics.median, "{:12.0f}"),
        ("mean tokens", statistics.mean, "{:12.0f}"),
        ("p90 tokens", p90, "{:12.0f}"),
        ("total tokens", sum, "{:12.0f}"),
    ]
    for label, stat, fmt in rows:
        print(
            f"{label:28}"
            + fmt.format(stat(raw))
            + "".join(fmt.format(stat(r.tokens)) for r in runs.values())
        )
    for label, stat in (("median ratio vs raw", statistics.median), ("p90 ratio vs raw", p90)):
        cells = "".join(
            f"{stat([t / r for t, r in zip(run.tokens, raw, strict=True)]):12.2%}"
            for run in runs.values()
        )
        print(f"{label:28}{'100%':>12}{cells}")
    slim, base = runs["slim"], runs["baseline"]
    ratio = statistics.median(
        [s / max(b, 1) for s, b in zip(slim.tokens, base.tokens, strict=True)]
    )
    print(f"{'median slim / baseline':28}{'':12}{'':12}{ratio:12.2%}")
    for field in FIELDS:
        cells = "".join(f"{run.found[field] / known[field]:12.1%}" for run in runs.values())
        print(f"{'survival ' + field + f' ({known[field]})':28}{'':12}{cells}")
    total = sum(known.values())
    cells = "".join(f"{sum(run.found.values()) / total:12.1%}" for run in runs.values())
    print(f"{f'survival all ({total})':28}{'':12}{cells}")
    for label, stat in (("median ms / page", statistics.median), ("p90 ms / page", p90)):
        cells = "".join(f"{stat(run.seconds) * 1000:12.1f}" for run in runs.values())
        print(f"{label:28}{'':12}{cells}")
    shares, fallbacks = text_shares(pages)
    emptied = sorted((share, page_id) for page_id, share in shares if share < EMPTIED_SHARE)
    print(
        f"pages with text whose slimmed text is under {EMPTIED_SHARE:.0%} of it:"
        f" {len(emptied)}/{len(shares)} ({len(emptied) / len(shares):.1%});"
        f" under 1%: {sum(share < 0.01 for share, _ in emptied)}; slim fallbacks: {fallbacks}"
    )
    if args.show_misses and emptied:
        print("under 20%:", ", ".join(f"{page_id}:{share:.1%}" for share, page_id in emptied))
    if slim.misses:
        print("slim lost:", ", ".join(f"{page_id}:{field}" for page_id, field in slim.misses))
    if args.show_misses:
        print("baseline lost:", ", ".join(f"{p}:{f}" for p, f in base.misses))


if __name__ == "__main__":
    main()
