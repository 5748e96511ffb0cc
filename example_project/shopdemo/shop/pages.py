"""The shop's HTML: a home page, paginated category pages and product pages.

Product pages carry what real shop themes carry around the product: a mega
menu, a cookie banner, inline styles and tracking scripts, SVG icons, reviews,
related products with their own prices, a newsletter form and a long footer.
That clutter is what the package's HTML slimming removes before a page is
sent to the model. :func:`render` maps a path to a page.
"""

from __future__ import annotations

import json
from html import escape

from .catalog import CATALOG, CATEGORIES, ShopProduct, by_path, in_category, related

SHOP_NAME = "Fieldstone Supply Co."
PAGE_SIZE = 5

_ICON_CART = (
    '<svg class="icon icon-cart" viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">'
    '<path d="M7 18c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2-.9-2-2-2zM1 2v2h2l3.6 7.59-1.35 2.45c-.16.28'
    "-.25.61-.25.96 0 1.1.9 2 2 2h12v-2H7.42c-.14 0-.25-.11-.25-.25l.03-.12.9-1.63h7.45c.75 0 1.41"
    "-.41 1.75-1.03l3.58-6.49A1 1 0 0 0 20 4H5.21l-.94-2H1zm16 16c-1.1 0-2 .9-2 2s.9 2 2 2 2-.9 2-2"
    '-.9-2-2-2z"/></svg>'
)
_ICON_USER = (
    '<svg class="icon icon-user" viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">'
    '<path d="M12 12c2.21 0 4-1.79 4-4s-1.79-4-4-4-4 1.79-4 4 1.79 4 4 4zm0 2c-2.67 0-8 1.34-8 4v2'
    'h16v-2c0-2.66-5.33-4-8-4z"/></svg>'
)
_ICON_STAR = (
    '<svg class="icon icon-star" viewBox="0 0 24 24" width="14" height="14" aria-hidden="true">'
    '<path d="M12 17.27 18.18 21l-1.64-7.03L22 9.24l-7.19-.61L12 2 9.19 8.63 2 9.24l5.46 4.73'
    'L5.82 21z"/></svg>'
)

_STYLE = """
:root{--brand:#2f5d50;--accent:#e0a84b;--ink:#1d2424;--muted:#6b7775;--radius:6px}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,sans-serif;color:var(--ink)}
.site-header{display:flex;align-items:center;gap:2rem;padding:1rem 2rem;background:#fff}
.mega-menu{display:flex;gap:1.5rem;list-style:none;margin:0;padding:0}
.mega-menu__panel{display:none;position:absolute;top:100%;left:0;width:100%;padding:2rem}
.mega-menu li:hover .mega-menu__panel{display:grid;grid-template-columns:repeat(4,1fr)}
.cookie-banner{position:fixed;bottom:0;left:0;right:0;padding:1rem 2rem;background:#111;color:#eee}
.product{display:grid;grid-template-columns:1fr 1fr;gap:3rem;padding:2rem}
.product__price{font-size:1.75rem;font-weight:700;color:var(--brand)}
.badge{display:inline-block;padding:.125rem .5rem;border-radius:var(--radius);font-size:.75rem}
.badge--new{background:var(--accent);color:#000}.badge--sale{background:#c0392b;color:#fff}
.related{display:grid;grid-template-columns:repeat(4,1fr);gap:1rem;padding:2rem}
.site-footer{display:grid;grid-template-columns:repeat(4,1fr);gap:2rem;padding:3rem 2rem}
@media (max-width:720px){.product,.related,.site-footer{grid-template-columns:1fr}}
"""

_TRACKING = """
window.dataLayer = window.dataLayer || [];
function gtag(){dataLayer.push(arguments);}
gtag('js', new Date()); gtag('config', 'G-FS0000DEMO', {anonymize_ip: true});
(function(w,d){var s=d.createElement('script');s.async=true;
s.src='/static/analytics.js?v=20250101';d.head.appendChild(s);
w.addEventListener('scroll',function(){w.__depth=Math.max(w.__depth||0,w.scrollY);});})(window,document);
"""

_COOKIES = (
    '<div class="cookie-banner" id="cookie-banner" role="dialog" aria-live="polite">'
    "<p>We use cookies to remember your cart, measure traffic and show you relevant offers."
    ' See our <a href="/legal/cookies">cookie policy</a>.</p>'
    '<button type="button" data-consent="all">Accept all</button>'
    '<button type="button" data-consent="necessary">Necessary only</button>'
    "<script>document.querySelectorAll('[data-consent]').forEach(function(b){b.onclick=function(){"
    "document.cookie='consent='+b.dataset.consent+';path=/;max-age=31536000';"
    "document.getElementById('cookie-banner').remove();};});</script></div>"
)


def format_price(product: ShopProduct) -> str:
    """The price as a shopper reads it in the product's currency."""
    if product.currency == "EUR":
        return f"{product.price.replace('.', ',')} €"
    symbol = {"USD": "$", "GBP": "£"}[product.currency]
    return f"{symbol}{product.price}"


def _availability_text(product: ShopProduct) -> str:
    return {"InStock": "In stock", "OutOfStock": "Out of stock", "PreOrder": "Pre-order"}[
        product.availability
    ]


def _nav() -> str:
    items = "".join(
        f'<li><a class="mega-menu__link" href="/c/{category}">{category.title()}</a>'
        f'<div class="mega-menu__panel">'
        + "".join(
            f'<a href="/c/{category}">{escape(p.title)}</a>' for p in in_category(category)[:4]
        )
        + f'<a href="/c/{category}">All {category}</a></div></li>'
        for category in CATEGORIES
    )
    return (
        '<header class="site-header">'
        f'<a class="logo" href="/">{escape(SHOP_NAME)}</a>'
        f'<nav class="categories" aria-label="Shop"><ul class="mega-menu">{items}</ul></nav>'
        '<form class="search" action="/search"><input name="q" placeholder="Search products">'
        "</form>"
        f'<a href="/account" aria-label="Account">{_ICON_USER}</a>'
        f'<a href="/cart" aria-label="Cart">{_ICON_CART}<span class="cart-count">0</span></a>'
        "</header>"
    )


def _footer() -> str:
    columns = {
        "Shop": ("Gift cards", "Sale", "Bestsellers", "New in"),
        "Help": ("Shipping", "Returns", "Size guide", "Contact us"),
        "About": ("Our story", "Sustainability", "Careers", "Press"),
        "Legal": ("Terms", "Privacy", "Cookies", "Imprint"),
    }
    blocks = "".join(
        f"<div><h4>{title}</h4><ul>"
        + "".join(
            f'<li><a href="/pages/{link.lower().replace(" ", "-")}">{link}</a></li>'
            for link in links
        )
        + "</ul></div>"
        for title, links in columns.items()
    )
    return (
        f'<footer class="site-footer">{blocks}'
        '<form class="newsletter" action="/newsletter" method="post"><h4>Ten percent off your'
        ' first order</h4><input type="email" name="email" placeholder="you@example.com">'
        "<button>Subscribe</button></form>"
        f'<p class="copyright">© 2025 {escape(SHOP_NAME)}. All prices include VAT.</p>'
        "</footer>"
    )


def _layout(title: str, body: str, head: str = "") -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} | {escape(SHOP_NAME)}</title>"
        f"<style>{_STYLE}</style>{head}"
        f"<script>{_TRACKING}</script></head><body>"
        f"{_nav()}<main>{body}</main>{_footer()}{_COOKIES}</body></html>"
    )


def _card(product: ShopProduct, link_class: str) -> str:
    return (
        '<div class="product-card">'
        f'<a class="{link_class}" href="{product.path}">'
        f'<img src="/img/{product.slug}.webp" alt="{escape(product.title)}" loading="lazy">'
        f"<span>{escape(product.title)}</span></a>"
        f'<span class="product-card__price">{format_price(product)}</span></div>'
    )


def _related(product: ShopProduct) -> str:
    cards = "".join(_card(other, "related__link") for other in related(product))
    return f'<section class="related"><h2>You may also like</h2>{cards}</section>'


def _reviews(product: ShopProduct) -> str:
    stars = _ICON_STAR * (3 + product.index % 3)
    return (
        '<section class="reviews"><h2>Reviews</h2>'
        f'<div class="review"><span class="stars">{stars}</span>'
        "<p>Arrived quickly and works as described. Would buy again.</p>"
        "<cite>Verified buyer</cite></div>"
        '<div class="review"><p>Good value, though the box was a little dented.</p>'
        "<cite>Verified buyer</cite></div></section>"
    )


def _badge(product: ShopProduct) -> str:
    if not product.new_listing:
        return ""
    return '<span class="badge badge--new" data-new-listing="true">New listing</span>'


def _jsonld_script(data: object) -> str:
    # "</" would end the script element early; JSON allows it escaped.
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return f'<script type="application/ld+json">{payload}</script>'


def _offer(product: ShopProduct) -> dict[str, str]:
    return {
        "@type": "Offer",
        "price": product.price,
        "priceCurrency": product.currency,
        "availability": f"https://schema.org/{product.availability}",
        "url": product.path,
    }


def _product_jsonld(product: ShopProduct) -> str:
    """A Shopify-like theme: everything in one schema.org Product script."""
    head = _jsonld_script(
        {
            "@context": "https://schema.org",
            "@type": "Product",
            "name": product.title,
            "sku": product.sku,
            "brand": {"@type": "Brand", "name": product.brand},
            "description": product.description,
            "image": f"/img/{product.slug}.webp",
            "offers": _offer(product),
        }
    )
    body = (
        '<article class="product">'
        f'<div class="product__media"><img src="/img/{product.slug}.webp" alt=""></div>'
        f'<div class="product__info">{_badge(product)}<h1>{escape(product.title)}</h1>'
        f'<p class="product__vendor">{escape(product.brand)}</p>'
        f'<p class="product__price">{format_price(product)}</p>'
        f"<p>{_availability_text(product)}</p>"
        '<form action="/cart/add" method="post"><button type="submit">Add to cart</button></form>'
        f"<p>{escape(product.description)}</p></div></article>"
    )
    return _layout(product.title, body + _reviews(product) + _related(product), head)


def _product_microdata(product: ShopProduct) -> str:
    """A theme without JSON-LD: microdata attributes and Open Graph product tags."""
    head = (
        f'<meta property="og:type" content="product">'
        f'<meta property="og:title" content="{escape(product.title)}">'
        f'<meta property="product:price:amount" content="{product.price}">'
        f'<meta property="product:price:currency" content="{product.currency}">'
    )
    body = (
        '<div class="product" itemscope itemtype="https://schema.org/Product">'
        f'<div class="gallery"><img itemprop="image" src="/img/{product.slug}.webp" alt=""></div>'
        f'<div class="details">{_badge(product)}'
        f'<h1 itemprop="name">{escape(product.title)}</h1>'
        f'<meta itemprop="brand" content="{escape(product.brand)}">'
        f'<p>Item no. {product.sku}</p><meta itemprop="sku" content="{product.sku}">'
        '<div itemprop="offers" itemscope itemtype="https://schema.org/Offer">'
        f'<span class="product__price">{format_price(product)}</span>'
        f'<meta itemprop="price" content="{product.price}">'
        f'<meta itemprop="priceCurrency" content="{product.currency}">'
        f'<link itemprop="availability" href="https://schema.org/{product.availability}">'
        f"<p>{_availability_text(product)}</p></div>"
        f'<div itemprop="description"><p>{escape(product.description)}</p></div>'
        "</div></div>"
    )
    return _layout(product.title, body + _related(product) + _reviews(product), head)


def _product_market(product: ShopProduct) -> str:
    """A marketplace theme: JSON-LD with a list of offers, then a breadcrumb script."""
    head = _jsonld_script(
        {
            "@context": "https://schema.org/",
            "@type": "Product",
            "name": product.title,
            "brand": product.brand,
            "sku": product.sku,
            "offers": [_offer(product)],
            "aggregateRating": {
                "@type": "AggregateRating",
                "ratingValue": "4.4",
                "reviewCount": 17 + product.index,
            },
        }
    ) + _jsonld_script(
        {
            "@context": "https://schema.org",
            "@type": "BreadcrumbList",
            "itemListElement": [
                {"@type": "ListItem", "position": 1, "name": "Home", "item": "/"},
                {
                    "@type": "ListItem",
                    "position": 2,
                    "name": product.category.title(),
                    "item": f"/c/{product.category}",
                },
            ],
        }
    )
    body = (
        f'<nav class="breadcrumb"><a href="/">Home</a> &rsaquo; '
        f'<a href="/c/{product.category}">{product.category.title()}</a></nav>'
        f'<section class="listing">{_badge(product)}<h1>{escape(product.title)}</h1>'
        f'<div class="seller">Sold by {escape(product.brand)} · ships in 2&ndash;3 days</div>'
        f'<div class="buybox"><b>{format_price(product)}</b> '
        f"<small>{_availability_text(product)}</small>"
        "<button>Buy now</button></div>"
        f"<details open><summary>About this item</summary><p>{escape(product.description)}"
        f"</p><p>Model: {product.sku}</p></details></section>"
    )
    return _layout(product.title, body + _related(product) + _reviews(product), head)


def _product_text(product: ShopProduct) -> str:
    """An old theme: no structured data at all, the facts are only in the text."""
    body = (
        '<table class="product-table"><tr><td class="left">'
        f'<img src="/img/{product.slug}.webp" width="300"></td><td class="right">'
        f"{_badge(product)}<h2>{escape(product.title)}</h2>"
        f"<p>Manufacturer: {escape(product.brand)}<br>Article number: {product.sku}</p>"
        f'<p class="price">Our price: {format_price(product)}</p>'
        f"<p>Availability: {_availability_text(product)}</p>"
        f"<p>{escape(product.description)}</p></td></tr></table>"
    )
    return _layout(product.title, body + _related(product))


_PRODUCT_TEMPLATES = {
    "jsonld": _product_jsonld,
    "microdata": _product_microdata,
    "market": _product_market,
    "text": _product_text,
}


def product_page(product: ShopProduct) -> str:
    return _PRODUCT_TEMPLATES[product.template](product)


def home_page() -> str:
    featured = "".join(_card(product, "product-card__link") for product in CATALOG[::12])
    body = (
        f'<section class="hero"><h1>Good tools for every day</h1></section>'
        f'<section class="featured"><h2>Featured</h2>{featured}</section>'
    )
    return _layout("Home", body)


def category_page(category: str, page: int) -> str | None:
    products = in_category(category)
    pages = -(-len(products) // PAGE_SIZE)
    if not 1 <= page <= pages:
        return None
    shown = products[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    cards = "".join(_card(product, "product-card__link") for product in shown)
    pager = ""
    if page > 1:
        pager += f'<a rel="prev" href="/c/{category}?page={page - 1}">Previous</a>'
    if page < pages:
        pager += f'<a rel="next" href="/c/{category}?page={page + 1}">Next</a>'
    body = (
        f"<h1>{category.title()}</h1>"
        f'<div class="grid">{cards}</div><nav class="pagination">{pager}</nav>'
    )
    return _layout(category.title(), body)


ROBOTS_TXT = "User-agent: *\nDisallow: /cart\nDisallow: /account\n"


def render(path: str, query: dict[str, list[str]]) -> tuple[str, str] | None:
    """(content type, body) of the page at ``path``, None when there is none."""
    if path == "/robots.txt":
        return "text/plain; charset=utf-8", ROBOTS_TXT
    if path == "/":
        return "text/html; charset=utf-8", home_page()
    if path.startswith("/c/"):
        try:
            page = int(query.get("page", ["1"])[0])
        except ValueError:
            return None
        html = category_page(path.removeprefix("/c/"), page)
        return None if html is None else ("text/html; charset=utf-8", html)
    product = by_path(path)
    if product is not None:
        return "text/html; charset=utf-8", product_page(product)
    return None
