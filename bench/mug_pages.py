"""The small product page the real-time and collection benchmarks extract from."""


def page(n: int) -> str:
    """Product ``n``: its name, SKU, price and currency in JSON-LD, a line of visible text."""
    return (
        '<html><head><script type="application/ld+json">{"@type": "Product",'
        f' "name": "Mug {n}", "sku": "MUG-{n}", "offers": {{"price": "{10 + n}.99",'
        f' "priceCurrency": "EUR"}}}}</script></head><body><h1>Mug {n}</h1>'
        f"<p>Price {10 + n},99 EUR. A blue mug, dishwasher safe.</p></body></html>"
    )
