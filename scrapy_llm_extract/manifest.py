"""The manifest of one spool run: what was written, what was submitted, and why not.

``manifest.json`` is the run's only mutable record, so it is always replaced
whole (temporary file, fsync, ``os.replace``, fsync of the folder): a reader,
or a crawl killed at any instant, sees either the previous version or the new
one, never half of each. Only the holder of the run's lock (the live crawl,
then whoever recovers or collects the run) writes it.

Layout (``version`` 1)::

    {"version": 1, "run_id": ..., "project": ..., "spider": ..., "host": ..., "pid": ...,
     "created_at": "<ISO 8601 UTC>", "closed_at": null | "...", "close_reason": null | "...",
     "schemas": {"<key>": {"name": ..., "schema": {...strict JSON schema...}}},
     "files": {"requests-0001.jsonl": {
         "model": ..., "rows": n, "bytes": n, "prompt_tokens": n, "attempt": 1,
         "status": "open" | "pending" | "submitting" | "submitted" | <collect's own>,
         "reason": null | "why it is still pending",
         "submit_token": null | "...", "submitting_at": ..., "file_id": ..., "batch_id": ...,
         "submitted_at": ..., "failed_batches": [{"batch_id": ..., "reason": ...}],
         "resubmits": <file whose rows a resubmission carries; collect's own>}},
     "cut_rows": [<sidecar row whose request row a killed writer never wrote>, ...],
     "collected_at": ..., "files_to_delete": [<OpenAI file id not deleted yet>, ...]}

Keys are the final file names (``.jsonl``), also while a file is still being
written as ``.part``. Collect may add statuses and keys of its own; the
writer keeps keys it does not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
VERSION = 1

#: A requests file still being written (``.part`` on disk).
OPEN = "open"
#: Complete and not (or no longer) submitted: upload it. ``reason`` says why it waits.
PENDING = "pending"
#: Intent recorded, upload or create under way. After a crash, reconcile through
#: ``batches.list`` metadata (``submit_token``) before submitting it again.
SUBMITTING = "submitting"
#: A batch was created: ``batch_id`` is its id.
SUBMITTED = "submitted"
#: File key: the file whose failed rows a resubmission file (collect-batches') carries.
RESUBMITS = "resubmits"
#: Top-level key: OpenAI files no longer needed (uploads given up on, files of a collected
#: run) whose delete has not succeeded yet; every collect-batches pass retries them.
FILES_TO_DELETE = "files_to_delete"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def schema_key(name: str, schema: dict[str, Any]) -> str:
    """A short stable key for a (name, schema) pair, so each schema is stored once."""
    canonical = json.dumps([name, schema], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that no reader ever sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Manifest:
    """The parsed ``manifest.json`` of a run; mutate ``data`` or the helpers, then ``save()``."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def new(cls, path: Path, *, run_id: str, project: str, spider: str) -> Manifest:
        data: dict[str, Any] = {
            "version": VERSION,
            "run_id": run_id,
            "project": project,
            "spider": spider,
            "host": os.uname().nodename,
            "pid": os.getpid(),
            "created_at": utc_now(),
            "closed_at": None,
            "close_reason": None,
            "schemas": {},
            "files": {},
        }
        return cls(path, data)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        with open(path, "rb") as f:
            return cls(path, json.load(f))

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, ensure_ascii=False).encode())

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        files: dict[str, dict[str, Any]] = self.data["files"]
        return files

    @property
    def closed(self) -> bool:
        return self.data.get("closed_at") is not None

    def add_file(self, name: str, model: str, attempt: int = 1) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "model": model,
            "rows": 0,
            "bytes": 0,
            "prompt_tokens": 0,
            "attempt": attempt,
            "status": OPEN,
            "reason": None,
            "submit_token": None,
            "submitting_at": None,
            "file_id": None,
            "batch_id": None,
            "submitted_at": None,
            "failed_batches": [],
        }
        self.files[name] = entry
        return entry

    def add_schema(self, name: str, schema: dict[str, Any]) -> tuple[str, bool]:
        """Store a schema once; return its key and whether it was new (then save first)."""
        key = schema_key(name, schema)
        schemas: dict[str, Any] = self.data["schemas"]
        if key in schemas:
            return key, False
        schemas[key] = {"name": name, "schema": schema}
        return key, True

    def schema(self, key: str) -> dict[str, Any]:
        """``{"name": ..., "schema": {...}}`` as the sidecar's ``schema`` key names it."""
        entry: dict[str, Any] = self.data["schemas"][key]
        return entry

    @property
    def cut_rows(self) -> list[dict[str, Any]]:
        """Sidecar rows cut off by a writer killed between a row's two writes (recovery)."""
        rows: list[dict[str, Any]] = self.data.setdefault("cut_rows", [])
        return rows

    @property
    def spooled_rows(self) -> int:
        """Rows the crawl spooled: first-attempt files, and first-attempt rows cut off."""
        listed = sum(entry["rows"] for entry in self.files.values() if entry["attempt"] == 1)
        cut = sum(
            1 for row in self.cut_rows if row.get("attempt") == 1 and not row.get("resubmitted")
        )
        return listed + cut

    def with_status(self, *statuses: str) -> list[str]:
        return sorted(name for name, entry in self.files.items() if entry["status"] in statuses)

    def close(self, reason: str | None) -> None:
        self.data["closed_at"] = utc_now()
        self.data["close_reason"] = reason
