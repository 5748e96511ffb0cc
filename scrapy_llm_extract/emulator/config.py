"""Emulator behaviour: batch pacing, limits and the faults to inject.

One dataclass serves both ways of running the emulator: the in-process
transport takes it directly, the loopback server reads it from a JSON file
whose keys are the field names. :class:`ConfigSource` re-reads that file when
it changes, so a test can alter the faults of a server that is already
running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Phase durations of the ``{"preset": "demo"}`` setting: slow enough to watch a
#: batch move through its statuses, fast enough for a demo.
DEMO_PACE = {"validating_seconds": 5.0, "in_progress_seconds": 60.0, "finalizing_seconds": 5.0}


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that changes how the emulator answers; defaults: fast and faultless."""

    # Batch pacing (seconds of the emulator's clock per phase; 0: immediate).
    validating_seconds: float = 0.0
    in_progress_seconds: float = 0.0
    finalizing_seconds: float = 0.0
    cancelling_seconds: float = 0.0
    #: A batch still running this long after creation expires (the real "24h").
    completion_window_seconds: float = 86400.0
    # Input limits (the real API's; lower them in tests).
    max_rows: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    #: Enqueued-token quota per model (None: unlimited); per-model overrides below.
    enqueued_token_limit: int | None = None
    enqueued_token_limits: dict[str, int] = field(default_factory=dict)
    # Batch faults.
    expire_batches: bool = False
    expire_fraction: float = 0.5
    fail_batches: str | None = None
    row_error_every: int = 0
    upload_error_first: int = 0
    #: The first N looks at a completed or expired batch show no result files yet.
    late_result_files_first: int = 0
    # Real-time faults (counted over chat-completions calls).
    latency: float = 0.0
    rate_limit_first: int = 0
    rate_limit_every: int = 0
    retry_after: float = 1.0
    server_error_first: int = 0
    server_error_every: int = 0
    server_error_status: int = 500
    hang_first: int = 0
    hang_every: int = 0
    #: How long the loopback server holds a hanging request at most.
    hang_seconds: float = 600.0
    # Answer faults (counted over chat calls in real time, over rows in a batch).
    invalid_json_every: int = 0
    refusal_every: int = 0
    length_every: int = 0
    #: Share of answers with one value wrong or formatted differently (seeded by ``seed``).
    noise_rate: float = 0.0
    #: Of the noisy answers, the share that is wrong rather than reformatted.
    noise_wrong_share: float = 0.5
    #: None: any ``Bearer`` key is accepted; otherwise only this one.
    api_key: str | None = None
    #: Seeds the shuffling of result rows and the noise of answers.
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        """Build from JSON: field names as keys, ``"preset": "demo"`` for the demo pace."""
        data = dict(data)
        preset = data.pop("preset", None)
        if preset == "demo":
            data = {**DEMO_PACE, **data}
        elif preset is not None:
            raise ValueError(f"Unknown emulator preset {preset!r} (known: 'demo')")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown emulator config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def demo(cls, **overrides: Any) -> EmulatorConfig:
        """The realistic demo pace: batches take about a minute."""
        return cls(**{**DEMO_PACE, **overrides})

    def token_limit(self, model: str) -> int | None:
        return self.enqueued_token_limits.get(model, self.enqueued_token_limit)


class ConfigSource:
    """The current config: fixed, or a JSON file re-read whenever it changes.

    ``generation`` increases on every change, so fault counters can restart
    from zero when a test installs new faults.
    """

    def __init__(self, config: EmulatorConfig | str | os.PathLike[str] | None) -> None:
        self._lock = threading.Lock()
        self._path = None if config is None or isinstance(config, EmulatorConfig) else Path(config)
        self._config = config if isinstance(config, EmulatorConfig) else EmulatorConfig()
        self._raw: bytes | None = None
        self.generation = 0

    def get(self) -> EmulatorConfig:
        if self._path is None:
            return self._config
        with self._lock:
            try:
                raw: bytes | None = self._path.read_bytes()
            except FileNotFoundError:
                raw = None
            if raw != self._raw or self.generation == 0:
                if raw is None:
                    self._config = EmulatorConfig()
                else:
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        # Most likely caught mid-write: keep the current config, retry next call.
                        logger.warning("Emulator config %s is not valid JSON yet", self._path)
                        return self._config
                    self._config = EmulatorConfig.from_dict(data)
                self._raw = raw
                self.generation += 1
                if raw is not None:
                    logger.info("Emulator config loaded from %s", self._path)
            return self._config
