"""Model families end to end against the emulator: crawls in real time, then batch collection.

gpt-5-nano stands for the reasoning models. The emulator refuses what reasoning models
refuse (temperature 0, max_tokens), so these tests fail if either path sends a body built
for another family.
"""

import json
import logging

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.collect import RunSummary, summary_table
from scrapy_llm_extract.emulator.answers import REASONING_TOKENS
from scrapy_llm_extract.models import REASONING_ALLOWANCE
from scrapy_llm_extract.spool import Run, list_runs
from tests.collect_helpers import collect, failures, feed, product, settings, spool
from tests.test_realtime_crawl import crawl, expected_fields, realtime_stats

MODEL = "gpt-5-nano"
#: gpt-5-nano, USD per million tokens.
INPUT_PRICE, OUTPUT_PRICE = 0.05, 0.40
REASONING_BODY = {
    "max_completion_tokens": 1024 + REASONING_ALLOWANCE["minimal"],
    "reasoning_effort": "minimal",
}


def generation_params(raw_body):
    body = json.loads(raw_body)
    return {key: body[key] for key in body if key not in ("model", "messages", "response_format")}


@deferred_f_from_coro_f
async def test_a_crawl_extracts_urgent_items_in_real_time_and_spools_the_rest(
    tmp_path, local_site, emulator
):
    conf = settings(
        tmp_path,
        emulator,
        LLM_EXTRACT_MODEL=MODEL,
        LLM_EXTRACT_SCHEMA="tests.test_realtime_crawl.Product",
        LLM_EXTRACT_SUBMIT_CHECK_DELAY=0,
        ADDONS={"scrapy_llm_extract.Addon": 100},
        ITEM_PIPELINES={},  # the add-on's own: the crawl's items have no "checked" field
    )
    pages = [(local_site.url(f"/product/{n}"), "high" if n <= 3 else "low") for n in range(1, 7)]
    crawler, recorder = await crawl(conf, pages)

    # Real time: three items extracted, none refused, reasoning tokens billed as output.
    assert sorted(recorder.items) == sorted(url for url, priority in pages if priority == "high")
    for n in (1, 2, 3):
        item = recorder.items[local_site.url(f"/product/{n}")]
        assert {k: item[k] for k in ("title", "price", "currency")} == expected_fields(n)
    counted = realtime_stats(crawler)
    assert counted["succeeded"] == 3
    assert not [key for key in counted if key.startswith("failed")]
    assert counted["reasoning_tokens"] == 3 * REASONING_TOKENS["minimal"]
    assert counted["output_tokens"] > counted["reasoning_tokens"]
    assert counted["cost_usd"] == pytest.approx(
        round(
            (counted["input_tokens"] * INPUT_PRICE + counted["output_tokens"] * OUTPUT_PRICE) / 1e6,
            6,
        )
    )
    assert [generation_params(raw) for raw in emulator.requests()] == [REASONING_BODY] * 3

    # Batch: the three other items were spooled and submitted with the same body shape.
    (run,) = list_runs(tmp_path / "spool")
    rows = [row for name in run.manifest.files for row in run.iter_requests(name)]
    assert [generation_params(json.dumps(row["body"])) for row in rows] == [REASONING_BODY] * 3
    collected = await collect(conf)
    # The feed got the real-time items from the crawl, and the batch ones from collection.
    items = {item["url"]: item for item in feed(tmp_path / "out.jsonl")}
    assert sorted(items) == sorted(url for url, _ in pages)
    for n in range(1, 7):
        item = items[local_site.url(f"/product/{n}")]
        assert {k: item[k] for k in ("title", "price", "currency")} == expected_fields(n)
    assert failures(Run.open(run.path)) == []
    assert collected.stats.get_value("llm_extract/collect/rows/extracted") == 3
    output = collected.stats.get_value("llm_extract/collect/tokens/output")
    assert output > 3 * REASONING_TOKENS["minimal"]
    input_tokens = collected.stats.get_value("llm_extract/collect/tokens/input")
    assert collected.stats.get_value("llm_extract/collect/cost_usd") == pytest.approx(
        round((input_tokens * INPUT_PRICE + output * OUTPUT_PRICE) / 2 / 1e6, 6)
    )


@deferred_f_from_coro_f
async def test_rows_escalated_to_a_reasoning_model_are_reshaped_for_it(tmp_path, emulator):
    # Every 2nd row of every batch fails: 6 rows -> 3 retried with gpt-5-nano -> 1 -> 0.
    emulator.configure(row_error_every=2)
    conf = settings(tmp_path, emulator, LLM_EXTRACT_MAX_ATTEMPTS=4)
    run = spool(conf, [product(n) for n in range(6)])
    await collect(conf, wait=True, poll_interval=0.01, escalate_model=MODEL)
    assert len(feed(tmp_path / "out.jsonl")) == 6
    manifest = Run.open(run.path).manifest
    bodies = [
        request["body"]
        for name, entry in manifest.files.items()
        for request in Run.open(run.path).iter_requests(name)
        if entry["attempt"] > 1
    ]
    assert [body["model"] for body in bodies] == [MODEL] * 4
    assert all(generation_params(json.dumps(body)) == REASONING_BODY for body in bodies)


@deferred_f_from_coro_f
async def test_an_unknown_model_costs_unknown_not_zero_and_is_named_once(
    tmp_path, local_site, emulator, caplog
):
    model = "gpt-4o-mimi"  # not used elsewhere: the warning is once per process
    conf = settings(
        tmp_path,
        emulator,
        LLM_EXTRACT_MODEL=model,
        LLM_EXTRACT_SCHEMA="tests.test_realtime_crawl.Product",
        LLM_EXTRACT_SUBMIT_CHECK_DELAY=0,
        LLM_EXTRACT_PREPARE_WORKERS=0,
        ADDONS={"scrapy_llm_extract.Addon": 100},
        ITEM_PIPELINES={},  # the add-on's own: the crawl's items have no "checked" field
    )
    pages = [(local_site.url("/product/1"), "high"), (local_site.url("/product/2"), "low")]
    with caplog.at_level(logging.INFO):
        crawler, _ = await crawl(conf, pages)
    stats = crawler.stats.get_stats()
    assert stats["llm_extract/realtime/succeeded"] == 1
    assert "llm_extract/realtime/cost_usd" in stats
    assert stats["llm_extract/realtime/cost_usd"] is None
    assert stats["llm_extract/batch/input_cost_usd"] is None
    assert stats["llm_extract/batch/realtime_input_cost_usd"] is None
    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if m.startswith(f"Model {model!r} is not in")]
    assert len(warned) == 1 and "LLM_EXTRACT_PRICES" in warned[0]
    assert any(
        "Input cost unknown: no price for the model (see LLM_EXTRACT_PRICES)." in m
        for m in messages
    )
    collected = await collect(conf)
    assert collected.stats.get_value("llm_extract/collect/rows/extracted") == 1
    assert "llm_extract/collect/cost_usd" in collected.stats.get_stats()
    assert collected.stats.get_value("llm_extract/collect/cost_usd") is None


def test_the_summary_table_shows_an_unknown_cost_as_unknown():
    table = summary_table({"run-1": RunSummary(spooled=1, cost_usd=None, realtime_cost_usd=None)})
    header, row = (line.split("  ") for line in table.splitlines())
    cells = dict(
        zip(
            (h.strip() for h in header if h.strip()),
            (c.strip() for c in row if c.strip()),
            strict=True,
        )
    )
    assert (cells["cost $"], cells["real-time $"]) == ("unknown", "unknown")
