"""Learned rules against the model alone: share answered for free, accuracy, drift, cost.

Run: ``python bench/bench_rules.py [--pages 2000] [--orders 3] [--noise 0.05]``

A generated shop (the example shop's ``jsonld`` theme, products from
``shopdemo.shop.catalog.make_product``, whose truth is exact) is crawled page
by page through a :class:`RuleBook` with the default settings; a page the
rules do not answer is answered by the emulator's extraction in-process, in
noisy mode (``--noise``: share of answers with one value wrong or formatted
otherwise, half each), and the book learns from it. The model-only baseline is
the same noisy emulator on every page, measured in the same run. Each scenario
injects one drift at the half-way page of the crawl (none, a class rename, the
price moved into a new element with the old one left stale, the same with
every old location stale so only the audit can see it, a 50 % A/B variant,
30 % out-of-stock pages, hashed class names), over several shuffled orders.

Figures: share of pages and of field values answered without the model;
accuracy against the truth of what the crawl emits, next to model-only;
pages after the drift until the last wrong value a rule emitted, and the
wrong values emitted meanwhile (as a share of all values emitted); rules
retired (in the "none" scenario, every retirement is noise retiring a good
rule); cost per 1,000 pages at batch prices, prompt tokens as the package
counts them for these pages.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scrapy.settings import Settings

from scrapy_llm_extract.config import Config
from scrapy_llm_extract.emulator.extract import fill, structured_entries
from scrapy_llm_extract.emulator.noise import Noise
from scrapy_llm_extract.extraction import ExtractionSchema, build_request
from scrapy_llm_extract.items import input_fields
from scrapy_llm_extract.models import cost_usd, model_info
from scrapy_llm_extract.prompt import RequestBuilder
from scrapy_llm_extract.rules import RuleBook
from scrapy_llm_extract.rules.values import canonical
from scrapy_llm_extract.schema import item_class_schema, strict_schema
from scrapy_llm_extract.tokens import count_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "example_project"))

from shopdemo.items import Product
from shopdemo.shop.catalog import ShopProduct, make_product
from shopdemo.shop.pages import format_price, product_page

MODEL = "gpt-4o-mini"
SCHEMA = strict_schema(
    item_class_schema(Product), exclude=input_fields(Config.from_settings(Settings()))
)
FIELDS = tuple(SCHEMA["properties"])
SITE = "https://fieldstone.example"

Page = tuple[str, dict[str, Any]]  # html, truth
Drift = Callable[[ShopProduct], Page]


def truth_of(product: ShopProduct, price: str | None = None) -> dict[str, Any]:
    return {
        "title": product.title,
        "price": float(price or product.price),
        "currency": product.currency,
        "sku": product.sku,
        "brand": product.brand,
        "availability": f"https://schema.org/{product.availability}",
    }


def plain(product: ShopProduct) -> Page:
    return product_page(product), truth_of(product)


def class_rename(product: ShopProduct) -> Page:
    html, truth = plain(product)
    return html.replace("product__price", "price-now").replace("product__vendor", "vendor"), truth


def _on_sale(product: ShopProduct) -> tuple[ShopProduct, str]:
    sale = f"{float(product.price) * 0.8:.2f}"
    return dataclasses.replace(product, price=sale), sale


def price_moved(product: ShopProduct) -> Page:
    """The sale price in JSON-LD and a new element; the old element keeps the list price."""
    sale_product, sale = _on_sale(product)
    html = product_page(sale_product)
    old = f'<p class="product__price">{format_price(sale_product)}</p>'
    new = (
        f'<p class="product__price"><s>{format_price(product)}</s></p>'
        f'<p class="product__sale">{format_price(sale_product)}</p>'
    )
    return html.replace(old, new), truth_of(product, sale)


def price_moved_silent(product: ShopProduct) -> Page:
    """The sale price only in a new meta tag; JSON-LD and the old element keep the list price."""
    _, sale = _on_sale(product)
    html = product_page(product).replace("</head>", f'<meta name="price" content="{sale}"></head>')
    return html, truth_of(product, sale)


def _chance(product: ShopProduct, share: float) -> bool:
    digest = hashlib.sha256(f"variant{product.index}".encode()).digest()
    return digest[0] / 256 < share


def ab_variant(product: ShopProduct) -> Page:
    html, truth = plain(product)
    if _chance(product, 0.5):
        html = html.replace("product__info", "pdp-info").replace("product__price", "pdp-price")
    return html, truth


def out_of_stock(product: ShopProduct) -> Page:
    if not _chance(product, 0.3):
        return plain(product)
    gone = dataclasses.replace(product, availability="OutOfStock")
    html = product_page(gone)
    html = re.sub(r'"price": "[^"]*", ', "", html)
    html = html.replace(f'<p class="product__price">{format_price(gone)}</p>', "<p>Sold out</p>")
    return html, {**truth_of(gone), "price": None}


def hashed_classes(product: ShopProduct) -> Page:
    html, truth = plain(product)

    def hashed(match: re.Match[str]) -> str:
        tokens = match.group(1).split()
        return (
            'class="'
            + " ".join("css-" + hashlib.sha1(t.encode()).hexdigest()[:6] for t in tokens)
            + '"'
        )

    return re.sub(r'class="([^"]*)"', hashed, html), truth


SCENARIOS: dict[str, Drift] = {
    "none": plain,
    "class_rename": class_rename,
    "price_moved": price_moved,
    "price_moved_silent": price_moved_silent,
    "ab_variant": ab_variant,
    "out_of_stock": out_of_stock,
    "hashed_classes": hashed_classes,
}


@dataclasses.dataclass
class Run:
    pages: int = 0
    model_pages: int = 0
    values_by_rules: int = 0
    right: int = 0
    right_model_only: int = 0
    retired: int = 0
    last_wrong_after_drift: int = 0
    wrong_after_drift: int = 0


def crawl(scenario: Drift, pages: int, order_seed: int, noise: Noise) -> Run:
    products = [make_product(index, "jsonld") for index in range(pages)]
    random.Random(order_seed).shuffle(products)
    book = RuleBook(None, rng=random.Random(order_seed))
    run = Run()
    for position, product in enumerate(products):
        drifted = position >= pages // 2
        html, truth = scenario(product) if drifted else plain(product)
        model = noise.apply(fill(SCHEMA, structured_entries(html)), html)
        view = book.view(html, f"{SITE}{product.path}")
        verdict = book.answer(view, SCHEMA)
        if verdict.fields is None:
            run.model_pages += 1
            run.retired += book.learn(view, model).retired
            emitted = model
        else:
            run.values_by_rules += len(verdict.fields)
            emitted = verdict.fields
            wrong = sum(canonical(emitted[f]) != canonical(truth[f]) for f in FIELDS)
            if drifted and wrong:
                run.wrong_after_drift += wrong
                run.last_wrong_after_drift = position - pages // 2 + 1
        run.pages += 1
        run.right += sum(canonical(emitted[f]) == canonical(truth[f]) for f in FIELDS)
        run.right_model_only += sum(canonical(model[f]) == canonical(truth[f]) for f in FIELDS)
    book.close()
    return run


def cost_per_page(sample: int = 20) -> float:
    """Batch-price cost of one page to the model, prompt tokens as the package counts them."""
    config = Config.from_settings(Settings({"LLM_EXTRACT_MODEL": MODEL}))
    builder = RequestBuilder(config)
    schema = ExtractionSchema("Product", SCHEMA)
    info = model_info(MODEL)
    costs = []
    for index in range(sample):
        html, truth = plain(make_product(index, "jsonld"))
        request = build_request(builder, html, SITE, schema)
        output = count_tokens(json.dumps(truth), MODEL)
        costs.append(cost_usd(info, request.prompt_tokens, output, batch=True) or 0.0)
    return statistics.mean(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=3, help="shuffled crawl orders per scenario")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    noise = Noise(rate=args.noise, wrong_share=0.5, seed=11)
    page_cost = cost_per_page()
    print(
        f"{args.pages} pages per crawl, one template, {args.orders} orders, noise {args.noise:.0%}"
        f" (half wrong, half reformatted), drift from page {args.pages // 2}; defaults"
        " (min pages 5, audit 50% decaying to 5%)."
    )
    header = (
        f"{'scenario':<19}{'no model':>9}{'values':>8}{'acc rules':>10}{'acc model':>10}"
        f"{'Δ pt':>7}{'retired':>8}{'wrong until':>12}{'wrong vals':>11}{'$/1k rules':>11}"
        f"{'$/1k model':>11}{'ratio':>7}"
    )
    print(header)
    for name in args.scenarios:
        runs = [crawl(SCENARIOS[name], args.pages, seed, noise) for seed in range(args.orders)]
        pages = sum(r.pages for r in runs)
        values = pages * len(FIELDS)
        free = 1 - sum(r.model_pages for r in runs) / pages
        free_values = sum(r.values_by_rules for r in runs) / values
        accuracy = sum(r.right for r in runs) / values
        baseline = sum(r.right_model_only for r in runs) / values
        wrong = sum(r.wrong_after_drift for r in runs) / values
        until = max(r.last_wrong_after_drift for r in runs)
        rules_cost = page_cost * 1000 * (1 - free)
        model_cost = page_cost * 1000
        print(
            f"{name:<19}{free:>9.1%}{free_values:>8.1%}{accuracy:>10.2%}{baseline:>10.2%}"
            f"{(accuracy - baseline) * 100:>+7.2f}{sum(r.retired for r in runs) / len(runs):>8.1f}"
            f"{until:>12}{wrong:>11.2%}{rules_cost:>11.4f}{model_cost:>11.4f}"
            f"{rules_cost / model_cost:>7.2f}"
        )


if __name__ == "__main__":
    main()
