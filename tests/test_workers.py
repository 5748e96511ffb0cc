"""Worker processes build the same requests as the crawl's thread, and never lose an item."""

import asyncio
import logging
import os
import subprocess
import sys

import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.extraction import InvalidInput, Preparer
from scrapy_llm_extract.workers import PrepareWorkers

from .helpers import make_config


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()


def page(n: int) -> str:
    return (
        f"<html><head><title>Mug {n}</title>"
        f'<script type="application/ld+json">{{"name": "Mug {n}", "sku": "M-{n}"}}</script>'
        f"</head><body><h1>Mug {n}</h1><p>Price {n},99 €</p>"
        + "".join(f"<p>Review {i} of mug {n}</p>" for i in range(n % 7))
        + "</body></html>"
    )


ITEMS = [Product(url=f"https://shop.example/{n}", html=page(n)) for n in range(20)]
ITEMS.append(Product(url="https://shop.example/bytes", html=page(99).encode("utf-8")))


def setup(workers=2):
    config = make_config(LLM_EXTRACT_PREPARE_WORKERS=workers)
    stats = get_crawler(scrapy.Spider).stats
    return Preparer(config), PrepareWorkers(config, stats), stats


@deferred_f_from_coro_f
async def test_workers_build_the_bytes_the_crawl_thread_builds():
    preparer, workers, stats = setup()
    try:
        await workers.start()
        pooled = await asyncio.gather(
            *(preparer.prepare_async(ItemAdapter(item), workers) for item in ITEMS)
        )
    finally:
        await workers.close()
    inline = [preparer.prepare(ItemAdapter(item)) for item in ITEMS]
    # Answers come back to the item that asked, even with many in flight on two workers.
    assert [p.request.body_json for p in pooled] == [p.request.body_json for p in inline]
    assert [p.request.prompt_tokens for p in pooled] == [p.request.prompt_tokens for p in inline]
    assert [p.url for p in pooled] == [item["url"] for item in ITEMS]
    assert stats.get_value("llm_extract/prepare/in_workers") == len(ITEMS)
    assert stats.get_value("llm_extract/prepare/workers_broken") is None


@deferred_f_from_coro_f
async def test_pages_are_prepared_here_while_the_workers_start(tmp_path, monkeypatch):
    # The worker's interpreter blocks at startup on a pipe this test holds.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    (tmp_path / "sitecustomize.py").write_text(f"open({str(gate)!r}, 'rb').read()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    preparer, workers, stats = setup(workers=1)
    starting = workers.start()
    # Opening the pipe's other end returns once the worker's interpreter has opened it.
    holding = asyncio.ensure_future(asyncio.to_thread(open, gate, "wb"))
    try:
        await asyncio.wait([holding, starting], return_when=asyncio.FIRST_COMPLETED)
        assert holding.done(), "the worker came up without opening the gate"
        # Answered without waiting for the worker (the timeout only stops a hang if it did).
        first = await asyncio.wait_for(preparer.prepare_async(ItemAdapter(ITEMS[0]), workers), 60)
        assert not starting.done()
        holding.result().close()
        await starting
        second = await preparer.prepare_async(ItemAdapter(ITEMS[1]), workers)
    finally:
        if not holding.done():  # let the blocked open() return, or the test would hang
            os.close(os.open(gate, os.O_RDONLY | os.O_NONBLOCK))
            (await holding).close()
        await workers.close()
    assert first.request.body_json == preparer.prepare(ItemAdapter(ITEMS[0])).request.body_json
    assert second.request.body_json == preparer.prepare(ItemAdapter(ITEMS[1])).request.body_json
    assert stats.get_value("llm_extract/prepare/in_workers") == 1


@deferred_f_from_coro_f
async def test_invalid_input_found_in_a_worker_keeps_its_kind_and_the_worker():
    preparer, workers, stats = setup(workers=1)
    try:
        await workers.start()
        with pytest.raises(InvalidInput) as info:
            await preparer.prepare_async(ItemAdapter(Product(html="<p> </p>")), workers)
        assert info.value.kind == "empty_page"
        prepared = await preparer.prepare_async(ItemAdapter(ITEMS[3]), workers)
    finally:
        await workers.close()
    assert prepared.request.body_json == preparer.prepare(ItemAdapter(ITEMS[3])).request.body_json
    assert stats.get_value("llm_extract/prepare/in_workers") == 1
    assert not workers.broken


@deferred_f_from_coro_f
async def test_a_dead_worker_hands_the_work_back_to_the_crawl_thread(caplog):
    preparer, workers, stats = setup(workers=1)
    try:
        await workers.start()
        (worker,) = workers._ready
        worker.process.kill()  # as the OOM killer would
        await worker.process.wait()
        with caplog.at_level(logging.ERROR):
            prepared = await asyncio.gather(
                *(preparer.prepare_async(ItemAdapter(item), workers) for item in ITEMS[:3])
            )
    finally:
        await workers.close()
    assert [p.request.body_json for p in prepared] == [
        preparer.prepare(ItemAdapter(item)).request.body_json for item in ITEMS[:3]
    ]
    assert workers.broken
    assert stats.get_value("llm_extract/prepare/workers_broken") == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "LLM_EXTRACT_PREPARE_WORKERS = 0" in errors[0]


def test_a_crawl_script_without_a_main_guard_runs_once(tmp_path):
    """Workers must not re-import the parent's __main__, as multiprocessing's would."""
    script = tmp_path / "crawl_script.py"
    script.write_text(
        "import asyncio, scrapy\n"
        "from itemadapter import ItemAdapter\n"
        "from scrapy.settings import Settings\n"
        "from scrapy_llm_extract.config import Config\n"
        "from scrapy_llm_extract.extraction import Preparer\n"
        "from scrapy_llm_extract.workers import PrepareWorkers\n"
        "print('script body ran', flush=True)\n"
        "class Product(scrapy.Item):\n"
        "    html = scrapy.Field()\n"
        "    title = scrapy.Field()\n"
        "class Stats(dict):\n"
        "    def inc_value(self, key, count=1): self[key] = self.get(key, 0) + count\n"
        "async def main():\n"
        "    config = Config.from_settings(Settings({'LLM_EXTRACT_PREPARE_WORKERS': 2}))\n"
        "    workers = PrepareWorkers(config, stats := Stats())\n"
        "    await workers.start()\n"
        "    item = ItemAdapter(Product(html='<h1>Mug</h1>'))\n"
        "    prepared = await Preparer(config).prepare_async(item, workers)\n"
        "    await workers.close()\n"
        "    print('prepared', prepared.request.prompt_tokens > 0, dict(stats), flush=True)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == [
        "script body ran",
        "prepared True {'llm_extract/prepare/in_workers': 1}",
    ]
