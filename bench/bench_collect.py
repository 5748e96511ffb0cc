"""Collecting a completed batch: rows per second and peak memory against row count.

Run: ``python bench/bench_collect.py [--rows 50000] [--small 10000] [--repeat 3]``

Setup (not timed): ``--rows`` items are spooled, submitted to the in-process
emulator and answered, and the run folder and emulator state are saved; the
same is done for ``--small`` rows. Each measurement then runs in a fresh
subprocess on a fresh copy, so its peak resident memory (Linux ``VmHWM``) is its own:

- ``parse``: read the output file and ``json.loads`` each line (the baseline);
- ``scrapy``: the same number of plain dicts yielded from ``start()`` to a JSON
  Lines feed (Scrapy's own ceiling for replayed items);
- ``core``: :class:`Collector` alone (download, index, join, parse, rebuild);
- ``collect``: the replay crawl of ``scrapy collect-batches`` to a JSON Lines feed,
  under the delivery contract (rows delivered at the checkpoint once the feed is stored).

Figures are rates and ratios against the baselines of the same run (parsing, and
Scrapy's own replay rate: the ceiling for any replay), and the peak memory of each
mode at ``--rows`` over ``--small``. Each mode is measured ``--repeat`` times, the
modes taking turns, and its fastest time is kept: on a shared machine the load of the
moment otherwise decides the ratio (single runs of the same code gave 0.58 and 0.86).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import scrapy
from itemadapter import ItemAdapter
from mug_pages import page  # bench/ is on sys.path when a benchmark runs

from scrapy_llm_extract.client import sync_client
from scrapy_llm_extract.collect import CollectOptions, Collector, replay_spider
from scrapy_llm_extract.config import Config
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record
from scrapy_llm_extract.retry import RetryPolicy
from scrapy_llm_extract.spool import Run, Spool
from scrapy_llm_extract.submit import Submitter

#: Distinct pages prepared (slimming and token counting are not what is measured).
TEMPLATES = 100


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    sku = scrapy.Field()


def settings(folder: Path) -> dict[str, Any]:
    return {
        "LLM_EXTRACT_SPOOL_DIR": str(folder / "spool"),
        "LLM_EXTRACT_EMULATOR_DIR": str(folder / "emulator"),
        "LLM_EXTRACT_KEEP_REMOTE_FILES": True,
        "LLM_EXTRACT_BATCH_MAX_TOKENS": 10**9,  # one file of every row, as the brief asks
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 100},
        "FEEDS": {str(folder / "out.jsonl"): {"format": "jsonlines"}},
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
    }


def prepare(folder: Path, rows: int) -> None:
    """Spool ``rows`` items, submit them, let the emulator answer, keep the output file."""
    config = Config.from_settings(scrapy.settings.Settings(settings(folder)))
    preparer = Preparer(config)
    templates = [preparer.prepare(ItemAdapter(Product(html=page(n)))) for n in range(TEMPLATES)]
    spool = Spool(config, spider="bench")
    for n in range(rows):
        product = Product(url=f"https://shop.example/p/{n}", html="")
        spool.add(templates[n % TEMPLATES], item_record(product, config))
    spool.close()
    assert spool.run is not None
    run = Run.open(spool.run.path)
    run.try_lock()

    async def submit() -> None:
        from scrapy_llm_extract.client import async_client

        client = async_client(config)
        await Submitter(client, RetryPolicy.from_config(config)).submit_pending(run)
        await client.close()

    asyncio.run(submit())
    run.unlock()
    client = sync_client(config)
    (entry,) = run.manifest.files.values()
    batch = client.batches.retrieve(entry["batch_id"])
    assert batch.status == "completed" and batch.output_file_id, batch.status
    with client.files.with_streaming_response.content(batch.output_file_id) as response:
        with open(folder / "output.jsonl", "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    client.close()


def child(mode: str, folder: Path, rows: int) -> None:
    """One measurement in this process: print elapsed seconds and peak memory (KiB)."""
    start = time.perf_counter()
    if mode == "parse":
        with open(folder / "output.jsonl", "rb") as f:
            count = sum(1 for line in f if json.loads(line)["custom_id"])
    elif mode == "core":
        count = asyncio.run(_core(folder))
    else:
        count = _crawl(mode, folder, rows)
    elapsed = time.perf_counter() - start
    assert count == rows, (mode, count, rows)
    print(json.dumps({"seconds": elapsed, "peak_kib": peak_kib()}))


def peak_kib() -> int:
    """Peak resident memory of this process since exec: Linux's VmHWM (ru_maxrss, the
    fallback elsewhere, can include what the process inherited before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _core(folder: Path) -> int:
    from scrapy.statscollectors import MemoryStatsCollector
    from scrapy.utils.test import get_crawler

    config = Config.from_settings(scrapy.settings.Settings(settings(folder)))
    collector = Collector(config, CollectOptions(), MemoryStatsCollector(get_crawler()))
    count = 0
    async for item in collector.items():
        collector.item_done(item)  # what item_scraped does in a crawl
        count += 1
    await collector.checkpoint()  # what the end of the pass does, feeds stored
    await collector.close()
    return count


def _crawl(mode: str, folder: Path, rows: int) -> int:
    from scrapy.crawler import AsyncCrawlerProcess

    class Plain(scrapy.Spider):
        name = "plain"

        async def start(self) -> Any:
            for n in range(rows):
                yield {"url": f"https://shop.example/p/{n}", "title": "Mug", "price": "10.99"}

    spider = Plain if mode == "scrapy" else replay_spider(CollectOptions())
    process = AsyncCrawlerProcess(settings(folder))
    process.crawl(spider)
    process.start()
    with open(folder / "out.jsonl", "rb") as f:
        return sum(1 for _ in f)


def measure(mode: str, prepared: Path, rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "copy"
        shutil.copytree(prepared, folder)
        done = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(folder), str(rows)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SystemExit(f"{mode} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (best kept)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, rows = args.child
        child(mode, Path(folder), int(rows))
        return
    modes = ("parse", "scrapy", "core", "collect")
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[int, dict[str, dict[str, float]]] = {}
        for rows in (args.small, args.rows):
            prepared = Path(tmp) / str(rows)
            print(f"Preparing a completed {rows}-row batch ...", file=sys.stderr)
            prepare(prepared, rows)
            results[rows] = {}
            for _ in range(args.repeat):
                for mode in modes:
                    result = measure(mode, prepared, rows)
                    best = results[rows].get(mode)
                    if best is None or result["seconds"] < best["seconds"]:
                        results[rows][mode] = result
    big, small = results[args.rows], results[args.small]
    base_rate = args.rows / big["parse"]["seconds"]
    scrapy_rate = args.rows / big["scrapy"]["seconds"]
    print(f"Collecting a completed {args.rows}-row batch (baseline: json.loads of each line)")
    header = f"{'mode':<8} {'rows/s':>10} {'x parse':>8} {'x scrapy':>9}"
    print(f"{header} {'peak MiB':>9} {'peak ratio':>11}")
    for mode in modes:
        rate = args.rows / big[mode]["seconds"]
        ratio = big[mode]["peak_kib"] / small[mode]["peak_kib"]
        print(
            f"{mode:<8} {rate:>10,.0f} {rate / base_rate:>8.3f} {rate / scrapy_rate:>9.3f}"
            f" {big[mode]['peak_kib'] / 1024:>9.1f} {ratio:>11.2f}"
        )
    print(f"peak MiB = VmHWM; peak ratio = VmHWM at {args.rows} rows / at {args.small} rows")


if __name__ == "__main__":
    main()
