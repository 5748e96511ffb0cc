"""Worker processes for the CPU-heavy step: slimming pages and counting their tokens.

A page costs a couple of milliseconds of pure Python to slim and count. On the
crawl's own thread that is a large share of a fast crawl, since the reactor
cannot download meanwhile; threads would not help, as the work holds the GIL.
Worker processes take it off the crawl and build the very bytes the crawl's
thread would (tested).

The workers are plain ``python -m scrapy_llm_extract.workers`` children fed
over their stdin and stdout, not :mod:`multiprocessing` ones: those import the
parent's ``__main__`` again, which re-runs any crawl script written without an
``if __name__ == "__main__"`` guard, as Scrapy's own examples are. A worker
that dies (the OOM killer, say) is replaced by inline work, counted and
logged, so no item is lost.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import pickle
import struct
import sys
import traceback
from pathlib import Path
from typing import IO, Any

from .config import Config
from .extraction import ExtractionSchema, build_request
from .prompt import ExtractionRequest, RequestBuilder

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")  # payload length of each pickled frame
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class WorkerDied(RuntimeError):
    """A worker process ended or stopped answering mid-task."""


class _Worker:
    """One child process; tasks are queued to it at once and answered in order."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()  # answered once the worker has its builder
        self.pending.append(self.ready)
        self._reader = loop.create_task(self._read_answers())

    @classmethod
    async def spawn(cls, config: Config) -> _Worker:
        env = dict(os.environ)
        # The package is importable where it is imported now, even from a source checkout.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = cls(process)
        # Workers need the request settings only: no router callable, no API key.
        await worker._send(dataclasses.replace(config, router=None, api_key=None))
        return worker

    async def call(self, task: tuple[Any, ...]) -> ExtractionRequest:
        answer = asyncio.get_running_loop().create_future()
        self.pending.append(answer)
        await self._send(task)
        return await answer  # type: ignore[no-any-return]

    async def _send(self, message: Any) -> None:
        assert self.process.stdin is not None
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.process.stdin.write(_HEADER.pack(len(payload)) + payload)
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerDied(f"exit code {await self.process.wait()}") from exc

    async def _read_answers(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                (size,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                ok, value = pickle.loads(await stdout.readexactly(size))
                answer = self.pending.popleft()
                if ok:
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        except asyncio.IncompleteReadError:
            died = WorkerDied(f"exit code {await self.process.wait()}")
            while self.pending:
                self.pending.popleft().set_exception(died)

    async def stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the worker exits at end of input
            try:
                await asyncio.wait_for(self.process.wait(), timeout=5)
            except TimeoutError:
                self.process.kill()
        await self._reader


class PrepareWorkers:
    """``config.prepare_workers`` processes shared by one crawler.

    They start in the background (an interpreter and its imports take a moment);
    until they are up, pages are prepared on the calling thread, so no item waits.
    """

    def __init__(self, config: Config, stats: Any) -> None:
        self.config = config
        self.stats = stats
        self.broken = False
        self._spawned: list[_Worker] = []
        self._ready: list[_Worker] = []
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start the processes once; await the task to wait until they are up."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        return self._starting

    async def _start(self) -> None:
        try:
            for _ in range(self.config.prepare_workers):
                self._spawned.append(await _Worker.spawn(self.config))
            for worker in self._spawned:
                await worker.ready
        except (WorkerDied, OSError) as exc:
            self._break(exc)
            return
        self._ready = list(self._spawned)

    async def build(
        self,
        builder: RequestBuilder,
        source: str | bytes,
        url: str | None,
        schema: ExtractionSchema,
    ) -> ExtractionRequest:
        """build_request() in a worker, or with ``builder`` here while none is up (or none
        is configured)."""
        self.start()
        if self._ready and not self.broken:
            worker = min(self._ready, key=lambda w: len(w.pending))
            try:
                request = await worker.call((source, url, schema))
            except (WorkerDied, OSError) as exc:
                self._break(exc)
            else:
                self.stats.inc_value("llm_extract/prepare/in_workers")
                return request
        return build_request(builder, source, url, schema)

    def _break(self, exc: BaseException) -> None:
        if self.broken:
            return
        self.broken = True
        self.stats.inc_value("llm_extract/prepare/workers_broken")
        logger.error(
            "A page-preparation worker process failed (%s); preparing pages on the crawl's"
            " thread from now on. Check the machine's memory, or set"
            " LLM_EXTRACT_PREPARE_WORKERS = 0.",
            exc,
        )

    async def close(self) -> None:
        if self._starting is not None:
            await self._starting  # a start is short; its processes are then stopped below
        workers, self._spawned, self._ready = self._spawned, [], []
        await asyncio.gather(*(worker.stop() for worker in workers))


def serve(reader: IO[bytes], writer: IO[bytes]) -> None:
    """The worker's loop: a Config frame, then tasks answered in order until end of input."""

    def read() -> Any:
        header = reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise EOFError
        (size,) = _HEADER.unpack(header)
        return pickle.loads(reader.read(size))

    def write(message: tuple[bool, Any]) -> None:
        try:
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an exception that does not pickle still reaches the crawl
            payload = pickle.dumps((False, RuntimeError(traceback.format_exc())))
        writer.write(_HEADER.pack(len(payload)) + payload)
        writer.flush()

    try:
        builder = RequestBuilder(read())
        write((True, None))  # ready
        while True:
            source, url, schema = read()
            try:
                write((True, build_request(builder, source, url, schema)))
            except Exception as exc:
                write((False, exc))
    except EOFError:
        return


if __name__ == "__main__":
    # Frames go over the original stdout; stray prints go to stderr instead.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, channel)
