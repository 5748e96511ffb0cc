"""Batch jobs: validation at creation, status computed lazily from timestamps.

No thread moves a batch along. A batch record stores its creation time, the
config it was created under and, if asked, when it was cancelled; its status
at any moment follows from those (see :func:`_events`). The first read that
finds a batch finished writes its output and error files, under the store's
lock, so any process reading the same state folder sees the same results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import secrets
from collections.abc import Callable
from typing import Any

from .answers import Answer, answer, error_body, prompt_tokens
from .config import EmulatorConfig
from .noise import noise_of
from .store import Store, new_id

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
ACTIVE = ("validating", "in_progress", "finalizing")
TERMINAL = ("failed", "completed", "expired", "cancelled")
_TIMESTAMP_FIELDS = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}
MAX_ERRORS = 100

Response = tuple[int, dict[str, Any]]


def _error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_rows(
    content: bytes, config: EmulatorConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of an input file and the batch-level errors the real API would report."""
    if len(content) > config.max_file_bytes:
        return [], [
            _error("file_too_large", f"The input file exceeds {config.max_file_bytes} bytes.")
        ]
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        return [], [_error("empty_file", "The input file is empty.")]
    if len(lines) > config.max_rows:
        return [], [
            _error("too_many_tasks", f"The input file has more than {config.max_rows} requests.")
        ]
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            errors.append(
                _error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            )
            continue
        missing = [
            k
            for k in ("custom_id", "method", "url", "body")
            if not isinstance(row, dict) or k not in row
        ]
        if missing:
            errors.append(
                _error(
                    "invalid_request",
                    f"Missing required parameter: '{missing[0]}'.",
                    number,
                    missing[0],
                )
            )
            continue
        if row["method"] != "POST":
            errors.append(
                _error("invalid_request", "Only the POST method is supported.", number, "method")
            )
        if row["url"] != ENDPOINT:
            errors.append(
                _error(
                    "url_mismatch",
                    f"The URL provided for this request does not match the batch endpoint"
                    f" {ENDPOINT}.",
                    number,
                    "url",
                )
            )
        custom_id = row["custom_id"]
        if not isinstance(custom_id, str) or custom_id in seen:
            errors.append(
                _error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The"
                    " custom_id parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
            )
        seen.add(str(custom_id))
        row_model = row["body"].get("model") if isinstance(row["body"], dict) else None
        if model is None:
            model = row_model
        elif row_model != model:
            errors.append(
                _error(
                    "model_mismatch",
                    f"The provided model '{row_model}' does not match the model '{model}' of the"
                    " other requests in this batch.",
                    number,
                    "body.model",
                )
            )
        rows.append(row)
    return rows, errors[:MAX_ERRORS]


def _rows_tokens(rows: list[dict[str, Any]], model: Any) -> int:
    """Prompt tokens of the rows, as the enqueued-token quota counts them."""
    return sum(
        prompt_tokens(r["body"].get("messages") or [], str(model))
        for r in rows
        if isinstance(r["body"], dict) and isinstance(r["body"].get("messages"), list)
    )


def _events(record: dict[str, Any]) -> list[tuple[float, str]]:
    """The batch's status changes, in order: (time, status)."""
    config = record["config"]
    start = record["created"]
    validated = start + config["validating_seconds"]
    events = [(start, "validating")]
    if record["errors"]:
        events.append((validated, "failed"))
    else:
        events.append((validated, "in_progress"))
        processed = validated + config["in_progress_seconds"]
        deadline = start + config["completion_window_seconds"]
        if config["expire_batches"]:
            events.append((processed, "expired"))
        elif processed > deadline:
            events.append((deadline, "expired"))
        else:
            events += [
                (processed, "finalizing"),
                (processed + config["finalizing_seconds"], "completed"),
            ]
    cancelled = record.get("cancel_requested_at")
    if cancelled is not None:
        events = [e for e in events if e[0] <= cancelled]
        events += [
            (cancelled, "cancelling"),
            (cancelled + config["cancelling_seconds"], "cancelled"),
        ]
    return events


def _status(record: dict[str, Any], now: float) -> tuple[str, dict[str, float]]:
    status = "validating"
    reached: dict[str, float] = {}
    for moment, name in _events(record):
        if moment > now:
            break
        status = name
        if name in _TIMESTAMP_FIELDS:
            reached[_TIMESTAMP_FIELDS[name]] = moment
    return status, reached


def _done_fraction(record: dict[str, Any], status: str, reached: dict[str, float]) -> float:
    """The share of rows that ran before the batch stopped."""
    if status == "completed":
        return 1.0
    config = record["config"]
    if status == "expired" and config["expire_batches"]:
        return float(config["expire_fraction"])
    started = record["created"] + config["validating_seconds"]
    stopped = reached.get("cancelling_at", reached.get("expired_at", started))
    if stopped < started:
        return 0.0
    duration = config["in_progress_seconds"]
    return 1.0 if duration <= 0 else min(1.0, (stopped - started) / duration)


_ROW_FAULTS = (
    ("row_error_every", "error_500"),
    ("invalid_json_every", "invalid_json"),
    ("refusal_every", "refusal"),
    ("length_every", "length"),
)


def _row_fault(config: dict[str, Any], number: int) -> str | None:
    for key, fault in _ROW_FAULTS:
        if config[key] and number % config[key] == 0:
            return fault
    return None


class Batches:
    """The ``/v1/batches`` resource over a :class:`Store`."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def create(self, params: Any, config: EmulatorConfig) -> Response:
        problem = self._check_params(params)
        if problem is not None:
            return problem
        file_record = self.store.file_record(params["input_file_id"])
        if file_record is None or file_record["purpose"] != "batch":
            return 400, error_body(
                f"Invalid input_file_id: no file with purpose 'batch' has id"
                f" {params['input_file_id']!r}.",
                param="input_file_id",
            )
        content = self.store.file_path(file_record["id"]).read_bytes()
        rows, errors = validate_rows(content, config)
        model = next((r["body"].get("model") for r in rows if isinstance(r["body"], dict)), None)
        limit = config.token_limit(str(model))
        # Counting is the costly part of a create: done when a quota asks for it, or later.
        tokens = _rows_tokens(rows, model) if limit is not None else None
        if config.fail_batches and not errors:
            errors = [_error(config.fail_batches, "Emulated validation failure.")]
        with self.store.locked():
            now = self.clock()
            if not errors and tokens is not None and limit is not None:
                enqueued = sum(
                    self._enqueued_tokens(r)
                    for r in self.store.batch_records()
                    if r["model"] == model and _status(r, now)[0] in ACTIVE
                )
                if enqueued + tokens > limit:
                    errors = [
                        _error(
                            "token_limit_exceeded",
                            f"Enqueued token limit reached for {model} in organization"
                            f" org-emulator. Limit: {limit} enqueued tokens. Please try again once"
                            " some in_progress batches have been completed.",
                        )
                    ]
            record = {
                "id": new_id("batch_"),
                "seq": len(list(self.store.batches_dir.glob("*.json"))),
                "created": now,
                "input_file_id": file_record["id"],
                "endpoint": params["endpoint"],
                "completion_window": params["completion_window"],
                "metadata": params.get("metadata"),
                "model": model,
                "total": len(rows),
                "input_tokens": tokens,
                "errors": errors,
                "config": dataclasses.asdict(config),
            }
            self.store.save_batch(record)
        logger.debug("Batch %s created with %d rows", record["id"], len(rows))
        return 200, self._view(record, now, fresh=True)

    def _enqueued_tokens(self, record: dict[str, Any]) -> int:
        """Prompt tokens of a batch's input file, counted once (the caller holds the lock)."""
        if record.get("input_tokens") is None:
            content = self.store.file_path(record["input_file_id"]).read_bytes()
            rows, _ = validate_rows(content, EmulatorConfig.from_dict(record["config"]))
            record["input_tokens"] = _rows_tokens(rows, record["model"])
            self.store.save_batch(record)
        return int(record["input_tokens"])

    @staticmethod
    def _check_params(params: Any) -> Response | None:
        if not isinstance(params, dict):
            return 400, error_body("The request body must be a JSON object.")
        if not isinstance(params.get("input_file_id"), str):
            return 400, error_body(
                "Missing required parameter: 'input_file_id'.", param="input_file_id"
            )
        if params.get("endpoint") != ENDPOINT:
            return 400, error_body(
                f"Invalid 'endpoint': the emulator serves batches for {ENDPOINT} only.",
                param="endpoint",
            )
        if params.get("completion_window") != "24h":
            return 400, error_body(
                "Invalid 'completion_window': only '24h' is supported.", param="completion_window"
            )
        metadata = params.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items()
            )
        ):
            return 400, error_body(
                "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to"
                " 512 characters.",
                param="metadata",
            )
        return None

    def get(self, batch_id: str) -> Response:
        record = self.store.batch_record(batch_id)
        if record is None:
            return _not_found(batch_id)
        return 200, self._view(record, self.clock())

    def page(self, after: str | None, limit: int) -> Response:
        records = self.store.batch_records()
        if after is not None:
            ids = [r["id"] for r in records]
            if after not in ids:
                return 400, error_body(f"Invalid 'after': no batch {after!r}.", param="after")
            records = records[ids.index(after) + 1 :]
        now = self.clock()
        page = [self._view(r, now) for r in records[:limit]]
        return 200, {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(records) > limit,
        }

    def cancel(self, batch_id: str) -> Response:
        with self.store.locked():
            record = self.store.batch_record(batch_id)
            if record is None:
                return _not_found(batch_id)
            now = self.clock()
            status, _ = _status(record, now)
            if status not in ACTIVE:
                return 409, error_body(
                    f"Cannot cancel a batch with status '{status}'.", param="batch_id"
                )
            record["cancel_requested_at"] = now
            self.store.save_batch(record)
        return 200, self._view(record, now)

    def _view(self, record: dict[str, Any], now: float, fresh: bool = False) -> dict[str, Any]:
        """The batch object as the API shows it at ``now`` (``fresh``: as created)."""
        status, reached = ("validating", {}) if fresh else _status(record, now)
        if status in ("completed", "expired", "cancelled") and "request_counts" not in record:
            record = self._finish(record["id"], status, reached)
        counts = record.get("request_counts") or {
            "total": record["total"] if status != "validating" else 0,
            "completed": 0,
            "failed": 0,
        }
        usage = record.get("usage") or _usage(0, 0)
        errors = record["errors"] if status == "failed" else None
        return {
            "id": record["id"],
            "object": "batch",
            "endpoint": record["endpoint"],
            "model": record["model"],
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": record["input_file_id"],
            "completion_window": record["completion_window"],
            "status": status,
            "output_file_id": record.get("output_file_id"),
            "error_file_id": record.get("error_file_id"),
            "created_at": int(record["created"]),
            "expires_at": int(record["created"] + record["config"]["completion_window_seconds"]),
            **{name: None for name in _TIMESTAMP_FIELDS.values()},
            **{name: int(moment) for name, moment in reached.items()},
            "request_counts": counts,
            "usage": usage,
            "metadata": record["metadata"],
        }

    def _finish(self, batch_id: str, status: str, reached: dict[str, float]) -> dict[str, Any]:
        """Run the rows and write the result files, once, whichever process gets here first."""
        with self.store.locked():
            record = self.store.batch_record(batch_id)
            assert record is not None
            if "request_counts" in record:
                return record
            config = record["config"]
            created_with = EmulatorConfig.from_dict(config)
            rows, _ = validate_rows(
                self.store.file_path(record["input_file_id"]).read_bytes(), created_with
            )
            done = math.floor(len(rows) * _done_fraction(record, status, reached))
            finished_at = max(reached.values())
            outputs: list[dict[str, Any]] = []
            failures: list[dict[str, Any]] = []
            input_tokens = output_tokens = reasoning_tokens = 0
            for number, row in enumerate(rows, 1):
                if number > done:
                    code = "batch_expired" if status == "expired" else "batch_cancelled"
                    failures.append(
                        _row(
                            row,
                            None,
                            {
                                "code": code,
                                "message": f"Not executed before the batch was {status}.",
                            },
                        )
                    )
                    continue
                result: Answer = answer(
                    row["body"],
                    _row_fault(config, number),
                    realtime=False,
                    now=finished_at,
                    noise=noise_of(created_with),
                )
                line = _row(
                    row,
                    {
                        "status_code": result.status,
                        "request_id": "req_" + secrets.token_hex(16),
                        "body": result.body,
                    },
                    None,
                )
                if result.status == 200:
                    outputs.append(line)
                    input_tokens += result.body["usage"]["prompt_tokens"]
                    output_tokens += result.body["usage"]["completion_tokens"]
                    details = result.body["usage"]["completion_tokens_details"]
                    reasoning_tokens += details["reasoning_tokens"]
                else:
                    failures.append(line)
            # Seeded by the config and the batch's place in the store, not its random id, so
            # an emulator run is reproducible.
            shuffle = random.Random(f"{config['seed']}:{record['seq']}").shuffle
            shuffle(outputs)
            shuffle(failures)
            record["output_file_id"] = self._result_file(record, "output", outputs, finished_at)
            record["error_file_id"] = self._result_file(record, "error", failures, finished_at)
            record["request_counts"] = {
                "total": len(rows),
                "completed": len(outputs),
                "failed": len(failures) - (len(rows) - done),
            }
            record["usage"] = _usage(input_tokens, output_tokens, reasoning_tokens)
            self.store.save_batch(record)
            return record

    def _result_file(
        self, record: dict[str, Any], kind: str, lines: list[dict[str, Any]], created: float
    ) -> str | None:
        if not lines:
            return None
        content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        file_record = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(created),
            "filename": f"{record['id']}_{kind}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.store.save_file(file_record, content)
        return str(file_record["id"])


def _row(
    row: dict[str, Any], response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": new_id("batch_req_"),
        "custom_id": row["custom_id"],
        "response": response,
        "error": error,
    }


def _usage(input_tokens: int, output_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _not_found(batch_id: str) -> Response:
    return 404, error_body(f"No batch found with id '{batch_id}'.", param="batch_id")
