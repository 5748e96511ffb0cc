"""In-process adapter: the emulator as an ``httpx2`` transport for the SDK's ``http_client``.

``openai.OpenAI(http_client=httpx2.Client(transport=emulator_transport(dir)))``
(or ``AsyncOpenAI`` with ``httpx2.AsyncClient``) sends real SDK requests to
the emulator without a socket. The transport honours the client's read
timeout: a hanging request, or latency longer than the timeout, raises
``httpx2.ReadTimeout`` once the timeout has passed, as a network would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import parse_qsl

import httpx2

from .config import EmulatorConfig
from .handler import Emulator, EmulatorRequest, EmulatorResponse


def _to_emulator(request: httpx2.Request) -> EmulatorRequest:
    return EmulatorRequest(
        method=request.method,
        path=request.url.path,
        query=dict(
            parse_qsl(
                request.url.query.decode()
                if isinstance(request.url.query, bytes)
                else str(request.url.query)
            )
        ),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.content,
    )


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class EmulatorTransport(httpx2.MockTransport):
    """A :class:`httpx2.MockTransport` answering from an :class:`Emulator`."""

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(self._answer)
        self.emulator = emulator

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        return self._response(self.emulator.handle(_to_emulator(request)))

    @staticmethod
    def _response(response: EmulatorResponse, asynchronous: bool = False) -> httpx2.Response:
        body = response.body
        if isinstance(body, bytes):
            return httpx2.Response(response.status, headers=response.headers, content=body)
        return httpx2.Response(
            response.status,
            headers=response.headers,
            content=_aiter(body) if asynchronous else body,
        )

    def _wait(self, request: httpx2.Request, response: EmulatorResponse) -> float:
        """How long to wait before answering or timing out."""
        timeout = (request.extensions.get("timeout") or {}).get("read")
        wanted = self.emulator.config.hang_seconds if response.hang else response.delay
        return wanted if timeout is None else min(wanted, float(timeout))

    @staticmethod
    def _timed_out(response: EmulatorResponse, waited: float) -> bool:
        return response.hang or waited < response.delay

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        response = self.emulator.handle(_to_emulator(request))
        waited = self._wait(request, response)
        if waited > 0:
            time.sleep(waited)
        if self._timed_out(response, waited):
            raise httpx2.ReadTimeout("Emulated read timeout", request=request)
        return self._response(response)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        response = self.emulator.handle(_to_emulator(request))
        waited = self._wait(request, response)
        if waited > 0:
            await asyncio.sleep(waited)
        if self._timed_out(response, waited):
            raise httpx2.ReadTimeout("Emulated read timeout", request=request)
        return self._response(response, asynchronous=True)


def emulator_transport(
    state_dir: str | os.PathLike[str],
    config: EmulatorConfig | str | os.PathLike[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> EmulatorTransport:
    """A transport serving the emulator on ``state_dir`` (config: see :class:`Emulator`)."""
    return EmulatorTransport(Emulator(state_dir, config, clock))
