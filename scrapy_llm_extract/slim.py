"""HTML -> the compact page text the model is sent.

Every prompt token is paid for on every page, so a page is reduced to what
extraction needs: the structured data it carries (JSON-LD, meta / Open Graph /
``product:`` tags, microdata ``itemprop`` values), because many shops put the
price or SKU only there, and its visible text with just enough structure
(headings, list items, table rows) for the model to tell a title from a
related product. Scripts, styles, SVG, comments, hidden elements, navigation,
footers, cookie banners, menus and repeated lines are dropped.

lxml is used because Scrapy already depends on it and, measured on the product
corpus (``bench/bench_slimming.py``), a faster parser would save a few
milliseconds per page against a model call that takes a second and costs money.
"""

from __future__ import annotations

import codecs
import functools
import html
import itertools
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urljoin

import lxml.html
from lxml import etree
from w3lib.encoding import html_to_unicode

logger = logging.getLogger(__name__)

#: Characters of decoded input that are parsed; the rest of a bigger page is ignored.
#: Real product pages measure up to ~5 M characters, almost all of it scripts, and
#: parsing this much takes well under a second, so memory and time stay bounded.
MAX_INPUT_CHARS = 8_000_000
#: Characters of the decoded start of a source judged to tell text from binary data.
TEXT_SNIFF_CHARS = 65_536
#: Text has no NUL characters; binary data (images, archives, PDFs) has about 1 in 256.
MAX_NUL_SHARE = 0.001
#: Share of control or undecodable characters above which a source is not text.
MAX_UNPRINTABLE_SHARE = 0.3
#: Output caps (characters): far above what a product page slims to, low enough that
#: counting tokens afterwards stays cheap. The request builder truncates by tokens.
MAX_TEXT_CHARS = 200_000
MAX_STRUCTURED_CHARS = 50_000
#: A capped part ends at a line boundary only if that keeps this share of the cap: a page
#: that is one huge paragraph is cut inside it rather than lose all of it.
MIN_LINE_CUT_SHARE = 0.9
#: Longest string kept from JSON-LD (descriptions repeat the visible text).
MAX_JSON_STRING_CHARS = 500
#: Shorter structured values are kept even when the visible text repeats them.
MIN_DUPLICATE_CHARS = 60
#: Meta and microdata values this long are left out when the JSON-LD states them as a string
#: (og:title = the Product's name): shorter ones (a currency, a SKU) cost little and may
#: belong to another JSON-LD node.
MIN_RESTATED_CHARS = 20
#: Longer microdata text is prose, left to the visible text ("itemprop description").
MAX_MICRODATA_TEXT_CHARS = 200
#: Reviews kept per JSON-LD list: a few show the tone, hundreds only cost tokens.
MAX_REVIEWS = 3
#: A JSON-LD list of at least this many objects (variants, offers) states once what they share.
MIN_SHARED_ITEMS = 3
#: A list with at least this many items that are nothing but links is a menu.
MENU_MIN_ITEMS = 6
#: Words a line needs besides its number to count as a UI counter ("Go to slide 3").
COUNTER_MIN_WORDS = 3
#: A <select> with more options than this is a country / currency picker.
MAX_SELECT_OPTIONS = 20
#: A block with at least this share of the page's visible text is the page: never dropped.
MAIN_CONTAINER_SHARE = 0.5
#: aria-hidden hides from screen readers, not from the eye: it drops small blocks only.
ARIA_HIDDEN_MAX_SHARE = 0.25
#: A page whose drop rules keep less than this share of its visible text, or lose its main
#: heading, is slimmed again without them (see SlimPage.fallback).
MIN_KEPT_SHARE = 0.01


@dataclass(frozen=True)
class SlimPage:
    """What the model sees of a page; both parts may be empty."""

    structured: str  # lines "key: value" (JSON-LD as "ld+json: <compact json>")
    text: str  # visible text with structure
    #: The drop rules emptied the page or took its main heading, so it was slimmed again
    #: without them: counted, since it shows a page layout the rules misread.
    fallback: bool = False
    #: Why the source was refused as not text (binary, mostly non-printable); both parts
    #: are then empty. Sent, it would cost a full prompt of noise.
    not_text: str = ""
    #: Part of the page was left out by the size caps above (counted as a truncated prompt).
    cut: bool = False


EMPTY = SlimPage("", "")

_WS = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufffd]")
_ALNUM = re.compile(r"\w")
_INTEGER = re.compile(r"\d+")
_WORD = re.compile(r"[^\W\d]+")
_TAG = re.compile(r"<[^<>]{0,1000}>")
#: "<" that could open a tag (including the prompt's own delimiters) is made inert.
_TAG_OPEN = re.compile(r"<(?=\s*/?\s*[A-Za-z!?])")
_INERT_LT = "\u2039"
_SCHEMA_ORG = re.compile(r"^https?://schema\.org/", re.IGNORECASE)
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//\S+$|^/[^\s]*$", re.IGNORECASE)
_HTML_SNIFF = re.compile(
    r"<(?:!doctype|html|head|body|meta|script|style|title|div|span|p|a|ul|li|table|h[1-6]|br|img)\b",
    re.IGNORECASE,
)
#: Words of consent-banner ids and classes ("cookie-notice", "CybotCookiebotDialog"). A
#: kind word counts alone or followed by a banner word, so a theme named "shop-gdpr", a
#: product section "with-cookie-info" or a "cookie-cutter" is not a banner.
_BANNER_KINDS = frozenset(
    {"cookie", "cookies", "consent", "gdpr", "ccpa", "cookieconsent", "cookiebanner", "cookiebar",
     "cookielaw", "cookielawinfo", "cookienotice", "cookiepolicy"}
)  # fmt: skip
_BANNER_WORDS = frozenset(
    {
        "banner", "bar", "notice", "notification", "popup", "pop", "modal", "overlay", "dialog",
        "consent", "cookie", "cookies", "law", "message", "msg", "box", "layer", "alert",
        "prompt", "wrapper", "wrap", "container", "settings", "preferences", "pref", "prefs",
        "policy", "window", "panel", "manager", "widget", "root", "sdk", "statement", "hint",
        "warning", "disclaimer",
    }
)  # fmt: skip
#: Consent-platform names: any id or class word of theirs is their banner.
_BANNER_VENDORS = frozenset(
    {"onetrust", "didomi", "cookiebot", "cybot", "usercentrics", "cmplz", "termly", "iubenda",
     "cookieyes", "klaro", "osano", "truste", "trustarc", "borlabs", "quantcast", "moove"}
)  # fmt: skip
#: Other products' carousels (related, cross-sells, recently viewed): their names and
#: prices would only mislead the model. Words joined as the split ids spell them.
_OTHER_PRODUCTS = frozenset(
    {"related", "upsell", "upsells", "crosssell", "crosssells", "recentlyviewed"}
)
#: Cheap first test of an id or class: could it be one of the names above?
_BOILERPLATE_HINT = re.compile(
    "|".join(sorted(_BANNER_KINDS | _BANNER_VENDORS | {"related", "sell", "recently"})),
    re.IGNORECASE,
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NAME_SEPARATORS = re.compile(r"[-_\s:.]+")
#: A React streaming segment (<div hidden id="S:1">): shown by the page's script, not hidden.
_REACT_SEGMENT = re.compile(r"^S:[0-9a-f]+$")
#: The itemtype of a product's microdata scope (schema.org Product and its kinds).
_PRODUCT_ITEMTYPE = re.compile(r"(?:^|/)(?:Individual)?Product(?:Model|Group)?/?$", re.IGNORECASE)

_SKIP_TAGS = frozenset(
    {
        "head", "script", "style", "noscript", "template", "svg", "math", "iframe", "object",
        "embed", "canvas", "video", "audio", "map", "input", "textarea", "link", "meta",
    }
)  # fmt: skip
_BOILERPLATE_TAGS = frozenset({"nav", "footer", "dialog"})
#: Rules that read a name or a flag, which page builders reuse loosely: they never take a
#: block holding most of the page's text.
_ATTRIBUTE_RULES = frozenset({"hidden", "style", "name", "aria"})
#: Never dropped by a rule: they are the page.
_PAGE_TAGS = frozenset({"html", "body", "main"})
_BOILERPLATE_ROLES = frozenset({"navigation", "contentinfo", "dialog", "alertdialog"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "form", "header", "hr", "html", "legend", "main",
        "ol", "p", "pre", "section", "summary", "table", "tbody", "thead", "tfoot", "ul",
        "caption", "label", "button",
    }
)  # fmt: skip
_HEADINGS = {f"h{level}": "#" * level + " " for level in range(1, 7)}
_CELLS = frozenset({"td", "th"})
#: JSON-LD keys with no extraction value (URL-valued keys are dropped anyway).
_DROP_JSON_KEYS = frozenset(
    {
        "@context", "@id", "potentialAction", "hasMerchantReturnPolicy", "shippingDetails",
        "mainEntityOfPage", "priceValidUntil", "isPartOf", "position",
    }
)  # fmt: skip
#: Top-level JSON-LD types about the site, not the product (dropped unless a product is inside).
_SITE_JSON_TYPES = frozenset(
    {
        "WebSite", "WebPage", "ImageObject", "SearchAction", "SiteNavigationElement",
        "WPHeader", "WPFooter", "WPSideBar", "Organization", "Corporation", "LocalBusiness",
        "OnlineStore", "Store", "Person", "VideoObject", "FAQPage", "ContactPoint",
    }
)  # fmt: skip
_PRODUCT_JSON_TYPES = frozenset(
    {"Product", "ProductGroup", "IndividualProduct", "ProductModel", "Offer", "AggregateOffer"}
)
#: Microdata scopes whose values are not the product's (values in them are left out).
_SITE_SCOPES = frozenset(
    {
        "WebSite", "WebPage", "SiteNavigationElement", "WPHeader", "WPFooter", "WPSideBar",
        "BreadcrumbList", "ListItem", "ItemList", "FAQPage", "Question", "Answer", "Review",
        "Comment",
    }
)  # fmt: skip
_REVIEW_KEYS = frozenset({"review", "reviews"})
#: JSON-LD and meta keys holding prose, dropped when the visible text repeats it.
_PROSE_KEYS = frozenset(
    {
        "description", "disambiguatingDescription", "reviewBody", "text", "articleBody",
        "abstract", "slogan", "og:description", "twitter:description",
    }
)  # fmt: skip
#: Meta names worth sending besides og:/product:/twitter: ones and anything matching _META_VALUE.
_META_NAMES = frozenset({"title", "description"})
_META_PREFIXES = ("og:", "product:", "twitter:")
_META_VALUE = re.compile(
    r"price|currency|sku|brand|gtin|mpn|ean|upc|isbn|availability|condition|category|"
    r"retailer|manufacturer|model",
    re.IGNORECASE,
)
_META_DROP = frozenset(
    {
        "og:url", "og:locale", "og:image", "og:image:alt", "og:image:width", "og:image:height",
        "og:image:type", "og:video", "og:see_also", "twitter:card", "twitter:site",
        "twitter:creator", "twitter:image", "twitter:image:alt", "twitter:domain", "twitter:url",
        "og:locale:alternate", "og:image:secure_url",
    }
)  # fmt: skip


def slim_page(
    source: str | bytes,
    *,
    encoding: str | None = None,
    content_type: str | None = None,
    url: str | None = None,
) -> SlimPage:
    """Reduce a page (HTML, JSON or plain text) to its compact prompt form.

    Never raises: the page is untrusted input and a bad one must not drop the item.
    ``encoding`` (e.g. ``response.encoding``) wins over what the page declares;
    ``content_type`` (the Content-Type header) helps both decoding and sniffing;
    ``url`` (where the page was fetched) resolves a relative canonical URL, which is kept
    only when it differs.
    """
    try:
        decoded = _decode(source, encoding, content_type)
        page = _slim_text(decoded[:MAX_INPUT_CHARS], content_type, url)
        return replace(page, cut=True) if len(decoded) > MAX_INPUT_CHARS else page
    except Exception:  # a slimming bug must not lose the item
        logger.warning("Could not slim a page; sending its text without markup", exc_info=True)
        raw = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        return _plain_page(_TAG.sub(" ", raw[:MAX_INPUT_CHARS]), len(raw) > MAX_INPUT_CHARS)


def _slim_text(text: str, content_type: str | None, url: str | None) -> SlimPage:
    """slim_page() of decoded text, by its kind."""
    if not text.strip():
        return EMPTY
    refused = _not_text(text)
    if refused:
        return SlimPage("", "", not_text=refused)
    kind = _sniff(text, content_type)
    if kind == "json":
        structured = _slim_json(text)
        if structured is not None:
            return structured
        kind = "text"
    if kind == "text":
        return _plain_page(text)
    return _slim_html(text, url)


def _plain_page(text: str, cut: bool = False) -> SlimPage:
    lines, lines_cut = _finish(_plain_lines(text.splitlines()), MAX_TEXT_CHARS)
    return SlimPage("", lines, cut=cut or lines_cut)


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (undecodable bytes kept by ``surrogateescape``) as
    U+FFFD: a request body holding one cannot be encoded, to the API nor to the spool.
    Applied to slimming's output, which is far smaller than the page."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _decode(source: str | bytes, encoding: str | None, content_type: str | None) -> str:
    """Text of ``source``: declared encoding, else BOM / header / meta charset, else sniffed."""
    if isinstance(source, str):
        return source
    header = content_type
    if encoding and _known_codec(encoding):
        header = f"{(content_type or 'text/html').split(';')[0]}; charset={encoding}"
    return html_to_unicode(header, source, auto_detect_fun=_detect_encoding)[1]


def _not_text(text: str) -> str:
    """Why ``text`` (decoded) is not a page worth sending, judged on its start; "" if it is."""
    sample = text[:TEXT_SNIFF_CHARS]
    nuls = sample.count("\x00")
    if nuls > MAX_NUL_SHARE * len(sample):
        return (
            f"the source is binary data, not a page ({nuls} NUL of its first {len(sample)}"
            " characters): check that the source field holds the response's HTML"
        )
    unprintable = len(_UNPRINTABLE.findall(sample))
    if unprintable > MAX_UNPRINTABLE_SHARE * len(sample):
        return (
            f"the source is mostly non-printable ({unprintable / len(sample):.0%} control or"
            " undecodable characters): check that the source field holds the response's HTML"
            " and its encoding"
        )
    return ""


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def _detect_encoding(body: bytes) -> str:
    """UTF-8 if the bytes are valid UTF-8, else windows-1252, as browsers fall back to."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _sniff(text: str, content_type: str | None) -> str:
    """Page kind (html, json or text): the Content-Type when it says, else the content."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if "json" in mime:
        return "json"
    if mime == "text/plain":
        return "text"
    if "html" in mime or "xml" in mime:
        return "html"
    head = text.lstrip("\ufeff \t\r\n")
    if head[:1] in ("{", "["):
        return "json"
    return "html" if _HTML_SNIFF.search(text, 0, 100_000) else "text"


def _slim_json(text: str) -> SlimPage | None:
    try:
        value = json.loads(text.lstrip("\ufeff"))
    except ValueError:
        return None
    compact = _compact_json(value)
    if compact is None:
        return EMPTY
    structured, cut = _finish([f"json: {_dump(compact)}"], MAX_STRUCTURED_CHARS)
    return SlimPage(structured, "", cut=cut)


def _slim_html(text: str, url: str | None) -> SlimPage:
    parser = lxml.html.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True
    )
    try:
        root = lxml.html.document_fromstring(text.encode("utf-8", "surrogatepass"), parser)
    except (etree.ParserError, ValueError):
        return EMPTY
    ld_json = [
        script.text or ""
        for script in root.iter("script")
        if (script.get("type") or "").strip().lower() == "application/ld+json"
    ]
    shape = _PageShape(root)
    writer = _TextWriter(shape)
    lines = writer.walk()
    fallback = _lost_main_content(shape, writer)
    if fallback:
        writer = _TextWriter(shape, drop_rules=False)
        lines = writer.walk()
    structured, structured_cut = _finish(
        _structured_lines(root, ld_json, visible="\n".join(lines), url=url), MAX_STRUCTURED_CHARS
    )
    text, text_cut = _finish(lines, MAX_TEXT_CHARS)
    cut = structured_cut or text_cut or writer.cut
    return SlimPage(structured, text, fallback, cut=cut)


def _lost_main_content(shape: _PageShape, writer: _TextWriter) -> bool:
    """The guard: did the drop rules take (nearly) all the visible text or the main heading?"""
    if not shape.text_chars or writer.cut:
        return False
    if _char_count("".join(writer.lines)) < MIN_KEPT_SHARE * shape.text_chars:
        return True
    return shape.heading is not None and not writer.heading_kept


# --- structured data -------------------------------------------------------------------------


def _structured_lines(root: Any, ld_json: list[str], visible: str, url: str | None) -> list[str]:
    """JSON-LD, then <title> and meta tags, then microdata values, then the canonical URL."""
    lines: list[str] = []
    for block in ld_json:
        lines.extend(_ld_json_lines(block, visible))
    in_ld_json = "\n".join(lines)
    seen_values: set[str] = set()

    def add(key: str, value: str | None) -> None:
        value = _WS.sub(" ", value or "").strip()
        if key in _PROSE_KEYS and _is_visible(value, visible):
            return
        if len(value) >= MIN_RESTATED_CHARS and _dump(value) in in_ld_json:
            return  # a title or description the JSON-LD above states word for word
        if value and value not in seen_values and not _URL.match(value):
            seen_values.add(value)
            lines.append(f"{key}: {value}")

    title = root.find(".//title")
    if title is not None:
        add("title", title.text_content())
    for meta in root.iter("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key and _useful_meta(key) and meta.get("itemprop") is None:
            add(key, meta.get("content"))
    for element in root.xpath("//*[@itemprop]"):
        value = _microdata_value(element)
        if value is not None and not _in_site_scope(element):
            add(f"itemprop {element.get('itemprop').strip()}", value)
    canonical = _canonical(root, url)
    if canonical:
        lines.append(f"canonical: {canonical}")
    return lines


def _microdata_value(element: Any) -> str | None:
    """An itemprop's value: its attribute (content, href, value, datetime) or, for a plain
    element, its text ("<span itemprop=sku>LMP-77</span>"); None for URLs and nested items."""
    value = element.get("content")
    if value is None and element.tag in ("link", "a"):
        href = element.get("href")
        if href and _SCHEMA_ORG.match(href):
            # schema.org enumerations ("https://schema.org/InStock") are values, not links.
            return _SCHEMA_ORG.sub("", href)
        return None  # a URL (microdata reads links' href, not their text)
    if value is None and element.tag in ("data", "meter"):
        value = element.get("value")
    if value is None and element.tag == "time":
        value = element.get("datetime")
    if value is None and element.get("itemscope") is None and element.tag not in _SKIP_TAGS:
        value = _WS.sub(" ", element.text_content()).strip()
        if len(value) > MAX_MICRODATA_TEXT_CHARS:
            return None  # prose (a description): read in the visible text
    return _SCHEMA_ORG.sub("", value) if value is not None else None


def _in_site_scope(element: Any) -> bool:
    """An itemprop of breadcrumbs, FAQs, reviews or the site: not the product's data."""
    for ancestor in element.iterancestors():
        if ancestor.get("itemscope") is not None:
            kinds = (ancestor.get("itemtype") or "").split()
            return any(kind.rstrip("/").rsplit("/", 1)[-1] in _SITE_SCOPES for kind in kinds)
    return False


def _canonical(root: Any, url: str | None) -> str | None:
    """The page's canonical URL when it is not the fetched one: it often holds the product
    id, and the user message already shows the fetched URL."""
    for link in root.iter("link"):
        if "canonical" in (link.get("rel") or "").lower().split():
            href = (link.get("href") or "").strip()
            if not href:
                return None
            canonical = urljoin(url, href) if url else href
            same = url and canonical.rstrip("/") == url.split("#")[0].rstrip("/")
            return None if same else _WS.sub("", canonical)
    return None


def _useful_meta(key: str) -> bool:
    if key in _META_DROP:
        return False
    return key in _META_NAMES or key.startswith(_META_PREFIXES) or bool(_META_VALUE.search(key))


def _ld_json_lines(raw: str, visible: str) -> list[str]:
    """One "ld+json:" line per JSON-LD block, compacted; unparsable blocks kept as flat text."""
    raw = raw.strip().removeprefix("<!--").removesuffix("-->").strip()
    raw = raw.removeprefix("//<![CDATA[").removesuffix("//]]>").strip()
    if not raw:
        return []
    try:
        value = json.loads(raw, strict=False)
    except ValueError:
        try:
            value = json.loads(re.sub(r",\s*([}\]])", r"\1", raw), strict=False)
        except ValueError:
            return [f"ld+json: {_WS.sub(' ', raw)}"]
    compact = _compact_json(value, visible)
    if compact is None:
        return []
    blocks = compact if isinstance(compact, list) else [compact]
    return [f"ld+json: {_dump(block)}" for block in blocks]


def _compact_json(value: Any, visible: str = "", top: bool = True) -> Any:
    """Drop what carries no extraction value: URLs, @context, return policies, extra reviews.

    Returns None for a value that should disappear. Names, SKUs, prices, currencies,
    brands, GTINs and availability are never dropped (schema.org enum URLs such as
    ``https://schema.org/InStock`` are shortened to ``InStock``). Descriptions that the
    ``visible`` text already holds word for word are dropped: the model reads them there.
    Nested ``@type`` goes too: the key (``brand``, ``offers``) already says what it is.
    """
    if isinstance(value, str):
        return _compact_string(value)
    if isinstance(value, dict):
        if top and _is_site_node(value):
            return None
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _DROP_JSON_KEYS or (key == "@type" and not top):
                continue
            if key in _REVIEW_KEYS and isinstance(item, list):
                item = item[:MAX_REVIEWS]
            compact = _compact_json(item, visible, top=key == "@graph")
            if key in _PROSE_KEYS and isinstance(compact, str) and _is_visible(compact, visible):
                continue
            if compact is not None:
                out[key] = compact
        if not out or set(out) == {"@type"}:
            return None
        return out
    if isinstance(value, list):
        items: list[Any] = []
        seen: set[str] = set()
        for item in value:
            compact = _compact_json(item, visible, top)
            key = _dump(compact)
            if compact is not None and key not in seen:
                seen.add(key)
                items.append(compact)
        if not items:
            return None
        return items[0] if len(items) == 1 else _shared_fields(_name_value_table(items))
    return value


def _is_site_node(node: dict[str, Any]) -> bool:
    """A top-level node about the site or page (WebSite, Organization, ImageObject...) that
    holds no product data: the shop's address and logo are not what is extracted."""
    return all(kind in _SITE_JSON_TYPES for kind in _types(node)) and not _has_product(node)


def _types(node: dict[str, Any]) -> list[Any]:
    kinds = node.get("@type")
    return kinds if isinstance(kinds, list) else [kinds]


def _has_product(value: Any) -> bool:
    if isinstance(value, dict):
        if any(kind in _PRODUCT_JSON_TYPES for kind in _types(value)) or "offers" in value:
            return True
        return any(_has_product(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_product(item) for item in value)
    return False


def _compact_string(value: str) -> str | None:
    """Text of a JSON string without markup; None for URLs (images, links) and blanks."""
    if _SCHEMA_ORG.match(value):
        return _SCHEMA_ORG.sub("", value)
    if "<" in value or "&" in value:
        value = html.unescape(_TAG.sub(" ", value))
    text = _WS.sub(" ", value).strip()
    if not text or _URL.match(text):
        return None
    if len(text) > MAX_JSON_STRING_CHARS:
        text = text[:MAX_JSON_STRING_CHARS].rstrip() + "\u2026"
    return text


def _name_value_table(items: list[Any]) -> Any:
    """[{"name": "Lens", "value": "F"}, ...] (schema.org PropertyValue) as {"Lens": "F", ...}."""
    if not all(isinstance(item, dict) and set(item) == {"name", "value"} for item in items):
        return items
    names = [item["name"] for item in items]
    if not all(isinstance(name, str) for name in names) or len(set(names)) < len(names):
        return items
    return {item["name"]: item["value"] for item in items}


def _shared_fields(items: Any) -> Any:
    """Variants ([{"sku": "A-8", "size": "8", "offers": {...}}, ...]) state what they share
    once: {"all": {"offers": {...}}, "each": [{"sku": "A-8", "size": "8"}, ...]}."""
    if not isinstance(items, list) or len(items) < MIN_SHARED_ITEMS:
        return items
    if not all(isinstance(item, dict) for item in items):
        return items
    first, rest = items[0], items[1:]
    shared = {key: value for key, value in first.items() if all(
        key in item and item[key] == value for item in rest
    )}  # fmt: skip
    if not shared or len(shared) == len(first):
        return items
    return {"all": shared, "each": [{k: v for k, v in i.items() if k not in shared} for i in items]}


def _is_visible(value: str, visible: str) -> bool:
    """A long text the visible text holds already (short values are kept: they are cheap)."""
    return len(value) >= MIN_DUPLICATE_CHARS and value.removesuffix("\u2026") in visible


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- visible text ----------------------------------------------------------------------------


class _TextWriter:
    """Collects visible text as lines: "# heading", "- item", "cell | cell", plain lines.

    With ``drop_rules`` off only what a browser never shows (scripts, styles...) is left
    out: the guard's second pass on a page the rules emptied.
    """

    def __init__(self, page: _PageShape, *, drop_rules: bool = True) -> None:
        self.page = page
        self.drop_rules = drop_rules
        self.lines: list[str] = []
        self.parts: list[str] = []
        self.prefix = ""
        self.in_row = 0
        self.seen: set[str] = set()
        self.counter: tuple[str, int] | None = None
        self.size = 0
        self.heading_kept = False
        self.cut = False  # stopped at MAX_TEXT_CHARS

    def walk(self) -> list[str]:
        stack: list[tuple[Any, bool]] = [(self.page.start, False)]
        while stack and self.size <= MAX_TEXT_CHARS:  # the rest would be cut anyway
            element, closing = stack.pop()
            if closing:
                self._close(element)
                if element.tail:
                    self.parts.append(element.tail)
                continue
            if not isinstance(element.tag, str) or self._skip(element):
                if element.tail:
                    self.parts.append(element.tail)
                continue
            self.heading_kept = self.heading_kept or element is self.page.heading
            self._open(element)
            if element.text:
                self.parts.append(element.text)
            stack.append((element, True))
            stack.extend((child, False) for child in reversed(element))
        self.cut = bool(stack)
        self._flush()
        return self.lines

    def _skip(self, element: Any) -> bool:
        tag = element.tag
        if tag in _SKIP_TAGS:
            return True
        if self.drop_rules:
            rule = _drop_rule(element)
            if rule is not None and self.page.droppable(element, rule):
                return True
        if tag == "select":
            self._select(element)
            return True
        return False

    def _select(self, element: Any) -> None:
        options = [_WS.sub(" ", o.text_content()).strip() for o in element.iter("option")]
        options = [o for o in options if o]
        if 0 < len(options) <= MAX_SELECT_OPTIONS:
            self._flush()
            self._emit("options: " + ", ".join(options))

    def _open(self, element: Any) -> None:
        tag = element.tag
        if tag == "tr":
            self._flush()
            self.in_row += 1
        elif tag in _CELLS:
            if self.in_row and self.parts:
                self.parts.append(" | ")
        elif tag == "li":
            self._flush()
            self.prefix = "- "
        elif tag in _HEADINGS:
            self._flush()
            self.prefix = _HEADINGS[tag]
        elif tag in _BLOCK_TAGS or tag == "br":
            self._break()

    def _close(self, element: Any) -> None:
        tag = element.tag
        if tag == "tr":
            self.in_row = max(self.in_row - 1, 0)
            self._flush()
        elif tag == "li" or tag in _HEADINGS:
            self._flush()
            self.prefix = ""
        elif tag in _BLOCK_TAGS or tag in _CELLS:
            self._break()

    def _break(self) -> None:
        if self.in_row:
            self.parts.append(" ")
        else:
            self._flush()

    def _flush(self) -> None:
        if self.parts:
            line = _WS.sub(" ", "".join(self.parts)).strip()
            self.parts.clear()
            if line:
                self._emit(line)

    def _emit(self, line: str) -> None:
        """Keep a line once: repeated lines (buttons, badges, prices in carousels) add nothing.

        A run of UI lines that differ only by a counter ("Go to slide 1", "Go to slide 2")
        keeps its first; short ones ("Size 7", "Size 8") are content and stay.
        """
        if not _ALNUM.search(line) or line in self.seen or _URL.match(line):
            return  # a bare URL (image links printed as text) holds nothing to extract
        self.seen.add(line)
        numbers = _INTEGER.findall(line)
        if len(numbers) == 1 and len(_WORD.findall(line)) >= COUNTER_MIN_WORDS:
            template, number = _INTEGER.sub("#", line), int(numbers[0])
            previous, self.counter = self.counter, (template, number)
            if previous == (template, number - 1):
                return
        else:
            self.counter = None
        self.lines.append(self.prefix + line)
        self.size += len(self.prefix) + len(line) + 1
        self.prefix = ""


def _is_banner(element: Any) -> bool:
    """A site header (logo, search, account links), not the header of the product section."""
    if element.find(".//h1") is not None:
        return False
    return not any(ancestor.tag in ("main", "article") for ancestor in element.iterancestors())


def _is_menu(element: Any) -> bool:
    """A list of many items that are nothing but links: navigation, not content."""
    items = [child for child in element if child.tag == "li"]
    if len(items) < MENU_MIN_ITEMS:
        return False
    for item in items:
        text = _WS.sub("", item.text_content())
        linked = sum(len(_WS.sub("", a.text_content())) for a in item.iter("a"))
        if text and linked < len(text):
            return False
    return True


def _drop_rule(element: Any) -> str | None:
    """The rule that would drop ``element`` as hidden or boilerplate, if any."""
    tag = element.tag
    if tag in _BOILERPLATE_TAGS:
        return "tag"
    if element.get("hidden") is not None and not _REACT_SEGMENT.match(element.get("id") or ""):
        return "hidden"
    role = (element.get("role") or "").strip().lower()
    if role in _BOILERPLATE_ROLES:
        return "role"
    if (tag == "header" or role == "banner") and _is_banner(element):
        return "banner"
    style = element.get("style")
    if style and _hidden_by_style(style):
        return "style"
    if _is_boilerplate_name(element.get("id")) or _is_boilerplate_name(element.get("class")):
        return "name"
    if (element.get("aria-hidden") or "").strip().lower() == "true":
        return "aria"
    if tag in ("ul", "ol") and _is_menu(element):
        return "menu"
    return None


def _hidden_by_style(style: str) -> bool:
    """``display: none`` or ``visibility: hidden`` as declarations, not as substrings."""
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.lower().replace("!important", "").strip()
        if (name, value) in (("display", "none"), ("visibility", "hidden")):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _is_boilerplate_name(names: str | None) -> bool:
    """An id or class list naming a consent banner or other products' carousel."""
    if not names or not _BOILERPLATE_HINT.search(names):
        return False
    for name in names.split():
        words = [w.lower() for w in _NAME_SEPARATORS.split(_CAMEL.sub(" ", name)) if w]
        joined = ["".join(pair) for pair in itertools.pairwise(words)]  # "up-sell", "crossSell"
        if _OTHER_PRODUCTS.intersection(words + joined) or _BANNER_VENDORS.intersection(words):
            return True
        if len(words) == 1 and words[0] in _BANNER_KINDS:
            return True
        if any(a in _BANNER_KINDS and b in _BANNER_WORDS for a, b in itertools.pairwise(words)):
            return True
    return False


#: Whitespace that does not count as visible text (the usual ones, and the HTML favourites).
_SPACES = " \t\n\r\f\v\xa0\u2009\u200b\u3000"


def _char_count(text: str) -> int:
    """Visible characters of ``text``: whitespace does not count. Counted in C without
    copying the text: a big page's text split into words cost six times the page in memory."""
    return len(text) - sum(map(text.count, _SPACES))


class _PageShape:
    """What the drop rules must leave: the main heading, the product's scope and any
    container of most of the page's text; measured once per page."""

    def __init__(self, root: Any) -> None:
        body = root.find("body")
        self.start = body if body is not None else root
        # Text a browser never shows goes first (JSON-LD is read before): sizes below are
        # then the text of the tree, measured in C, and the walk meets fewer elements.
        etree.strip_elements(self.start, *_TEXT_HOLDING_UNSEEN_TAGS, with_tail=False)
        self.text_chars = _visible_chars(self.start)
        self.heading = _main_heading(self.start)
        anchors = [self.heading] if self.heading is not None else []
        anchors += [
            scope
            for scope in self.start.xpath("descendant-or-self::*[@itemtype]")
            if any(_PRODUCT_ITEMTYPE.search(kind) for kind in scope.get("itemtype").split())
        ]
        self.protected = {element for anchor in anchors for element in _self_and_ancestors(anchor)}

    def droppable(self, element: Any, rule: str) -> bool:
        """Whether a drop rule may take ``element``: never the page, its main content, nor,
        for aria-hidden (hidden from screen readers, not from the eye), a big block."""
        if element.tag in _PAGE_TAGS or element in self.protected:
            return False
        if rule not in _ATTRIBUTE_RULES:
            return True  # <nav>, <footer>, menus: what they are does not depend on a name
        size = _visible_chars(element)
        if size >= MAIN_CONTAINER_SHARE * self.text_chars:
            return False
        return not (rule == "aria" and size > ARIA_HIDDEN_MAX_SHARE * self.text_chars)


def _self_and_ancestors(element: Any) -> Iterator[Any]:
    yield element
    yield from element.iterancestors()


def _main_heading(start: Any) -> Any:
    """The page's first <h1> with text (later ones are often other products' titles)."""
    for heading in start.iter("h1"):
        if _WS.sub("", heading.text_content()):
            return heading
    return None


#: Unseen elements that hold text; removed from the tree before it is measured and read.
_TEXT_HOLDING_UNSEEN_TAGS = ("script", "style", "noscript", "template", "svg", "math", "textarea")


def _visible_chars(element: Any) -> int:
    """Visible characters under ``element`` (unseen text already removed), rules aside."""
    return _char_count(etree.tostring(element, method="text", encoding=str, with_tail=False))


# --- output ----------------------------------------------------------------------------------


def _plain_lines(lines: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for line in lines:
        line = _WS.sub(" ", line).strip()
        if line and line not in seen:
            seen.add(line)
            yield line


def _finish(lines: Any, limit: int) -> tuple[str, bool]:
    """Join lines, make tag openers inert and cap the size (at a line boundary if one is
    near the cap); also say whether it cut."""
    text = "\n".join(lines)
    cut = len(text) > limit
    if cut:
        boundary = text.rfind("\n", 0, limit)
        text = text[: boundary if boundary >= MIN_LINE_CUT_SHARE * limit else limit]
    return without_surrogates(_TAG_OPEN.sub(_INERT_LT, text)), cut
