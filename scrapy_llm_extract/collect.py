"""Collect Batch API results: submit what waits, poll, join, retry, and replay the items.

The core of ``scrapy collect-batches``, usable without the command. A
:class:`Collector` works through the spool runs it can lock:

1. submit pending files (never submitted, or refused for the enqueued-token
   quota) while the tokens enqueued stay within ``LLM_EXTRACT_BATCH_MAX_TOKENS``;
2. poll their batches (and cancel those past ``--deadline``);
3. for each final batch, stream its output and error files into an on-disk
   index (``collect.sqlite`` in the run folder: memory does not grow with
   rows, and rows come in any order), then walk the sidecar and judge each
   row with :func:`~.results.parse_batch_row`, the parser real time uses;
4. yield each extracted item (its own class, fields merged) to the crawler
   that :func:`replay_spider` builds, so the project's ITEM_PIPELINES and
   FEEDS receive it as a crawl would; resubmit failed rows up to
   ``LLM_EXTRACT_MAX_ATTEMPTS``, then write them to ``failures.jsonl``.

Exactly once: every row ends in one durable state in the index (``emitted``
when Scrapy reports the item scraped, dropped or errored; ``failed``;
``retried``) and is skipped on any later pass, by this process or another
(the run's flock keeps two collectors apart). A collector killed between a
feed write and the index update can re-emit that one item: the window is one
item wide, not one batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
from itemadapter import ItemAdapter
from scrapy import Spider, signals

from .client import async_client, sync_client
from .config import Config
from .extraction import ExtractionSchema, Prepared
from .items import merge_extracted, rebuild_item
from .manifest import PENDING, SUBMITTED, utc_now
from .models import (
    add_costs,
    cost_usd,
    format_usd,
    model_info,
    retarget,
    rounded_usd,
)
from .prompt import ExtractionRequest, dump_json
from .results import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    BATCH_FAILED,
    MISSING,
    Extracted,
    Failure,
    Outcome,
    Usage,
    parse_batch_row,
)
from .retry import RetryPolicy
from .spool import FAILURES_NAME, Run, claim_dead_runs, list_runs, request_line
from .submit import Submitter

if TYPE_CHECKING:
    from scrapy.crawler import Crawler, CrawlerProcessBase
    from scrapy.settings import BaseSettings
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

STATS_PREFIX = "llm_extract/collect"
INDEX_NAME = "collect.sqlite"
#: Manifest status of a file whose every row is accounted for.
COLLECTED = "collected"
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "expired", "cancelled", "failed")
#: Rows that never ran: resubmitting them does not use up one of their attempts.
NEVER_RAN = (BATCH_EXPIRED, MISSING)
#: Row states in the index: final (emitted, failed), or "retried:<file>" (resubmitted from
#: that file, so its row there is settled while the resubmission's is not).
EMITTED, FAILED, RETRIED = "emitted", "failed", "retried"
REALTIME_CHUNK = 256
PROGRESS_INTERVAL = 0.5
#: Bytes read from a result file at a time; rows are stored in the index per slice.
DOWNLOAD_SLICE = 1 << 20


@dataclass(frozen=True)
class CollectOptions:
    """What the command line asks of one collection."""

    run_id: str | None = None
    wait: bool = False
    poll_interval: float = 60.0
    deadline_hours: float | None = None
    escalate_model: str | None = None


@dataclass
class RunSummary:
    """What one invocation did to one run: the numbers of the final table."""

    rows: int = 0
    extracted: int = 0
    failed: int = 0
    retried: int = 0
    realtime: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: None: a model's price is unknown (see models.cost_usd).
    cost_usd: float | None = 0.0
    realtime_cost_usd: float | None = 0.0
    done: bool = False


class RowIndex:
    """The run's on-disk index: result rows by file and custom_id, and each row's final state.

    WAL with ``synchronous=NORMAL``: each state update is one small append that
    survives the process being killed (not a power cut), cheap enough to make
    per item.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS results (
                file TEXT, custom_id TEXT, row BLOB, PRIMARY KEY (file, custom_id)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS ingested (file TEXT PRIMARY KEY, batch TEXT);
            CREATE TABLE IF NOT EXISTS rows (
                custom_id TEXT PRIMARY KEY, state TEXT
            ) WITHOUT ROWID;
            CREATE TEMP TABLE pending (
                custom_id TEXT PRIMARY KEY, action TEXT, record TEXT
            ) WITHOUT ROWID;
            """
        )

    def close(self) -> None:
        self.db.close()

    def add_results(self, file: str, lines: Iterator[bytes]) -> int:
        """Store result lines of ``file``'s batch (upserted: a repeated download is harmless)."""
        rows = [(file, json.loads(line)["custom_id"], line) for line in lines]
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)
        self.db.execute("COMMIT")
        return len(rows)

    def mark_ingested(self, file: str, batch: dict[str, Any]) -> None:
        """Every result row of ``file`` is stored: never download them again."""
        self.db.execute("INSERT OR REPLACE INTO ingested VALUES (?, ?)", (file, json.dumps(batch)))

    def batch(self, file: str) -> dict[str, Any] | None:
        found = self.db.execute("SELECT batch FROM ingested WHERE file = ?", (file,)).fetchone()
        return json.loads(found[0]) if found else None

    def batches(self) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self.db.execute("SELECT batch FROM ingested")]

    def lookup(self, custom_id: str, file: str) -> tuple[bool, bytes | None]:
        """One query per row of the join: is it settled (emitted, failed, or resubmitted from
        ``file``), and its result row in ``file``'s batch, if any."""
        state, row = self.db.execute(
            "SELECT (SELECT state FROM rows WHERE custom_id = ?1),"
            " (SELECT row FROM results WHERE file = ?2 AND custom_id = ?1)",
            (custom_id, file),
        ).fetchone()
        return state in (EMITTED, FAILED, f"{RETRIED}:{file}"), row

    def mark(self, custom_id: str, state: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?)", (custom_id, state))

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

    def mark_pending(self, action: str, state: str) -> None:
        """Give every pending row of ``action`` its final state, then forget them."""
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT OR REPLACE INTO rows SELECT custom_id, ? FROM pending WHERE action = ?",
            (state, action),
        )
        self.db.execute("DELETE FROM pending WHERE action = ?", (action,))
        self.db.execute("COMMIT")


def _whole_lines(data: bytes) -> Iterator[bytes]:
    """Non-empty lines, split on ``\\n`` only (JSON may hold U+2028)."""
    return (line for line in data.split(b"\n") if line.strip())


def _results_ready(batch: Any) -> bool:
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


def _age_hours(batch: Any, now: float) -> float:
    return max(now - float(batch.created_at or now), 0.0) / 3600


class Progress:
    """One line rewritten in place on a terminal; nothing otherwise (log lines say it)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: Callable[[], str], *, force: bool = False) -> None:
        """Rewrite the line with ``text()``, at most every PROGRESS_INTERVAL unless forced."""
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            sys.stderr.write(f"\r\x1b[K{text()}")
            sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\n")


class Collector:
    """Brings back every spooled row of the runs it can lock, each exactly once."""

    def __init__(
        self,
        config: Config,
        options: CollectOptions,
        stats: StatsCollector,
        *,
        client: openai.AsyncOpenAI | None = None,
        clock: Any = time.time,
    ) -> None:
        self.config = config
        self.options = options
        self.stats = stats
        self.client = client or async_client(config)
        self.clock = clock
        self.policy = RetryPolicy.from_config(config)
        self.submitter = Submitter(self.client, self.policy)
        self.summaries: dict[str, RunSummary] = {}
        self.progress = Progress()
        self._runs: dict[str, tuple[Run, RowIndex]] = {}
        self._batches: dict[str, Any] = {}  # batch id -> last seen batch, for the quota
        self._in_flight: dict[int, tuple[RowIndex, str]] = {}
        self._in_flight_ids: set[str] = set()
        self._drained = asyncio.Event()  # set while no yielded item is still in the pipelines
        self._drained.set()
        self._realtime: Any = None
        self._merged = 0
        self._resubmissions: set[str] = set()

    # Scrapy side --------------------------------------------------------------------------

    def item_done(self, item: Any) -> None:
        """Scrapy finished with an item (scraped, dropped or errored): it is emitted for good."""
        found = self._in_flight.pop(id(item), None)
        if found is None:
            return
        index, custom_id = found
        self._in_flight_ids.discard(custom_id)
        index.mark(custom_id, EMITTED)
        self._inc("rows/emitted")
        if not self._in_flight:
            self._drained.set()

    async def close(self) -> None:
        """Release the runs' locks and the index, and print the final table."""
        self.progress.end()
        for run, index in self._runs.values():
            index.close()
            run.unlock()
        self._runs.clear()
        if self._realtime is not None:
            await self._realtime.close()
        await self.client.close()
        if self.summaries:
            logger.info("Collected:\n%s", summary_table(self.summaries))

    # The passes ---------------------------------------------------------------------------

    async def items(self) -> AsyncIterator[Any]:
        """Every extracted item, as batches finish; with ``wait``, until every run is done."""
        for dead in claim_dead_runs(self.config.spool_dir):
            dead.finish("recovered by collect-batches")
        while True:
            busy = False
            for run, index in self._claim_runs():
                async for item in self._collect_run(run, index):
                    yield item
                busy = busy or not self.summaries[run.run_id].done
            if not (self.options.wait and busy):
                return
            self._show_status()
            await asyncio.sleep(self.options.poll_interval)

    def _claim_runs(self) -> list[tuple[Run, RowIndex]]:
        """The runs to work on, locked; runs locked by a crawl or a collector are skipped."""
        for run in list_runs(self.config.spool_dir):
            if run.run_id in self._runs:
                continue
            if self.options.run_id and run.run_id != self.options.run_id:
                continue
            if run.manifest.data.get("collected_at"):
                continue
            if not run.try_lock():
                logger.info(
                    "Skipping run %s: another process (a crawl or collector) holds its lock.",
                    run.run_id,
                )
                self._inc("runs/skipped_locked")
                continue
            run.reload()
            if not run.manifest.closed or run.manifest.data.get("collected_at"):
                run.unlock()  # sealed and closed by claim_dead_runs, or collected meanwhile
                continue
            self._runs[run.run_id] = (run, RowIndex(run.path / INDEX_NAME))
            summary = self.summaries.setdefault(run.run_id, RunSummary())
            summary.rows = sum(
                entry["rows"] for entry in run.manifest.files.values() if entry["attempt"] == 1
            )
        return [pair for pair in self._runs.values() if not self.summaries[pair[0].run_id].done]

    async def _collect_run(self, run: Run, index: RowIndex) -> AsyncIterator[Any]:
        await self.submitter.reconcile(run)
        await self._submit_pending(run)
        for name in run.manifest.with_status(SUBMITTED):
            batch = await self._poll(run, name)
            if batch is not None and _results_ready(batch):
                async for item in self._collect_file(run, index, name, batch):
                    yield item
        for name in run.manifest.with_status(PENDING):
            if self._refused_too_often(run, name):
                async for item in self._collect_file(run, index, name, None):
                    yield item
        if self._resubmissions:  # files refused for the quota wait for the next pass
            await self._submit_pending(run, self._resubmissions)
            self._resubmissions.clear()
        files = run.manifest.files.values()
        if all(entry["status"] == COLLECTED for entry in files):
            await self._finish_run(run, index)

    async def _submit_pending(self, run: Run, names: Collection[str] | None = None) -> None:
        """Submit pending files in order while the enqueued tokens stay within the quota."""
        limit = self.config.batch_max_tokens
        for name in run.manifest.with_status(PENDING):
            entry = run.manifest.files[name]
            if (names is not None and name not in names) or self._refused_too_often(run, name):
                continue
            enqueued = self._enqueued_tokens()
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
            if await self.submitter.submit_file(run, name):
                self._inc("files/submitted")

    def _enqueued_tokens(self) -> int:
        """Prompt tokens of the files whose batches this collector saw still running."""
        total = 0
        for run, _ in self._runs.values():
            for entry in run.manifest.files.values():
                batch = self._batches.get(entry.get("batch_id") or "")
                if entry["status"] == SUBMITTED and (batch is None or batch.status in ACTIVE):
                    total += int(entry["prompt_tokens"])
        return total

    def _refused_too_often(self, run: Run, name: str) -> bool:
        """A file whose batches failed validation for other reasons than the quota, too often."""
        refusals = [
            failed
            for failed in run.manifest.files[name].get("failed_batches") or []
            if "token_limit_exceeded" not in failed.get("reason", "")
        ]
        return len(refusals) >= self.config.max_attempts

    async def _poll(self, run: Run, name: str) -> Any:
        """The file's batch now (after a deadline cancel if due); None if it failed validation."""
        entry = run.manifest.files[name]
        batch = await self.policy.call(lambda: self.client.batches.retrieve(entry["batch_id"]))
        deadline = self.options.deadline_hours
        if (
            deadline is not None
            and batch.status in ACTIVE
            and batch.status != "cancelling"
            and _age_hours(batch, self.clock()) >= deadline
        ):
            logger.info(
                "Batch %s of %s is %.1f h old, past --deadline %g h: cancelling it; its"
                " unfinished rows go to real time.",
                batch.id,
                run.run_id,
                _age_hours(batch, self.clock()),
                deadline,
            )
            batch = await self.policy.call(lambda: self.client.batches.cancel(batch.id))
            entry["deadline_cancelled"] = utc_now()
            run.manifest.save()
            self._inc("batches/deadline_cancelled")
            if batch.status == "cancelling":
                batch = await self.policy.call(lambda: self.client.batches.retrieve(batch.id))
        self._batches[batch.id] = batch
        if batch.status == "failed":
            await self.submitter.check(run, name)  # back to pending, with the reason
            self._inc("batches/failed")
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

    # One file -----------------------------------------------------------------------------

    async def _collect_file(
        self, run: Run, index: RowIndex, name: str, batch: Any
    ) -> AsyncIterator[Any]:
        """Join one final batch (None: refused too often) with its sidecar and settle every row."""
        entry = run.manifest.files[name]
        if batch is not None and index.batch(name) is None:
            count = 0
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    count += await self._download(index, name, file_id)
            index.mark_ingested(name, batch.to_dict())
            self._inc(f"batches/{batch.status}")
            logger.info("Downloaded %d result row(s) of batch %s (%s)", count, batch.id, name)
        summary = self.summaries[run.run_id]
        deadline_cancelled = bool(entry.get("deadline_cancelled"))
        user_cancelled = bool(entry.get("user_cancelled"))
        for record in run.iter_sidecar(name):
            custom_id = record["custom_id"]
            if custom_id in self._in_flight_ids:
                continue
            settled, raw = index.lookup(custom_id, name)
            if settled:
                continue
            outcome = self._outcome(run, name, batch, record, raw)
            self._count_usage(summary, record, outcome.usage)
            if isinstance(outcome, Extracted):
                yield self._emit(run, index, record, outcome)
            elif deadline_cancelled and outcome.kind in (BATCH_CANCELLED, *NEVER_RAN):
                index.add_pending(custom_id, "realtime", record)
            elif outcome.kind == BATCH_CANCELLED and user_cancelled:
                self._fail(run, index, record, outcome)
            elif (
                outcome.kind in NEVER_RAN or int(record["attempt"]) < self.config.max_attempts
            ) and batch is not None:
                record["failure"] = outcome.kind
                index.add_pending(custom_id, "retry", record)
            else:
                self._fail(run, index, record, outcome)
        if index.pending_count("retry"):
            self._resubmit(run, index, name)
        if index.pending_count("realtime"):
            async for item in self._realtime_rows(run, index, name):
                yield item
        entry["status"] = COLLECTED
        entry["collected_at"] = utc_now()
        run.manifest.save()
        self._publish_usage()
        self.progress.show(self._progress_text, force=True)

    async def _download(self, index: RowIndex, name: str, file_id: str) -> int:
        """Stream one result file into the index in bounded slices, retried whole."""

        async def fetch() -> int:
            count = 0
            rest = b""
            async with self.client.files.with_streaming_response.content(file_id) as response:
                async for chunk in response.iter_bytes(DOWNLOAD_SLICE):
                    head, _, rest = (rest + chunk).rpartition(b"\n")
                    count += index.add_results(name, _whole_lines(head))
            return count + index.add_results(name, _whole_lines(rest))

        return await self.policy.call(fetch)

    def _outcome(
        self, run: Run, name: str, batch: Any, record: dict[str, Any], raw: bytes | None
    ) -> Outcome:
        if batch is None:
            reasons = "; ".join(
                failed.get("reason", "") for failed in run.manifest.files[name]["failed_batches"]
            )
            return Failure(BATCH_FAILED, f"the batch failed validation: {reasons}")
        if raw is None:
            return Failure(
                MISSING, f"batch {batch.id} ({batch.status}) returned no row for this request"
            )
        try:
            row = json.loads(raw)
        except ValueError as exc:
            return Failure("invalid_row", f"unreadable result row: {exc}")
        return parse_batch_row(row, run.schema(record["schema"])["schema"])

    def _emit(self, run: Run, index: RowIndex, record: dict[str, Any], outcome: Extracted) -> Any:
        item = rebuild_item(record)
        rejected = merge_extracted(ItemAdapter(item), outcome.fields, self.config)
        if rejected:
            self._inc("merge/rejected_fields", len(rejected))
        self._in_flight[id(item)] = (index, record["custom_id"])
        self._in_flight_ids.add(record["custom_id"])
        self._drained.clear()
        self.summaries[run.run_id].extracted += 1
        self._inc("rows/extracted")
        self._merged += 1
        self.progress.show(self._progress_text)
        return item

    def _fail(self, run: Run, index: RowIndex, record: dict[str, Any], failure: Failure) -> None:
        """A final failure: one line in failures.jsonl, counted, never retried again."""
        line = {
            "custom_id": record["custom_id"],
            "url": record.get("url"),
            "kind": failure.kind,
            "message": failure.message,
        }
        with open(run.path / FAILURES_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        index.mark(record["custom_id"], FAILED)
        self.summaries[run.run_id].failed += 1
        self._inc("rows/failed")
        self._inc(f"rows/failed/{failure.kind}")
        logger.debug("Row %s failed for good: %s", record["custom_id"], failure.message)

    def _resubmit(self, run: Run, index: RowIndex, name: str) -> None:
        """Write the rows waiting for a retry to a new requests file, pending submission."""
        model = self.options.escalate_model or run.manifest.files[name]["model"]
        attempt = int(run.manifest.files[name]["attempt"]) + 1
        spool_file = run.new_file(model, attempt)
        count = 0
        for request in run.iter_requests(name):
            found = index.pending(request["custom_id"])
            if found is None or found[0] != "retry":
                continue
            record = found[1]
            # Another model may be of another family: its own generation parameters.
            body = retarget(
                request["body"], model, self.config.max_output_tokens, self.config.reasoning_effort
            )
            if record.pop("failure") not in NEVER_RAN:
                record["attempt"] = int(record["attempt"]) + 1
            record["model"] = model
            spool_file.append(
                request_line(request["custom_id"], dump_json(body)),
                record,
                int(record.get("prompt_tokens") or 0),
            )
            count += 1
        spool_file.seal()
        self._resubmissions.add(spool_file.name)
        index.mark_pending("retry", f"{RETRIED}:{name}")
        self.summaries[run.run_id].retried += count
        self._inc("rows/retried", count)
        logger.info(
            "Resubmitting %d failed row(s) of %s as %s (model %s)",
            count,
            name,
            spool_file.name,
            model,
        )

    async def _realtime_rows(self, run: Run, index: RowIndex, name: str) -> AsyncIterator[Any]:
        """Extract the unfinished rows of a deadline-cancelled batch in real time."""
        from .realtime import RealtimeExtractor

        if self._realtime is None:
            self._realtime = RealtimeExtractor(self.config, self.stats)
        chunk: list[tuple[dict[str, Any], Prepared]] = []
        for request in run.iter_requests(name):
            found = index.pending(request["custom_id"])
            if found is None or found[0] != "realtime":
                continue
            record = found[1]
            schema = run.schema(record["schema"])
            prepared = Prepared(
                request=ExtractionRequest(
                    request["body"], int(record.get("prompt_tokens") or 0), truncated=False
                ),
                schema=ExtractionSchema(schema["name"], schema["schema"]),
                url=record.get("url"),
            )
            chunk.append((record, prepared))
            if len(chunk) >= REALTIME_CHUNK:
                for item in await self._realtime_chunk(run, index, chunk):
                    yield item
        for item in await self._realtime_chunk(run, index, chunk):
            yield item

    async def _realtime_chunk(
        self, run: Run, index: RowIndex, chunk: list[tuple[dict[str, Any], Prepared]]
    ) -> list[Any]:
        outcomes = await asyncio.gather(
            *(self._realtime.extract(prepared) for _, prepared in chunk)
        )
        items = []
        for (record, _), outcome in zip(chunk, outcomes, strict=True):
            self.summaries[run.run_id].realtime += 1
            self._inc("rows/realtime")
            if isinstance(outcome, Extracted):
                items.append(self._emit(run, index, record, outcome))
            else:
                self._fail(run, index, record, outcome)
            index.db.execute("DELETE FROM pending WHERE custom_id = ?", (record["custom_id"],))
        chunk.clear()
        return items

    async def _finish_run(self, run: Run, index: RowIndex) -> None:
        """Mark the run collected; delete its OpenAI files unless asked to keep them."""
        await self._drained.wait()  # the run is done once its last items left the pipelines
        run.manifest.data["collected_at"] = utc_now()
        run.manifest.save()
        self.summaries[run.run_id].done = True
        self._inc("runs/done")
        logger.info("Run %s collected.", run.run_id)
        if self.config.keep_remote_files:
            return
        file_ids = {entry.get("file_id") for entry in run.manifest.files.values()}
        for batch in index.batches():
            file_ids.update((batch.get("output_file_id"), batch.get("error_file_id")))
        for file_id in sorted(filter(None, file_ids)):
            try:
                await self.policy.call(partial(self.client.files.delete, file_id))
            except openai.NotFoundError:
                pass
            except openai.OpenAIError as exc:
                logger.warning("Could not delete OpenAI file %s: %s", file_id, exc)

    # Accounting -----------------------------------------------------------------------------

    def _count_usage(self, summary: RunSummary, record: dict[str, Any], usage: Usage) -> None:
        if not (usage.prompt_tokens or usage.completion_tokens):
            return
        info = model_info(str(record.get("model") or self.config.model), self.config.prices)
        batch_cost = cost_usd(info, usage.prompt_tokens, usage.completion_tokens, batch=True)
        realtime_cost = cost_usd(
            info, usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
        )
        summary.input_tokens += usage.prompt_tokens
        summary.output_tokens += usage.completion_tokens
        summary.cost_usd = add_costs(summary.cost_usd, batch_cost)
        summary.realtime_cost_usd = add_costs(summary.realtime_cost_usd, realtime_cost)

    def _publish_usage(self) -> None:
        """Tokens and costs into the stats (per file, not per row: rows are the hot loop)."""
        totals = self.summaries.values()
        for key, value in (
            ("tokens/input", sum(s.input_tokens for s in totals)),
            ("tokens/output", sum(s.output_tokens for s in totals)),
            ("cost_usd", rounded_usd(add_costs(*(s.cost_usd for s in totals)))),
            ("realtime_cost_usd", rounded_usd(add_costs(*(s.realtime_cost_usd for s in totals)))),
        ):
            if value != 0:  # None (unknown price) is shown
                self.stats.set_value(f"{STATS_PREFIX}/{key}", value)

    def _inc(self, name: str, count: int = 1) -> None:
        self.stats.inc_value(f"{STATS_PREFIX}/{name}", count)

    def _progress_text(self) -> str:
        total = sum(summary.rows for summary in self.summaries.values())
        statuses: dict[str, int] = {}
        for batch in self._batches.values():
            statuses[batch.status] = statuses.get(batch.status, 0) + 1
        described = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        return f"collect-batches: {self._merged}/{total} rows merged; batches: {described}"

    def _show_status(self) -> None:
        if self.progress.enabled:
            self.progress.show(self._progress_text, force=True)
        else:
            logger.info("%s; next poll in %g s", self._progress_text(), self.options.poll_interval)


# Tables ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def summary_table(summaries: dict[str, RunSummary]) -> str:
    """The final table: per run, rows extracted, failed, retried, tokens, cost vs real time."""
    header = [
        "run", "rows", "extracted", "failed", "retried", "realtime", "in tokens",
        "out tokens", "cost $", "real-time $", "done",
    ]  # fmt: skip
    rows = [
        [
            run_id,
            str(s.rows),
            str(s.extracted),
            str(s.failed),
            str(s.retried),
            str(s.realtime),
            str(s.input_tokens),
            str(s.output_tokens),
            format_usd(s.cost_usd),
            format_usd(s.realtime_cost_usd),
            "yes" if s.done else "no",
        ]
        for run_id, s in summaries.items()
    ]
    return _table(header, rows)


def _runs(config: Config, options: CollectOptions) -> list[Run]:
    return [
        run
        for run in list_runs(config.spool_dir)
        if not options.run_id or run.run_id == options.run_id
    ]


def status_table(settings: BaseSettings, options: CollectOptions) -> str:
    """Runs and their batches: status, rows, age, tokens, cost. Reads only; changes nothing."""
    config = Config.from_settings(settings)
    runs = _runs(config, options)
    if not runs:
        return f"No spool runs under {config.spool_dir}"
    client = sync_client(config)
    policy = RetryPolicy.from_config(config)
    now = time.time()
    header = [
        "run", "state", "file", "status", "rows", "done", "failed", "age h", "tokens",
        "cost $",
    ]  # fmt: skip
    rows = []
    try:
        for run in runs:
            manifest = run.manifest
            if manifest.data.get("collected_at"):
                state = "collected"
            elif run.is_live():
                state = "locked"
            else:
                state = "closed" if manifest.closed else "dead"
            for name, entry in sorted(manifest.files.items()):
                status, done, failed, age, tokens = entry["status"], "", "", "", "-"
                cost = "-"
                tokens = str(entry["prompt_tokens"])
                if entry.get("batch_id") and status == SUBMITTED:
                    batch = policy.call_sync(partial(client.batches.retrieve, entry["batch_id"]))
                    status = f"batch {batch.status}"
                    if batch.request_counts:
                        done = str(batch.request_counts.completed)
                        failed = str(batch.request_counts.failed)
                    age = f"{_age_hours(batch, now):.1f}"
                    if batch.usage:
                        used = batch.usage
                        tokens = f"{used.input_tokens}+{used.output_tokens}"
                        info = model_info(entry["model"], config.prices)
                        spent = cost_usd(info, used.input_tokens, used.output_tokens, batch=True)
                        cost = format_usd(spent)
                cells = [str(entry["rows"]), done, failed, age, tokens, cost]
                rows.append([run.run_id, state, name, status, *cells])
            if not manifest.files:
                rows.append([run.run_id, state, "-", "-", "0", "", "", "", "-", "-"])
    finally:
        client.close()
    return _table(header, rows)


def cancel_batches(settings: BaseSettings, options: CollectOptions) -> int:
    """Cancel the batches in flight of the runs this process can lock; their rows fail for good."""
    config = Config.from_settings(settings)
    client = sync_client(config)
    policy = RetryPolicy.from_config(config)
    cancelled = 0
    try:
        for run in _runs(config, options):
            if run.manifest.data.get("collected_at"):
                continue
            if not run.try_lock():
                logger.warning("Not cancelling run %s: another process holds it.", run.run_id)
                continue
            try:
                run.reload()
                for name in run.manifest.with_status(SUBMITTED):
                    entry = run.manifest.files[name]
                    batch_id = entry["batch_id"]
                    batch = policy.call_sync(partial(client.batches.retrieve, batch_id))
                    if batch.status not in ACTIVE:
                        continue
                    policy.call_sync(partial(client.batches.cancel, batch_id))
                    entry["user_cancelled"] = utc_now()
                    cancelled += 1
                    logger.info("Cancelled batch %s (%s of %s)", batch.id, name, run.run_id)
                run.manifest.save()
            finally:
                run.unlock()
    finally:
        client.close()
    return cancelled


# The replay crawler ------------------------------------------------------------------------


def replay_spider(options: CollectOptions, name: str = "collect_batches") -> type[Spider]:
    """A spider class whose ``start()`` yields the collected items, for any crawler runner.

    ``llm_extract_replay`` tells LLMExtractPipeline to pass these items on untouched.
    """

    class CollectSpider(Spider):
        llm_extract_replay = True
        collector: Collector | None = None

        @classmethod
        def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> CollectSpider:
            spider = super().from_crawler(crawler, *args, **kwargs)
            for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
                crawler.signals.connect(spider.item_done, signal=signal)
            crawler.signals.connect(spider.close_collector, signal=signals.spider_closed)
            return spider

        async def start(self) -> AsyncIterator[Any]:
            # Built here, not in from_crawler: the crawler's stats exist once the crawl starts.
            assert self.crawler.stats is not None
            config = Config.from_settings(self.crawler.settings)
            self.collector = Collector(config, options, self.crawler.stats)
            async for item in self.collector.items():
                yield item

        def item_done(self, item: Any) -> None:
            if self.collector is not None:
                self.collector.item_done(item)

        async def close_collector(self) -> None:
            if self.collector is not None:
                await self.collector.close()

    CollectSpider.name = name
    return CollectSpider


def collect(crawler_process: CrawlerProcessBase, options: CollectOptions) -> int:
    """Run the replay crawler in ``crawler_process``; the command's exit code."""
    crawler_process.crawl(replay_spider(options))
    crawler_process.start()
    return 1 if getattr(crawler_process, "bootstrap_failed", False) else 0
