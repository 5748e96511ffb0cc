"""ResponseCache: exact-request keys, sharing between processes, broken caches read as misses."""

import json
import logging
import multiprocessing
import sqlite3

from scrapy_llm_extract.cache import FILENAME, ResponseCache, cache_key

API = "https://api.openai.com/v1/"
BODY = {"choices": [{"message": {"content": '{"title": "Blue mug"}'}}], "model": "m"}


def request(page):
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": page}]})


def test_answers_only_the_exact_same_request(tmp_path):
    cache = ResponseCache(tmp_path / "cache", API)
    assert cache.get(request("mug")) is None
    cache.put(request("mug"), BODY)
    assert cache.get(request("mug")) == BODY
    assert cache.get(request("mug ")) is None
    assert cache.get(request("mug").replace("gpt-4o-mini", "gpt-4o")) is None
    cache.close()


def test_another_endpoint_does_not_get_these_answers(tmp_path):
    emulator = ResponseCache(tmp_path, "http://emulator.invalid/v1/")
    openai = ResponseCache(tmp_path, API)
    emulator.put(request("mug"), BODY)
    assert openai.get(request("mug")) is None
    assert emulator.get(request("mug")) == BODY
    emulator.close()
    openai.close()


def test_survives_reopening_and_uses_wal(tmp_path):
    cache = ResponseCache(tmp_path, API)
    cache.put(request("mug"), BODY)
    cache.close()
    reopened = ResponseCache(tmp_path, API)
    assert reopened.get(request("mug")) == BODY
    reopened.close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        keys = [row[0] for row in db.execute("SELECT key FROM responses")]
    assert keys == [cache_key(API, request("mug"))]


def _fill(directory, worker, count):
    cache = ResponseCache(directory, API)
    for n in range(count):
        cache.put(request(f"{worker}-{n}"), {"n": n, "worker": worker})
        assert cache.get(request(f"{worker}-{n}")) == {"n": n, "worker": worker}
    cache.close()


def test_several_processes_share_one_cache(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_fill, args=(tmp_path, w, 100)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    cache = ResponseCache(tmp_path, API)
    stored = {(w, n): cache.get(request(f"{w}-{n}")) for w in range(3) for n in range(100)}
    assert stored == {(w, n): {"n": n, "worker": w} for w in range(3) for n in range(100)}
    cache.close()


def test_a_broken_cache_reads_as_a_miss_and_says_so(tmp_path, caplog):
    cache = ResponseCache(tmp_path, API)
    cache.put(request("mug"), BODY)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("DROP TABLE responses")
    with caplog.at_level(logging.WARNING):
        assert cache.get(request("mug")) is None
        cache.put(request("mug"), BODY)
    assert "unreadable" in caplog.text
    assert "not writable" in caplog.text
    cache.close()
