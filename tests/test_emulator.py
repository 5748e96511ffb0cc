"""The emulator driven by the official SDK, in-process and over loopback HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx2
import openai
import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scrapy_llm_extract.emulator import (
    MARKERS,
    EmulatorConfig,
    EmulatorServer,
    emulator_transport,
    recorded_requests,
)
from scrapy_llm_extract.emulator.answers import REASONING_TOKENS, prompt_tokens
from scrapy_llm_extract.models import request_params
from scrapy_llm_extract.schema import validation_errors
from scrapy_llm_extract.tokens import count_tokens

MODEL = "gpt-4o-mini"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": ["string", "null"]}, "price": {"type": ["number", "null"]}},
    "required": ["title", "price"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "product", "strict": True, "schema": SCHEMA},
}
OFFLINE_URL = "http://emulator.invalid/v1"


class Clock:
    """Simulated time: tests move it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def chat_body(title="Blue mug", price="12.99", extra="", model=MODEL):
    user = (
        '<untrusted_page url="https://shop.example/p">\n<structured_data>\n'
        f"og:title: {title}\nitemprop price: {price}\n</structured_data>\n"
        f"<visible_text>\n{extra}\n</visible_text>\n</untrusted_page>"
    )
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Extract the product."},
            {"role": "user", "content": user},
        ],
        "response_format": RESPONSE_FORMAT,
    }


def row(custom_id, body=None, url="/v1/chat/completions"):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body or chat_body()}


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(params=["transport", "server"])
def make_client(request, tmp_path):
    """Build sync SDK clients on one state folder, either way of running the emulator."""
    servers = []

    def make(config=None, clock=None, state=tmp_path / "state", **options):
        options = {"max_retries": 0, "_strict_response_validation": True, **options}
        extra = {} if clock is None else {"clock": clock}
        if request.param == "transport":
            http = httpx2.Client(transport=emulator_transport(state, config, **extra))
            return openai.OpenAI(api_key="sk-t", base_url=OFFLINE_URL, http_client=http, **options)
        server = EmulatorServer(state, config, **extra).start()
        servers.append(server)
        return openai.OpenAI(api_key="sk-t", base_url=server.base_url, **options)

    yield make
    for server in servers:
        server.stop()


def submit(client, rows):
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "test"},
    )


def result_lines(client, file_id):
    if file_id is None:
        return {}
    with client.files.with_streaming_response.content(file_id) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    return {line["custom_id"]: line for line in lines}


def test_batch_round_trip(make_client, tmp_path):
    client = make_client()
    rows = [row(f"item-{n}", chat_body(title=f"Mug {n}", price=f"{n}.50")) for n in range(6)]
    created = submit(client, rows)
    assert created.status == "validating"
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed"
    assert batch.model == MODEL
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert batch.error_file_id is None
    assert batch.metadata == {"run": "test"}
    whole = client.files.content(batch.output_file_id).text.splitlines()
    results = result_lines(client, batch.output_file_id)
    # Shuffled like the real API's output, by a seed that makes each emulator run repeat itself.
    order = [json.loads(line)["custom_id"] for line in whole]
    assert order != [r["custom_id"] for r in rows]
    again = make_client(state=tmp_path / "again")
    repeated = again.files.content(again.batches.retrieve(submit(again, rows).id).output_file_id)
    assert [json.loads(line)["custom_id"] for line in repeated.text.splitlines()] == order
    assert set(results) == {r["custom_id"] for r in rows}
    for n in range(6):
        line = results[f"item-{n}"]
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert completion.model == MODEL + "-emulator"
        assert json.loads(completion.choices[0].message.content) == {
            "title": f"Mug {n}",
            "price": n + 0.5,
        }
    usage = [r["response"]["body"]["usage"] for r in results.values()]
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert client.files.delete(output.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(output.id)


def test_realtime_answer_is_schema_valid_with_exact_usage(make_client):
    client = make_client()
    body = chat_body()
    completion = client.chat.completions.create(**body)
    choice = completion.choices[0]
    assert completion.id.startswith("chatcmpl-")
    assert (choice.finish_reason, choice.message.refusal) == ("stop", None)
    content = json.loads(choice.message.content)
    assert content == {"title": "Blue mug", "price": 12.99}
    assert validation_errors(content, SCHEMA) == []
    messages = body["messages"]
    expected_prompt = 3 + sum(3 + count_tokens(m["content"], MODEL) for m in messages)
    assert completion.usage.prompt_tokens == expected_prompt == prompt_tokens(messages, MODEL)
    assert completion.usage.completion_tokens == count_tokens(choice.message.content, MODEL)


def test_max_completion_tokens_cuts_the_answer(make_client):
    completion = make_client().chat.completions.create(**chat_body(), max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_list_pages_newest_first(make_client):
    clock = Clock()
    client = make_client(clock=clock)
    ids = []
    for _ in range(5):
        ids.append(submit(client, [row("a")]).id)
        clock.now += 1
    first = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert [b["id"] for b in first["data"]] == [ids[4], ids[3]]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[4], ids[3], True)
    last = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_statuses_follow_the_clock(make_client):
    clock = Clock()
    config = EmulatorConfig(validating_seconds=10, in_progress_seconds=100, finalizing_seconds=5)
    client = make_client(config, clock)
    batch_id = submit(client, [row("a"), row("b")]).id
    start = int(clock.now)
    seen = []
    for step in (0, 10, 100, 5):
        clock.now += step
        batch = client.batches.retrieve(batch_id)
        seen.append((batch.status, batch.output_file_id is None))
    assert seen == [
        ("validating", True),
        ("in_progress", True),
        ("finalizing", True),
        ("completed", False),
    ]
    assert (batch.in_progress_at, batch.finalizing_at, batch.completed_at) == (
        start + 10,
        start + 110,
        start + 115,
    )
    assert batch.expires_at == start + 86400


def test_demo_preset_takes_minutes():
    assert EmulatorConfig.from_dict({"preset": "demo"}) == EmulatorConfig.demo()
    assert EmulatorConfig.demo().in_progress_seconds >= 60
    with pytest.raises(ValueError, match="unknown_key"):
        EmulatorConfig.from_dict({"unknown_key": 1})


def test_cancel_keeps_finished_rows(make_client):
    clock = Clock()
    config = EmulatorConfig(in_progress_seconds=100, cancelling_seconds=5)
    client = make_client(config, clock)
    batch_id = submit(client, [row(f"r{n}") for n in range(4)]).id
    clock.now += 50
    assert client.batches.cancel(batch_id).status == "cancelling"
    clock.now += 5
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at == batch.cancelling_at + 5
    outputs = result_lines(client, batch.output_file_id)
    errors = result_lines(client, batch.error_file_id)
    assert len(outputs) == 2 and len(errors) == 2
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors.values())
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch_id)


def test_expired_batch_delivers_partial_results(make_client):
    client = make_client(EmulatorConfig(expire_batches=True, expire_fraction=0.25))
    batch = client.batches.retrieve(submit(client, [row(f"r{n}") for n in range(8)]).id)
    assert batch.status == "expired" and batch.expired_at is not None
    outputs = result_lines(client, batch.output_file_id)
    errors = result_lines(client, batch.error_file_id)
    assert len(outputs) == 2
    assert sorted(outputs | errors) == sorted(f"r{n}" for n in range(8))
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}


def test_a_batch_past_its_window_expires(make_client):
    clock = Clock()
    client = make_client(
        EmulatorConfig(in_progress_seconds=200, completion_window_seconds=100), clock
    )
    batch_id = submit(client, [row(f"r{n}") for n in range(4)]).id
    clock.now += 100
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "expired"
    assert len(result_lines(client, batch.output_file_id)) == 2


@pytest.mark.parametrize(
    ("rows", "code", "line"),
    [
        ([row("a"), row("a")], "duplicate_custom_id", 2),
        ([row("a"), row("b", chat_body(model="gpt-4o"))], "model_mismatch", 2),
        ([row("a", url="/v1/embeddings")], "url_mismatch", 1),
        ([row("a"), {"custom_id": "b", "method": "POST", "body": {}}], "invalid_request", 2),
        ([row("a"), row("b"), row("c")], "too_many_tasks", None),
    ],
)
def test_invalid_input_fails_validation(make_client, rows, code, line):
    client = make_client(EmulatorConfig(max_rows=2))
    created = submit(client, rows)
    assert created.status == "validating"
    batch = client.batches.retrieve(created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [(code, line)]
    assert batch.output_file_id is None and batch.error_file_id is None


def test_unparseable_line_and_size_limit(make_client):
    client = make_client(EmulatorConfig(max_file_bytes=5000))
    bad = client.files.create(file=("a.jsonl", io.BytesIO(b"{not json\n")), purpose="batch")
    batch = client.batches.create(
        input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.retrieve(batch.id).errors.data[0].code == "invalid_json_line"
    big = client.batches.retrieve(submit(client, [row(f"r{n}") for n in range(20)]).id)
    assert big.errors.data[0].code == "file_too_large"


def test_create_rejects_bad_parameters(make_client):
    client = make_client()
    uploaded = client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([row("a")]))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as error:
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert error.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"k" * 65: "v"},
        )


def test_enqueued_token_quota_fails_the_next_batch(make_client):
    clock = Clock()
    tokens = prompt_tokens(chat_body()["messages"], MODEL)
    config = EmulatorConfig(in_progress_seconds=100, enqueued_token_limit=3 * tokens)
    client = make_client(config, clock)
    first = submit(client, [row("a"), row("b")])
    second = submit(client, [row("c"), row("d")])
    assert second.status == "validating"
    failed = client.batches.retrieve(second.id)
    assert failed.status == "failed"
    assert failed.errors.data[0].code == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4o-mini" in failed.errors.data[0].message
    assert client.batches.retrieve(first.id).status == "in_progress"
    clock.now += 100
    assert client.batches.retrieve(submit(client, [row("e")]).id).status == "in_progress"


def test_forced_validation_failure(make_client):
    client = make_client(EmulatorConfig(fail_batches="invalid_request"))
    batch = client.batches.retrieve(submit(client, [row("a")]).id)
    assert (batch.status, batch.errors.data[0].code) == ("failed", "invalid_request")


def test_upload_failures(make_client):
    client = make_client(EmulatorConfig(upload_error_first=2))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    assert client.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch").bytes == 3


def test_rate_limits_with_retry_after(make_client):
    client = make_client(EmulatorConfig(rate_limit_first=1, rate_limit_every=3, retry_after=7))
    outcomes = []
    for _ in range(4):
        try:
            client.chat.completions.create(**chat_body())
            outcomes.append("ok")
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded"
            assert exc.response.headers["retry-after"] == "7"
            outcomes.append("429")
    assert outcomes == ["429", "ok", "429", "ok"]


def test_server_errors_every_nth_call(make_client):
    client = make_client(EmulatorConfig(server_error_every=2, server_error_status=503))
    client.chat.completions.create(**chat_body())
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(**chat_body())
    assert error.value.status_code == 503
    client.chat.completions.create(**chat_body())


@pytest.mark.parametrize(
    "config", [EmulatorConfig(hang_first=1), EmulatorConfig(latency=30)], ids=["hang", "latency"]
)
def test_slow_answers_time_out_the_client(make_client, config):
    client = make_client(config, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(**chat_body())


def test_answer_faults_every_nth_call(make_client):
    client = make_client(EmulatorConfig(invalid_json_every=2, refusal_every=3, length_every=5))
    choices = [client.chat.completions.create(**chat_body()).choices[0] for _ in range(5)]
    assert choices[0].finish_reason == "stop" and json.loads(choices[0].message.content)
    with pytest.raises(ValueError):
        json.loads(choices[1].message.content)
    assert choices[2].message.refusal and choices[2].message.content is None
    assert choices[4].finish_reason == "length"


def realtime_marker_effect(client, marker):
    try:
        completion = client.chat.completions.create(**chat_body(extra=f"[[emulator:{marker}]]"))
    except openai.APIStatusError as exc:
        return exc.status_code
    except openai.APITimeoutError:
        return "timeout"
    return describe(completion.choices[0].model_dump())


def describe(choice):
    message = choice["message"]
    if message["refusal"]:
        return "refusal"
    if choice["finish_reason"] != "stop":
        return choice["finish_reason"]
    try:
        content = json.loads(message["content"])
    except ValueError:
        return "invalid_json"
    return "ok" if validation_errors(content, SCHEMA) == [] else "schema_mismatch"


EFFECTS = {
    "refusal": "refusal",
    "length": "length",
    "content_filter": "content_filter",
    "invalid_json": "invalid_json",
    "schema_mismatch": "schema_mismatch",
    "error_500": 500,
    "error_400": 400,
    "hang": "timeout",
}


def test_markers_in_real_time(make_client):
    client = make_client(timeout=0.2)
    assert set(EFFECTS) == set(MARKERS)
    assert {m: realtime_marker_effect(client, m) for m in MARKERS} == EFFECTS


def test_markers_and_row_faults_in_batch_rows(make_client):
    client = make_client(EmulatorConfig(row_error_every=10))
    rows = [row(m, chat_body(extra=f"[[emulator:{m}]]")) for m in MARKERS]
    rows += [row("plain"), row("tenth")]
    batch = client.batches.retrieve(submit(client, rows).id)
    results = result_lines(client, batch.output_file_id) | result_lines(client, batch.error_file_id)
    effects = {}
    for custom_id, line in results.items():
        response = line["response"]
        if response["status_code"] != 200:
            assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
            effects[custom_id] = response["status_code"]
        else:
            effects[custom_id] = describe(response["body"]["choices"][0])
    assert effects == {**EFFECTS, "hang": "ok", "plain": "ok", "tenth": 500}
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 7, "failed": 3}


def raw_client(make_client, **config):
    """The emulator's HTTP client, used without the SDK for wire-level checks."""
    client = make_client(EmulatorConfig(**config))
    return client._client, str(client.base_url).rstrip("/")


def test_auth_and_unknown_routes_answer_the_error_shape(make_client):
    http, base = raw_client(make_client, api_key="sk-right")
    missing = http.get(f"{base}/batches")
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = http.get(f"{base}/batches", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong" not in wrong.text
    unknown = http.get(f"{base}/nothing", headers={"Authorization": "Bearer sk-right"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (GET /v1/nothing)"


def test_request_bodies_are_recorded_byte_for_byte(make_client, tmp_path):
    http, base = raw_client(make_client)
    body = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "caf\xc3\xa9"}]}'
    answer = http.post(
        f"{base}/chat/completions", content=body, headers={"Authorization": "Bearer k"}
    )
    assert answer.status_code == 200
    broken = http.post(
        f"{base}/chat/completions", content=b"\xff{", headers={"Authorization": "Bearer k"}
    )
    assert broken.status_code == 400
    assert recorded_requests(tmp_path / "state") == [body, b"\xff{"]


def test_two_processes_share_one_state_folder(tmp_path):
    clock = Clock()
    config = EmulatorConfig(in_progress_seconds=60)

    def client():
        transport = emulator_transport(tmp_path, config, clock=clock)
        http = httpx2.Client(transport=transport)
        return openai.OpenAI(api_key="k", base_url=OFFLINE_URL, http_client=http, max_retries=0)

    crawl, collect = client(), client()
    batch_id = submit(crawl, [row("a")]).id
    clock.now += 60
    collected = collect.batches.retrieve(batch_id)
    assert collected.status == "completed"
    assert crawl.batches.retrieve(batch_id).output_file_id == collected.output_file_id


def test_server_rereads_its_config_file(tmp_path):
    config_file = tmp_path / "faults.json"
    config_file.write_text("{}")
    with EmulatorServer(tmp_path / "state", config_file) as server:
        client = openai.OpenAI(api_key="k", base_url=server.base_url, max_retries=0)
        client.chat.completions.create(**chat_body())
        config_file.write_text(json.dumps({"rate_limit_first": 1}))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**chat_body())
        client.chat.completions.create(**chat_body())
        assert len(server.requests) == 3


def test_transport_reads_the_config_in_its_state_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"server_error_first": 1}))
    http = httpx2.Client(transport=emulator_transport(tmp_path))
    client = openai.OpenAI(api_key="k", base_url=OFFLINE_URL, http_client=http, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**chat_body())


def test_command_line_server(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scrapy_llm_extract.emulator",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        client = openai.OpenAI(
            api_key="k", base_url=base_url, max_retries=0, _strict_response_validation=True
        )
        batch = client.batches.retrieve(submit(client, [row("a"), row("b")]).id)
        assert batch.status == "completed"
        assert set(result_lines(client, batch.output_file_id)) == {"a", "b"}
    finally:
        process.terminate()
        process.wait(timeout=10)


async def async_round_trip(client):
    completion = await client.chat.completions.create(**chat_body())
    assert json.loads(completion.choices[0].message.content)["title"] == "Blue mug"
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([row("a"), row("b")]))), purpose="batch"
    )
    created = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await client.batches.retrieve(created.id)
    assert batch.status == "completed"
    async with client.files.with_streaming_response.content(batch.output_file_id) as response:
        ids = [json.loads(line)["custom_id"] async for line in response.iter_lines() if line]
    assert sorted(ids) == ["a", "b"]
    assert [b.id async for b in client.batches.list(limit=1)] == [batch.id]
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(**chat_body(extra="[[emulator:hang]]"), timeout=0.2)


@deferred_f_from_coro_f
async def test_async_sdk_in_process(tmp_path):
    http = httpx2.AsyncClient(transport=emulator_transport(tmp_path))
    client = openai.AsyncOpenAI(
        api_key="k",
        base_url=OFFLINE_URL,
        http_client=http,
        max_retries=0,
        _strict_response_validation=True,
    )
    await async_round_trip(client)


@deferred_f_from_coro_f
async def test_async_sdk_over_loopback(tmp_path):
    with EmulatorServer(tmp_path) as server:
        client = openai.AsyncOpenAI(
            api_key="k", base_url=server.base_url, max_retries=0, _strict_response_validation=True
        )
        await async_round_trip(client)
        await client.close()


def test_a_half_written_config_keeps_the_previous_one(tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"server_error_first": 1}))
    http = httpx2.Client(transport=emulator_transport(tmp_path))
    client = openai.OpenAI(api_key="k", base_url=OFFLINE_URL, http_client=http, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**chat_body())
    config_file.write_text('{"server_error_first": ')
    client.chat.completions.create(**chat_body())
    config_file.write_text(json.dumps({"unknown_fault": 1}))
    with pytest.raises(openai.InternalServerError, match="unknown_fault"):
        client.chat.completions.create(**chat_body())


# Reasoning models: the request rules of models.py, refused with OpenAI's 400s.
UNSUPPORTED_MAX_TOKENS = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model."
    " Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}
UNSUPPORTED_TEMPERATURE = {
    "message": "Unsupported value: 'temperature' does not support 0 with this model."
    " Only the default (1) value is supported.",
    "type": "invalid_request_error",
    "param": "temperature",
    "code": "unsupported_value",
}


def unsupported_effort(effort, supported):
    return {
        "message": f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this"
        f" model. Supported values are: {supported}.",
        "type": "invalid_request_error",
        "param": "reasoning_effort",
        "code": "unsupported_value",
    }


UNSUPPORTED_EFFORT_PARAMETER = {
    "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
    "type": "invalid_request_error",
    "param": "reasoning_effort",
    "code": "unsupported_parameter",
}


@pytest.mark.parametrize(
    ("model", "params", "error"),
    [
        ("gpt-5-nano", {"temperature": 0}, UNSUPPORTED_TEMPERATURE),
        ("gpt-5-mini-2025-08-07", {"max_tokens": 100}, UNSUPPORTED_MAX_TOKENS),
        (
            "gpt-5.1",
            {"reasoning_effort": "minimal"},
            unsupported_effort("minimal", "'none', 'low', 'medium', 'high'"),
        ),
        (
            "gpt-5",
            {"reasoning_effort": "none"},
            unsupported_effort("none", "'minimal', 'low', 'medium', 'high'"),
        ),
        ("o3", {"temperature": 0}, UNSUPPORTED_TEMPERATURE),
        (
            "o4-mini",
            {"reasoning_effort": "minimal"},
            unsupported_effort("minimal", "'low', 'medium', 'high'"),
        ),
        ("o1-mini", {"reasoning_effort": "low"}, UNSUPPORTED_EFFORT_PARAMETER),
        ("gpt-4o-mini", {"reasoning_effort": "low"}, UNSUPPORTED_EFFORT_PARAMETER),
    ],
)
def test_each_family_refuses_what_it_does_not_take(make_client, model, params, error):
    client = make_client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.with_options(max_retries=0).post(
            "/chat/completions", body={**chat_body(model=model), **params}, cast_to=object
        )
    assert refused.value.status_code == 400
    assert refused.value.body == error


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini", "gpt-5-chat-latest", "gpt-5-nano", "gpt-5.1", "o3", "o1-mini"]
)
def test_each_family_takes_the_body_models_py_builds_for_it(make_client, model):
    body = {**chat_body(model=model), **request_params(model, 200)}
    completion = make_client().chat.completions.create(**body)
    assert completion.choices[0].finish_reason == "stop"
    assert json.loads(completion.choices[0].message.content) == {
        "title": "Blue mug",
        "price": 12.99,
    }


def test_reasoning_tokens_are_reported_and_counted_as_output(make_client):
    body = {**chat_body(model="gpt-5-nano"), **request_params("gpt-5-nano", 200)}
    completion = make_client().chat.completions.create(**body)
    reasoning = REASONING_TOKENS["minimal"]
    assert completion.usage.completion_tokens_details.reasoning_tokens == reasoning
    answer_tokens = count_tokens(completion.choices[0].message.content, "gpt-5-nano")
    assert completion.usage.completion_tokens == reasoning + answer_tokens
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + reasoning + answer_tokens
    )


def test_reasoning_can_spend_the_whole_budget_and_leave_no_answer(make_client):
    # No reasoning_effort: gpt-5 models reason at "medium", which this budget cannot hold.
    completion = make_client().chat.completions.create(
        **chat_body(model="gpt-5-nano"), max_completion_tokens=1024
    )
    assert REASONING_TOKENS["medium"] > 1024
    assert (completion.choices[0].finish_reason, completion.choices[0].message.content) == (
        "length",
        "",
    )
    assert completion.usage.completion_tokens_details.reasoning_tokens == 1024
    assert completion.usage.completion_tokens == 1024


def test_a_batch_row_with_a_refused_body_is_an_error_row_with_that_body(make_client):
    client = make_client()
    good = {**chat_body(model="gpt-5-nano"), **request_params("gpt-5-nano", 200)}
    bad = {**chat_body(model="gpt-5-nano"), "max_completion_tokens": 200, "temperature": 0}
    batch = client.batches.retrieve(submit(client, [row("good", good), row("bad", bad)]).id)
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    errors = result_lines(client, batch.error_file_id)
    assert list(errors) == ["bad"]
    assert errors["bad"]["error"] is None
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"] == {"error": UNSUPPORTED_TEMPERATURE}
    output = result_lines(client, batch.output_file_id)["good"]["response"]["body"]
    reasoning = output["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning == REASONING_TOKENS["minimal"]
    assert batch.usage.output_tokens == output["usage"]["completion_tokens"]
    assert batch.usage.output_tokens_details.reasoning_tokens == reasoning
