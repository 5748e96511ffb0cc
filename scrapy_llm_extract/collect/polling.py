"""Submission and polling: what collect-batches asks of the Batch API for a run's files.

Submitting pending files within the enqueued-token quota, polling their
batches (cancelling those past ``--deadline``), and streaming a final batch's
result files into the run's :class:`~.ledger.Ledger`. Errors propagate to the
caller, which confines them to the file or run they concern.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from typing import Any

import openai

from ..config import Config
from ..manifest import PENDING, SUBMITTED, utc_now
from ..retry import RetryPolicy
from ..spool import Run
from ..submit import Submitter
from .ledger import Ledger

logger = logging.getLogger(__name__)

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "expired", "cancelled", "failed")
#: Bytes read from a result file at a time; rows are stored in the ledger per slice.
DOWNLOAD_SLICE = 1 << 20


def results_ready(batch: Any) -> bool:
    """A final batch whose result files are attached. OpenAI has been seen to report
    ``completed`` before it attaches them: joining then would take every row for missing."""
    if batch.status not in FINAL or batch.status == "failed":
        return False
    if batch.output_file_id or batch.error_file_id:
        return True
    counts = batch.request_counts
    if counts and counts.completed + counts.failed:
        logger.info(
            "Batch %s is %s but has no result files yet; looking again later.",
            batch.id,
            batch.status,
        )
        return False
    return True


def age_hours(batch: Any, now: float) -> float:
    return max(now - float(batch.created_at or now), 0.0) / 3600


def whole_lines(data: bytes) -> Iterator[bytes]:
    """Non-empty lines, split on ``\\n`` only (JSON may hold U+2028)."""
    return (line for line in data.split(b"\n") if line.strip())


class Polling:
    """One collector's dealings with the Batch API, shared by the runs it holds."""

    def __init__(
        self,
        config: Config,
        client: openai.AsyncOpenAI,
        *,
        deadline_hours: float | None,
        count: Callable[[str, int], None],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.client = client
        self.policy = RetryPolicy.from_config(config)
        self.submitter = Submitter(client, self.policy)
        self.deadline_hours = deadline_hours
        self.count = count
        self.clock = clock
        self.batches: dict[str, Any] = {}  # batch id -> last seen batch, for the quota

    async def submit_pending(
        self, runs: Collection[Run], run: Run, names: Collection[str] | None = None
    ) -> dict[str, str | None]:
        """Submit pending files in order while the enqueued tokens stay within the quota.

        Returns each file tried: None once submitted (or refused by validation, which
        :meth:`refused_too_often` settles), else why its upload or batch creation failed.
        """
        limit = self.config.batch_max_tokens
        tried: dict[str, str | None] = {}
        for name in run.manifest.with_status(PENDING):
            entry = run.manifest.files[name]
            if (names is not None and name not in names) or self.refused_too_often(run, name):
                continue
            enqueued = self._enqueued_tokens(runs)
            if enqueued and enqueued + entry["prompt_tokens"] > limit:
                logger.info(
                    "Holding %s of %s back: %d tokens enqueued, %d more would pass"
                    " LLM_EXTRACT_BATCH_MAX_TOKENS (%d).",
                    name,
                    run.run_id,
                    enqueued,
                    entry["prompt_tokens"],
                    limit,
                )
                continue
            refusals = len(entry["failed_batches"])
            upload = entry.get("file_id")
            if await self.submitter.submit_file(run, name):
                self.count("files/submitted", 1)
            if upload and entry.get("file_id") == upload:
                self.count("uploads/reused", 1)
            failed = entry["status"] == PENDING and len(entry["failed_batches"]) == refusals
            tried[name] = str(entry["reason"]) if failed else None
        return tried

    def _enqueued_tokens(self, runs: Collection[Run]) -> int:
        """Prompt tokens of the files whose batches this collector saw still running."""
        total = 0
        for run in runs:
            for entry in run.manifest.files.values():
                batch = self.batches.get(entry.get("batch_id") or "")
                if entry["status"] == SUBMITTED and (batch is None or batch.status in ACTIVE):
                    total += int(entry["prompt_tokens"])
        return total

    def refused_too_often(self, run: Run, name: str) -> bool:
        """A file whose batches failed validation for other reasons than the quota, too often."""
        refusals = [
            failed
            for failed in run.manifest.files[name].get("failed_batches") or []
            if "token_limit_exceeded" not in failed.get("reason", "")
        ]
        return len(refusals) >= self.config.max_attempts

    async def poll(self, run: Run, name: str) -> Any:
        """The file's batch now (after a deadline cancel if due); None if it failed validation."""
        entry = run.manifest.files[name]
        batch = await self.policy.call(lambda: self.client.batches.retrieve(entry["batch_id"]))
        deadline = self.deadline_hours
        if (
            deadline is not None
            and batch.status in ACTIVE
            and batch.status != "cancelling"
            and age_hours(batch, self.clock()) >= deadline
        ):
            logger.info(
                "Batch %s of %s is %.1f h old, past --deadline %g h: cancelling it; its"
                " unfinished rows go to real time.",
                batch.id,
                run.run_id,
                age_hours(batch, self.clock()),
                deadline,
            )
            batch = await self.policy.call(lambda: self.client.batches.cancel(batch.id))
            entry["deadline_cancelled"] = utc_now()
            run.manifest.save()
            self.count("batches/deadline_cancelled", 1)
            if batch.status == "cancelling":
                batch = await self.policy.call(lambda: self.client.batches.retrieve(batch.id))
        self.batches[batch.id] = batch
        if batch.status == "failed":
            await self.submitter.check(run, name)  # back to pending, with the reason
            self.count("batches/failed", 1)
            return None
        logger.info(
            "Batch %s (%s of %s): %s, %d/%d rows done",
            batch.id,
            name,
            run.run_id,
            batch.status,
            batch.request_counts.completed if batch.request_counts else 0,
            batch.request_counts.total if batch.request_counts else entry["rows"],
        )
        return batch

    async def ingest(self, ledger: Ledger, name: str, batch: Any) -> None:
        """Download a final batch's result files into the ledger, once."""
        if ledger.batch(name) is not None:
            return
        stored = unreadable = 0
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                counted = await self._download(ledger, name, file_id)
                stored, unreadable = stored + counted[0], unreadable + counted[1]
        ledger.mark_ingested(name, batch.to_dict())
        self.count(f"batches/{batch.status}", 1)
        if unreadable:
            self.count("results/unreadable", unreadable)
            logger.warning(
                "%d unreadable result row(s) in batch %s (%s): their rows are resubmitted.",
                unreadable,
                batch.id,
                name,
            )
        logger.info("Downloaded %d result row(s) of batch %s (%s)", stored, batch.id, name)

    async def _download(self, ledger: Ledger, name: str, file_id: str) -> tuple[int, int]:
        """Stream one result file into the ledger in bounded slices, retried whole."""

        async def fetch() -> tuple[int, int]:
            stored = unreadable = 0
            rest = b""
            async with self.client.files.with_streaming_response.content(file_id) as response:
                async for chunk in response.iter_bytes(DOWNLOAD_SLICE):
                    head, _, rest = (rest + chunk).rpartition(b"\n")
                    counted = ledger.add_results(name, whole_lines(head))
                    stored, unreadable = stored + counted[0], unreadable + counted[1]
            counted = ledger.add_results(name, whole_lines(rest))
            return stored + counted[0], unreadable + counted[1]

        return await self.policy.call(fetch)
