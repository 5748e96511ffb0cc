"""The emulator's state on disk, shared by every process that uses the same folder.

A crawl process and a later ``scrapy collect-batches`` process each run their
own emulator, so files and batches cannot live in memory. Layout::

    <state_dir>/files/<file id>          file content, as uploaded or produced
    <state_dir>/files/<file id>.json     the file object (id, bytes, purpose, ...)
    <state_dir>/batches/<batch id>.json  the batch record (see batches.py)
    <state_dir>/requests.jsonl           every chat-completions request body received
    <state_dir>/lock                     flock held around every mutation

Writes are atomic (temporary file + ``os.replace``); readers never see a half
written record.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK_SIZE = 64 * 1024


def new_id(prefix: str) -> str:
    """An id shaped like the real API's (``file-...``, ``batch_...``)."""
    return prefix + secrets.token_hex(12)


class Store:
    """Files, batch records and recorded requests in one state folder."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        self.requests_path = self.root / "requests.jsonl"
        for folder in (self.files_dir, self.batches_dir):
            folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise mutations across threads and processes (one open file per holder)."""
        with open(self.root / "lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    # Files.
    def save_file(self, record: dict[str, Any], content: bytes) -> None:
        self._write_atomic(self.files_dir / record["id"], content)
        self._write_atomic(self.files_dir / f"{record['id']}.json", json.dumps(record).encode())

    def file_record(self, file_id: str) -> dict[str, Any] | None:
        if "/" in file_id or file_id.startswith("."):
            return None
        return self._read_json(self.files_dir / f"{file_id}.json")

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def iter_file(self, file_id: str) -> Iterator[bytes]:
        """The content in chunks, so large result files are streamed, not loaded."""
        with open(self.file_path(file_id), "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk

    def delete_file(self, file_id: str) -> None:
        (self.files_dir / f"{file_id}.json").unlink(missing_ok=True)
        self.file_path(file_id).unlink(missing_ok=True)

    def file_records(self) -> list[dict[str, Any]]:
        records = (self._read_json(p) for p in self.files_dir.glob("*.json"))
        return [r for r in records if r is not None]

    # Batches.
    def save_batch(self, record: dict[str, Any]) -> None:
        self._write_atomic(self.batches_dir / f"{record['id']}.json", json.dumps(record).encode())

    def batch_record(self, batch_id: str) -> dict[str, Any] | None:
        if "/" in batch_id or batch_id.startswith("."):
            return None
        return self._read_json(self.batches_dir / f"{batch_id}.json")

    def batch_records(self) -> list[dict[str, Any]]:
        """Every batch, newest first (the order of the real ``GET /v1/batches``)."""
        records = [r for r in map(self._read_json, self.batches_dir.glob("*.json")) if r]
        return sorted(records, key=lambda r: (r["created"], r["seq"]), reverse=True)

    # Recorded requests.
    def record_request(self, path: str, body: bytes) -> None:
        """Append one request body, exactly as received (base64 if not UTF-8)."""
        try:
            entry = {"path": path, "body": body.decode("utf-8")}
        except UnicodeDecodeError:
            entry = {"path": path, "body_base64": base64.b64encode(body).decode()}
        line = (json.dumps(entry) + "\n").encode()
        with self.locked(), open(self.requests_path, "ab") as handle:
            handle.write(line)

    def recorded_requests(self) -> list[bytes]:
        try:
            lines = self.requests_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        bodies = []
        for line in lines:
            entry = json.loads(line)
            if "body" in entry:
                bodies.append(entry["body"].encode("utf-8"))
            else:
                bodies.append(base64.b64decode(entry["body_base64"]))
        return bodies


def recorded_requests(state_dir: str | os.PathLike[str]) -> list[bytes]:
    """The raw chat-completions request bodies an emulator on ``state_dir`` received."""
    return Store(state_dir).recorded_requests()
