"""BatchSubmitExtension in real crawls: submission on close, failures, crashes, many processes.

Crawls run in-process against the emulator (LLM_EXTRACT_EMULATOR_DIR); the
crash and concurrency tests run crawls in subprocesses on one spool root.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import openai
import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.emulator import emulator_transport
from scrapy_llm_extract.manifest import PENDING, SUBMITTED
from scrapy_llm_extract.spool import list_runs
from tests.test_realtime_crawl import crawl
from tests.tiny_project import crawl as crawl_project

API_KEY = "sk-proj-SPOOL-SECRET-4b1d9e"
ROOT = Path(__file__).resolve().parent.parent

#: A crawl in a child process; with a kill count it reports "ready" after that many
#: spooled items and then blocks, waiting for the parent's SIGKILL.
CHILD = """
import json, sys
from scrapy import signals
from scrapy.crawler import CrawlerProcess
from tests.test_realtime_crawl import ProductSpider
settings, pages, kill_after = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
process = CrawlerProcess(settings, install_root_handler=False)
crawler = process.create_crawler(ProductSpider)
dropped = []
def on_dropped(item, response, exception, spider):
    dropped.append(item)
    if len(dropped) == kill_after:
        print("ready", flush=True)
        sys.stdin.read()
crawler.signals.connect(on_dropped, signals.item_dropped)
process.crawl(crawler, pages=pages)
process.start()
"""


def batch_settings(tmp_path, emulator, **extra):
    return {
        "ITEM_PIPELINES": {"scrapy_llm_extract.LLMExtractPipeline": 300},
        "EXTENSIONS": {"scrapy_llm_extract.BatchSubmitExtension": 500},
        "LLM_EXTRACT_EMULATOR_DIR": str(emulator.path),
        "LLM_EXTRACT_SPOOL_DIR": str(tmp_path / "spool"),
        "LLM_EXTRACT_SCHEMA": "tests.test_realtime_crawl.Product",
        "LLM_EXTRACT_API_KEY": API_KEY,
        "LLM_EXTRACT_SUBMIT_CHECK_DELAY": 0,
        "LLM_EXTRACT_MAX_RETRIES": 1,
        **extra,
    }


def pages(site, numbers):
    return [(site.url(f"/product/{n}"), None) for n in numbers]


async def remote_batches(emulator):
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://emulator.invalid/v1",
        http_client=httpx2.AsyncClient(transport=emulator_transport(emulator.path)),
    )
    found = [batch async for batch in client.batches.list()]
    await client.close()
    return found


def batch_stats(crawler):
    prefix = "llm_extract/batch/"
    stats = crawler.stats.get_stats()
    return {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix)}


def spooled_ids(run):
    return [row["custom_id"] for name in run.manifest.files for row in run.iter_requests(name)]


def run_child(settings, page_list, kill_after=0):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(settings), json.dumps(page_list), str(kill_after)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@deferred_f_from_coro_f
async def test_files_are_submitted_on_close_with_one_summary_line(
    tmp_path, local_site, emulator, caplog
):
    settings = batch_settings(tmp_path, emulator, LLM_EXTRACT_BATCH_MAX_REQUESTS=4)
    with caplog.at_level(logging.DEBUG):
        crawler, recorder = await crawl(settings, pages(local_site, range(10)))
    assert recorder.items == {}  # spooled items are not passed on
    (run,) = list_runs(tmp_path / "spool")
    files = run.manifest.files
    assert [files[n]["rows"] for n in sorted(files)] == [4, 4, 2]
    assert {entry["status"] for entry in files.values()} == {SUBMITTED}
    assert run.manifest.data["close_reason"] == "finished"
    assert not run.is_live()
    found = await remote_batches(emulator)
    assert sorted(b.id for b in found) == sorted(e["batch_id"] for e in files.values())
    assert {b.metadata["llm_extract_run"] for b in found} == {run.run_id}
    counted = batch_stats(crawler)
    tokens = sum(entry["prompt_tokens"] for entry in files.values())
    assert counted["rows"] == 10
    assert counted["files"] == 3
    assert counted["batches_submitted"] == 3
    assert counted["files_pending"] == 0
    assert counted["prompt_tokens"] == tokens
    assert counted["input_cost_usd"] == round(tokens * 0.075 / 1e6, 6)
    assert counted["realtime_input_cost_usd"] == round(tokens * 0.15 / 1e6, 6)
    summaries = [r for r in caplog.records if r.getMessage().startswith("Batch spool ")]
    assert len(summaries) == 1
    assert "10 row(s)" in summaries[0].getMessage()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w for w in warnings if not w.startswith("OFFLINE: ")] == []
    # The API key is in no spool or manifest file.
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


@deferred_f_from_coro_f
async def test_submit_on_close_false_leaves_every_file_pending(tmp_path, local_site, emulator):
    settings = batch_settings(
        tmp_path, emulator, LLM_EXTRACT_SUBMIT_ON_CLOSE=False, LLM_EXTRACT_BATCH_MAX_REQUESTS=2
    )
    crawler, _ = await crawl(settings, pages(local_site, range(3)))
    (run,) = list_runs(tmp_path / "spool")
    assert [e["status"] for e in run.manifest.files.values()] == [PENDING, PENDING]
    assert run.manifest.closed and not run.is_live()
    assert await remote_batches(emulator) == []
    assert batch_stats(crawler)["files_pending"] == 2


@deferred_f_from_coro_f
async def test_a_batch_over_the_token_quota_stays_pending_with_the_reason(
    tmp_path, local_site, emulator
):
    emulator.configure(enqueued_token_limit=50)
    crawler, _ = await crawl(batch_settings(tmp_path, emulator), pages(local_site, range(2)))
    (run,) = list_runs(tmp_path / "spool")
    (entry,) = run.manifest.files.values()
    assert entry["status"] == PENDING
    assert "token_limit_exceeded" in entry["reason"]
    (failed,) = await remote_batches(emulator)
    assert failed.status == "failed"
    assert entry["failed_batches"][0]["batch_id"] == failed.id
    assert batch_stats(crawler)["files_pending"] == 1


@deferred_f_from_coro_f
async def test_an_upload_failure_during_the_crawl_is_retried(tmp_path, local_site, emulator):
    emulator.configure(upload_error_first=1)
    await crawl(batch_settings(tmp_path, emulator), pages(local_site, range(2)))
    (run,) = list_runs(tmp_path / "spool")
    assert [e["status"] for e in run.manifest.files.values()] == [SUBMITTED]
    assert len(await remote_batches(emulator)) == 1


@deferred_f_from_coro_f
async def test_a_crawl_killed_mid_way_is_recovered_and_submitted_once(
    tmp_path, local_site, emulator
):
    settings = batch_settings(tmp_path, emulator, LOG_LEVEL="INFO")
    child = run_child(settings, pages(local_site, range(20)), kill_after=5)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    (dead,) = list_runs(tmp_path / "spool")
    assert not dead.manifest.closed and not dead.is_live()
    assert list(dead.path.glob("*.part"))
    spooled = spooled_ids(dead)
    assert len(spooled) >= 5

    await crawl(settings, pages(local_site, [100]))  # the next crawl recovers it
    await crawl(settings, pages(local_site, [101]))  # and the one after finds nothing to do
    found = await remote_batches(emulator)
    recovered = [b for b in found if b.metadata["llm_extract_run"] == dead.run_id]
    assert len(recovered) == 1
    assert len(found) == 3
    dead.reload()
    assert dead.manifest.data["close_reason"] == "recovered"
    assert list(dead.path.glob("*.part")) == []
    assert [e["status"] for e in dead.manifest.files.values()] == [SUBMITTED]
    assert spooled_ids(dead) == spooled


def test_two_crawl_processes_share_a_spool_root_with_unique_ids(tmp_path, local_site, emulator):
    settings = batch_settings(tmp_path, emulator, LLM_EXTRACT_SUBMIT_ON_CLOSE=False)
    children = [run_child(settings, pages(local_site, range(k, 30, 2))) for k in (0, 1)]
    for child in children:
        _, stderr = child.communicate()
        assert child.returncode == 0, stderr.decode()[-2000:]
    runs = list_runs(tmp_path / "spool")
    assert len(runs) == 2
    ids = [custom_id for run in runs for custom_id in spooled_ids(run)]
    assert len(ids) == 30
    assert len(set(ids)) == 30
    urls = {row["url"] for run in runs for n in run.manifest.files for row in run.iter_sidecar(n)}
    assert urls == {url for url, _ in pages(local_site, range(30))}


@pytest.mark.parametrize("key", [None, "OPENAI_API_KEY"])
def test_the_package_says_once_that_the_emulator_answers_and_that_a_key_goes_unused(tmp_path, key):
    result = crawl_project(tmp_path, env={key: "sk-test-not-used-1234"} if key else None)
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in result.stderr.splitlines() if "OFFLINE:" in line]
    assert len(notices) == 1
    assert notices[0].endswith(
        "WARNING: OFFLINE: LLM_EXTRACT_EMULATOR_DIR is set, so requests go to the bundled"
        f" OpenAI emulator (state in {tmp_path / 'emulator'}), not to a model: it copies values"
        " from each page's structured data only."
        + (
            " OPENAI_API_KEY is set but not used: remove LLM_EXTRACT_EMULATOR_DIR to call OpenAI."
            if key
            else ""
        )
    )
    assert "sk-test-not-used" not in result.stderr
    assert "Emulator config loaded" not in result.stderr  # there is no config.json
