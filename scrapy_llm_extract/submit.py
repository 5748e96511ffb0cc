"""Submitting spool files to the Batch API: upload, create, record. No Scrapy needed.

The crawl's :class:`~.extension.BatchSubmitExtension` and ``scrapy
collect-batches`` share this code. Every step is recorded in the run's
manifest (the caller holds the run's lock) so that nothing is submitted twice:

1. the intent first: status ``submitting`` with a fresh ``submit_token``;
2. ``files.create`` from an open file object (streamed, re-opened on retry),
   its ``file_id`` recorded at once; skipped when an earlier attempt's upload is
   recorded, so a refused creation never leaves a second copy on the API;
3. ``batches.create`` with metadata naming project, spider, run, file and token;
4. status ``submitted`` with the batch id.

A process killed between 1 and 4 leaves ``submitting``: :meth:`Submitter.reconcile`
looks the token up in ``batches.list`` metadata and records the batch if it
exists, or makes the file pending again if it does not. A failed upload or
create (after :class:`~.retry.RetryPolicy`'s retries) leaves the file
``pending`` with the reason; so does a batch that fails validation (such as
``token_limit_exceeded``), which ``batches.create`` still answers with 200:
it is seen by the one status check ``check_delay`` seconds after creation,
or later by collect-batches.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import openai

from .client import redact
from .manifest import FILES_TO_DELETE, PENDING, SUBMITTED, SUBMITTING, utc_now
from .retry import RetryPolicy
from .spool import ENDPOINT, Run

logger = logging.getLogger(__name__)

COMPLETION_WINDOW: Final = "24h"
#: Keys of the metadata every batch carries, to find one's own batches with batches.list.
META_PROJECT = "llm_extract_project"
META_SPIDER = "llm_extract_spider"
META_RUN = "llm_extract_run"
META_FILE = "llm_extract_file"
META_TOKEN = "llm_extract_token"
MAX_METADATA_VALUE = 512
#: How far before the recorded intent a batch may look created (clock skew with the API).
RECONCILE_SLACK_SECONDS = 3600


def batch_metadata(run: Run, name: str, token: str) -> dict[str, str]:
    manifest = run.manifest.data
    values = {
        META_PROJECT: manifest.get("project"),
        META_SPIDER: manifest.get("spider"),
        META_RUN: run.run_id,
        META_FILE: name,
        META_TOKEN: token,
    }
    return {key: str(value)[:MAX_METADATA_VALUE] for key, value in values.items()}


def describe(exc: BaseException, key: str | None) -> str:
    """An exception as one line for logs and the manifest, without the API key."""
    return redact(f"{type(exc).__name__}: {exc}", key)


def upload_unusable(exc: openai.APIStatusError) -> bool:
    """A batch creation refused because of its input file (gone, or not a batch file)."""
    return isinstance(exc, openai.NotFoundError) or (
        isinstance(exc, openai.BadRequestError) and exc.param == "input_file_id"
    )


def failure_reason(batch: Any) -> str:
    """Why a batch failed, from its ``errors.data`` (code first, e.g. token_limit_exceeded)."""
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    reasons = [f"{error.code}: {error.message}" for error in errors]
    return "; ".join(reasons) or f"batch {batch.id} {batch.status}"


@dataclass
class Submitter:
    """Submits a run's files with one client; ``check_delay`` None skips the validation check."""

    client: openai.AsyncOpenAI
    policy: RetryPolicy
    check_delay: float | None = None

    def _on_retry(self, what: str, name: str) -> Any:
        def log(exc: BaseException, wait: float) -> None:
            reason = describe(exc, self.client.api_key)
            logger.info("%s of %s failed (%s); retrying in %.1fs", what, name, reason, wait)

        return log

    async def submit_file(self, run: Run, name: str) -> bool:
        """Submit one pending file; True when its batch was created (and not seen failing)."""
        entry = run.manifest.files[name]
        if entry["status"] != PENDING:
            return False
        token = secrets.token_hex(8)
        # Where the batch lives: collecting it against another endpoint can only fail.
        api_base = str(self.client.base_url).rstrip("/")
        entry.update(
            status=SUBMITTING, submit_token=token, submitting_at=utc_now(), api_base=api_base
        )
        run.manifest.save()
        try:
            batch = await self._create(run, name, token)
        except (openai.OpenAIError, OSError) as exc:
            step = "batch creation" if entry.get("file_id") else "upload"
            entry.update(
                status=PENDING, reason=f"{step} failed: {describe(exc, self.client.api_key)}"
            )
            run.manifest.save()
            logger.warning(
                "Could not submit %s of %s (%s); it stays pending for collect-batches.",
                name,
                run.run_id,
                entry["reason"],
            )
            return False
        entry.update(status=SUBMITTED, batch_id=batch.id, submitted_at=utc_now(), reason=None)
        run.manifest.save()
        logger.info(
            "Submitted %s of %s as batch %s (%d rows)", name, run.run_id, batch.id, entry["rows"]
        )
        if batch.status == "failed":
            self._failed(run, name, batch, self.client.api_key)
            return False
        if self.check_delay is not None:
            await asyncio.sleep(self.check_delay)
            return await self.check(run, name)
        return True

    async def _create(self, run: Run, name: str, token: str) -> Any:
        """Create the file's batch from its recorded upload, uploading it only if there is
        none: a refused creation or a batch failing validation leaves the upload recorded
        in ``file_id`` for the next attempt, so a file is never on the API twice. An upload
        the API no longer has (expired, deleted) is listed for deletion and replaced once."""
        entry = run.manifest.files[name]
        recorded = entry.get("file_id")
        if recorded:
            try:
                return await self._create_from(run, name, token, recorded)
            except openai.APIStatusError as exc:
                if not upload_unusable(exc):
                    raise
                logger.warning(
                    "The upload %s of %s of %s is no longer usable (%s); uploading the file again.",
                    recorded,
                    name,
                    run.run_id,
                    describe(exc, self.client.api_key),
                )
                run.manifest.data.setdefault(FILES_TO_DELETE, []).append(recorded)
                entry["file_id"] = None

        async def upload() -> Any:
            with open(run.path / name, "rb") as f:
                return await self.client.files.create(file=f, purpose="batch")

        uploaded = await self.policy.call(upload, self._on_retry("Upload", name))
        entry["file_id"] = uploaded.id
        run.manifest.save()  # recorded before its batch exists: a kill now leaks no upload
        return await self._create_from(run, name, token, uploaded.id)

    async def _create_from(self, run: Run, name: str, token: str, file_id: str) -> Any:
        return await self.policy.call(
            lambda: self.client.batches.create(
                input_file_id=file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=batch_metadata(run, name, token),
            ),
            self._on_retry("Batch creation", name),
        )

    async def check(self, run: Run, name: str) -> bool:
        """Look once at a submitted file's batch; make the file pending again if it failed."""
        entry = run.manifest.files[name]
        if entry["status"] != SUBMITTED:
            return False
        try:
            batch = await self.policy.call(lambda: self.client.batches.retrieve(entry["batch_id"]))
        except openai.OpenAIError as exc:
            reason = describe(exc, self.client.api_key)
            logger.info("Could not check batch %s yet (%s)", entry["batch_id"], reason)
            return True
        if batch.status == "failed":
            self._failed(run, name, batch, self.client.api_key)
            return False
        return True

    @staticmethod
    def _failed(run: Run, name: str, batch: Any, key: str | None) -> None:
        entry = run.manifest.files[name]
        reason = redact(failure_reason(batch), key)
        entry["failed_batches"].append({"batch_id": batch.id, "reason": reason})
        entry.update(status=PENDING, batch_id=None, reason=f"batch failed validation: {reason}")
        run.manifest.save()
        logger.warning(
            "Batch %s of %s failed validation (%s); %s stays pending for collect-batches.",
            batch.id,
            run.run_id,
            reason,
            name,
        )

    async def reconcile(self, run: Run) -> None:
        """Settle files left ``submitting`` by a crash: find their batch by token, or retry them."""
        waiting = {
            entry["submit_token"]: name
            for name, entry in run.manifest.files.items()
            if entry["status"] == SUBMITTING
        }
        if not waiting:
            return
        since = min(
            datetime.fromisoformat(run.manifest.files[name]["submitting_at"]).timestamp()
            for name in waiting.values()
        )
        found = await self.policy.call(lambda: self._find_batches(set(waiting), since))
        for token, name in waiting.items():
            entry = run.manifest.files[name]
            batch = found.get(token)
            if batch is None:
                entry.update(status=PENDING, reason="submission interrupted before a batch existed")
            else:
                entry.update(
                    status=SUBMITTED, batch_id=batch.id, submitted_at=utc_now(), reason=None
                )
                logger.info(
                    "Found batch %s of interrupted submission %s of %s", batch.id, name, run.run_id
                )
        run.manifest.save()

    async def _find_batches(self, tokens: set[str], since: float) -> dict[str, Any]:
        """Batches (newest first) carrying one of ``tokens``, down to ``since``."""
        found: dict[str, Any] = {}
        async for batch in self.client.batches.list(limit=100):
            token = (batch.metadata or {}).get(META_TOKEN)
            if token in tokens:
                found[token] = batch
                if len(found) == len(tokens):
                    break
            if batch.created_at < since - RECONCILE_SLACK_SECONDS:
                break
        return found

    async def submit_pending(self, run: Run, names: Iterable[str] | None = None) -> list[str]:
        """Reconcile, then submit ``names`` (default: every pending file) concurrently."""
        await self.reconcile(run)
        pending = set(run.manifest.with_status(PENDING))
        chosen = sorted(pending if names is None else pending.intersection(names))
        results = await asyncio.gather(*(self.submit_file(run, name) for name in chosen))
        return [name for name, ok in zip(chosen, results, strict=True) if ok]
