"""collect-batches in process against the emulator: joins, failures, retries, quota, deadline."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract import LLMExtractPipeline
from scrapy_llm_extract.collect import CollectOptions, cancel_batches, status_table
from scrapy_llm_extract.spool import Run
from scrapy_llm_extract.tokens import get_encoding
from tests.collect_helpers import (
    BareProduct,
    Downstream,
    FailingStorage,
    Product,
    RaiseOn,
    collect,
    failures,
    feed,
    product,
    settings,
    spool,
    stored_run,
    submitted_output,
    urls,
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


@deferred_f_from_coro_f
async def test_the_replay_never_builds_a_preparer_nor_loads_the_tokenizer(tmp_path, emulator):
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    await submitted_output(conf, run)  # preparing and answering the pages count tokens
    get_encoding.cache_clear()
    crawler = await collect(conf)
    assert len(feed(tmp_path / "out.jsonl")) == 3
    (pipeline,) = (
        p for p in crawler.engine.scraper.itemproc.middlewares if isinstance(p, LLMExtractPipeline)
    )
    assert pipeline.replaying
    assert "preparer" not in vars(pipeline)
    assert get_encoding.cache_info().currsize == 0


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
    assert cancel_batches(Settings(conf), CollectOptions()) == (1, 0)
    crawler = await collect(conf)
    assert stat(crawler, "rows/failed") == 3
    assert [row["kind"] for row in failures(run)] == ["batch_cancelled"] * 3
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


@deferred_f_from_coro_f
async def test_status_table_lists_runs_and_batches_and_changes_nothing(tmp_path, emulator):
    emulator.configure(in_progress_seconds=3600)
    conf = settings(tmp_path, emulator)
    submitted = spool(conf, [product(n) for n in range(3)])
    await collect(conf)  # submits: its batch is in progress
    waiting = spool(conf, [product(n) for n in range(3, 5)])
    before = [(run.path / "manifest.json").read_bytes() for run in (submitted, waiting)]
    table = status_table(Settings(conf), CollectOptions())
    rows = {" ".join(line.split()[:2]): line.split() for line in table.splitlines() if line}
    assert rows[f"{submitted.run_id} requests-0001.jsonl"][2:5] == ["batch", "in_progress", "3"]
    assert rows[f"{waiting.run_id} requests-0001.jsonl"][2:4] == ["pending", "2"]
    # where the rows stand: spooled = delivered + dropped + failed + pending
    assert rows[f"{submitted.run_id} closed"][2:] == ["3", "0", "0", "0", "3"]
    after = [(run.path / "manifest.json").read_bytes() for run in (submitted, waiting)]
    assert after == before
    only = status_table(Settings(conf), CollectOptions(run_id=waiting.run_id))
    assert waiting.run_id in only
    assert submitted.run_id not in only


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


# The delivery contract (issue 11) ----------------------------------------------------------


def ledger(crawler):
    """spooled, delivered, dropped, failed, pending of the runs the collector held."""
    names = ("spooled", "delivered", "dropped", "failed", "pending")
    return {name: stat(crawler, f"ledger/{name}") for name in names}


@deferred_f_from_coro_f
async def test_a_failing_feed_delivers_nothing_and_the_next_pass_delivers_everything(
    tmp_path, emulator, spool_backend
):
    failing = {f"failing://{tmp_path}/lost.jsonl": {"format": "jsonlines"}}
    conf = settings(
        tmp_path,
        emulator,
        FEEDS=failing,
        FEED_STORAGES={"failing": FailingStorage},
        **spool_backend,
    )
    run = spool(conf, [product(n) for n in range(12)])
    first = await collect(conf)
    assert first.stats.get_value("feedexport/failed_count/FailingStorage") == 1
    assert first.spider.collector.exit_code == 1
    assert stat(first, "passes/undelivered") == 1
    assert ledger(first) == {
        "spooled": 12, "delivered": 0, "dropped": 0, "failed": 0, "pending": 12
    }  # fmt: skip
    assert not stored_run(conf, run).manifest.data.get("collected_at")

    second = await collect(settings(tmp_path, emulator, **spool_backend))
    items = feed(tmp_path / "out.jsonl")
    assert sorted(item["url"] for item in items) == urls(range(12))
    assert second.spider.collector.exit_code == 0
    assert ledger(second)["delivered"] == 12
    assert stored_run(conf, run).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_items_carry_their_row_id_and_a_dict_returning_pipeline_is_tracked(
    tmp_path, emulator
):
    pipelines = {
        "scrapy_llm_extract.LLMExtractPipeline": 100,
        "tests.collect_helpers.AsDict": 150,
        "tests.collect_helpers.Downstream": 200,
    }
    conf = settings(tmp_path, emulator, ITEM_PIPELINES=pipelines)
    run = spool(
        conf, [product(n) for n in range(5)] + [product(n, cls=BareProduct) for n in (5, 6)]
    )
    crawler = await collect(conf)
    items = feed(tmp_path / "out.jsonl")
    assert sorted(item["url"] for item in items) == urls(range(7))
    ids = [item["llm_extract_row_id"] for item in items if "llm_extract_row_id" in item]
    assert sorted(ids) == sorted(
        record["custom_id"]
        for record in run.iter_sidecar(next(iter(run.manifest.files)))
        if record["item_class"].endswith(":Product")
    )
    assert ledger(crawler)["delivered"] == 7
    assert crawler.spider.collector.exit_code == 0
    assert Run.open(run.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_a_raising_pipeline_fails_the_row_apart_and_retry_failed_replays_it(
    tmp_path, emulator, caplog
):
    pipelines = {
        "scrapy_llm_extract.LLMExtractPipeline": 100,
        "tests.collect_helpers.RaiseOn": 150,
        "tests.collect_helpers.Downstream": 200,
    }
    conf = settings(tmp_path, emulator, ITEM_PIPELINES=pipelines)
    run = spool(conf, [product(n) for n in range(6)])
    RaiseOn.urls = {"http://shop.test/product/2"}
    try:
        with caplog.at_level(logging.WARNING, logger="scrapy_llm_extract"):
            first = await collect(conf)
    finally:
        RaiseOn.urls = set()
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls([0, 1, 3, 4, 5])
    (failure,) = failures(run)
    assert failure["kind"] == "pipeline_error"
    assert failure["url"] == "http://shop.test/product/2"
    assert failure["fields"]["url"] == "http://shop.test/product/2"
    assert stat(first, "rows/extracted") == 6
    assert stat(first, "rows/failed/pipeline_error") == 1
    assert ledger(first) == {
        "spooled": 6, "delivered": 5, "dropped": 0, "failed": 1, "pending": 0
    }  # fmt: skip
    assert first.spider.collector.exit_code == 1
    assert str(run.path / "failures.jsonl") in caplog.text

    second = await collect(conf)  # nothing new without --retry-failed
    assert stat(second, "rows/extracted") is None
    third = await collect(conf, retry_failed=True)  # the pipeline is fixed
    assert stat(third, "rows/extracted") == 1
    assert ledger(third)["delivered"] == 6
    assert failures(run) == []  # it said the delivered row had failed
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(6))


@deferred_f_from_coro_f
async def test_closespider_itemcount_stops_the_replay_and_the_rest_stays_pending(
    tmp_path, emulator
):
    conf = settings(tmp_path, emulator, CLOSESPIDER_ITEMCOUNT=3, CONCURRENT_ITEMS=1)
    run = spool(conf, [product(n) for n in range(40)])
    first = await collect(conf)
    delivered = ledger(first)["delivered"]
    assert 3 <= delivered < 40
    assert ledger(first)["pending"] == 40 - delivered
    assert len(feed(tmp_path / "out.jsonl")) == delivered
    assert not Run.open(run.path).manifest.data.get("collected_at")
    second = await collect(settings(tmp_path, emulator))
    assert ledger(second)["delivered"] == 40
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(40))


@pytest.mark.parametrize("fault", ["torn", "missing", "misshapen"])
@deferred_f_from_coro_f
async def test_a_torn_missing_or_misshapen_result_row_is_resubmitted_and_never_stops_collection(
    tmp_path, emulator, fault, spool_backend
):
    """A misshapen row is JSON but not an output row (a proxy's error text as its body): it
    used to raise in the join and stop the file at that row on every pass."""
    conf = settings(tmp_path, emulator, **spool_backend)
    torn_run = spool(conf, [product(n) for n in range(6)])
    output = await submitted_output(conf, torn_run)
    lines = output.read_bytes().split(b"\n")
    if fault == "torn":
        lines[2] = lines[2][: len(lines[2]) // 2]  # torn mid-file
    elif fault == "misshapen":
        row = json.loads(lines[2])
        row["response"]["body"] = "502 Bad Gateway"
        lines[2] = json.dumps(row).encode()
    else:
        del lines[2]
    output.write_bytes(b"\n".join(lines))
    other_run = spool(conf, [product(n) for n in range(10, 13)])

    first = await collect(conf)
    assert stat(first, "results/unreadable") == (None if fault == "missing" else 1)
    assert stat(first, "rows/retried") == 1
    assert stored_run(conf, other_run).manifest.data["collected_at"]
    assert failures(stored_run(conf, torn_run)) == []
    await collect(conf)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(
        [*range(6), 10, 11, 12]
    )


@pytest.mark.parametrize("deleted", ["items-0001.jsonl", "requests-0001.jsonl"])
@deferred_f_from_coro_f
async def test_a_spool_file_deleted_by_hand_is_stuck_and_its_results_kept(
    tmp_path, emulator, caplog, deleted
):
    """It was read as empty: the run was marked collected, its results deleted from the API,
    and its rows stayed pending for ever, with exit 0 and nothing in the log."""
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    await submitted_output(conf, run)
    items = run.path / deleted
    kept = items.read_bytes()
    items.unlink()

    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(conf)
    assert crawler.spider.collector.exit_code == 1
    assert stat(crawler, "stuck") == 1 and stat(crawler, "ledger/pending") == 3
    assert not Run.open(run.path).manifest.data.get("collected_at")
    assert f"{items} is gone (it holds 3 row(s) of the run): put it back" in caplog.text

    items.write_bytes(kept)
    again = await collect(conf)
    assert again.spider.collector.exit_code == 0
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(3))


@deferred_f_from_coro_f
async def test_a_run_whose_manifest_is_unreadable_is_stuck_not_skipped(tmp_path, emulator, caplog):
    """It was skipped with a warning: exit 0, and its rows counted nowhere."""
    conf = settings(tmp_path, emulator)
    broken = spool(conf, [product(n) for n in range(3)])
    spool(conf, [product(n) for n in range(10, 13)])
    manifest = broken.path / "manifest.json"
    kept = manifest.read_bytes()
    manifest.write_bytes(kept[: len(kept) // 2])

    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(conf)
    assert crawler.spider.collector.exit_code == 1
    assert stat(crawler, "stuck") == 1
    assert f"Stuck: run {broken.run_id}: its manifest.json cannot be read (" in caplog.text
    assert "put back a readable copy" in caplog.text

    manifest.write_bytes(kept)
    again = await collect(conf)
    assert again.spider.collector.exit_code == 0
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(
        [0, 1, 2, 10, 11, 12]
    )


@deferred_f_from_coro_f
async def test_an_api_error_on_one_run_leaves_the_others_collected_and_is_listed_as_stuck(
    tmp_path, emulator, caplog
):
    conf = settings(tmp_path, emulator)
    broken = spool(conf, [product(n) for n in range(3)])
    fine = spool(conf, [product(n) for n in range(10, 13)])
    hidden = await submitted_output(conf, broken)
    kept = hidden.read_bytes()
    hidden.unlink()  # its download now fails

    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(conf)
    assert crawler.spider.collector.exit_code == 1
    assert Run.open(fine.path).manifest.data["collected_at"]
    assert not Run.open(broken.path).manifest.data.get("collected_at")
    assert f"Stuck: run {broken.run_id} file requests-0001.jsonl: " in caplog.text
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls([10, 11, 12])

    hidden.write_bytes(kept)
    again = await collect(conf)
    assert again.spider.collector.exit_code == 0
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(
        [0, 1, 2, 10, 11, 12]
    )


@deferred_f_from_coro_f
async def test_a_run_submitted_to_another_endpoint_is_refused_in_one_line(
    tmp_path, emulator, caplog
):
    emulator.configure(in_progress_seconds=3600)
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(2)])
    await collect(conf)
    assert Run.open(run.path).manifest.files["requests-0001.jsonl"]["api_base"]
    elsewhere = settings(tmp_path, emulator, LLM_EXTRACT_BASE_URL="http://elsewhere.invalid/v1")
    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(elsewhere)
    assert crawler.spider.collector.exit_code == 1
    assert "was submitted to http://emulator.invalid/v1" in caplog.text
    assert "Traceback" not in caplog.text
    assert stat(crawler, "rows/extracted") is None


@deferred_f_from_coro_f
async def test_sealed_files_the_manifest_does_not_know_are_submitted(tmp_path, emulator):
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(4)])
    extra = spool(conf, [product(n) for n in range(4, 7)])
    # Crash between the rename and the manifest save: the entry still says "open" ...
    manifest = Run.open(run.path).manifest
    manifest.files["requests-0001.jsonl"]["status"] = "open"
    manifest.save()
    # ... or the manifest never listed the file at all.
    for name in ("requests-0001.jsonl", "items-0001.jsonl"):
        (extra.path / name).rename(run.path / name.replace("0001", "0002"))
    await collect(conf)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(7))
    assert Run.open(run.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_rows_that_never_run_are_resubmitted_a_bounded_number_of_times(tmp_path, emulator):
    emulator.configure(expire_batches=True, expire_fraction=0.0)
    conf = settings(tmp_path, emulator, LLM_EXTRACT_MAX_RESUBMISSIONS=2)
    run = spool(conf, [product(n) for n in range(3)])
    crawler = await collect(conf, wait=True, poll_interval=0.01)
    assert stat(crawler, "rows/retried") == 6
    assert [row["kind"] for row in failures(run)] == ["batch_expired"] * 3
    assert ledger(crawler) == {
        "spooled": 3, "delivered": 0, "dropped": 0, "failed": 3, "pending": 0
    }  # fmt: skip
    assert Run.open(run.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_runs_of_other_projects_are_left_alone_unless_asked(tmp_path, emulator):
    conf = settings(tmp_path, emulator)
    ours = spool(conf, [product(n) for n in range(2)])
    theirs = spool({**conf, "BOT_NAME": "other"}, [product(n) for n in range(10, 12)])
    await collect(conf)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls([0, 1])
    assert not Run.open(theirs.path).manifest.data.get("collected_at")
    await collect(conf, all_projects=True)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls([0, 1, 10, 11])
    assert Run.open(ours.path).manifest.data["collected_at"]


@deferred_f_from_coro_f
async def test_a_half_written_spool_line_stops_only_its_run(tmp_path, emulator, caplog):
    conf = settings(tmp_path, emulator)
    broken = spool(conf, [product(n) for n in range(3)])
    fine = spool(conf, [product(n) for n in range(10, 12)])
    sidecar = broken.path / "items-0001.jsonl"
    lines = sidecar.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]  # a write cut short mid-file (disk full), later rows appended
    sidecar.write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        crawler = await collect(conf, wait=True, poll_interval=0.01)
    assert crawler.spider.collector.exit_code == 1
    assert f"Stuck: run {broken.run_id} file requests-0001.jsonl" in caplog.text
    assert stat(crawler, "stuck") == 3  # --wait tried it at three polls, then gave up
    assert "Giving up on file requests-0001.jsonl" in caplog.text
    assert Run.open(fine.path).manifest.data["collected_at"]
    assert not Run.open(broken.path).manifest.data.get("collected_at")
    assert ledger(crawler)["pending"] >= 1


@deferred_f_from_coro_f
async def test_a_sidecar_row_without_its_request_row_fails_instead_of_an_empty_resubmission(
    tmp_path, emulator
):
    # A run recovered by an older version kept such a row in a sealed file's sidecar.
    conf = settings(tmp_path, emulator)
    run = spool(conf, [product(n) for n in range(3)])
    sidecar = run.path / "items-0001.jsonl"
    orphan = json.loads(sidecar.read_bytes().splitlines()[-1])
    orphan.update(custom_id="never-written-1", url="http://shop.test/product/9")
    with open(sidecar, "a") as f:
        f.write(json.dumps(orphan) + "\n")

    crawler = await collect(conf)
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(3))
    (failed,) = failures(run)
    assert (failed["url"], failed["kind"]) == ("http://shop.test/product/9", "never_spooled")
    assert stat(crawler, "rows/failed/never_spooled") == 1
    assert stat(crawler, "rows/retried") is None
    data = Run.open(run.path).manifest.data
    assert list(data["files"]) == ["requests-0001.jsonl"]  # no empty resubmission file
    assert data["collected_at"]


@deferred_f_from_coro_f
async def test_run_naming_a_run_its_crawl_is_still_writing_is_refused_until_it_closes(
    tmp_path, emulator, spool_backend, caplog
):
    import os

    from itemadapter import ItemAdapter

    from scrapy_llm_extract.extraction import Preparer
    from scrapy_llm_extract.items import item_record
    from scrapy_llm_extract.spool import Spool
    from tests.helpers import make_config

    # On an s3:// spool the crawl has published its first sealed file and an unclosed manifest.
    conf = settings(tmp_path, emulator, LLM_EXTRACT_SPOOL_PUBLISH_ROWS=2, **spool_backend)
    config = make_config(**conf)
    preparer = Preparer(config)
    crawl = Spool(config, spider="shop")  # the crawl, still running: its run stays locked
    for n in range(3):
        one = product(n)
        crawl.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
    assert crawl.run is not None
    run_id = crawl.run.run_id

    with caplog.at_level(logging.INFO, logger="scrapy_llm_extract"):
        refused = await collect(conf, run_id=run_id)
    assert refused.spider.collector.exit_code == 1
    assert stat(refused, "runs/refused_live") == 1
    assert f"Stuck: run {run_id}: its crawl (pid {os.getpid()} on {os.uname().nodename})" in (
        caplog.text
    )
    assert feed(tmp_path / "out.jsonl") == []

    crawl.close()
    done = await collect(conf, run_id=run_id)
    assert done.spider.collector.exit_code == 0
    assert sorted(item["url"] for item in feed(tmp_path / "out.jsonl")) == urls(range(3))
