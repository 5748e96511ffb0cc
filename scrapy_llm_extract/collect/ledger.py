"""The row ledger: the one place that knows what became of each spooled row of a run.

``collect.sqlite`` in the run folder holds the batch result rows by file and
``custom_id`` (streamed in, so memory does not grow with rows) and each row's
state:

- ``emitted``: handed to the project's pipelines in *this* pass and finished
  there, but not yet stored by every feed. Not final: a new collector resets
  these rows to pending when it claims the run (:meth:`Ledger.reset_pass`);
- ``delivered``: the pipelines were done with it and every feed of its pass
  stored it (:meth:`Ledger.checkpoint`, at the end of the pass);
- ``dropped``: a pipeline raised DropItem (its decision: final);
- ``failed`` / ``item_error``: failed for good in extraction, or a pipeline
  raised; both are in ``failures.jsonl`` (``--retry-failed`` replays the latter);
- ``retried:<file>``: resubmitted from ``<file>``: settled there, pending in
  the resubmission.

Why a checkpoint per pass: Scrapy's feeds store their file when the spider
closes (or per ``FEED_EXPORT_BATCH_ITEM_COUNT`` batch), so a row cannot be
known stored before then. Marking it per item would lose it when the feed
fails or the process dies before the file is stored; marking the whole pass
at close costs one statement and, after a crash, re-delivers only that pass.
``emitted`` writes are batched for the same reason: losing them loses nothing.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

LEDGER_NAME = "collect.sqlite"

EMITTED = "emitted"
DELIVERED = "delivered"
DROPPED = "dropped"
FAILED = "failed"
ITEM_ERROR = "item_error"
RETRIED = "retried"
#: Row states that count as "failed" in the contract's arithmetic.
FAILED_STATES = (FAILED, ITEM_ERROR)
#: Rows looked up (and emitted states written) per statement.
CHUNK = 512
#: A plain custom_id (no escapes) in a result line; others go through json.loads.
_CUSTOM_ID = re.compile(rb'"custom_id":\s*"([^"\\]*)"')


class Ledger:
    """One run's ledger; WAL with ``synchronous=NORMAL`` survives a killed process."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            -- A rowid table: WITHOUT ROWID keeps ~1 KB rows inside the B-tree and made
            -- storing results three times slower.
            CREATE TABLE IF NOT EXISTS results (
                file TEXT, custom_id TEXT, row BLOB, PRIMARY KEY (file, custom_id)
            );
            CREATE TABLE IF NOT EXISTS ingested (file TEXT PRIMARY KEY, batch TEXT);
            CREATE TABLE IF NOT EXISTS rows (
                custom_id TEXT PRIMARY KEY, state TEXT
            ) WITHOUT ROWID;
            CREATE TEMP TABLE pending (
                custom_id TEXT PRIMARY KEY, action TEXT, record TEXT
            ) WITHOUT ROWID;
            """
        )
        self._emitted: list[tuple[str, str]] = []

    def close(self) -> None:
        self.db.close()

    # Results ------------------------------------------------------------------------------

    def add_results(self, file: str, lines: Iterable[bytes]) -> tuple[int, int]:
        """Store result lines of ``file``'s batch (upserted: a repeated download is harmless).

        Returns (stored, unreadable): a line without a readable ``custom_id`` is skipped,
        so its row looks missing and is resubmitted like any row the batch did not return.
        The id is found without parsing the whole line (the join parses it, and treats a
        torn line like a missing row).
        """
        rows = []
        unreadable = 0
        for line in lines:
            found = _CUSTOM_ID.search(line)
            if found is not None:
                custom_id: Any = found.group(1).decode()
            else:
                try:
                    custom_id = json.loads(line)["custom_id"]
                except (ValueError, KeyError, TypeError):
                    unreadable += 1
                    continue
            rows.append((file, str(custom_id), line))
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")
        return len(rows), unreadable

    def mark_ingested(self, file: str, batch: dict[str, Any]) -> None:
        """Every result row of ``file`` is stored: never download them again."""
        self.db.execute("INSERT OR REPLACE INTO ingested VALUES (?, ?)", (file, json.dumps(batch)))

    def batch(self, file: str) -> dict[str, Any] | None:
        found = self.db.execute("SELECT batch FROM ingested WHERE file = ?", (file,)).fetchone()
        return json.loads(found[0]) if found else None

    def batches(self) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.execute("SELECT batch FROM ingested")]

    # The join -----------------------------------------------------------------------------

    def join(
        self, file: str, records: Iterable[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """Each unsettled record of ``file`` with its result row (None: the batch had none).

        Two queries per CHUNK records, not two per row: the per-row lookup was the
        collector's hot spot.
        """
        self.flush()
        chunk: list[dict[str, Any]] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= CHUNK:
                yield from self._join_chunk(file, chunk)
                chunk = []
        yield from self._join_chunk(file, chunk)

    def _join_chunk(
        self, file: str, chunk: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        if not chunk:
            return
        ids = [record["custom_id"] for record in chunk]
        marks = ",".join("?" * len(ids))
        states = dict(
            self.db.execute(f"SELECT custom_id, state FROM rows WHERE custom_id IN ({marks})", ids)
        )
        results = dict(
            self.db.execute(
                f"SELECT custom_id, row FROM results WHERE file = ? AND custom_id IN ({marks})",
                [file, *ids],
            )
        )
        settled_here = f"{RETRIED}:{file}"
        for record in chunk:
            state = states.get(record["custom_id"])
            if state is None or (state.startswith(RETRIED) and state != settled_here):
                yield record, results.get(record["custom_id"])

    # Row states ---------------------------------------------------------------------------

    def emitted(self, custom_id: str) -> None:
        """The pipelines finished with the row; written in batches (losing them loses nothing)."""
        self._emitted.append((custom_id, EMITTED))
        if len(self._emitted) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._emitted:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", self._emitted)
            self.db.execute("COMMIT")
            self._emitted.clear()

    def mark(self, custom_id: str, state: str) -> None:
        """A final state (failed, dropped, item_error), written at once."""
        self.db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?)", (custom_id, state))

    def state(self, custom_id: str) -> str | None:
        found = self.db.execute("SELECT state FROM rows WHERE custom_id = ?", (custom_id,))
        row = found.fetchone()
        return str(row[0]) if row else None

    def checkpoint(self) -> int:
        """Every feed stored the pass: its emitted rows are delivered. Returns how many."""
        self.flush()
        cursor = self.db.execute("UPDATE rows SET state = ? WHERE state = ?", (DELIVERED, EMITTED))
        return cursor.rowcount

    def reset_pass(self) -> int:
        """Forget rows emitted by a pass that never reached its checkpoint: deliver them again."""
        self._emitted.clear()
        return self.db.execute("DELETE FROM rows WHERE state = ?", (EMITTED,)).rowcount

    def item_errors(self) -> int:
        """Rows a project pipeline raised on (what ``--retry-failed`` takes back)."""
        return int(
            self.db.execute("SELECT COUNT(*) FROM rows WHERE state = ?", (ITEM_ERROR,)).fetchone()[
                0
            ]
        )

    def forget_item_errors(self) -> int:
        """Make the rows a pipeline failed on pending again (``--retry-failed``)."""
        return self.db.execute("DELETE FROM rows WHERE state = ?", (ITEM_ERROR,)).rowcount

    def counts(self) -> dict[str, int]:
        """Rows per final state: delivered, dropped, failed (pipeline errors included)."""
        self.flush()
        return _tally(self.db)

    # Rows waiting for a resubmission or real time, within one file's join ----------------

    def add_pending(self, custom_id: str, action: str, record: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?)",
            (custom_id, action, json.dumps(record)),
        )

    def pending(self, custom_id: str) -> tuple[str, dict[str, Any]] | None:
        found = self.db.execute(
            "SELECT action, record FROM pending WHERE custom_id = ?", (custom_id,)
        ).fetchone()
        return (found[0], json.loads(found[1])) if found else None

    def pending_count(self, action: str) -> int:
        found = self.db.execute("SELECT count(*) FROM pending WHERE action = ?", (action,))
        return int(found.fetchone()[0])

    def pending_records(self, action: str, *, excluding: set[str]) -> list[dict[str, Any]]:
        """The records of ``action`` whose id is not in ``excluding`` (only those parsed)."""
        found = self.db.execute("SELECT custom_id, record FROM pending WHERE action = ?", (action,))
        return [json.loads(record) for custom_id, record in found if custom_id not in excluding]

    def drop_pending(self, custom_id: str) -> None:
        self.db.execute("DELETE FROM pending WHERE custom_id = ?", (custom_id,))

    def settle_resubmitted(self, file: str, custom_ids: Iterable[str]) -> int:
        """Settle rows of ``file`` already written to a resubmission of it (by a collector
        killed before :meth:`settle_pending`): the next join of ``file`` would resubmit them
        again. Rows settled since (in ``file`` or later) keep their state. Returns how many."""
        settled = f"{RETRIED}:{file}"
        cursor = self.db.executemany(
            "INSERT INTO rows VALUES (?1, ?2) ON CONFLICT (custom_id) DO UPDATE SET state = ?2"
            " WHERE rows.state LIKE ?3 AND rows.state != ?2",
            ((custom_id, settled, f"{RETRIED}:%") for custom_id in custom_ids),
        )
        return cursor.rowcount

    def settle_pending(self, action: str, state: str) -> None:
        """Give every pending row of ``action`` its state, then forget them."""
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT OR REPLACE INTO rows SELECT custom_id, ? FROM pending WHERE action = ?",
            (state, action),
        )
        self.db.execute("DELETE FROM pending WHERE action = ?", (action,))
        self.db.execute("COMMIT")


def read_counts(run_path: Path) -> dict[str, int] | None:
    """The ledger's counts without creating or changing anything (for ``--status``)."""
    path = run_path / LEDGER_NAME
    if not path.exists():
        return {DELIVERED: 0, DROPPED: 0, FAILED: 0}
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return _tally(db)
    except sqlite3.Error:
        return None
    finally:
        db.close()


def _tally(db: sqlite3.Connection) -> dict[str, int]:
    counts = {DELIVERED: 0, DROPPED: 0, FAILED: 0}
    for state, count in db.execute("SELECT state, count(*) FROM rows GROUP BY state"):
        if state in FAILED_STATES:
            counts[FAILED] += count
        elif state in counts:
            counts[state] += count
    return counts
