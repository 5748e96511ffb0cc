"""Submitting spool files with the real SDK against the emulator, through every failure path."""

from __future__ import annotations

import httpx2
import openai
from itemadapter import ItemAdapter
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.emulator import emulator_transport
from scrapy_llm_extract.extraction import Preparer
from scrapy_llm_extract.items import item_record
from scrapy_llm_extract.manifest import PENDING, SUBMITTED, SUBMITTING, utc_now
from scrapy_llm_extract.retry import RetryPolicy
from scrapy_llm_extract.spool import Run, Spool
from scrapy_llm_extract.submit import META_TOKEN, Submitter, batch_metadata
from tests.helpers import make_config
from tests.test_spool import item, settings

FAST = RetryPolicy(max_retries=2, max_time=30.0, base_delay=0.01)


class Faulty(httpx2.AsyncBaseTransport):
    """The emulator, with scripted answers for the first POSTs to one path; counts POSTs."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, path: str, statuses=()):
        self.inner = inner
        self.path = path
        self.statuses = list(statuses)
        self.posts = 0

    async def handle_async_request(self, request):
        if request.method == "POST" and request.url.path == self.path:
            self.posts += 1
            if self.statuses:
                status = self.statuses.pop(0)
                body = {"error": {"message": f"scripted {status}", "type": "x", "code": None}}
                return httpx2.Response(status, json=body)
        return await self.inner.handle_async_request(request)


def client_for(emulator, path="/v1/files", statuses=()):
    transport = Faulty(emulator_transport(emulator.path), path, statuses)
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://emulator.invalid/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    return client, transport


def spooled_run(tmp_path, rows=3, **extra) -> Run:
    """A locked run with complete files, as the crawl leaves it for its extension."""
    config = make_config(**settings(tmp_path, **extra))
    preparer = Preparer(config)
    spool = Spool(config, spider="shop")
    spool.hold()
    for n in range(rows):
        one = item(n)
        spool.add(preparer.prepare(ItemAdapter(one)), item_record(one, config))
    spool.close()
    assert spool.run is not None and spool.run.locked
    return spool.run


async def batches(client):
    return [batch async for batch in client.batches.list()]


@deferred_f_from_coro_f
async def test_a_file_is_uploaded_and_its_batch_recorded_with_metadata(tmp_path, emulator):
    run = spooled_run(tmp_path)
    client, _ = client_for(emulator)
    submitted = await Submitter(client, FAST, check_delay=0).submit_pending(run)
    assert submitted == ["requests-0001.jsonl"]
    entry = Run.open(run.path).manifest.files["requests-0001.jsonl"]  # as saved on disk
    assert entry["status"] == SUBMITTED
    (batch,) = await batches(client)
    assert (batch.id, batch.input_file_id) == (entry["batch_id"], entry["file_id"])
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.completion_window == "24h"
    assert batch.metadata == {
        "llm_extract_project": run.manifest.data["project"],
        "llm_extract_spider": "shop",
        "llm_extract_run": run.run_id,
        "llm_extract_file": "requests-0001.jsonl",
        "llm_extract_token": entry["submit_token"],
    }
    uploaded = await client.files.content(entry["file_id"])
    assert uploaded.content == (run.path / "requests-0001.jsonl").read_bytes()
    assert await Submitter(client, FAST).submit_pending(run) == []  # nothing twice
    assert len(await batches(client)) == 1
    await client.close()


@deferred_f_from_coro_f
async def test_an_upload_failure_is_retried(tmp_path, emulator):
    emulator.configure(upload_error_first=1)
    run = spooled_run(tmp_path)
    client, transport = client_for(emulator)
    assert await Submitter(client, FAST).submit_pending(run) == ["requests-0001.jsonl"]
    assert transport.posts == 2
    assert run.manifest.files["requests-0001.jsonl"]["status"] == SUBMITTED
    await client.close()


@deferred_f_from_coro_f
async def test_an_upload_that_keeps_failing_leaves_the_file_pending(tmp_path, emulator):
    emulator.configure(upload_error_first=10)
    run = spooled_run(tmp_path)
    client, transport = client_for(emulator)
    assert await Submitter(client, FAST).submit_pending(run) == []
    entry = Run.open(run.path).manifest.files["requests-0001.jsonl"]
    assert entry["status"] == PENDING
    assert entry["reason"].startswith("upload failed: InternalServerError")
    assert transport.posts == 3  # FAST: one try and two retries
    assert await batches(client) == []
    await client.close()


@deferred_f_from_coro_f
async def test_a_create_failure_is_retried(tmp_path, emulator):
    run = spooled_run(tmp_path)
    client, transport = client_for(emulator, "/v1/batches", [500, 429])
    assert await Submitter(client, FAST).submit_pending(run) == ["requests-0001.jsonl"]
    assert transport.posts == 3
    assert len(await batches(client)) == 1
    await client.close()


@deferred_f_from_coro_f
async def test_a_refused_create_leaves_the_file_pending_with_the_reason(tmp_path, emulator):
    run = spooled_run(tmp_path)
    client, transport = client_for(emulator, "/v1/batches", [400])
    assert await Submitter(client, FAST).submit_pending(run) == []
    entry = Run.open(run.path).manifest.files["requests-0001.jsonl"]
    assert entry["status"] == PENDING
    assert entry["reason"].startswith("batch creation failed: BadRequestError")
    assert entry["file_id"] is not None
    assert transport.posts == 1  # a 400 is not retried
    # The next attempt (collect-batches) submits it, from the same upload.
    assert await Submitter(client, FAST).submit_pending(run) == ["requests-0001.jsonl"]
    (batch,) = await batches(client)
    assert batch.input_file_id == entry["file_id"]
    inputs = [file.id async for file in client.files.list() if file.purpose == "batch"]
    assert inputs == [entry["file_id"]]
    await client.close()


@deferred_f_from_coro_f
async def test_a_batch_failing_validation_keeps_its_file_pending(tmp_path, emulator):
    emulator.configure(enqueued_token_limit=10)
    run = spooled_run(tmp_path)
    client, _ = client_for(emulator)
    assert await Submitter(client, FAST, check_delay=0).submit_pending(run) == []
    entry = Run.open(run.path).manifest.files["requests-0001.jsonl"]
    assert entry["status"] == PENDING
    assert entry["reason"].startswith("batch failed validation: token_limit_exceeded")
    (failed,) = await batches(client)
    assert failed.status == "failed"
    reason = entry["reason"].removeprefix("batch failed validation: ")
    assert entry["failed_batches"] == [{"batch_id": failed.id, "reason": reason}]
    assert entry["batch_id"] is None
    await client.close()


@deferred_f_from_coro_f
async def test_without_the_check_a_failed_batch_is_found_by_a_later_check(tmp_path, emulator):
    emulator.configure(fail_batches="invalid_request")
    run = spooled_run(tmp_path)
    client, _ = client_for(emulator)
    submitter = Submitter(client, FAST, check_delay=None)
    assert await submitter.submit_pending(run) == ["requests-0001.jsonl"]
    assert run.manifest.files["requests-0001.jsonl"]["status"] == SUBMITTED
    assert await submitter.check(run, "requests-0001.jsonl") is False
    entry = run.manifest.files["requests-0001.jsonl"]
    assert entry["status"] == PENDING
    assert "invalid_request" in entry["reason"]
    await client.close()


@deferred_f_from_coro_f
async def test_a_crash_after_create_is_reconciled_without_a_second_batch(tmp_path, emulator):
    run = spooled_run(tmp_path, rows=4, LLM_EXTRACT_BATCH_MAX_REQUESTS=2)
    client, _ = client_for(emulator)
    created, lost = "requests-0001.jsonl", "requests-0002.jsonl"
    # Both files were marked "submitting"; the first got its batch before the process died.
    for name, token in ((created, "token-created"), (lost, "token-lost")):
        run.manifest.files[name].update(
            status=SUBMITTING, submit_token=token, submitting_at=utc_now()
        )
    run.manifest.save()
    with open(run.path / created, "rb") as f:
        uploaded = await client.files.create(file=f, purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=batch_metadata(run, created, "token-created"),
    )
    recovered = Run.open(run.path)
    assert await Submitter(client, FAST).submit_pending(recovered) == [lost]
    files = recovered.manifest.files
    assert (files[created]["status"], files[created]["batch_id"]) == (SUBMITTED, batch.id)
    assert files[lost]["status"] == SUBMITTED
    found = await batches(client)
    assert len(found) == 2
    assert {b.metadata["llm_extract_file"] for b in found} == {created, lost}
    assert {b.metadata[META_TOKEN] for b in found} == {"token-created", files[lost]["submit_token"]}
    await client.close()
