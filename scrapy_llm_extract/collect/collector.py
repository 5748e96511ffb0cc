"""The collector: claims runs, joins final batches with their sidecars, settles every row.

For each run it can lock (of its own project unless asked otherwise), the
collector submits what waits, polls, downloads results into the run's
:class:`~.ledger.Ledger`, judges each row with
:func:`~..results.parse_batch_row`, and yields the extracted items to the
replay crawl. Failed rows are resubmitted up to ``LLM_EXTRACT_MAX_ATTEMPTS``
(rows that never ran up to ``LLM_EXTRACT_MAX_RESUBMISSIONS`` times), then
written to ``failures.jsonl``.

Delivery: see :mod:`.ledger`. Items are tracked from ``start()`` to the
pipelines' signals by the row's ``custom_id`` (also put in the item's
``LLM_EXTRACT_ROW_ID_FIELD``), and only :meth:`Collector.checkpoint`, called
once every feed has stored the pass, makes them delivered. A fault (an API
error, an unreadable file) is confined to the file or run it concerns: it is
listed as stuck in the closing summary, retried on the next poll with
``--wait``, and makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import openai
from itemadapter import ItemAdapter
from openai.types import Batch

from ..client import async_client, redact
from ..config import Config
from ..extraction import ExtractionSchema, Prepared
from ..items import merge_extracted, rebuild_item, set_field
from ..manifest import (
    FILES_TO_DELETE,
    MANIFEST_NAME,
    PENDING,
    RESUBMITS,
    SUBMITTED,
    SUBMITTING,
    utc_now,
    write_atomic,
)
from ..models import add_costs, cost_usd, format_usd, model_info, retarget, rounded_usd
from ..prompt import ExtractionRequest, dump_json
from ..results import (
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
from ..rules.gate import RulesGate
from ..spool import FAILURES_NAME, Run, claim_dead_runs, list_runs, request_line, sidecar_name
from .ledger import (
    DROPPED,
    EMITTED,
    FAILED,
    ITEM_ERROR,
    LEDGER_NAME,
    RETRIED,
    Ledger,
)
from .polling import Polling, results_ready

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger("scrapy_llm_extract.collect")

STATS_PREFIX = "llm_extract/collect"
#: Manifest status of a file whose every row is accounted for.
COLLECTED = "collected"
#: Rows that never ran: resubmitting them does not use up one of their attempts.
NEVER_RAN = (BATCH_EXPIRED, MISSING)
#: Failure kind of a row a project pipeline raised on.
PIPELINE_ERROR = "pipeline_error"
#: A row whose request row was never written (see spool.Run.seal_leftovers): no page to
#: resubmit, so it fails for good at once.
NEVER_SPOOLED = Failure(
    "never_spooled",
    "never spooled whole: the crawl died while writing it (its request row was never"
    " written); crawl the page again",
)
REALTIME_CHUNK = 256
PROGRESS_INTERVAL = 0.5
#: Polls in a row a file or run may stay stuck before ``--wait`` stops waiting for it.
STUCK_POLLS = 3
#: Errors confined to the file or run they happen in (API, disk, unreadable data).
FAULTS = (openai.OpenAIError, OSError, ValueError, KeyError, sqlite3.Error)


@dataclass(frozen=True)
class CollectOptions:
    """What the command line asks of one collection."""

    run_id: str | None = None
    wait: bool = False
    poll_interval: float = 60.0
    deadline_hours: float | None = None
    escalate_model: str | None = None
    all_projects: bool = False
    retry_failed: bool = False
    #: Called at each checkpoint (submissions made, pass ended, ledgers closed) to save
    #: the runs' progress elsewhere (an s3:// spool's write-back); the runs it failed on.
    save_progress: Callable[[], int] | None = field(default=None, compare=False, repr=False)


@dataclass
class RunSummary:
    """What one invocation did to one run, and where the run's rows stand (the ledger)."""

    spooled: int = 0
    extracted: int = 0
    retried: int = 0
    realtime: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: None: a model's price is unknown (see models.cost_usd).
    cost_usd: float | None = 0.0
    realtime_cost_usd: float | None = 0.0
    done: bool = False
    states: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self.spooled - sum(self.states.values())


@dataclass
class InFlight:
    """An item handed to the crawl whose pipelines have not answered yet."""

    item: Any  # kept alive, so that its id() stays its own
    ledger: Ledger
    run: Run
    record: dict[str, Any]


class Progress:
    """One line rewritten in place on a terminal; nothing otherwise (log lines say it)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: Callable[[], str], *, force: bool = False) -> None:
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
    """Brings back every spooled row of the runs it can lock, delivered at least once."""

    def __init__(
        self,
        config: Config,
        options: CollectOptions,
        stats: StatsCollector,
        *,
        client: openai.AsyncOpenAI | None = None,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = 100,
    ) -> None:
        self.config = config
        self.options = options
        self.stats = stats
        self.client = client or async_client(config)
        self.clock = clock
        self.polling = Polling(
            config,
            self.client,
            deadline_hours=options.deadline_hours,
            count=self._inc,
            clock=clock,
        )
        self.summaries: dict[str, RunSummary] = {}
        #: (run id, file or "") -> why it is stuck; cleared when a later poll gets through.
        self.stuck: dict[tuple[str, str], str] = {}
        self._stuck_polls: Counter[tuple[str, str]] = Counter()
        self.progress = Progress()
        self.max_in_flight = max_in_flight
        self._runs: dict[str, tuple[Run, Ledger]] = {}
        self._joined: set[tuple[str, str]] = set()
        self._in_flight: dict[int, InFlight] = {}
        self._by_key: dict[str, int] = {}
        self._anonymous = 0  # answered items we could not tell apart (see item_done)
        self._room = asyncio.Event()
        self._room.set()
        self._realtime: Any = None
        self._merged = 0
        self._failed_now = 0
        self._feeds_failed = False
        self._resubmissions: set[str] = set()
        self._warned_row_id = False
        self._emitted_count = 0  # per-row counters go to the stats per file, not per row
        self._published = {"rows/extracted": 0, "rows/emitted": 0}
        self._model_info: dict[str, Any] = {}
        #: Learned rules (LLM_EXTRACT_RULES) learn from each batch answer as it is merged.
        self.rules = RulesGate(config, stats)

    # Delivery: Scrapy's side ----------------------------------------------------------------

    async def room(self) -> None:
        """Wait while ``max_in_flight`` items are in the pipelines: start() items get no
        backpressure from Scrapy, and a stop must not find thousands queued."""
        await self._room.wait()

    def item_done(self, item: Any, state: str = EMITTED, reason: str = "") -> None:
        """The pipelines are done with ``item``: emitted (not yet stored), dropped or errored.

        ``item_scraped`` carries what the last pipeline returned, maybe a new object
        (``ItemAdapter(item).asdict()``): found by its row id field, or else counted as
        anonymous and settled at the checkpoint if every item was answered.
        """
        flight = self._in_flight.pop(id(item), None)
        if flight is None:
            key = self._row_key(item)
            found = self._by_key.get(key) if key else None
            flight = self._in_flight.pop(found, None) if found is not None else None
        if flight is None:
            self._anonymous += 1
            self._emitted_count += 1
            self._update_room()
            return
        custom_id = flight.record["custom_id"]
        self._by_key.pop(custom_id, None)
        if state == EMITTED:
            flight.ledger.emitted(custom_id)
            self._emitted_count += 1
        elif state == DROPPED:
            flight.ledger.mark(custom_id, DROPPED)
            self._inc("rows/dropped")
        else:
            failure = Failure(PIPELINE_ERROR, f"a project pipeline raised: {reason}")
            self._fail(flight.run, flight.ledger, flight.record, failure, state=ITEM_ERROR)
        self._update_room()

    def _row_key(self, item: Any) -> str | None:
        name = self.config.row_id_field
        if not name:
            return None
        try:
            value = ItemAdapter(item).get(name)
        except TypeError:
            return None
        return str(value) if value else None

    def _update_room(self) -> None:
        if len(self._in_flight) - self._anonymous < self.max_in_flight:
            self._room.set()
        else:
            self._room.clear()

    def feeds_failed(self) -> None:
        """A feed of this pass could not be stored: nothing of the pass is delivered."""
        self._feeds_failed = True

    async def checkpoint(self) -> None:
        """End of the pass, every feed closed: commit what it delivered, finish done runs."""
        if self._in_flight and self._anonymous >= len(self._in_flight):
            for flight in self._in_flight.values():  # each was answered, under another object
                flight.ledger.emitted(flight.record["custom_id"])
            self._in_flight.clear()
        # Items never answered stay pending; if some answers could not be told apart,
        # no emitted row can be trusted to be among the answered ones.
        unsure = self._anonymous and self._in_flight
        if self._feeds_failed or unsure:
            for run, ledger in self._runs.values():
                ledger.reset_pass()
                self.summaries[run.run_id].done = False
            why = (
                "a feed could not be stored (see the error above)"
                if self._feeds_failed
                else f"{len(self._in_flight)} item(s) never came back from the pipelines"
            )
            logger.error(
                "Nothing of this pass counts as delivered: %s. Its rows stay pending; run"
                " scrapy collect-batches again to deliver them (items carry their row id in"
                " %r for deduplication).",
                why,
                self.config.row_id_field,
            )
            self._inc("passes/undelivered")
            return
        delivered = 0
        for run, ledger in self._runs.values():
            delivered += ledger.checkpoint()
            if self._in_flight:
                continue  # an unanswered row may be in any joined file: join them again
            joined = [name for name in run.manifest.files if (run.run_id, name) in self._joined]
            for name in joined:
                run.manifest.files[name]["status"] = COLLECTED
                run.manifest.files[name]["collected_at"] = utc_now()
            if joined:
                run.manifest.save()
            if all(entry["status"] == COLLECTED for entry in run.manifest.files.values()):
                await self._finish_run(run, ledger)
        if delivered:
            self._inc("rows/delivered", delivered)

    @property
    def exit_code(self) -> int:
        """1 when a row failed for good, a feed failed, or something stayed stuck; else 0."""
        return 1 if (self.stuck or self._failed_now or self._feeds_failed) else 0

    async def close(self) -> None:
        """Tally the ledgers, release the runs, print the final table and what is stuck."""
        self.progress.end()
        for run, ledger in self._runs.values():
            summary = self.summaries[run.run_id]
            summary.states = ledger.counts()
            ledger.close()
            if not run.manifest.data.get("collected_at"):  # else _finish_run tried them
                await self._delete_remote_files(run)  # uploads given up on
            run.unlock()
        self._runs.clear()
        self._save_progress()
        self.rules.close()
        self._publish_counts()
        self._publish_totals()
        if self._realtime is not None:
            await self._realtime.close()
        await self.client.close()
        if self.summaries:
            logger.info("Collected:\n%s", summary_table(self.summaries))
        for (run_id, name), reason in sorted(self.stuck.items()):
            logger.error("Stuck: run %s%s: %s", run_id, f" file {name}" if name else "", reason)
        if self._failed_now:
            paths = sorted(
                str(run.path / FAILURES_NAME)
                for run in list_runs(self.config.spool_dir)
                if run.run_id in self.summaries and (run.path / FAILURES_NAME).exists()
            )
            logger.warning(
                "%d row(s) failed for good; reasons and items are in %s",
                self._failed_now,
                ", ".join(paths),
            )

    # The passes ---------------------------------------------------------------------------

    async def items(self) -> AsyncIterator[Any]:
        """Every extracted item, as batches finish; with ``wait``, until every run is done."""
        project = None if self.options.all_projects else self.config.project
        for dead in claim_dead_runs(self.config.spool_dir, project=project):
            dead.finish("recovered by collect-batches")
        await self._delete_leftover_files()
        while True:
            busy = False
            for run, ledger in self._claim_runs():
                try:
                    async for item in self._collect_run(run, ledger):
                        yield item
                except FAULTS as exc:
                    self._stick(run, "", exc)
                done = self.summaries[run.run_id].done or self._gave_up(run.run_id, "")
                busy = busy or not done
            if not (self.options.wait and busy):
                return
            self._save_progress()
            self._show_status()
            await asyncio.sleep(self.options.poll_interval)

    def _claim_runs(self) -> list[tuple[Run, Ledger]]:
        """The runs to work on, locked; runs locked by a crawl or a collector are skipped."""
        unreadable: list[tuple[Path, str]] = []
        for run in list_runs(self.config.spool_dir, unreadable):
            if run.run_id in self._runs or not self._wanted(run):
                continue
            if not run.try_lock():
                if self.options.run_id and not run.manifest.closed:
                    self._refuse_live(run)
                    continue
                logger.info(
                    "Skipping run %s: another process (a crawl or collector) holds its lock.",
                    run.run_id,
                )
                self._inc("runs/skipped_locked")
                continue
            run.reload()
            if not run.manifest.closed or not self._wanted(run):
                run.unlock()  # sealed and closed by claim_dead_runs, or collected meanwhile
                continue
            try:
                claimed = self._open(run)
            except FAULTS as exc:
                self._stick(run, "", exc)
                claimed = None
            if claimed is None:
                run.unlock()
                continue
            self._runs[run.run_id] = (run, claimed)
        for path, reason in unreadable:
            if not self.options.run_id or path.name == self.options.run_id:
                self._stick_reason(
                    path.name,
                    "",
                    f"its {MANIFEST_NAME} cannot be read ({reason}): put back a readable copy;"
                    " nothing of the run is collected until then",
                )
        return [pair for pair in self._runs.values() if not self.summaries[pair[0].run_id].done]

    def _refuse_live(self, run: Run) -> None:
        """``--run`` names a run its crawl is still writing (it holds the lock, and has not
        closed the run): collecting it now would race the crawl for its manifest."""
        data = run.manifest.data
        self.stuck[(run.run_id, "")] = (
            f"its crawl (pid {data.get('pid')} on {data.get('host')}) is still running: collect"
            " it once that crawl has closed it"
        )
        self._inc("runs/refused_live")

    def _wanted(self, run: Run) -> bool:
        if not self._ours(run):
            return False
        return self.options.retry_failed or not run.manifest.data.get("collected_at")

    def _ours(self, run: Run) -> bool:
        """The run is of this project (or any, if asked) and the ``--run`` asked for."""
        if self.options.run_id and run.run_id != self.options.run_id:
            return False
        return self.options.all_projects or run.manifest.data.get("project") == (
            self.config.project
        )

    def _open(self, run: Run) -> Ledger | None:
        """Prepare a locked run: recover unlisted files, reset an interrupted pass."""
        found = run.seal_leftovers()
        if found:
            logger.info(
                "Run %s: found %d file(s) the manifest did not list.", run.run_id, len(found)
            )
        elsewhere = self._other_endpoint(run)
        if elsewhere:
            self._stick_reason(run.run_id, "", elsewhere)
            return None
        ledger = Ledger(run.path / LEDGER_NAME)
        reset = ledger.reset_pass()
        if reset:
            logger.info(
                "Run %s: %d row(s) of an interrupted pass were never confirmed stored by the"
                " feeds; delivering them again.",
                run.run_id,
                reset,
            )
            self._inc("rows/redelivered", reset)
        self._settle_unsettled_resubmissions(run, ledger)
        if self.options.retry_failed and ledger.item_errors():
            # The run is reopened first: a kill before the ledger forgets leaves a run that
            # the next pass settles again, never pending rows in a run marked collected.
            for entry in run.manifest.files.values():
                if entry["status"] == COLLECTED and entry.get("batch_id"):
                    entry["status"] = SUBMITTED
            run.manifest.data["collected_at"] = None
            run.manifest.save()
            ledger.forget_item_errors()
        if self.options.retry_failed:
            self._forget_retried_failures(run, ledger)
        if run.manifest.data.get("collected_at"):
            ledger.close()
            return None
        summary = self.summaries.setdefault(run.run_id, RunSummary())
        summary.spooled = run.manifest.spooled_rows
        for record in run.manifest.cut_rows:
            if ledger.state(record["custom_id"]) != FAILED:
                self._fail(run, ledger, record, NEVER_SPOOLED)
        return ledger

    def _forget_retried_failures(self, run: Run, ledger: Ledger) -> None:
        """failures.jsonl lists the rows failed for good: the pipeline failures --retry-failed
        took back leave it (one that fails again is written again). Read from the ledger, so
        a retry killed before this is tidied by the next one."""
        path = run.path / FAILURES_NAME
        if not path.exists():  # deleted by hand: nothing to take back
            return
        lines = path.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if not _taken_back(line, ledger)]
        if len(kept) < len(lines):
            write_atomic(path, b"".join(kept))

    def _settle_unsettled_resubmissions(self, run: Run, ledger: Ledger) -> None:
        """Rows a killed collector wrote to a resubmission file but never settled in their
        source file: settle them, so that they are submitted once (in that file), not again."""
        for name, entry in run.manifest.files.items():
            source = entry.get(RESUBMITS)
            if not source or entry["status"] != PENDING:
                continue  # a submitted resubmission was settled before it was submitted
            ids = (row["custom_id"] for row in run.iter_sidecar(name))
            count = ledger.settle_resubmitted(source, ids)
            if count:
                logger.info(
                    "Run %s: %d row(s) of %s were written to its resubmission %s by a collector"
                    " stopped before recording it; they are submitted there, not again.",
                    run.run_id,
                    count,
                    source,
                    name,
                )
                self._inc("rows/resubmission_recovered", count)

    def _other_endpoint(self, run: Run) -> str | None:
        """Why the run cannot be collected here: its batches live on another API endpoint."""
        here = str(self.client.base_url).rstrip("/")
        for name, entry in run.manifest.files.items():
            there = (entry.get("api_base") or "").rstrip("/")
            if there and there != here and entry["status"] in (SUBMITTED, SUBMITTING):
                return (
                    f"{name} was submitted to {there}, and this collector talks to {here};"
                    " collect it with the settings of the crawl that submitted it"
                    " (LLM_EXTRACT_BASE_URL, LLM_EXTRACT_EMULATOR_DIR)"
                )
        return None

    async def _collect_run(self, run: Run, ledger: Ledger) -> AsyncIterator[Any]:
        runs = [pair[0] for pair in self._runs.values()]
        await self.polling.submitter.reconcile(run)
        tried = {name for name in run.manifest.files if not self._gave_up(run.run_id, name)}
        self._submitted(run, await self.polling.submit_pending(runs, run, tried))
        self._save_progress()
        self._unstick(run.run_id, "")
        for name in run.manifest.with_status(SUBMITTED):
            if (run.run_id, name) in self._joined:
                continue
            try:
                batch = await self._final_batch(run, ledger, name)
                if batch is None:
                    continue
                async for item in self._join(run, ledger, name, batch):
                    yield item
            except FAULTS as exc:
                self._stick(run, name, exc)
                continue
            self._unstick(run.run_id, name)
        for name in run.manifest.with_status(PENDING):
            if (run.run_id, name) in self._joined or not self.polling.refused_too_often(run, name):
                continue
            self._release_upload(run, name)
            try:
                async for item in self._join(run, ledger, name, None):
                    yield item
            except FAULTS as exc:
                self._stick(run, name, exc)
        if self._resubmissions:  # files refused for the quota wait for the next pass
            self._submitted(run, await self.polling.submit_pending(runs, run, self._resubmissions))
            self._resubmissions.clear()
        self.summaries[run.run_id].done = all(
            entry["status"] == COLLECTED
            or (run.run_id, name) in self._joined
            or self._gave_up(run.run_id, name)
            for name, entry in run.manifest.files.items()
        )

    def _submitted(self, run: Run, tried: dict[str, str | None]) -> None:
        """A file whose upload or batch creation failed is stuck until one gets through."""
        for name, reason in tried.items():
            if reason is None:
                self._unstick(run.run_id, name)
            else:
                self._stick_reason(run.run_id, name, reason)
                if self._gave_up(run.run_id, name):
                    self._release_upload(run, name)

    def _release_upload(self, run: Run, name: str) -> None:
        """A pending file given up on keeps no upload on the API: it is listed for deletion
        (deleted when the run is released, or by the next pass if that fails)."""
        entry = run.manifest.files[name]
        if not entry.get("file_id") or self.config.keep_remote_files:
            return
        run.manifest.data.setdefault(FILES_TO_DELETE, []).append(entry["file_id"])
        logger.info(
            "Deleting the upload %s of %s of %s, given up on; the next submission uploads it"
            " again.",
            entry["file_id"],
            name,
            run.run_id,
        )
        entry["file_id"] = None
        run.manifest.save()
        self._inc("uploads/released")

    async def _final_batch(self, run: Run, ledger: Ledger, name: str) -> Any:
        """The file's batch once final with its results in the ledger; None while not."""
        stored = ledger.batch(name)
        if stored is not None:
            batch = Batch.model_validate(stored)
            self.polling.batches[batch.id] = batch
            return batch
        batch = await self.polling.poll(run, name)
        if batch is None or not results_ready(batch):
            return None
        await self.polling.ingest(ledger, name, batch)
        return batch

    def _stick(self, run: Run, name: str, exc: BaseException) -> None:
        reason = redact(f"{type(exc).__name__}: {exc}", self.client.api_key)
        self._stick_reason(run.run_id, name, reason)

    def _stick_reason(self, run_id: str, name: str, reason: str) -> None:
        what = f"file {name} of run {run_id}" if name else f"run {run_id}"
        logger.warning(
            "Could not collect %s (%s); it stays pending%s.",
            what,
            reason,
            " and is tried again at the next poll" if self.options.wait else "",
        )
        self.stuck[(run_id, name)] = reason
        self._stuck_polls[(run_id, name)] += 1
        self._inc("stuck")
        if self.options.wait and self._gave_up(run_id, name):
            logger.error(
                "Giving up on %s for this invocation after %d polls; run collect-batches"
                " again once the cause is fixed.",
                what,
                STUCK_POLLS,
            )

    def _unstick(self, run_id: str, name: str) -> None:
        self.stuck.pop((run_id, name), None)
        self._stuck_polls.pop((run_id, name), None)

    def _gave_up(self, run_id: str, name: str) -> bool:
        """Stuck at STUCK_POLLS polls in a row: --wait stops waiting for it (it stays pending)."""
        return self._stuck_polls[(run_id, name)] >= STUCK_POLLS

    # One file -----------------------------------------------------------------------------

    async def _join(self, run: Run, ledger: Ledger, name: str, batch: Any) -> AsyncIterator[Any]:
        """Join one final batch (None: refused too often) with its sidecar; settle every row."""
        entry = run.manifest.files[name]
        # Read as empty, a file deleted by hand would settle nothing (items) or leave its
        # retried and real-time rows pending in a run marked collected (requests).
        held = run.path / sidecar_name(name)
        for needed, found in ((held, held), (run.path / name, run.requests_path(name))):
            if entry.get("rows") and not found.exists():
                raise FileNotFoundError(
                    f"{needed} is gone (it holds {entry['rows']} row(s) of the run): put it"
                    " back, then run collect-batches again; the results stay on the API until"
                    " then"
                )
        summary = self.summaries[run.run_id]
        deadline_cancelled = bool(entry.get("deadline_cancelled"))
        user_cancelled = bool(entry.get("user_cancelled"))
        for record, raw in ledger.join(name, run.iter_sidecar(name)):
            if record["custom_id"] in self._by_key:
                continue
            outcome = self._outcome(run, name, batch, record, raw)
            self._count_usage(summary, record, outcome.usage)
            if isinstance(outcome, Extracted):
                yield self._emit(run, ledger, record, outcome)
            elif deadline_cancelled and outcome.kind in (BATCH_CANCELLED, *NEVER_RAN):
                ledger.add_pending(record["custom_id"], "realtime", record)
            elif outcome.kind == BATCH_CANCELLED and user_cancelled:
                self._fail(run, ledger, record, outcome)
            elif batch is not None and self._may_resubmit(record, outcome):
                record["failure"] = outcome.kind
                ledger.add_pending(record["custom_id"], "retry", record)
            else:
                self._fail(run, ledger, record, outcome)
        if ledger.pending_count("retry"):
            self._resubmit(run, ledger, name)
        if ledger.pending_count("realtime"):
            async for item in self._realtime_rows(run, ledger, name):
                yield item
        self._joined.add((run.run_id, name))
        self._publish_usage()
        self.progress.show(self._progress_text, force=True)

    def _may_resubmit(self, record: dict[str, Any], outcome: Failure) -> bool:
        if outcome.kind in NEVER_RAN:
            return int(record.get("resubmitted") or 0) < self.config.max_resubmissions
        return int(record["attempt"]) < self.config.max_attempts

    def _outcome(
        self, run: Run, name: str, batch: Any, record: dict[str, Any], raw: bytes | None
    ) -> Outcome:
        if batch is None:
            reasons = "; ".join(
                failed.get("reason", "") for failed in run.manifest.files[name]["failed_batches"]
            )
            return Failure(BATCH_FAILED, f"the batch failed validation: {reasons}")
        schema = run.schema(record["schema"])["schema"]
        if raw is not None:
            try:
                return parse_batch_row(json.loads(raw), schema)
            # Not JSON, or JSON not shaped like an output row (a proxy's error page, a
            # server's own format): the row never ran as far as we can tell.
            except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                self._inc("results/unreadable")
                logger.warning(
                    "Unreadable result row for %s in %s: resubmitting it.",
                    record["custom_id"],
                    name,
                )
        resubmitted = int(record.get("resubmitted") or 0)
        return Failure(
            MISSING,
            f"batch {batch.id} ({batch.status}) returned no readable row for this request"
            + (f" (resubmitted {resubmitted} time(s))" if resubmitted else ""),
        )

    def _emit(self, run: Run, ledger: Ledger, record: dict[str, Any], outcome: Extracted) -> Any:
        item = rebuild_item(record)
        adapter = ItemAdapter(item)
        rejected = merge_extracted(adapter, outcome.fields, self.config)
        if rejected:
            self._inc("merge/rejected_fields", len(rejected))
        self.rules.collected(adapter, record, outcome.fields)
        name = self.config.row_id_field
        if name and not set_field(adapter, name, record["custom_id"]) and not self._warned_row_id:
            self._warned_row_id = True
            logger.warning(
                "%s has no field %r (LLM_EXTRACT_ROW_ID_FIELD): items reach the feeds without"
                " their row id, so a pass delivered again after a crash cannot be deduplicated"
                " downstream. Declare the field, or set LLM_EXTRACT_ROW_ID_FIELD to one it has.",
                type(item).__name__,
                name,
            )
        self._in_flight[id(item)] = InFlight(item, ledger, run, record)
        self._by_key[record["custom_id"]] = id(item)
        self._update_room()
        self.summaries[run.run_id].extracted += 1
        self._merged += 1
        self.progress.show(self._progress_text)
        return item

    def _fail(
        self,
        run: Run,
        ledger: Ledger,
        record: dict[str, Any],
        failure: Failure,
        state: str = FAILED,
    ) -> None:
        """A final failure: one line in failures.jsonl (reason and item), counted, logged."""
        line = {
            "custom_id": record["custom_id"],
            "url": record.get("url"),
            "kind": failure.kind,
            "message": redact(failure.message, self.client.api_key),
            "item_class": record.get("item_class"),
            "fields": record.get("fields"),
        }
        with open(run.path / FAILURES_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        ledger.mark(record["custom_id"], state)
        self._failed_now += 1
        self._inc("rows/failed")
        self._inc(f"rows/failed/{failure.kind}")
        logger.debug("Row %s failed for good: %s", record["custom_id"], line["message"])

    def _resubmit(self, run: Run, ledger: Ledger, name: str) -> None:
        """Write the rows waiting for a retry to a new requests file, pending submission."""
        model = self.options.escalate_model or run.manifest.files[name]["model"]
        attempt = int(run.manifest.files[name]["attempt"]) + 1
        spool_file = None
        written: set[str] = set()
        for request in run.iter_requests(name):
            found = ledger.pending(request["custom_id"])
            if found is None or found[0] != "retry":
                continue
            record = found[1]
            # Another model may be of another family: its own generation parameters.
            body = retarget(
                request["body"], model, self.config.max_output_tokens, self.config.reasoning_effort
            )
            if record.pop("failure") in NEVER_RAN:
                record["resubmitted"] = int(record.get("resubmitted") or 0) + 1
            else:
                record["attempt"] = int(record["attempt"]) + 1
            record["model"] = model
            if spool_file is None:
                spool_file = run.new_file(model, attempt, resubmits=name)
            spool_file.append(
                request_line(request["custom_id"], dump_json(body)),
                record,
                int(record.get("prompt_tokens") or 0),
            )
            written.add(request["custom_id"])
        for record in ledger.pending_records("retry", excluding=written):
            self._fail(run, ledger, record, NEVER_SPOOLED)  # no request row to resubmit
            ledger.drop_pending(record["custom_id"])
        if spool_file is None:
            return
        spool_file.seal()
        self._resubmissions.add(spool_file.name)
        ledger.settle_pending("retry", f"{RETRIED}:{name}")
        count = len(written)
        self.summaries[run.run_id].retried += count
        self._inc("rows/retried", count)
        logger.info(
            "Resubmitting %d failed row(s) of %s as %s (model %s)",
            count,
            name,
            spool_file.name,
            model,
        )

    async def _realtime_rows(self, run: Run, ledger: Ledger, name: str) -> AsyncIterator[Any]:
        """Extract the unfinished rows of a deadline-cancelled batch in real time."""
        from ..realtime import RealtimeExtractor

        if self._realtime is None:
            self._realtime = RealtimeExtractor(self.config, self.stats)
        chunk: list[tuple[dict[str, Any], Prepared]] = []
        for request in run.iter_requests(name):
            found = ledger.pending(request["custom_id"])
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
                for item in await self._realtime_chunk(run, ledger, chunk):
                    yield item
        for item in await self._realtime_chunk(run, ledger, chunk):
            yield item

    async def _realtime_chunk(
        self, run: Run, ledger: Ledger, chunk: list[tuple[dict[str, Any], Prepared]]
    ) -> list[Any]:
        outcomes = await asyncio.gather(
            *(self._realtime.extract(prepared) for _, prepared in chunk)
        )
        items = []
        for (record, _), outcome in zip(chunk, outcomes, strict=True):
            self.summaries[run.run_id].realtime += 1
            self._inc("rows/realtime")
            if isinstance(outcome, Extracted):
                items.append(self._emit(run, ledger, record, outcome))
            else:
                self._fail(run, ledger, record, outcome)
            ledger.drop_pending(record["custom_id"])
        chunk.clear()
        return items

    async def _finish_run(self, run: Run, ledger: Ledger) -> None:
        """Mark the run collected; delete its OpenAI files unless asked to keep them.

        The files to delete are saved with ``collected_at``, in one manifest write, and
        stay listed until deleted: a failed delete or a kill leaks nothing for good.
        """
        run.manifest.data["collected_at"] = utc_now()
        if not self.config.keep_remote_files:
            file_ids = {entry.get("file_id") for entry in run.manifest.files.values()}
            file_ids.update(run.manifest.data.get(FILES_TO_DELETE) or [])
            for batch in ledger.batches():
                file_ids.update((batch.get("output_file_id"), batch.get("error_file_id")))
            run.manifest.data[FILES_TO_DELETE] = sorted(filter(None, file_ids))
        run.manifest.save()
        self._inc("runs/done")
        logger.info("Run %s collected.", run.run_id)
        await self._delete_remote_files(run)

    async def _delete_remote_files(self, run: Run) -> None:
        """Delete the OpenAI files the locked run's manifest lists; keep listed those that fail."""
        left = []
        for file_id in run.manifest.data.get(FILES_TO_DELETE) or []:
            try:
                await self.polling.policy.call(partial(self.client.files.delete, file_id))
            except openai.NotFoundError:
                pass
            except openai.OpenAIError as exc:
                left.append(file_id)
                self._inc("remote_files/delete_failed")
                logger.warning(
                    "Could not delete OpenAI file %s of run %s (%s); it stays listed in the"
                    " run's manifest and the next scrapy collect-batches deletes it.",
                    file_id,
                    run.run_id,
                    redact(str(exc), self.client.api_key),
                )
                continue
            self._inc("remote_files/deleted")
        if left or run.manifest.data.get(FILES_TO_DELETE):
            run.manifest.data[FILES_TO_DELETE] = left
            run.manifest.save()

    async def _delete_leftover_files(self) -> None:
        """Retry the deletes that failed in earlier collections."""
        for run in list_runs(self.config.spool_dir):
            if not (self._ours(run) and run.manifest.data.get(FILES_TO_DELETE)):
                continue
            if not run.try_lock():
                continue
            try:
                run.reload()
                await self._delete_remote_files(run)
            finally:
                run.unlock()

    # Accounting -----------------------------------------------------------------------------

    def _count_usage(self, summary: RunSummary, record: dict[str, Any], usage: Usage) -> None:
        if not (usage.prompt_tokens or usage.completion_tokens):
            return
        model = str(record.get("model") or self.config.model)
        info = self._model_info.get(model)
        if info is None:
            info = self._model_info[model] = model_info(model, self.config.prices)
        batch_cost = cost_usd(info, usage.prompt_tokens, usage.completion_tokens, batch=True)
        realtime_cost = cost_usd(
            info, usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
        )
        summary.input_tokens += usage.prompt_tokens
        summary.output_tokens += usage.completion_tokens
        summary.cost_usd = add_costs(summary.cost_usd, batch_cost)
        summary.realtime_cost_usd = add_costs(summary.realtime_cost_usd, realtime_cost)

    def _publish_counts(self) -> None:
        """The per-row counters into the stats (per file and at the end: rows are the hot
        loop, and a stats call per row cost more than the ledger)."""
        for name, value in (
            ("rows/extracted", self._merged),
            ("rows/emitted", self._emitted_count),
        ):
            if value > self._published[name]:
                self._inc(name, value - self._published[name])
                self._published[name] = value

    def _publish_usage(self) -> None:
        """Tokens and costs into the stats (per file, not per row: rows are the hot loop)."""
        self._publish_counts()
        totals = self.summaries.values()
        for key, value in (
            ("tokens/input", sum(s.input_tokens for s in totals)),
            ("tokens/output", sum(s.output_tokens for s in totals)),
            ("cost_usd", rounded_usd(add_costs(*(s.cost_usd for s in totals)))),
            ("realtime_cost_usd", rounded_usd(add_costs(*(s.realtime_cost_usd for s in totals)))),
        ):
            if value != 0:  # None (an unknown price) is shown
                self.stats.set_value(f"{STATS_PREFIX}/{key}", value)

    def _publish_totals(self) -> None:
        """Where the rows of the runs this collector held stand: spooled = the other four."""
        totals = self.summaries.values()
        for key, value in (
            ("spooled", sum(s.spooled for s in totals)),
            ("delivered", sum(s.states.get("delivered", 0) for s in totals)),
            ("dropped", sum(s.states.get(DROPPED, 0) for s in totals)),
            ("failed", sum(s.states.get(FAILED, 0) for s in totals)),
            ("pending", sum(s.pending for s in totals)),
        ):
            self.stats.set_value(f"{STATS_PREFIX}/ledger/{key}", value)

    def _save_progress(self) -> None:
        failed = self.options.save_progress() if self.options.save_progress else 0
        if failed:
            self._inc("writeback_failed", failed)

    def _inc(self, name: str, count: int = 1) -> None:
        self.stats.inc_value(f"{STATS_PREFIX}/{name}", count)

    def _progress_text(self) -> str:
        total = sum(summary.spooled for summary in self.summaries.values())
        statuses: dict[str, int] = {}
        for batch in self.polling.batches.values():
            statuses[batch.status] = statuses.get(batch.status, 0) + 1
        described = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        return f"collect-batches: {self._merged}/{total} rows merged; batches: {described}"

    def _show_status(self) -> None:
        if self.progress.enabled:
            self.progress.show(self._progress_text, force=True)
        else:
            logger.info("%s; next poll in %g s", self._progress_text(), self.options.poll_interval)


def _taken_back(line: bytes, ledger: Ledger) -> bool:
    """A pipeline failure of failures.jsonl whose row the ledger no longer counts failed."""
    try:
        failure = json.loads(line)
        if failure.get("kind") != PIPELINE_ERROR:
            return False
    except (ValueError, AttributeError):  # a line a kill cut: kept as it is
        return False
    return ledger.state(str(failure.get("custom_id"))) != ITEM_ERROR


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def summary_table(summaries: dict[str, RunSummary]) -> str:
    """The final table: per run, where its rows stand, then this invocation's work and cost."""
    header = [
        "run", "spooled", "delivered", "dropped", "failed", "pending", "extracted", "retried",
        "realtime", "in tokens", "out tokens", "cost $", "real-time $", "done",
    ]  # fmt: skip
    rows = [
        [
            run_id,
            str(s.spooled),
            str(s.states.get("delivered", 0)),
            str(s.states.get(DROPPED, 0)),
            str(s.states.get(FAILED, 0)),
            str(s.pending),
            str(s.extracted),
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
    return table(header, rows)
