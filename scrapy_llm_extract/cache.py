"""A local cache of successful real-time answers, keyed by the exact request.

Re-crawling the same pages (while developing a spider, or resuming a crawl)
would otherwise pay again for answers already bought. The key is the sha256 of
the API's base URL and the request body as sent, so a changed model,
instruction, schema or page is a miss by construction, and so is the same
request to another endpoint (the offline emulator's answers are never served
once a real key is set). Only answers that parsed into an extraction are
stored, so a refusal or a cut-off answer is asked again next time.

SQLite in WAL mode, autocommit (one short transaction per statement) and a
busy timeout let several crawls share one cache folder. Lookups are local and
sub-millisecond, so they run on the reactor thread. A broken cache must not
break a crawl: the first error is logged once and the crawl goes on without
the cache (every lookup a miss, nothing stored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILENAME = "responses.sqlite3"
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT = 30.0


def cache_key(endpoint: str, body_json: str) -> str:
    return hashlib.sha256(f"{endpoint}\n{body_json}".encode()).hexdigest()


class ResponseCache:
    """Chat-completion bodies of one API ``endpoint`` by request body, in
    ``<directory>/responses.sqlite3``; never raises. ``sleep`` pauses between
    attempts to open a file that another process is setting up."""

    def __init__(
        self, directory: Path, endpoint: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.endpoint = endpoint
        self.path = directory / FILENAME
        self._db: sqlite3.Connection | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._db = _open(self.path, sleep)
        except (OSError, sqlite3.Error) as exc:
            self._give_up(exc)

    @property
    def usable(self) -> bool:
        """False once an error has turned the cache off for the rest of the crawl."""
        return self._db is not None

    def get(self, body_json: str) -> dict[str, Any] | None:
        """The stored answer to this exact request body, or None."""
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT body FROM responses WHERE key = ?", (self._key(body_json),)
            ).fetchone()
            body: dict[str, Any] | None = None if row is None else json.loads(row[0])
        except (sqlite3.Error, ValueError) as exc:
            self._give_up(exc)
            return None
        return body

    def put(self, body_json: str, body: Mapping[str, Any]) -> None:
        """Store the answer to a request body (the last writer wins; answers are equivalent)."""
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, body, created) VALUES (?, ?, ?)",
                (self._key(body_json), json.dumps(body, ensure_ascii=False), time.time()),
            )
        except sqlite3.Error as exc:
            self._give_up(exc)

    def _key(self, body_json: str) -> str:
        return cache_key(self.endpoint, body_json)

    def _give_up(self, exc: Exception) -> None:
        """Turn the cache off with one warning: a crawl without it only pays for repeats."""
        logger.warning(
            "Response cache %s unusable (%s); this crawl goes on without it and calls the API"
            " for every page. Delete the file (or fix the folder's permissions) to cache again.",
            self.path,
            exc,
        )
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _open(path: Path, sleep: Callable[[float], None]) -> sqlite3.Connection:
    """A connection to the cache file in WAL mode, its table created.

    Switching a fresh file to WAL needs an exclusive lock that SQLite does not
    wait for with the busy timeout while another connection holds a write lock
    (a deadlock guard), so processes opening a new cache together get "database
    is locked" at once: the setup is retried, pausing up to BUSY_TIMEOUT in all.
    """
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    paused = 0.0
    pause = 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses"
                " (key TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL)"
            )
            return db
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or paused + pause > BUSY_TIMEOUT:
                db.close()
                raise
        sleep(pause)
        paused += pause
        pause = min(pause * 2, 0.5)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether another connection holds the lock (SQLITE_BUSY or one of its extended codes)."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
