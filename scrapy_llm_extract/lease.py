"""Leases on object storage: which collector works on a run, without a shared lock.

A lease is one small object (``<run_id>/lease.json``). It is created with
``If-None-Match: *``, so of two claimants exactly one succeeds; renewed with
``If-Match`` on the etag the holder last wrote, so a holder whose lease was
taken over learns it at its next renewal and stops; and it expires when its
holder stops renewing it for ``ttl`` seconds, measured on the store's clock
(the object's last write against the time the store answered), so the
collectors' clocks need not agree. Taking over an expired lease is again
``If-Match`` on the etag that was read: two claimants of an expired lease
cannot both win. Releasing is a delete with ``If-Match`` on the holder's
etag, so it never removes a lease someone else took over.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass

from .store import PreconditionFailed, S3Store

logger = logging.getLogger(__name__)

LEASE_NAME = "lease.json"


def new_owner() -> str:
    """Who holds a lease: readable in ``--status``, unique per claimant."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Lease:
    key: str
    owner: str
    etag: str


@dataclass(frozen=True)
class LeaseState:
    """What a lease object says, for ``--status``."""

    owner: str
    expired: bool
    age: float


class Leases:
    """Claim, renew and release leases in ``store`` for ``owner``, lasting ``ttl`` seconds."""

    def __init__(self, store: S3Store, ttl: float, owner: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or new_owner()

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "ttl": self.ttl}).encode()

    def claim(self, key: str) -> Lease | None:
        """The lease on ``key``, or None while someone else holds it unexpired."""
        try:
            return Lease(key, self.owner, self.store.put(key, self._body(), if_none_match=True))
        except PreconditionFailed:
            pass
        state, etag = self._read(key)
        if state is None:
            return self.claim(key)  # released in between: try again
        if not state.expired:
            return None
        try:
            lease = Lease(key, self.owner, self.store.put(key, self._body(), if_match=etag))
        except PreconditionFailed:
            return None  # renewed, or taken over by another claimant first
        logger.warning(
            "Took over %s: its holder %s stopped renewing it %.0f s ago (TTL %.0f s).",
            key,
            state.owner,
            state.age,
            self.ttl,
        )
        return lease

    def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False when it was taken over (then stop working under it)."""
        try:
            lease.etag = self.store.put(lease.key, self._body(), if_match=lease.etag)
        except PreconditionFailed:
            return False
        return True

    def release(self, lease: Lease) -> None:
        """Let the next collector claim it at once: a delete with ``If-Match`` on our last
        etag, so a lease taken over meanwhile (even between a read and the delete) stays."""
        try:
            self.store.delete(lease.key, if_match=lease.etag)
        except PreconditionFailed:
            pass  # taken over: it is the new holder's now

    def state(self, key: str) -> LeaseState | None:
        return self._read(key)[0]

    def _read(self, key: str) -> tuple[LeaseState | None, str]:
        stored = self.store.get(key)
        if stored is None:
            return None, ""
        try:
            data = json.loads(stored.body)
            owner, ttl = str(data["owner"]), float(data["ttl"])
        except (ValueError, KeyError, TypeError):
            owner, ttl = "(unreadable lease)", 0.0  # a torn or foreign object: expired
        age = (stored.server_time - stored.last_modified).total_seconds()
        return LeaseState(owner=owner, expired=age >= ttl, age=age), stored.etag
