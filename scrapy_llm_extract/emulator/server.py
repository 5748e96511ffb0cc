"""Loopback adapter: the emulator behind the stdlib ``ThreadingHTTPServer``.

Binds 127.0.0.1 only. :class:`EmulatorServer` runs it in a thread for tests
(``with EmulatorServer(state_dir) as server: server.base_url``); ``python -m
scrapy_llm_extract.emulator`` runs it as a process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .config import EmulatorConfig
from .handler import Emulator, EmulatorRequest

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Keep-alive connections of clients still open must not block shutdown.
    block_on_close = False

    def __init__(self, port: int, emulator: Emulator) -> None:
        self.emulator = emulator
        #: Set on shutdown: releases hanging and delayed requests.
        self.stopping = threading.Event()
        super().__init__((HOST, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK, adding ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _serve(self) -> None:
        url = urlsplit(self.path)
        request = EmulatorRequest(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body(),
        )
        response = self.server.emulator.handle(request)
        if response.hang:
            self.server.stopping.wait(self.server.emulator.config.hang_seconds)
            self.close_connection = True
            return
        if response.delay > 0 and self.server.stopping.wait(response.delay):
            self.close_connection = True
            return
        self.send_response(response.status)
        body = response.body
        headers = dict(response.headers)
        if isinstance(body, bytes):
            headers["content-length"] = str(len(body))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if isinstance(body, bytes):
            self.wfile.write(body)
        else:
            for chunk in body:
                self.wfile.write(chunk)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class EmulatorServer:
    """The loopback server in a background thread; ``port=0`` picks a free port."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        config: EmulatorConfig | str | os.PathLike[str] | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.emulator = Emulator(state_dir, config, clock)
        self._server = _Server(port, self.emulator)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url``, e.g. ``http://127.0.0.1:8765/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[bytes]:
        return self.emulator.requests

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="llm-extract-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
