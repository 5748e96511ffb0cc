"""``--status`` and ``--cancel``: read the runs and their batches; cancel batches in flight."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING

import openai

from ..client import redact, sync_client
from ..config import Config
from ..manifest import SUBMITTED, utc_now
from ..models import cost_usd, format_usd, model_info
from ..retry import RetryPolicy
from ..spool import Run, list_runs
from .collector import CollectOptions, table
from .ledger import DELIVERED, DROPPED, FAILED, read_counts
from .polling import ACTIVE, age_hours

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger("scrapy_llm_extract.collect")


class UnknownRun(ValueError):
    """``--run`` names no run of the spool: the message lists those there are."""


def select_runs(config: Config, options: CollectOptions) -> list[Run]:
    """The runs ``options`` ask for; an unknown ``--run`` raises :class:`UnknownRun`."""
    runs = list_runs(config.spool_dir)
    if not options.run_id:
        return runs
    chosen = [run for run in runs if run.run_id == options.run_id]
    if not chosen:
        known = "\n  ".join(run.run_id for run in runs) or "(none)"
        raise UnknownRun(
            f"No spool run {options.run_id!r} under {config.spool_dir}. Runs there:\n  {known}"
        )
    return chosen


def run_state(run: Run) -> str:
    if run.manifest.data.get("collected_at"):
        return "collected"
    if run.is_live():
        return "locked"
    return "closed" if run.manifest.closed else "dead"


def rows_table(runs: list[Run]) -> str:
    """Per run: spooled = delivered + dropped + failed + pending, from its ledger."""
    rows = []
    for run in runs:
        spooled = run.manifest.spooled_rows
        counts = read_counts(run.path)
        if counts is None:
            rows.append([run.run_id, run_state(run), str(spooled), "?", "?", "?", "?"])
            continue
        pending = spooled - sum(counts.values())
        cells = [counts[DELIVERED], counts[DROPPED], counts[FAILED], pending]
        rows.append([run.run_id, run_state(run), str(spooled), *map(str, cells)])
    header = ["run", "state", "spooled", "delivered", "dropped", "failed", "pending"]
    return table(header, rows)


def status_table(settings: BaseSettings, options: CollectOptions) -> str:
    """Runs (where their rows stand) and their batches. Reads only; changes nothing."""
    config = Config.from_settings(settings)
    runs = select_runs(config, options)
    if not runs:
        return f"No spool runs under {config.spool_dir}"
    client = sync_client(config)
    policy = RetryPolicy.from_config(config)
    now = time.time()
    header = [
        "run", "file", "status", "rows", "done", "failed", "age h", "tokens", "cost $",
    ]  # fmt: skip
    rows = []
    try:
        for run in runs:
            for name, entry in sorted(run.manifest.files.items()):
                status, done, failed, age = entry["status"], "", "", ""
                tokens, cost = str(entry["prompt_tokens"]), "-"
                if entry.get("batch_id") and status == SUBMITTED:
                    batch = policy.call_sync(partial(client.batches.retrieve, entry["batch_id"]))
                    status = f"batch {batch.status}"
                    if batch.request_counts:
                        done = str(batch.request_counts.completed)
                        failed = str(batch.request_counts.failed)
                    age = f"{age_hours(batch, now):.1f}"
                    if batch.usage:
                        used = batch.usage
                        tokens = f"{used.input_tokens}+{used.output_tokens}"
                        info = model_info(entry["model"], config.prices)
                        spent = cost_usd(info, used.input_tokens, used.output_tokens, batch=True)
                        cost = format_usd(spent)
                cells = [str(entry["rows"]), done, failed, age, tokens, cost]
                rows.append([run.run_id, name, status, *cells])
            if not run.manifest.files:
                rows.append([run.run_id, "-", "-", "0", "", "", "", "-", "-"])
    finally:
        client.close()
    return rows_table(runs) + "\n\n" + table(header, rows)


def cancel_batches(settings: BaseSettings, options: CollectOptions) -> tuple[int, int]:
    """Cancel the batches in flight of the runs this process can lock; their rows fail for good.

    Returns (cancelled, left): left counts the runs another process holds and the batches
    the API would not cancel; the command exits 1 for them. The cancels that went through
    are recorded whatever fails after them, so collection never resubmits their rows."""
    config = Config.from_settings(settings)
    client = sync_client(config)
    policy = RetryPolicy.from_config(config)
    cancelled = left = 0
    try:
        for run in select_runs(config, options):
            if run.manifest.data.get("collected_at"):
                continue
            if not run.try_lock():
                logger.error(
                    "Not cancelling run %s: another process (a crawl or a collector) holds it;"
                    " run --cancel again once it has stopped.",
                    run.run_id,
                )
                left += 1
                continue
            try:
                run.reload()
                for name in run.manifest.with_status(SUBMITTED):
                    entry = run.manifest.files[name]
                    batch_id = entry["batch_id"]
                    try:
                        batch = policy.call_sync(partial(client.batches.retrieve, batch_id))
                        if batch.status not in ACTIVE:
                            continue
                        policy.call_sync(partial(client.batches.cancel, batch_id))
                    except openai.OpenAIError as exc:
                        logger.error(
                            "Could not cancel batch %s (%s of %s): %s; run --cancel again.",
                            batch_id,
                            name,
                            run.run_id,
                            redact(f"{type(exc).__name__}: {exc}", client.api_key),
                        )
                        left += 1
                        continue
                    entry["user_cancelled"] = utc_now()
                    cancelled += 1
                    logger.info("Cancelled batch %s (%s of %s)", batch.id, name, run.run_id)
                run.manifest.save()
            finally:
                run.unlock()
    finally:
        client.close()
    return cancelled, left
