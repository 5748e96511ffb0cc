"""Shared by the collect-batches tests: spooled runs, a downstream pipeline, the replay crawl."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import scrapy
from itemadapter import ItemAdapter
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.client import async_client, sync_client
from scrapy_llm_extract.collect import CollectOptions, replay_spider
from scrapy_llm_extract.collect.remote import StoreCollection
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record
from scrapy_llm_extract.publish import open_store
from scrapy_llm_extract.retry import RetryPolicy
from scrapy_llm_extract.spool import Run, Spool
from scrapy_llm_extract.submit import Submitter
from tests.conftest import product_page
from tests.helpers import make_config


class BareProduct(scrapy.Item):
    """An item class without the row id field (LLM_EXTRACT_ROW_ID_FIELD)."""

    url = scrapy.Field()
    html = scrapy.Field()
    sku = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    checked = scrapy.Field()


class Product(BareProduct):
    llm_extract_row_id = scrapy.Field()


class Downstream:
    """A project pipeline after extraction: records what reaches it, and marks the item."""

    seen: ClassVar[list[Any]] = []

    def process_item(self, item: Any) -> Any:
        Downstream.seen.append(item)
        ItemAdapter(item)["checked"] = True
        return item


class RaiseOn:
    """A project pipeline with a bug: raises on the URLs in ``urls``."""

    urls: ClassVar[set[str]] = set()

    def process_item(self, item: Any) -> Any:
        if ItemAdapter(item)["url"] in RaiseOn.urls:
            raise RuntimeError("bug in the project's pipeline")
        return item


class AsDict:
    """A common pattern: the pipeline returns a new object, a plain dict."""

    def process_item(self, item: Any) -> Any:
        return ItemAdapter(item).asdict()


class FailingStorage:
    """A feed target whose storage fails, like an unreachable FTP or S3 URI."""

    def __init__(self, uri: str, *, feed_options: dict[str, Any] | None = None) -> None:
        self.uri = uri

    def open(self, spider: Any) -> Any:
        return tempfile.TemporaryFile()

    def store(self, file: Any) -> None:
        file.close()
        raise OSError("feed target unreachable")


def settings(tmp_path: Path, emulator: Any, **extra: Any) -> dict[str, Any]:
    return {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
        "LLM_EXTRACT_RETRY_MAX_TIME": 5,
        "ITEM_PIPELINES": {
            "scrapy_llm_extract.LLMExtractPipeline": 100,
            "tests.collect_helpers.Downstream": 200,
        },
        "FEEDS": {str(tmp_path / "out.jsonl"): {"format": "jsonlines"}},
        "LOG_LEVEL": "INFO",
        **extra,
    }


def product(n: int, text: str = "", cls: type = Product) -> Any:
    return cls(url=f"http://shop.test/product/{n}", html=product_page(n, text=text))


def urls(numbers: Any) -> list[str]:
    return sorted(f"http://shop.test/product/{n}" for n in numbers)


def spool(settings: dict[str, Any], items: list[Any], spider: str = "shop") -> Run:
    """Spool ``items`` as a crawl with submission off would; the run is closed and pending."""
    config = make_config(**settings)
    preparer = Preparer(config)
    writer = Spool(config, spider=spider)
    for one in items:
        writer.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
    writer.close()
    assert writer.run is not None
    return stored_run(settings, writer.run)


async def collect(settings: dict[str, Any], **options: Any) -> Any:
    """Run the replay crawler in this process; return the crawler (stats, spider). On an
    s3:// spool, as the command does: lease, work on a local copy, write back."""
    Downstream.seen = []
    wanted = CollectOptions(**options)
    config = make_config(**settings)
    if not config.spool_store:
        crawler = get_crawler(replay_spider(wanted), settings)
        await crawler.crawl_async()
        return crawler
    remote = StoreCollection(config, wanted)
    try:
        working = {**settings, "LLM_EXTRACT_SPOOL_DIR": str(remote.claim())}
        crawler = get_crawler(replay_spider(remote.options), working)
        await crawler.crawl_async()
        assert remote.push()
    finally:
        remote.close()
    return crawler


def stored_run(settings: dict[str, Any], run: Run) -> Run:
    """``run`` as the spool holds it now: the local folder, or a fresh copy from the store."""
    config = make_config(**settings)
    if not config.spool_store:
        return Run.open(run.path)
    assert config.spool_staging_dir is not None
    store = open_store(config)
    folder = Path(tempfile.mkdtemp(prefix="stored-", dir=config.spool_staging_dir)) / run.run_id
    folder.mkdir()
    try:
        for key in store.list(run.run_id + "/"):
            stored = store.get(key)
            if stored is not None:
                (folder / key.split("/", 1)[1]).write_bytes(stored.body)
    finally:
        store.close()
    return Run.open(folder)


async def submitted_output(settings: dict[str, Any], run: Run) -> Path:
    """Submit the run's one file as a crawl would; the emulator's output file of its batch."""
    config = make_config(**settings)
    remote = StoreCollection(config, CollectOptions()) if config.spool_store else None
    if remote is not None:  # submit on a leased working copy, and write it back
        run = Run.open(remote.claim() / run.run_id)
    client = async_client(config)
    run.try_lock()
    try:
        await Submitter(client, RetryPolicy.from_config(config)).submit_pending(run)
    finally:
        run.unlock()
        await client.close()
        if remote is not None:
            assert remote.push()
            remote.close()
    (entry,) = run.manifest.files.values()
    client = sync_client(config)
    try:
        batch = client.batches.retrieve(entry["batch_id"])
    finally:
        client.close()
    assert batch.output_file_id, batch.status
    return Path(settings["LLM_EXTRACT_EMULATOR_DIR"]) / "files" / batch.output_file_id


def feed(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def failures(run: Run) -> list[dict[str, Any]]:
    return feed(run.path / "failures.jsonl")
