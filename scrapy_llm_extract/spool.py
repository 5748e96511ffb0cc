"""The batch spool: Batch API input files written during the crawl, and their reader.

Layout, one folder per crawl under ``LLM_EXTRACT_SPOOL_DIR`` (several crawl
processes, on one machine or on shared storage, may share the root)::

    <root>/<run_id>/                  run_id = "<spider>-<YYYYmmddTHHMMSSZ>-<8 hex>"
      requests-0001.jsonl.part        Batch API rows being written
      requests-0001.jsonl             the same file once complete (atomic rename)
      items-0001.jsonl                sidecar of requests-0001: one row per request
      manifest.json                   see :mod:`.manifest` (schemas, file statuses, batch ids)
      run.lock                        flock()ed by the process that owns the run
      failures.jsonl                  written by collect-batches

Request row (``body`` is ``ExtractionRequest.body_json`` verbatim, so a batch
row sends the very bytes the real-time call would)::

    {"custom_id":"<YYYYmmddTHHMMSSZ>-<8 hex>-<seq>","method":"POST",
     "url":"/v1/chat/completions","body":{...}}

Sidecar row (same ``custom_id``; ``schema`` is a key of the manifest's
``schemas``; ``fields`` are the item's fields without the page, bytes tagged
by :func:`~.items.item_record`, other non-JSON values encoded by Scrapy's
``ScrapyJSONEncoder``)::

    {"custom_id":...,"url":...,"model":...,"schema":"<key>","prompt_tokens":n,"attempt":1,
     "item_class":"pkg.mod:Class","fields":{...}}

Crash safety: each row is one ``os.write`` of a whole line on an ``O_APPEND``
descriptor, sidecar row first, so a crawl killed at any instant leaves whole
lines plus at most one partial last line, and never a request without its
sidecar row; a write that fails (disk full, file-size limit) is rolled back
to the last whole line. Readers split on ``b"\\n"`` only (bodies may hold U+2028) and
ignore a last line without its newline. A run is *live* while its lock is
held; a run whose manifest is not closed and whose lock is free is *dead*:
:func:`claim_dead_runs` locks it and :meth:`Run.seal_leftovers` truncates its
partial lines and renames its ``.part`` files, after which its files are
ordinary pending files; a sidecar row whose request row was never written is
moved to the manifest's ``cut_rows`` and reported failed by collect-batches.
Only the lock holder writes the manifest.

Reader API (collect-batches): :func:`list_runs`, :func:`claim_dead_runs`,
:class:`Run` (``open``, ``try_lock``, ``unlock``, ``is_live``, ``manifest``,
``requests_path``, ``iter_requests``, ``iter_sidecar``, ``sidecar``,
``schema``, ``new_file`` to write a resubmission file, ``finish``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from scrapy.utils.serialize import ScrapyJSONEncoder

from .config import Config
from .extraction import ExtractionSchema, Prepared
from .manifest import MANIFEST_NAME, OPEN, PENDING, RESUBMITS, Manifest, fsync_dir, write_atomic

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
LOCK_NAME = "run.lock"
FAILURES_NAME = "failures.jsonl"
PART_SUFFIX = ".part"
MAX_CUSTOM_ID = 64

_sidecar_encoder = ScrapyJSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ascii_sidecar_encoder = ScrapyJSONEncoder(ensure_ascii=True, separators=(",", ":"))


def requests_name(number: int) -> str:
    return f"requests-{number:04d}.jsonl"


def sidecar_name(requests: str) -> str:
    """``requests-0001.jsonl`` -> ``items-0001.jsonl``."""
    return "items-" + requests.removeprefix("requests-")


def new_run_id(spider: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{spider}-{stamp}-{secrets.token_hex(4)}"


def request_line(custom_id: str, body_json: str) -> bytes:
    """One Batch API row embedding the real-time body verbatim."""
    return (
        f'{{"custom_id":{json.dumps(custom_id)},"method":"POST","url":"{ENDPOINT}",'
        f'"body":{body_json}}}\n'
    ).encode()


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The whole JSON lines of ``path``; a partial last line (crash) is ignored."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            if line.strip():
                yield json.loads(line)


class UnspoolableItem(ValueError):
    """An item field JSON cannot hold (an object of an unknown type, a bytes dict key...)."""


def encode_sidecar(sidecar: dict[str, Any]) -> bytes:
    """One sidecar line. Text holding lone surrogates (undecodable bytes read with
    ``surrogateescape``) is written with ASCII escapes, which JSON reads back as the
    same surrogates; bytes were tagged by :func:`~.items.item_record`."""
    try:
        text = _sidecar_encoder.encode(sidecar)
    except (TypeError, ValueError) as exc:
        raise UnspoolableItem(str(exc)) from exc
    try:
        return (text + "\n").encode()
    except UnicodeEncodeError:
        return (_ascii_sidecar_encoder.encode(sidecar) + "\n").encode()


def _lines_with_bytes(path: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Whole JSON lines of ``path`` with their bytes (for counting a file being recovered)."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n") and line.strip():
                yield line, json.loads(line)


def _write_all(fd: int, data: bytes) -> None:
    """Append ``data``; a regular file takes it in one write unless the disk is full."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _truncate_partial_line(path: Path) -> None:
    """Cut a crashed writer's partial last line so that appends and readers see whole lines."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        position = size
        while position > 0:
            step = min(65536, position)
            f.seek(position - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = position - step + newline + 1
                break
            position -= step
        else:
            end = 0
        if end != size:
            f.truncate(end)
            os.fsync(f.fileno())


class SpoolWriteError(OSError):
    """A row could not be written; the spool files were rolled back to whole lines."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(
            cause.errno,
            f"could not write to the spool file {path} ({cause.strerror or cause});"
            " the row was rolled back",
        )


class SpoolFile:
    """One requests file and its sidecar, open for appending until sealed."""

    def __init__(self, run: Run, name: str, entry: dict[str, Any]) -> None:
        self.run = run
        self.name = name
        self.entry = entry
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._requests_fd = os.open(run.path / (name + PART_SUFFIX), flags, 0o644)
        self._sidecar_fd = os.open(run.path / sidecar_name(name), flags, 0o644)

    @property
    def model(self) -> str:
        return str(self.entry["model"])

    def would_exceed(self, size: int, tokens: int, limits: tuple[int, int, int]) -> bool:
        """Whether one more row of ``size`` bytes and ``tokens`` passes a limit (never if empty)."""
        entry = self.entry
        if entry["rows"] == 0:
            return False
        max_rows, max_bytes, max_tokens = limits
        return (
            entry["rows"] + 1 > max_rows
            or entry["bytes"] + size > max_bytes
            or entry["prompt_tokens"] + tokens > max_tokens
        )

    def append(self, line: bytes, sidecar: dict[str, Any], prompt_tokens: int) -> None:
        """Write the sidecar row, then the request row: each one whole line in one write.

        A write that fails (disk full, file-size limit) may have written part of
        its line: both files are cut back to their size before this row, so the
        next row starts on a whole line, and :class:`SpoolWriteError` says so.
        """
        self.write_row(line, encode_sidecar(sidecar), prompt_tokens)

    def write_row(self, line: bytes, sidecar_line: bytes, prompt_tokens: int) -> None:
        """:meth:`append` with the sidecar row already encoded by :func:`encode_sidecar`."""
        sizes = [(fd, os.fstat(fd).st_size) for fd in (self._sidecar_fd, self._requests_fd)]
        try:
            _write_all(self._sidecar_fd, sidecar_line)
            _write_all(self._requests_fd, line)
        except OSError as exc:
            for fd, size in sizes:
                os.ftruncate(fd, size)  # shrinking needs no space; if it fails, let it say so
            raise SpoolWriteError(self.run.path / self.name, exc) from exc
        self.entry["rows"] += 1
        self.entry["bytes"] += len(line)
        self.entry["prompt_tokens"] += prompt_tokens

    def seal(self) -> None:
        """Make the file complete: flush to disk, rename ``.part`` away, mark it pending."""
        for fd in (self._sidecar_fd, self._requests_fd):
            os.fsync(fd)
            os.close(fd)
        os.replace(self.run.path / (self.name + PART_SUFFIX), self.run.path / self.name)
        fsync_dir(self.run.path)
        self.entry["status"] = PENDING
        self.run.manifest.save()


class Run:
    """One run folder: its manifest, its lock, its files."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._lock_fd: int | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, root: Path, *, project: str, spider: str) -> Run:
        """A new run folder, locked by this process, with its first manifest."""
        root.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = new_run_id(spider)
            try:
                (root / run_id).mkdir()
            except FileExistsError:
                continue
            break
        path = root / run_id
        run = cls(
            path, Manifest.new(path / MANIFEST_NAME, run_id=run_id, project=project, spider=spider)
        )
        if not run.try_lock():
            raise RuntimeError(f"Could not lock the new spool run {path}")
        # The manifest comes after the lock: a reader that sees a manifest and can take
        # the lock knows the run is dead, not being born.
        run.manifest.save()
        return run

    @classmethod
    def open(cls, path: Path) -> Run:
        return cls(path, Manifest.load(path / MANIFEST_NAME))

    def reload(self) -> None:
        self.manifest = Manifest.load(self.manifest.path)

    # Locking -----------------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the run's lock without waiting; False when another holder has it."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock_fd is not None

    def is_live(self) -> bool:
        """Whether another process (or object) holds the lock right now."""
        if self.locked:
            return False
        if self.try_lock():
            self.unlock()
            return False
        return True

    # Reading ---------------------------------------------------------------------------

    def requests_path(self, name: str) -> Path:
        """The complete file, or its ``.part`` while it is being written."""
        path = self.path / name
        return path if path.exists() else self.path / (name + PART_SUFFIX)

    def iter_requests(self, name: str) -> Iterator[dict[str, Any]]:
        return read_lines(self.requests_path(name))

    def iter_sidecar(self, name: str) -> Iterator[dict[str, Any]]:
        return read_lines(self.path / sidecar_name(name))

    def sidecar(self, name: str) -> dict[str, dict[str, Any]]:
        """Sidecar rows of a requests file by ``custom_id``."""
        return {row["custom_id"]: row for row in self.iter_sidecar(name)}

    def schema(self, key: str) -> dict[str, Any]:
        """``{"name", "schema"}`` for a sidecar row's ``schema`` key."""
        return self.manifest.schema(key)

    # Writing (lock holder only) ------------------------------------------------------------

    def new_file(self, model: str, attempt: int = 1, resubmits: str | None = None) -> SpoolFile:
        """Start the next requests file (also how collect-batches writes a resubmission of
        the file ``resubmits``, recorded before its first row)."""
        number = 1 + max(
            (int(name[len("requests-") : -len(".jsonl")]) for name in self.manifest.files),
            default=0,
        )
        name = requests_name(number)
        entry = self.manifest.add_file(name, model, attempt)
        if resubmits is not None:
            entry[RESUBMITS] = resubmits
        self.manifest.save()
        return SpoolFile(self, name, entry)

    def seal_leftovers(self) -> list[str]:
        """Complete what a dead writer left; return the names of the files (lock held).

        ``.part`` files are cut to their last whole line and renamed; a complete file
        the manifest still calls open, or does not list at all (killed between the
        rename and the manifest save), becomes pending. Either way it gets submitted.
        """
        sealed = []
        for part in sorted(self.path.glob("requests-*.jsonl" + PART_SUFFIX)):
            name = part.name.removesuffix(PART_SUFFIX)
            _truncate_partial_line(part)
            sidecar = self.path / sidecar_name(name)
            if sidecar.exists():
                _truncate_partial_line(sidecar)
                self._cut_unsent_rows(part, sidecar)
            if self._list_file(part, name, "sealed after the crawl died"):
                os.replace(part, self.path / name)
            else:
                part.unlink()
                sidecar.unlink(missing_ok=True)
            sealed.append(name)
        for path in sorted(self.path.glob("requests-*.jsonl")):
            entry = self.manifest.files.get(path.name)
            if entry is None or entry["status"] == OPEN:
                self._list_file(path, path.name, "sealed, then the writer died before saying so")
                sealed.append(path.name)
        for name, entry in list(self.manifest.files.items()):
            if entry["status"] == OPEN and not (self.path / name).exists():
                del self.manifest.files[name]  # opened, then killed before its first row
        fsync_dir(self.path)
        self.manifest.save()
        return [name for name in sealed if name in self.manifest.files]

    def _cut_unsent_rows(self, requests: Path, sidecar: Path) -> None:
        """Move sidecar rows without a request row (the writer was killed between a row's two
        writes) to the manifest's ``cut_rows``: the request is lost with the page, so
        collect-batches reports them failed rather than resubmitting what was never written.
        Saved to the manifest before the sidecar is rewritten: a second kill loses nothing."""
        sent = {row["custom_id"] for row in read_lines(requests)}
        kept: list[bytes] = []
        cut: list[dict[str, Any]] = []
        for line, row in _lines_with_bytes(sidecar):
            if row["custom_id"] in sent:
                kept.append(line)
            else:
                cut.append(row)
        if not cut:
            return
        known = {row["custom_id"] for row in self.manifest.cut_rows}
        self.manifest.cut_rows.extend(row for row in cut if row["custom_id"] not in known)
        self.manifest.save()
        write_atomic(sidecar, b"".join(kept))
        logger.warning(
            "Run %s: %d row(s) never spooled whole (%s): the crawl died while writing them;"
            " collect-batches reports them in %s. Crawl these pages again.",
            self.run_id,
            len(cut),
            ", ".join(str(row.get("url")) for row in cut),
            FAILURES_NAME,
        )

    def _list_file(self, path: Path, name: str, reason: str) -> bool:
        """Record the requests file at ``path`` as pending with its counts; False if empty."""
        sidecar = {row["custom_id"]: row for row in read_lines(self.path / sidecar_name(name))}
        rows = size = prompt_tokens = 0
        model = None
        attempt = 1
        for line_bytes, row in _lines_with_bytes(path):
            rows += 1
            size += len(line_bytes)
            record = sidecar.get(row["custom_id"]) or {}
            prompt_tokens += int(record.get("prompt_tokens") or 0)
            attempt = max(attempt, int(record.get("attempt") or 1))
            model = model or row["body"].get("model")
        if not rows:
            self.manifest.files.pop(name, None)
            return False
        entry = self.manifest.files.get(name) or self.manifest.add_file(name, str(model), attempt)
        entry.update(rows=rows, bytes=size, prompt_tokens=prompt_tokens, status=PENDING)
        entry["reason"] = reason
        return True

    def finish(self, reason: str | None) -> None:
        """Mark the run closed and release its lock: it now belongs to collect-batches."""
        self.manifest.close(reason)
        self.manifest.save()
        self.unlock()


def list_runs(root: Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Run]:
    """Every run under ``root`` with a manifest, oldest first (no lock taken).

    A run whose manifest cannot be read is skipped, with a warning, or added to
    ``unreadable`` (folder, reason) for a caller that reports it its own way."""
    runs: list[Run] = []
    if not root.is_dir():
        return runs
    for path in sorted(root.iterdir(), key=lambda p: p.name.rsplit("-", 2)[-2:]):
        if not (path / MANIFEST_NAME).is_file():
            continue  # being created, or not a run
        try:
            runs.append(Run.open(path))
        except (OSError, ValueError) as exc:
            if unreadable is None:
                logger.warning("Skipping spool run %s: unreadable manifest (%s)", path, exc)
            else:
                unreadable.append((path, str(exc)))
    return runs


def claim_dead_runs(
    root: Path, *, project: str | None = None, spider: str | None = None
) -> Iterator[Run]:
    """Lock, seal and yield each dead run (not closed, lock free); the caller must finish() it.

    Two processes recovering the same root never get the same run: the lock
    decides, and the manifest is re-read once it is held.
    """
    for run in list_runs(root):
        manifest = run.manifest.data
        if run.manifest.closed:
            continue
        if (project is not None and manifest.get("project") != project) or (
            spider is not None and manifest.get("spider") != spider
        ):
            continue
        if not run.try_lock():
            continue  # live
        try:
            run.reload()
            if run.manifest.closed:
                run.unlock()
                continue
            sealed = run.seal_leftovers()
        except BaseException:
            run.unlock()
            raise
        logger.info(
            "Recovered spool run %s left by a dead crawl (sealed %d file(s)).",
            run.path,
            len(sealed),
        )
        yield run


class Spool:
    """The crawl's writer: spooled items go to the current file of this crawl's run.

    One per crawler (:meth:`for_crawler`), shared by the pipeline, which adds
    rows, and :class:`~.extension.BatchSubmitExtension`, which submits sealed
    files and closes the run. The run folder is created with the first row.
    """

    _instances: ClassVar[weakref.WeakKeyDictionary[Crawler, Spool]] = weakref.WeakKeyDictionary()

    def __init__(
        self,
        config: Config,
        *,
        spider: str | Callable[[], str],
        stats: StatsCollector | None = None,
    ):
        self.config = config
        self._spider = spider
        self.stats = stats
        self.run: Run | None = None
        self.current: SpoolFile | None = None
        self.tokens_by_model: Counter[str] = Counter()
        self.rows = 0
        max_rows = config.batch_max_requests
        self.publisher = None
        if config.spool_store:  # s3:// spool: this is the staging folder, published when sealed
            from .publish import Publisher, open_store

            self.publisher = Publisher(open_store(config), stats)
            max_rows = min(max_rows, config.spool_publish_rows)
        self._limits = (max_rows, config.batch_max_bytes, config.batch_max_tokens)
        self._schemas: dict[int, tuple[ExtractionSchema, str]] = {}
        self._sealed_callbacks: list[Callable[[Run, str], None]] = []
        self._held = False
        self._seq = 0

    @classmethod
    def for_crawler(cls, crawler: Crawler, config: Config) -> Spool:
        """The crawler's spool, created on first call."""
        spool = cls._instances.get(crawler)
        if spool is None:

            def spider_name() -> str:
                # Extensions are built before the spider, so ask when the run is created.
                spider = crawler.spider or crawler.spidercls
                return str(getattr(spider, "name", None) or "spider")

            spool = cls(config, spider=spider_name, stats=crawler.stats)
            cls._instances[crawler] = spool
        return spool

    @property
    def spider(self) -> str:
        return self._spider if isinstance(self._spider, str) else self._spider()

    def hold(self) -> None:
        """Keep the run open after :meth:`close`: its holder calls :meth:`finish` later."""
        self._held = True

    def on_sealed(self, callback: Callable[[Run, str], None]) -> None:
        """Call ``callback(run, name)`` whenever a requests file becomes complete."""
        self._sealed_callbacks.append(callback)

    def add(self, prepared: Prepared, record: dict[str, Any]) -> str:
        """Spool one request with its item record; return its ``custom_id``.

        Raises :class:`UnspoolableItem` (nothing written) or :class:`OSError`
        (the files are left on whole lines): the caller decides what the item becomes.
        """
        request = prepared.request
        run = self._run()
        self._seq += 1
        custom_id = f"{run.run_id.rsplit('-', 2)[-2]}-{run.run_id[-8:]}-{self._seq}"
        assert len(custom_id) <= MAX_CUSTOM_ID
        line = request_line(custom_id, request.body_json)
        sidecar = encode_sidecar(
            {
                "custom_id": custom_id,
                "url": prepared.url,
                "model": request.model,
                "schema": self._schema_key(run, prepared.schema),
                "prompt_tokens": request.prompt_tokens,
                "attempt": 1,
                **record,
            }
        )  # before any file is touched: an item that cannot be spooled leaves no trace
        current = self.current
        if current is not None and (
            current.model != request.model
            or current.would_exceed(len(line), request.prompt_tokens, self._limits)
        ):
            self._seal()
            current = None
        if current is None:
            current = self.current = run.new_file(request.model)
        current.write_row(line, sidecar, request.prompt_tokens)
        self.rows += 1
        self.tokens_by_model[request.model] += request.prompt_tokens
        if self.stats is not None:
            self.stats.inc_value("llm_extract/batch/rows")
            self.stats.inc_value("llm_extract/batch/prompt_tokens", request.prompt_tokens)
        return custom_id

    def _run(self) -> Run:
        if self.run is None:
            self.run = Run.create(
                self.config.spool_dir, project=self.config.project, spider=self.spider
            )
            logger.info("Spooling batch requests to %s", self.run.path)
        return self.run

    def _schema_key(self, run: Run, schema: ExtractionSchema) -> str:
        # Preparer keeps one ExtractionSchema per item class, so identity is a cheap cache key.
        cached = self._schemas.get(id(schema))
        if cached is not None:
            return cached[1]
        key, new = run.manifest.add_schema(schema.name, schema.schema)
        if new:
            run.manifest.save()  # before any row refers to it
        self._schemas[id(schema)] = (schema, key)
        return key

    def _seal(self) -> None:
        current, self.current = self.current, None
        if current is None:
            return
        current.seal()
        if self.stats is not None:
            self.stats.inc_value("llm_extract/batch/files")
        for callback in self._sealed_callbacks:
            callback(current.run, current.name)
        if self.publisher is not None:
            self.publisher.publish(current.run)

    def close(self) -> None:
        """Seal the last file; finish the run too unless someone holds it."""
        self._seal()
        if not self._held:
            if self.run is not None and self.run.locked:
                logger.info(
                    "%d row(s) spooled to %s and left pending: enable BatchSubmitExtension to"
                    " submit them on close, or run scrapy collect-batches.",
                    self.rows,
                    self.run.path,
                )
            self.finish(None)

    def finish(self, reason: str | None) -> None:
        """Close the run (idempotent): it is no longer live."""
        self._seal()
        if self.run is not None and self.run.locked:
            self.run.finish(reason)
        if self.publisher is not None:
            self.publisher.publish_closed(self.config.spool_dir)
