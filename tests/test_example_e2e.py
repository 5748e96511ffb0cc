"""The example project end to end, as a user runs it: two ``scrapy`` commands.

In a temporary copy of example_project/, with OPENAI_API_KEY removed from the
environment (so the project's settings select the in-process emulator, whose
state in .scrapy/ both processes share): ``scrapy crawl products`` extracts the
urgent items in real time and spools the rest; ``scrapy collect-batches --wait``
brings the rest back. Every product page must come out exactly once,
extracted, on the path its urgency calls for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
sys.path.insert(0, str(EXAMPLE))

from shopdemo.shop.catalog import CATALOG, ShopProduct  # noqa: E402
from shopdemo.shop.pages import SHOP_NAME  # noqa: E402

EXTRACTED = ("title", "price", "currency", "sku", "brand", "availability")
OFFLINE_NOTICE = "OFFLINE: LLM_EXTRACT_EMULATOR_DIR is set, so requests go to the bundled"


@dataclass(frozen=True)
class Run:
    project: Path
    realtime: list[dict[str, Any]]
    collected: list[dict[str, Any]]
    crawl_log: str
    collect_log: str


def copy_example(destination: Path) -> Path:
    """example_project/ without what earlier runs left in it."""
    return Path(
        shutil.copytree(
            EXAMPLE, destination, ignore=shutil.ignore_patterns(".scrapy", "output", "__pycache__")
        )
    )


def offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    return env


def scrapy(project: Path, *args: str) -> str:
    """Run a scrapy command in ``project``; its log, or a failure that shows it."""
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", *args],
        cwd=project,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"scrapy {' '.join(args)} failed:\n{result.stderr[-5000:]}"
    return result.stderr


def read_feed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    project = copy_example(tmp_path_factory.mktemp("e2e") / "example_project")
    crawl_log = scrapy(project, "crawl", "products", "-O", "realtime.jsonl")
    collect_log = scrapy(project, "collect-batches", "--wait", "-O", "out.jsonl")
    return Run(
        project,
        read_feed(project / "realtime.jsonl"),
        read_feed(project / "out.jsonl"),
        crawl_log,
        collect_log,
    )


def paths(items: list[dict[str, Any]]) -> list[str]:
    return [urlsplit(item["url"]).path for item in items]


def by_path() -> dict[str, ShopProduct]:
    return {product.path: product for product in CATALOG}


def test_every_product_page_comes_out_once(run: Run) -> None:
    emitted = paths(run.realtime) + paths(run.collected)
    assert sorted(emitted) == sorted(product.path for product in CATALOG)


def test_new_listings_in_the_crawl_feed_the_rest_from_collect(run: Run) -> None:
    urgent = {product.path for product in CATALOG if product.new_listing}
    assert urgent and len(urgent) < len(CATALOG)
    assert set(paths(run.realtime)) == urgent
    assert set(paths(run.collected)) == {product.path for product in CATALOG} - urgent


def test_items_are_extracted_without_their_page(run: Run) -> None:
    for item in run.realtime + run.collected:
        assert "html" not in item, item["url"]
        assert "llm_extract_error" not in item, item
        assert set(EXTRACTED) <= set(item), item


def test_fields_come_from_the_pages_structured_data(run: Run) -> None:
    catalog = by_path()
    structured = [
        (item, catalog[urlsplit(item["url"]).path])
        for item in run.realtime + run.collected
        if catalog[urlsplit(item["url"]).path].has_structured_data
    ]
    assert len(structured) == sum(product.has_structured_data for product in CATALOG)
    for item, product in structured:
        expected = {
            "price": float(product.price),
            "currency": product.currency,
            "sku": product.sku,
            "brand": product.brand,
        }
        assert {name: item[name] for name in expected} == expected, item["url"]
        assert item["availability"].endswith(product.availability), item["url"]
        # A model answers the product name; the emulator, which matches keys and not
        # meaning, may copy the page's <title> line, shop name included.
        assert item["title"] in (product.title, f"{product.title} | {SHOP_NAME}"), item["url"]


def test_urgent_items_keep_their_priority_through_both_paths(run: Run) -> None:
    assert {item["priority"] for item in run.realtime} == {"high"}
    assert {item["priority"] for item in run.collected} == {"normal"}


def test_both_commands_say_they_run_offline(run: Run) -> None:
    assert run.crawl_log.count(OFFLINE_NOTICE) == 1
    assert run.collect_log.count(OFFLINE_NOTICE) == 1


def test_no_row_failed_for_good(run: Run) -> None:
    spool = run.project / ".scrapy" / "llm_extract_spool"
    assert [path.name for path in spool.iterdir()], "the crawl spooled nothing"
    failures = [
        line
        for path in spool.glob("*/failures.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert failures == []
