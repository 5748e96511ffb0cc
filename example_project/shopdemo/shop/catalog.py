"""The shop's products: deterministic, so every run crawls the same pages.

Each product is rendered with one of several page templates (see
:mod:`.pages`) that carry its data differently: JSON-LD, microdata and meta
tags only, or visible text only. That spread is what real crawls meet, and it
shows what the offline emulator can and cannot fill (it reads structured data
only; a language model also reads the text).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Page templates, assigned in turn: ``jsonld`` (a Shopify-like theme with a
#: schema.org Product script), ``microdata`` (itemprop attributes and Open
#: Graph meta, no JSON-LD), ``market`` (JSON-LD with an offers list and a
#: breadcrumb script), ``text`` (an old theme: the data is only in the prose).
TEMPLATES = ("jsonld", "microdata", "market", "text")
STRUCTURED_TEMPLATES = frozenset({"jsonld", "microdata", "market"})

CATEGORIES = ("kitchen", "garden", "office", "outdoor")
PRODUCTS_PER_CATEGORY = 12
#: Every NEW_LISTING_EVERY-th product (from NEW_LISTING_OFFSET) carries a
#: "New listing" badge: the spider marks those urgent (real-time extraction).
NEW_LISTING_EVERY = 9
NEW_LISTING_OFFSET = 4

_NOUNS = {
    "kitchen": ("Chef Knife", "Pour-Over Kettle", "Cast Iron Skillet", "Spice Grinder"),
    "garden": ("Pruning Shears", "Watering Can", "Raised Bed Kit", "Seed Tray Set"),
    "office": ("Desk Lamp", "Notebook Set", "Monitor Stand", "Fountain Pen"),
    "outdoor": ("Trail Backpack", "Camp Stove", "Insulated Bottle", "Hammock"),
}
_ADJECTIVES = ("Classic", "Compact", "Pro", "Everyday", "Heritage", "Studio")
_BRANDS = ("Northwind", "Larkspur", "Oakhaven", "Brightfield", "Kestrel")
_CURRENCIES = ("EUR", "USD", "GBP")
_AVAILABILITY = ("InStock", "InStock", "InStock", "OutOfStock", "PreOrder")


@dataclass(frozen=True)
class ShopProduct:
    """One product as the shop knows it (and as a perfect extraction would return it)."""

    index: int
    category: str
    title: str
    brand: str
    sku: str
    price: str
    currency: str
    availability: str
    template: str
    new_listing: bool
    description: str

    @property
    def slug(self) -> str:
        return f"{self.title.lower().replace(' ', '-')}-{self.index}"

    @property
    def path(self) -> str:
        return f"/p/{self.slug}"

    @property
    def has_structured_data(self) -> bool:
        return self.template in STRUCTURED_TEMPLATES


def make_product(index: int, template: str | None = None) -> ShopProduct:
    """Product ``index`` of an endless catalogue (the shop serves the first 48; benchmarks
    render thousands), in its own template or in ``template``."""
    category = CATEGORIES[index // PRODUCTS_PER_CATEGORY % len(CATEGORIES)]
    position = index % PRODUCTS_PER_CATEGORY
    noun = _NOUNS[category][position % len(_NOUNS[category])]
    adjective = _ADJECTIVES[(index * 5 + position // 4) % len(_ADJECTIVES)]
    brand = _BRANDS[index % len(_BRANDS)]
    cents = 499 + (index * 7919) % 19000
    return ShopProduct(
        index=index,
        category=category,
        title=f"{adjective} {noun}",
        brand=brand,
        sku=f"{category[:3].upper()}-{1000 + index * 37}",
        price=f"{cents // 100}.{cents % 100:02d}",
        currency=_CURRENCIES[index % len(_CURRENCIES)],
        availability=_AVAILABILITY[index % len(_AVAILABILITY)],
        template=template or TEMPLATES[index % len(TEMPLATES)],
        new_listing=index % NEW_LISTING_EVERY == NEW_LISTING_OFFSET,
        description=(
            f"The {adjective.lower()} {noun.lower()} from {brand}, made for everyday"
            f" {category} use. Backed by a two-year warranty and free returns."
        ),
    )


CATALOG: tuple[ShopProduct, ...] = tuple(
    make_product(index) for index in range(len(CATEGORIES) * PRODUCTS_PER_CATEGORY)
)
_BY_PATH = {product.path: product for product in CATALOG}


def by_path(path: str) -> ShopProduct | None:
    return _BY_PATH.get(path)


def in_category(category: str) -> list[ShopProduct]:
    return [product for product in CATALOG if product.category == category]


def related(product: ShopProduct, count: int = 4) -> list[ShopProduct]:
    """Products shown under ``product``: its category neighbours (links the spider follows)."""
    siblings = in_category(product.category)
    start = siblings.index(product) if product in siblings else -1
    return [siblings[(start + step) % len(siblings)] for step in range(1, count + 1)]
