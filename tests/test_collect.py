"""collect-batches in process against the emulator: joins, failures, retries, quota, deadline."""

from __future__ import annotations

import asyncio
import logging

from scrapy.settings import Settings
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.collect import CollectOptions, cancel_batches, status_table
from scrapy_llm_extract.spool import Run
from tests.collect_helpers import (
    Downstream,
    Product,
    collect,
    failures,
    feed,
    product,
    settings,
    spool,
)


def stat(crawler, name):
    return crawler.stats.get_value(f"llm_extract/collect/{name}")


@deferred_f_from_coro_f
async def test_every_row_comes_back_once_through_pipelines_and_feeds(tmp_path, emulator):
    emulator.configure(seed=7)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(20)])
    crawler = await collect(conf)
    items = feed(tmp_path / "out.jsonl")
    assert sorted(item["url"] for item in items) == sorted(
        f"http://shop.test/product/{n}" for n in range(20)
    )
    by_url = {item["url"]: item for item in items}
    assert by_url["http://shop.test/product/3"]["title"] == "Product 3"
    assert by_url["http://shop.test/product/3"]["price"] == "13.75"
    assert all(item["checked"] for item in items)
    assert all("html" not in item for item in items)
    assert {type(item) for item in Downstream.seen} == {Product}
    assert stat(crawler, "rows/extracted") == 20
    assert stat(crawler, "rows/emitted") == 20
    assert Run.open(run.path).manifest.data["collected_at"]


FAULT_MARKERS = {
    "refusal": "refusal",
    "length": "length",
    "content_filter": "content_filter",
    "invalid_json": "invalid_json",
    "schema_mismatch": "schema_mismatch",
    "error_500": "api_error",
    "error_400": "api_error",
}


@deferred_f_from_coro_f
async def test_each_failure_kind_is_reported_once_after_the_last_attempt(tmp_path, emulator):
    conf = settings(tmp_path, emulator, LLM_EXTRACT_MAX_ATTEMPTS=1)
    faulty = [product(100 + n, f"[[emulator:{marker}]]") for n, marker in enumerate(FAULT_MARKERS)]
    run = spool(conf, [product(1), *faulty, product(2)])
    crawler = await collect(conf)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == [
        "http://shop.test/product/1",
        "http://shop.test/product/2",
    ]
    reported = {row["url"]: row for row in failures(run)}
    assert {url: row["kind"] for url, row in reported.items()} == {
        f"http://shop.test/product/{100 + n}": kind for n, kind in enumerate(FAULT_MARKERS.values())
    }
    assert all(row["custom_id"] and row["message"] for row in reported.values())
    assert stat(crawler, "rows/failed") == len(FAULT_MARKERS)
    assert stat(crawler, "rows/failed/api_error") == 2
    assert stat(crawler, "rows/retried") is None


@deferred_f_from_coro_f
async def test_failed_rows_are_retried_with_the_escalated_model_until_the_last_attempt(
    tmp_path, emulator
):
    # Every 2nd row of every batch fails: 10 rows -> 5 retried -> 2 retried -> 1 fails for good.
    emulator.configure(row_error_every=2)
    conf = settings(tmp_path, emulator, LLM_EXTRACT_MAX_ATTEMPTS=3)
    run = spool(conf, [product(n) for n in range(10)])
    crawler = await collect(conf, wait=True, poll_interval=0.01, escalate_model="gpt-4o")
    assert len(feed(tmp_path / "out.jsonl")) == 9
    assert len({item["url"] for item in feed(tmp_path / "out.jsonl")}) == 9
    assert [row["kind"] for row in failures(run)] == ["api_error"]
    assert stat(crawler, "rows/retried") == 7
    assert stat(crawler, "rows/extracted") == 9
    manifest = Run.open(run.path).manifest
    retries = [entry for entry in manifest.files.values() if entry["attempt"] > 1]
    assert [(entry["model"], entry["rows"]) for entry in retries] == [("gpt-4o", 5), ("gpt-4o", 2)]
    resubmitted = [
        request["body"]["model"]
        for name, entry in manifest.files.items()
        if entry["attempt"] > 1
        for request in Run.open(run.path).iter_requests(name)
    ]
    assert resubmitted == ["gpt-4o"] * 7
    assert manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_an_expired_batch_keeps_its_finished_rows_and_resubmits_the_rest(tmp_path, emulator):
    emulator.configure(expire_batches=True, expire_fraction=0.5)
    conf = settings(tmp_path, emulator, LLM_EXTRACT_MAX_ATTEMPTS=1)
    run = spool(conf, [product(n) for n in range(10)])
    first = await collect(conf)
    assert stat(first, "batches/expired") == 1
    assert stat(first, "rows/extracted") == 5
    assert stat(first, "rows/retried") == 5  # never ran: no attempt used, even with 1 allowed
    assert failures(run) == []
    assert not Run.open(run.path).manifest.data.get("collected_at")

    emulator.configure()  # the resubmission was created under expiry: it expires too
    second = await collect(conf)
    assert stat(second, "rows/extracted") == 2
    assert stat(second, "rows/retried") == 3
    third = await collect(conf)
    assert stat(third, "rows/extracted") == 3
    assert failures(run) == []
    urls = [item["url"] for item in feed(tmp_path / "out.jsonl")]
    assert sorted(urls) == sorted(f"http://shop.test/product/{n}" for n in range(10))
    assert Run.open(run.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_a_file_refused_for_the_token_quota_is_submitted_later(tmp_path, emulator):
    emulator.configure(enqueued_token_limit=10)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    first = await collect(conf)
    assert stat(first, "batches/failed") == 1
    assert feed(tmp_path / "out.jsonl") == []
    entry = next(iter(Run.open(run.path).manifest.files.values()))
    assert entry["status"] == "pending"
    assert "token_limit_exceeded" in entry["reason"]

    emulator.configure()
    await collect(conf)
    assert len(feed(tmp_path / "out.jsonl")) == 3
    assert failures(run) == []


@deferred_f_from_coro_f
async def test_pending_files_are_held_back_while_the_quota_is_full(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    first_run = spool(settings(tmp_path, emulator), [product(n) for n in range(3)])
    tokens = next(iter(first_run.manifest.files.values()))["prompt_tokens"]
    conf = settings(tmp_path, emulator, LLM_EXTRACT_BATCH_MAX_TOKENS=tokens + 1)
    second_run = spool(conf, [product(n) for n in range(3, 6)])
    crawler = await collect(conf)
    assert stat(crawler, "files/submitted") == 1
    statuses = [
        entry["status"]
        for run in (first_run, second_run)
        for entry in Run.open(run.path).manifest.files.values()
    ]
    assert sorted(statuses) == ["pending", "submitted"]


@deferred_f_from_coro_f
async def test_past_the_deadline_unfinished_rows_are_extracted_in_real_time(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(4)])
    first = await collect(conf, deadline_hours=1)
    assert stat(first, "rows/extracted") is None  # young batch: left running
    crawler = await collect(conf, deadline_hours=0)
    assert stat(crawler, "batches/deadline_cancelled") == 1
    assert stat(crawler, "rows/realtime") == 4
    items = feed(tmp_path / "out.jsonl")
    assert sorted(item["title"] for item in items) == [f"Product {n}" for n in range(4)]
    assert failures(run) == []
    assert Run.open(run.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_cancelled_batches_fail_for_good(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    await collect(conf)  # submits
    assert cancel_batches(Settings(conf), CollectOptions()) == 1
    crawler = await collect(conf)
    assert stat(crawler, "rows/failed") == 3
    assert {row["kind"] for row in failures(run)} <= {"batch_cancelled", "missing"}
    assert stat(crawler, "rows/retried") is None


@deferred_f_from_coro_f
async def test_two_concurrent_collectors_emit_each_row_once(tmp_path, emulator):
    base = settings(tmp_path, emulator)
    runs = [spool(base, [product(10 * r + n) for n in range(5)]) for r in range(3)]
    confs = [
        {**base, "FEEDS": {str(tmp_path / f"out{i}.jsonl"): {"format": "jsonlines"}}}
        for i in range(2)
    ]
    await asyncio.gather(collect(confs[0]), collect(confs[1]))
    urls = [item["url"] for i in range(2) for item in feed(tmp_path / f"out{i}.jsonl")]
    assert sorted(urls) == sorted(
        f"http://shop.test/product/{10 * r + n}" for r in range(3) for n in range(5)
    )
    assert all(Run.open(run.path).manifest.data.get("collected_at") for run in runs)


def test_status_table_lists_runs_and_batches_and_changes_nothing(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    before = (run.path / "manifest.json").read_bytes()
    table = status_table(Settings(conf), CollectOptions())
    assert run.run_id in table
    assert "pending" in table
    assert (run.path / "manifest.json").read_bytes() == before


@deferred_f_from_coro_f
async def test_a_batch_completed_before_its_result_files_is_joined_once_they_exist(
    tmp_path, emulator, caplog
):
    emulator.configure(late_result_files_first=2)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(6)])
    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(conf, wait=True, poll_interval=0.01)
    assert stat(crawler, "rows/extracted") == 6
    assert stat(crawler, "rows/retried") is None
    assert stat(crawler, "rows/failed") is None
    assert failures(run) == []
    assert caplog.text.count("has no result files yet") == 2
    assert len(feed(tmp_path / "out.jsonl")) == 6
