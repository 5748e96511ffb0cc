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
break a crawl: SQLite errors are logged and read as misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
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
    ``<directory>/responses.sqlite3``."""

    def __init__(self, directory: Path, endpoint: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.endpoint = endpoint
        self.path = directory / FILENAME
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses"
            " (key TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, body_json: str) -> dict[str, Any] | None:
        """The stored answer to this exact request body, or None."""
        try:
            row = self._db.execute(
                "SELECT body FROM responses WHERE key = ?", (self._key(body_json),)
            ).fetchone()
        except sqlite3.Error as exc:
            logger.warning("Response cache %s unreadable (%s); calling the API.", self.path, exc)
            return None
        if row is None:
            return None
        body: dict[str, Any] = json.loads(row[0])
        return body

    def put(self, body_json: str, body: Mapping[str, Any]) -> None:
        """Store the answer to a request body (the last writer wins; answers are equivalent)."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, body, created) VALUES (?, ?, ?)",
                (self._key(body_json), json.dumps(body, ensure_ascii=False), time.time()),
            )
        except sqlite3.Error as exc:
            logger.warning(
                "Response cache %s not writable (%s); answer not cached.", self.path, exc
            )

    def _key(self, body_json: str) -> str:
        return cache_key(self.endpoint, body_json)

    def close(self) -> None:
        self._db.close()
