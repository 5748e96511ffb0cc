"""The object store and leases against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from scrapy_llm_extract.config import S3Settings
from scrapy_llm_extract.lease import Leases
from scrapy_llm_extract.store import PreconditionFailed, S3Store


def s3_settings_for(s3_server: Any, uri: str) -> S3Settings:
    settings = s3_server.settings(uri)
    return S3Settings(
        access_key_id=settings["AWS_ACCESS_KEY_ID"],
        secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=settings["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        use_ssl=False,
    )


def open_test_store(s3_server: Any, uri: str) -> S3Store:
    return S3Store(uri, s3_settings_for(s3_server, uri))


@pytest.fixture
def store(s3_server: Any, s3_spool: str) -> Any:
    store = open_test_store(s3_server, s3_spool)
    yield store
    store.close()


def test_put_get_list_delete(store: S3Store) -> None:
    store.put("run-a/requests-0001.jsonl", b'{"a":1}\n')
    store.put("run-a/manifest.json", b"{}")
    store.put("run-b/manifest.json", b"{}")
    assert store.list("run-a/") == ["run-a/manifest.json", "run-a/requests-0001.jsonl"]
    got = store.get("run-a/requests-0001.jsonl")
    assert got is not None and got.body == b'{"a":1}\n'
    assert got.server_time >= got.last_modified
    store.delete("run-a/requests-0001.jsonl")
    assert store.get("run-a/requests-0001.jsonl") is None
    assert store.list() == ["run-a/manifest.json", "run-b/manifest.json"]


def test_conditional_create_and_replace(store: S3Store) -> None:
    etag = store.put("k", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"2", if_none_match=True)
    newer = store.put("k", b"3", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"4", if_match=etag)  # stale etag: someone replaced it meanwhile
    got = store.get("k")
    assert got is not None and (got.body, got.etag) == (b"3", newer)


def test_two_claimants_exactly_one_wins(store: S3Store) -> None:
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def claim(owner: str) -> None:
        leases = Leases(store, ttl=300, owner=owner)
        barrier.wait()
        results.append(leases.claim("run-a/lease.json"))

    threads = [threading.Thread(target=claim, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1
    state = Leases(store, ttl=300).state("run-a/lease.json")
    assert state is not None and state.owner == winners[0].owner and not state.expired


def test_expired_lease_is_taken_over_and_the_old_holder_stops(store: S3Store) -> None:
    # A TTL of 0 expires at once: no waiting on the clock.
    old = Leases(store, ttl=0, owner="old")
    held = old.claim("run-a/lease.json")
    assert held is not None
    assert old.renew(held)  # still its own lease: renewal works
    new = Leases(store, ttl=300, owner="new")
    taken = new.claim("run-a/lease.json")
    assert taken is not None and taken.owner == "new"
    assert not old.renew(held)  # taken over: the old holder must stop
    old.release(held)  # not its lease any more: left alone
    assert Leases(store, ttl=300).state("run-a/lease.json").owner == "new"  # type: ignore[union-attr]
    assert Leases(store, ttl=300, owner="third").claim("run-a/lease.json") is None  # unexpired
    new.release(taken)
    assert Leases(store, ttl=300, owner="third").claim("run-a/lease.json") is not None


class TakeoverBeforeDelete(S3Store):
    """A store where another collector takes the lease over right before the next delete:
    the interleaving a read-then-delete release cannot see."""

    def __init__(self, uri: str, settings: S3Settings, takeover: Any) -> None:
        super().__init__(uri, settings)
        self.takeover = takeover

    def delete(self, key: str, *, if_match: str = "") -> None:
        takeover, self.takeover = self.takeover, None
        if takeover is not None:
            takeover()
        super().delete(key, if_match=if_match)


def test_releasing_never_deletes_a_lease_taken_over_meanwhile(
    store: S3Store, s3_server: Any, s3_spool: str
) -> None:
    taken: list[Any] = []
    racing = TakeoverBeforeDelete(
        s3_spool,
        s3_settings_for(s3_server, s3_spool),
        lambda: taken.append(Leases(store, ttl=300, owner="new").claim("run-a/lease.json")),
    )
    try:
        old = Leases(racing, ttl=0, owner="old")  # expired at once: free to take over
        held = old.claim("run-a/lease.json")
        assert held is not None
        old.release(held)
    finally:
        racing.close()
    assert taken and taken[0] is not None  # the takeover happened before the delete
    state = Leases(store, ttl=300).state("run-a/lease.json")
    assert state is not None and state.owner == "new"
