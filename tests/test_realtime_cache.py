"""ResponseCache: exact-request keys, sharing between processes, a broken cache turns itself off."""

import json
import logging
import multiprocessing
import sqlite3

from scrapy_llm_extract.cache import BUSY_TIMEOUT, FILENAME, ResponseCache, cache_key

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


def _open_together(directory, worker, rounds, barrier):
    """Each round, open a fresh cache at the same moment as the other workers."""
    try:
        for round_ in range(rounds):
            barrier.wait(60)
            cache = ResponseCache(directory / str(round_), API)
            assert cache.usable
            cache.put(request(str(worker)), {"worker": worker})
            assert cache.get(request(str(worker))) == {"worker": worker}
            cache.close()
    except BaseException:
        barrier.abort()  # the others fail now instead of waiting out the barrier
        raise


def test_processes_opening_a_fresh_cache_at_once_all_get_it(tmp_path):
    """Switching a new file to WAL locks it: the others must wait, not fail (8 of 30 did)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    rounds = 30
    workers = [
        context.Process(target=_open_together, args=(tmp_path, w, rounds, barrier))
        for w in range(8)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    assert [worker.exitcode for worker in workers] == [0] * 8
    for round_ in range(rounds):
        cache = ResponseCache(tmp_path / str(round_), API)
        assert [cache.get(request(str(w))) for w in range(8)] == [{"worker": w} for w in range(8)]
        cache.close()


def hold_write_lock(path):
    """Another process in the middle of a write: SQLite refuses the WAL switch at once."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_opening_waits_for_another_process_to_finish_its_write(tmp_path, caplog):
    holder = hold_write_lock(tmp_path / FILENAME)
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 3:
            holder.execute("COMMIT")

    with caplog.at_level(logging.WARNING):
        cache = ResponseCache(tmp_path, API, sleep=sleep)
    assert len(pauses) == 3
    assert cache.usable
    assert cache_warnings(caplog) == []
    cache.put(request("mug"), BODY)
    assert cache.get(request("mug")) == BODY
    cache.close()
    holder.close()


def test_a_lock_never_released_means_no_cache_after_the_busy_timeout(tmp_path, caplog):
    holder = hold_write_lock(tmp_path / FILENAME)
    pauses = []
    with caplog.at_level(logging.WARNING):
        cache = ResponseCache(tmp_path, API, sleep=pauses.append)
        assert cache.get(request("mug")) is None
    assert not cache.usable
    assert BUSY_TIMEOUT - 0.5 <= sum(pauses) <= BUSY_TIMEOUT
    [warning] = cache_warnings(caplog)
    assert "database is locked" in warning.getMessage()
    holder.close()


def cache_warnings(caplog):
    return [r for r in caplog.records if r.name == "scrapy_llm_extract.cache"]


def test_a_cache_broken_while_in_use_turns_off_with_one_warning(tmp_path, caplog):
    cache = ResponseCache(tmp_path, API)
    cache.put(request("mug"), BODY)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("DROP TABLE responses")
    with caplog.at_level(logging.WARNING):
        assert cache.get(request("mug")) is None
        cache.put(request("mug"), BODY)
        assert cache.get(request("mug")) is None
    assert not cache.usable
    [warning] = cache_warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert "goes on without it" in warning.getMessage()
    cache.close()


def test_a_file_where_the_cache_folder_should_be_means_no_cache(tmp_path, caplog):
    (tmp_path / "cache").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        cache = ResponseCache(tmp_path / "cache", API)
        cache.put(request("mug"), BODY)
        assert cache.get(request("mug")) is None
    assert not cache.usable
    assert len(cache_warnings(caplog)) == 1
    assert (tmp_path / "cache").read_text() == "not a folder"
    cache.close()


def test_a_corrupt_cache_file_means_no_cache_and_is_left_alone(tmp_path, caplog):
    garbage = b"this is not an SQLite database" * 100
    (tmp_path / FILENAME).write_bytes(garbage)
    with caplog.at_level(logging.WARNING):
        cache = ResponseCache(tmp_path, API)
        cache.put(request("mug"), BODY)
        assert cache.get(request("mug")) is None
    assert not cache.usable
    [warning] = cache_warnings(caplog)
    assert str(tmp_path / FILENAME) in warning.getMessage()
    assert (tmp_path / FILENAME).read_bytes() == garbage
    cache.close()
