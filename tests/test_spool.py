"""The batch spool in one process: rotation, one model per file, rows, sidecars, crash leftovers."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import scrapy
from itemadapter import ItemAdapter
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record, rebuild_item
from scrapy_llm_extract.manifest import OPEN, PENDING
from scrapy_llm_extract.realtime import RealtimeExtractor
from scrapy_llm_extract.spool import (
    MAX_CUSTOM_ID,
    Run,
    Spool,
    claim_dead_runs,
    list_runs,
    sidecar_name,
)
from tests.conftest import product_page
from tests.helpers import make_config

REPOSITORY = Path(__file__).resolve().parent.parent
UNICODE_TEXT = 'Prix : 12,99 € — naïve \u2028 séparateur « citation » \\ "quoted"'


class Product(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    seen_at = scrapy.Field()
    weight = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()


def settings(tmp_path, **extra):
    return {
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_SCHEMA": "tests.test_spool.Product",
        **extra,
    }


def item(n, text=""):
    return Product(
        url=f"http://shop.test/product/{n}",
        html=product_page(n, text=text),
        seen_at=datetime.datetime(2026, 1, 2, 3, 4, 5),
        weight=Decimal("1.50"),
    )


def spool_items(config, items, spider="shop"):
    """Spool ``items`` with ``config``; return the spool, closed, and the prepared requests."""
    preparer = Preparer(config)
    spool = Spool(config, spider=spider)
    prepared = []
    for one in items:
        ready = preparer.prepare(ItemAdapter(one))
        spool.add(ready, item_record(one, config))
        prepared.append(ready)
    spool.close()
    return spool, prepared


def only_run(tmp_path) -> Run:
    (run,) = list_runs(tmp_path / "spool")
    return run


def lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_rows_embed_the_request_body_verbatim_with_a_sidecar_per_row(tmp_path):
    config = make_config(**settings(tmp_path))
    spool, prepared = spool_items(config, [item(n, UNICODE_TEXT) for n in range(3)])
    run = only_run(tmp_path)
    assert list(run.path.glob("*.part")) == []
    (name,) = run.manifest.files
    rows = lines(run.path / name)
    ids = []
    for line, ready in zip(rows, prepared, strict=True):
        row = json.loads(line)
        ids.append(row["custom_id"])
        assert line == (
            b'{"custom_id":"' + row["custom_id"].encode() + b'","method":"POST",'
            b'"url":"/v1/chat/completions","body":' + ready.request.body_json.encode() + b"}\n"
        )
    sidecar = run.sidecar(name)
    assert list(sidecar) == ids
    first = sidecar[ids[0]]
    assert first["url"] == "http://shop.test/product/0"
    assert first["prompt_tokens"] == prepared[0].request.prompt_tokens
    assert first["item_class"] == "tests.test_spool:Product"
    assert first["fields"] == {
        "url": "http://shop.test/product/0",
        "seen_at": "2026-01-02T03:04:05",
        "weight": "1.50",
    }
    assert "html" not in first["fields"]
    assert rebuild_item(first) == Product(first["fields"])
    schema = run.schema(first["schema"])
    assert schema == {"name": prepared[0].schema.name, "schema": prepared[0].schema.schema}
    assert len(run.manifest.data["schemas"]) == 1
    assert run.manifest.files[name]["status"] == PENDING
    assert run.manifest.files[name]["rows"] == 3
    assert run.manifest.files[name]["bytes"] == sum(map(len, rows))
    assert run.manifest.closed
    assert not run.is_live()
    assert spool.rows == 3


@deferred_f_from_coro_f
async def test_a_batch_row_sends_the_bytes_the_realtime_call_sends(tmp_path, emulator):
    config = make_config(**settings(tmp_path, LLM_EXTRACT_EMULATOR_DIR=str(emulator.path)))
    _, (ready,) = spool_items(config, [item(7, UNICODE_TEXT)])
    extractor = RealtimeExtractor(config, MemoryStatsCollector(get_crawler()))
    await extractor.extract(ready)
    await extractor.close()
    (sent,) = emulator.requests()
    run = only_run(tmp_path)
    (line,) = lines(run.path / "requests-0001.jsonl")
    body_start = line.index(b'"body":') + len(b'"body":')
    assert line[body_start:-2] == sent  # -2: the row's closing brace and newline


@pytest.mark.parametrize(
    ("limit", "value", "per_file"),
    [
        ("LLM_EXTRACT_BATCH_MAX_REQUESTS", 3, [3, 3, 1]),
        ("LLM_EXTRACT_BATCH_MAX_BYTES", "two rows", [2, 2, 2, 1]),
        ("LLM_EXTRACT_BATCH_MAX_TOKENS", "two rows", [2, 2, 2, 1]),
    ],
)
def test_a_file_is_closed_before_a_row_would_pass_a_limit(tmp_path, limit, value, per_file):
    items = [item(n) for n in range(7)]
    if value == "two rows":
        # Measure one row, then allow a bit more than two (rows differ by a few bytes/tokens).
        _, (ready,) = spool_items(make_config(**settings(tmp_path / "probe")), items[:1])
        entry = next(iter(only_run(tmp_path / "probe").manifest.files.values()))
        one = entry["bytes"] if limit.endswith("BYTES") else ready.request.prompt_tokens
        value = 2 * one + one // 2
    config = make_config(**settings(tmp_path, **{limit: value}))
    spool_items(config, items)
    run = only_run(tmp_path)
    files = run.manifest.files
    assert [files[name]["rows"] for name in sorted(files)] == per_file
    measure = {"LLM_EXTRACT_BATCH_MAX_REQUESTS": "rows", "LLM_EXTRACT_BATCH_MAX_BYTES": "bytes"}
    key = measure.get(limit, "prompt_tokens")
    for name, entry in files.items():
        assert entry[key] <= value
        assert len(lines(run.path / name)) == entry["rows"]
        assert len(list(run.iter_sidecar(name))) == entry["rows"]
    assert sum(files[name]["bytes"] for name in files) == sum(
        len(line) for name in files for line in lines(run.path / name)
    )


def test_a_model_change_starts_a_new_file(tmp_path):
    root = settings(tmp_path)
    preparers = [
        Preparer(make_config(**root, LLM_EXTRACT_MODEL=m)) for m in ("gpt-4o-mini", "gpt-4o")
    ]
    config = make_config(**root)
    spool = Spool(config, spider="shop")
    for n, model_index in enumerate([0, 0, 1, 1, 0]):
        one = item(n)
        spool.add(preparers[model_index].prepare(ItemAdapter(one)), item_record(one, config))
    spool.close()
    run = only_run(tmp_path)
    files = run.manifest.files
    assert [(files[n]["model"], files[n]["rows"]) for n in sorted(files)] == [
        ("gpt-4o-mini", 2),
        ("gpt-4o", 2),
        ("gpt-4o-mini", 1),
    ]
    for name in files:
        models = {row["body"]["model"] for row in run.iter_requests(name)}
        assert models == {files[name]["model"]}


def test_custom_ids_are_unique_across_runs_and_fit_64_characters(tmp_path):
    config = make_config(**settings(tmp_path))
    for _ in range(3):
        spool_items(config, [item(n) for n in range(4)], spider="a-very-long-spider-name" * 4)
    ids = [
        row["custom_id"]
        for run in list_runs(tmp_path / "spool")
        for name in run.manifest.files
        for row in run.iter_requests(name)
    ]
    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert max(map(len, ids)) <= MAX_CUSTOM_ID


def test_a_dead_run_is_sealed_to_whole_lines_and_claimed_once(tmp_path):
    config = make_config(**settings(tmp_path))
    preparer = Preparer(config)
    spool = Spool(config, spider="shop")
    for n in range(3):
        one = item(n)
        spool.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
    run = spool.run
    assert run is not None
    part = run.path / "requests-0001.jsonl.part"
    with open(part, "ab") as f:
        f.write(b'{"custom_id":"cut-short","method":"PO')  # a write the kill interrupted
    with open(run.path / sidecar_name("requests-0001.jsonl"), "ab") as f:
        f.write(b'{"custom_id":"cut')
    assert len(list(run.iter_requests("requests-0001.jsonl"))) == 3  # readers skip the tail
    assert run.is_live() is False  # this object holds the lock: not live for it
    observer = Run.open(run.path)
    assert observer.is_live()
    assert list(claim_dead_runs(tmp_path / "spool")) == []  # the lock is held
    run.unlock()  # as if the process had been killed: its descriptor is gone

    (claimed,) = claim_dead_runs(tmp_path / "spool", spider="shop")
    assert list(claim_dead_runs(tmp_path / "spool")) == []  # a second recoverer gets nothing
    assert not part.exists()
    entry = claimed.manifest.files["requests-0001.jsonl"]
    assert (entry["status"], entry["rows"]) == (PENDING, 3)
    sealed = claimed.path / "requests-0001.jsonl"
    assert sealed.read_bytes().endswith(b"}\n")
    assert len(lines(sealed)) == 3
    assert len(lines(claimed.path / "items-0001.jsonl")) == 3
    assert entry["bytes"] == sealed.stat().st_size
    claimed.finish("recovered")
    assert list(claim_dead_runs(tmp_path / "spool")) == []
    assert Run.open(run.path).manifest.data["close_reason"] == "recovered"


def test_a_run_killed_before_its_first_row_leaves_no_file_entry(tmp_path):
    config = make_config(**settings(tmp_path))
    run = Run.create(config.spool_dir, project="p", spider="shop")
    run.new_file("gpt-4o-mini")
    (run.path / "requests-0001.jsonl.part").unlink()
    run.unlock()
    (claimed,) = claim_dead_runs(config.spool_dir, project="p")
    assert claimed.manifest.files == {}
    assert OPEN not in {e["status"] for e in claimed.manifest.files.values()}
    claimed.finish("recovered")


def test_other_projects_and_spiders_are_not_claimed(tmp_path):
    config = make_config(**settings(tmp_path))
    Run.create(config.spool_dir, project="p", spider="shop").unlock()
    assert list(claim_dead_runs(config.spool_dir, project="q")) == []
    assert list(claim_dead_runs(config.spool_dir, spider="other")) == []
    (claimed,) = claim_dead_runs(config.spool_dir, project="p", spider="shop")
    claimed.finish(None)


class Odd(scrapy.Item):
    url = scrapy.Field()
    html = scrapy.Field()
    raw = scrapy.Field()
    name = scrapy.Field()
    nested = scrapy.Field()


def test_bytes_undecodable_bytes_and_lone_surrogates_spool_and_come_back_equal(tmp_path):
    odd = Odd(
        url="http://shop.test/product/1",
        html=product_page(1),
        raw=b"\x89PNG\r\n\x1a\n\xff\xfe",  # not UTF-8
        name="caf\udce9 " + UNICODE_TEXT,  # a Latin-1 byte read with surrogateescape
        nested={"chunks": [b"a", "\ud800", {"deep": b"\x00"}], "text": "plain"},
    )
    config = make_config(**settings(tmp_path))
    spool_items(config, [odd])
    run = only_run(tmp_path)
    (name,) = run.manifest.files
    (row,) = run.iter_sidecar(name)
    rebuilt = rebuild_item(row)
    assert type(rebuilt) is Odd
    expected = dict(odd)
    del expected["html"]
    assert dict(rebuilt) == expected
    assert (run.path / sidecar_name(name)).read_bytes().decode("utf-8")  # valid UTF-8 on disk


DISK_FULL_CHILD = """
import asyncio, json, resource, signal, sys
from pathlib import Path

import tests.test_pipeline as tp
from scrapy.exceptions import DropItem

async def main(tmp):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, like a full disk
    crawler, pipeline = await tp.open_pipeline(Path(tmp), LLM_EXTRACT_PREPARE_WORKERS=0)
    outcomes = []

    async def process(n):
        item = tp.Product(url=f"http://shop.test/{n}", html=f"<h1>Mug {n}</h1><p>{n},99 EUR</p>")
        try:
            out = await pipeline.process_item(item)
        except DropItem:
            outcomes.append("spooled")
        else:
            outcomes.append(out.get("llm_extract_error"))

    await process(1)
    part = next(pipeline.spool.run.path.glob("requests-*.jsonl.part"))
    largest = max(p.stat().st_size for p in pipeline.spool.run.path.glob("*-0001.jsonl*"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 40, hard))  # room for part of a row
    await process(2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await process(3)
    await pipeline.close_spider()
    print(json.dumps({"outcomes": outcomes, "stats": crawler.stats.get_stats()}, default=str))

asyncio.run(main(sys.argv[1]))
"""


def test_a_failed_write_rolls_the_spool_back_and_passes_the_item_on_marked(tmp_path):
    """A file-size limit stands in for a full disk: the write stops part-way through a row."""
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    spooled, failed, later = report["outcomes"]
    assert (spooled, later) == ("spooled", "spooled")
    assert failed.startswith("spool_write_failed: ")
    assert report["stats"]["llm_extract/batch/spool_write_failed"] == 1
    assert "Could not spool http://shop.test/2" in result.stderr
    run = only_run(tmp_path)
    (name,) = run.manifest.files
    requests = lines(run.path / name)
    sidecar = lines(run.path / sidecar_name(name))
    assert all(line.endswith(b"\n") for line in requests + sidecar)
    ids = [json.loads(line)["custom_id"] for line in requests]
    assert [json.loads(line)["custom_id"] for line in sidecar] == ids
    assert [json.loads(line)["url"] for line in sidecar] == [
        "http://shop.test/1",
        "http://shop.test/3",
    ]
    assert run.manifest.files[name]["rows"] == 2
    assert run.manifest.files[name]["bytes"] == sum(map(len, requests))
