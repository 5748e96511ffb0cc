"""An OpenAI-compatible emulator: the offline default and the test bed.

The emulator is **not a language model**. It answers the Files, Batches and
Chat Completions endpoints in the wire format of the official ``openai`` SDK,
so the product's real client code runs unchanged with no network; its
answers are values copied from the structured data of the page (see
:mod:`.extract`), and its ``model`` field says so (``gpt-4o-mini-emulator``).

Two ways to run the one implementation (:class:`Emulator`):

- in-process, through the SDK's ``http_client`` hook::

      transport = emulator_transport(state_dir)            # or config=EmulatorConfig(...)
      client = openai.OpenAI(api_key="sk-any", base_url="http://emulator.invalid/v1",
                             http_client=httpx2.Client(transport=transport))

- over loopback HTTP: ``python -m scrapy_llm_extract.emulator --port 0 --state-dir DIR
  [--config FILE]`` prints ``http://127.0.0.1:<port>/v1``; in tests,
  ``with EmulatorServer(state_dir, config) as server: server.base_url``.

Endpoints: ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST/GET /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
``POST /v1/chat/completions``. Any ``Authorization: Bearer <key>`` is accepted
(``api_key`` in the config restricts it); none answers 401.

State (files, batches, recorded requests) lives in the state folder, so
processes sharing it see the same batches. Batch statuses are computed from
timestamps on read, paced by the ``clock`` (injectable) and the phase
durations of the config; with the defaults a batch is ``completed`` at its
first read.

Config (:class:`EmulatorConfig`; for the server a JSON file with the same keys,
re-read when it changes; with no config the emulator reads
``<state_dir>/config.json`` if it exists). Counters start at 1 and restart when
the config changes; "first N" means calls 1..N, "every N" calls N, 2N, ...:

- pacing: ``validating_seconds``, ``in_progress_seconds``, ``finalizing_seconds``,
  ``cancelling_seconds`` (all 0), ``completion_window_seconds`` (86400);
  ``"preset": "demo"`` (or ``EmulatorConfig.demo()``) sets 5 / 60 / 5 seconds;
- limits: ``max_rows`` (50000), ``max_file_bytes`` (200 MB),
  ``enqueued_token_limit`` (None) and ``enqueued_token_limits`` ({model: tokens}):
  a batch whose input tokens would pass the model's quota (counting batches
  still validating, in progress or finalizing) turns ``failed`` with
  ``token_limit_exceeded``;
- batch faults: ``expire_batches`` + ``expire_fraction`` (0.5: that share of
  rows has results, the rest are ``batch_expired`` rows), ``fail_batches``
  (an error code: every batch fails validation with it), ``row_error_every``
  (every Nth row gets a status 500 row in the error file), ``upload_error_first``
  (the first N uploads answer 500), ``late_result_files_first`` (the first N
  retrievals of a completed or expired batch show it without its result files,
  as OpenAI has been seen to do);
- real-time faults, over chat-completions calls: ``latency`` (seconds),
  ``rate_limit_first`` / ``rate_limit_every`` (429 ``rate_limit_exceeded`` with
  ``Retry-After: retry_after``), ``server_error_first`` / ``server_error_every``
  (``server_error_status``, 500), ``hang_first`` / ``hang_every`` (no answer until
  the client times out; the server gives up after ``hang_seconds``);
- answer faults, over chat calls in real time and over rows (by input line) in
  a batch: ``invalid_json_every``, ``refusal_every``, ``length_every``;
- noisy answers: ``noise_rate`` (share of answers with one value changed, seeded
  by ``seed`` and the page, so the same page always gets the same answer) and
  ``noise_wrong_share`` (of those, the share that is wrong; the rest are the
  same value formatted otherwise), to test learned rules against a fallible model;
- ``seed`` for the order of result rows (shuffled: join on ``custom_id``) and the noise.

Page markers, in the user content of one request, in real time and in batch
rows: ``[[emulator:refusal]]``, ``[[emulator:length]]``,
``[[emulator:content_filter]]``, ``[[emulator:invalid_json]]``,
``[[emulator:schema_mismatch]]``, ``[[emulator:error_500]]``,
``[[emulator:error_400]]``, ``[[emulator:hang]]`` (real time only).

Every chat-completions request body is recorded byte for byte:
``server.requests``, ``transport.emulator.requests`` or
``recorded_requests(state_dir)``.
"""

from __future__ import annotations

from .answers import MARKERS, MODEL_SUFFIX
from .config import EmulatorConfig
from .handler import CONFIG_FILE, Emulator, EmulatorRequest, EmulatorResponse
from .server import EmulatorServer
from .store import recorded_requests
from .transport import EmulatorTransport, emulator_transport

__all__ = [
    "CONFIG_FILE",
    "MARKERS",
    "MODEL_SUFFIX",
    "Emulator",
    "EmulatorConfig",
    "EmulatorRequest",
    "EmulatorResponse",
    "EmulatorServer",
    "EmulatorTransport",
    "emulator_transport",
    "recorded_requests",
]
