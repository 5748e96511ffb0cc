"""The emulator's one implementation: a plain request -> response function.

No web framework: :class:`Emulator` takes an :class:`EmulatorRequest` (method,
path, query, headers, body bytes) and returns an :class:`EmulatorResponse`.
The loopback server (server.py) and the in-process ``httpx2`` transport
(transport.py) are thin adapters around it, so both run the same code. The
adapters also carry out ``delay`` (injected latency) and ``hang``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

from .answers import answer, error_body, server_error_body
from .batches import Batches
from .config import ConfigSource, EmulatorConfig
from .noise import noise_of
from .store import Store, new_id

logger = logging.getLogger(__name__)

#: The config file an emulator reads from its state folder when given no config.
CONFIG_FILE = "config.json"
_UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")


@dataclass(frozen=True)
class EmulatorRequest:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    #: Header names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class EmulatorResponse:
    status: int
    body: bytes | Iterator[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds the adapter waits before answering (injected latency).
    delay: float = 0.0
    #: The adapter never answers: the client has to time out.
    hang: bool = False

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> EmulatorResponse:
        return cls(
            status, json.dumps(data).encode(), {"content-type": "application/json", **headers}
        )


class _Counters:
    """Numbered calls per kind (chat, upload); restart when the config changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._counts: dict[str, int] = {}

    def next(self, kind: str, generation: int) -> int:
        with self._lock:
            if generation != self._generation:
                self._generation, self._counts = generation, {}
            self._counts[kind] = self._counts.get(kind, 0) + 1
            return self._counts[kind]


def _nth(number: int, first: int, every: int) -> bool:
    return number <= first or (every > 0 and number % every == 0)


class Emulator:
    """An OpenAI-compatible API over a state folder.

    ``config``: an :class:`EmulatorConfig`, a JSON file path (re-read when it
    changes), or None for ``<state_dir>/config.json`` if present (defaults
    otherwise). ``clock`` returns the time batches are paced by (inject one to
    simulate time passing).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        config: EmulatorConfig | str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = Store(state_dir)
        self.config_source = ConfigSource(
            Path(state_dir, CONFIG_FILE) if config is None else config
        )
        self.clock = clock
        self.batches = Batches(self.store, clock)
        self._counters = _Counters()
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., EmulatorResponse]]] = [
            ("POST", re.compile(r"/v1/chat/completions"), self._chat),
            ("POST", re.compile(r"/v1/files"), self._upload),
            ("GET", re.compile(r"/v1/files"), self._list_files),
            ("GET", re.compile(r"/v1/files/([^/]+)"), self._get_file),
            ("GET", re.compile(r"/v1/files/([^/]+)/content"), self._file_content),
            ("DELETE", re.compile(r"/v1/files/([^/]+)"), self._delete_file),
            ("POST", re.compile(r"/v1/batches"), self._create_batch),
            ("GET", re.compile(r"/v1/batches"), self._list_batches),
            ("GET", re.compile(r"/v1/batches/([^/]+)"), self._get_batch),
            ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), self._cancel_batch),
        ]

    @property
    def config(self) -> EmulatorConfig:
        return self.config_source.get()

    @property
    def requests(self) -> list[bytes]:
        """Every chat-completions request body received, byte for byte, oldest first."""
        return self.store.recorded_requests()

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        try:
            config = self.config
        except ValueError as exc:
            logger.error("Invalid emulator config: %s", exc)
            return EmulatorResponse.json(
                500, error_body(f"Invalid emulator config: {exc}", "server_error")
            )
        denied = self._authenticate(request, config)
        if denied is not None:
            return denied
        path = request.path.rstrip("/")
        for method, pattern, route in self._routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                return route(request, config, *match.groups())
        return EmulatorResponse.json(
            404, error_body(f"Invalid URL ({request.method} {request.path})")
        )

    @staticmethod
    def _authenticate(request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return EmulatorResponse.json(
                401,
                error_body(
                    "You didn't provide an API key. You need to provide your API key in an"
                    " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                ),
            )
        if config.api_key is not None and key.strip() != config.api_key:
            return EmulatorResponse.json(
                401, error_body("Incorrect API key provided.", code="invalid_api_key")
            )
        return None

    @staticmethod
    def _json_body(request: EmulatorRequest) -> Any:
        try:
            return json.loads(request.body)
        except ValueError:
            return None

    # Chat completions.
    def _chat(self, request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse:
        self.store.record_request(request.path, request.body)
        number = self._counters.next("chat", self.config_source.generation)
        if _nth(number, config.rate_limit_first, config.rate_limit_every):
            wait = f"{config.retry_after:g}"
            return EmulatorResponse.json(
                429,
                error_body(
                    f"Rate limit reached for requests (emulated). Please try again in {wait}s.",
                    "requests",
                    code="rate_limit_exceeded",
                ),
                **{"retry-after": wait, "retry-after-ms": f"{config.retry_after * 1000:g}"},
            )
        if _nth(number, config.server_error_first, config.server_error_every):
            return EmulatorResponse.json(config.server_error_status, server_error_body())
        if _nth(number, config.hang_first, config.hang_every):
            return EmulatorResponse(0, hang=True)
        fault = None
        for every, name in (
            (config.invalid_json_every, "invalid_json"),
            (config.refusal_every, "refusal"),
            (config.length_every, "length"),
        ):
            if every and number % every == 0:
                fault = name
                break
        body = self._json_body(request)
        if body is None:
            return EmulatorResponse.json(
                400, error_body("We could not parse the JSON body of your request.")
            )
        result = answer(body, fault, realtime=True, now=self.clock(), noise=noise_of(config))
        if result.hang:
            return EmulatorResponse(0, hang=True)
        response = EmulatorResponse.json(result.status, result.body)
        response.delay = config.latency
        return response

    # Files.
    def _upload(self, request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse:
        number = self._counters.next("upload", self.config_source.generation)
        if number <= config.upload_error_first:
            return EmulatorResponse.json(500, server_error_body())
        fields = _multipart(request)
        if fields is None:
            return EmulatorResponse.json(
                400, error_body("Expected a multipart/form-data body.", param="file")
            )
        purpose = fields.get("purpose")
        purpose_name = purpose[1].decode("utf-8", "replace") if purpose else None
        if purpose_name not in _UPLOAD_PURPOSES:
            return EmulatorResponse.json(
                400,
                error_body(
                    f"Invalid 'purpose': expected one of {', '.join(_UPLOAD_PURPOSES)}.",
                    param="purpose",
                ),
            )
        upload = fields.get("file")
        if upload is None or upload[0] is None:
            return EmulatorResponse.json(
                400, error_body("Missing required parameter: 'file'.", param="file")
            )
        filename, content = upload
        record = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(self.clock()),
            "filename": filename,
            "purpose": purpose_name,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.store.save_file(record, content)
        return EmulatorResponse.json(200, record)

    def _list_files(self, request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse:
        records = sorted(self.store.file_records(), key=lambda r: r["created_at"], reverse=True)
        return EmulatorResponse.json(
            200,
            {
                "object": "list",
                "data": records,
                "first_id": records[0]["id"] if records else None,
                "last_id": records[-1]["id"] if records else None,
                "has_more": False,
            },
        )

    def _file_or_404(self, file_id: str) -> dict[str, Any] | EmulatorResponse:
        record = self.store.file_record(file_id)
        if record is None:
            return EmulatorResponse.json(
                404, error_body(f"No such File object: {file_id}", param="id")
            )
        return record

    def _get_file(
        self, request: EmulatorRequest, config: EmulatorConfig, file_id: str
    ) -> EmulatorResponse:
        record = self._file_or_404(file_id)
        return (
            record if isinstance(record, EmulatorResponse) else EmulatorResponse.json(200, record)
        )

    def _file_content(
        self, request: EmulatorRequest, config: EmulatorConfig, file_id: str
    ) -> EmulatorResponse:
        record = self._file_or_404(file_id)
        if isinstance(record, EmulatorResponse):
            return record
        return EmulatorResponse(
            200,
            self.store.iter_file(file_id),
            {
                "content-type": "application/octet-stream",
                "content-length": str(record["bytes"]),
            },
        )

    def _delete_file(
        self, request: EmulatorRequest, config: EmulatorConfig, file_id: str
    ) -> EmulatorResponse:
        record = self._file_or_404(file_id)
        if isinstance(record, EmulatorResponse):
            return record
        with self.store.locked():
            self.store.delete_file(file_id)
        return EmulatorResponse.json(200, {"id": file_id, "object": "file", "deleted": True})

    # Batches.
    def _create_batch(self, request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse:
        return EmulatorResponse.json(*self.batches.create(self._json_body(request), config))

    def _list_batches(self, request: EmulatorRequest, config: EmulatorConfig) -> EmulatorResponse:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return EmulatorResponse.json(
                400,
                error_body(
                    "Invalid 'limit': expected an integer between 1 and 100.", param="limit"
                ),
            )
        return EmulatorResponse.json(*self.batches.page(request.query.get("after"), limit))

    def _get_batch(
        self, request: EmulatorRequest, config: EmulatorConfig, batch_id: str
    ) -> EmulatorResponse:
        status, body = self.batches.get(batch_id)
        if config.late_result_files_first and body.get("status") in ("completed", "expired"):
            number = self._counters.next("final_view", self.config_source.generation)
            if number <= config.late_result_files_first:
                body = {**body, "output_file_id": None, "error_file_id": None}
        return EmulatorResponse.json(status, body)

    def _cancel_batch(
        self, request: EmulatorRequest, config: EmulatorConfig, batch_id: str
    ) -> EmulatorResponse:
        return EmulatorResponse.json(*self.batches.cancel(batch_id))


def _multipart(request: EmulatorRequest) -> dict[str, tuple[str | None, bytes]] | None:
    """Form fields as name -> (filename, raw value)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return None
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
    )
    if not message.is_multipart():
        return None
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        fields[name] = (part.get_filename(), payload)
    return fields
