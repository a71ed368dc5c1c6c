"""uvicorn's HTTP protocol with a deadline on each request's head: the defence against slowloris it lacks.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but nothing else: that timer is
cancelled by the first byte a client sends, and no timer runs while a request line and headers arrive
(uvicorn issue #157 asks for ``--timeout-request-start``; it was never added). A client that connects and
sends nothing, or trickles its headers a byte a second, holds a connection for ever; a few hundred of them
use up ``limit_concurrency`` and every later client gets 503. An ASGI middleware cannot help: the app is
called only once the head is complete.

:class:`HeadTimeoutProtocol` is uvicorn's own protocol (httptools where installed, as uvicorn's "auto"
picks, else h11) plus one timer: armed when a connection opens and when the first byte of a further
request arrives, disarmed once the head is parsed. A head not complete within
``WEIFLOW_HTTP_HEAD_TIMEOUT_S`` seconds (default 10) is answered 408 and the connection closed. The body is
the app's to bound (each server bounds the time its body may take). Both servers name it by its import
string (:data:`weiflow.processes.HTTP_PROTOCOL`), which uvicorn resolves in each worker process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
except ImportError:  # pragma: no cover - httptools is installed with uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol  # type: ignore[assignment]

__all__ = ["HEAD_TIMEOUT_ENV", "HeadTimeoutProtocol", "head_timeout_s"]

HEAD_TIMEOUT_ENV = "WEIFLOW_HTTP_HEAD_TIMEOUT_S"
DEFAULT_HEAD_TIMEOUT_S = 10.0

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 37\r\nconnection: close\r\n\r\nrequest headers not received in time\n"
)


def head_timeout_s() -> float:
    """The deadline from the environment: how ``weiflow center serve`` and ``weiflow serve`` hand it to workers."""
    value = os.environ.get(HEAD_TIMEOUT_ENV)
    return float(value) if value else DEFAULT_HEAD_TIMEOUT_S


class HeadTimeoutProtocol(_Protocol):
    """uvicorn's HTTP/1.1 protocol; a request head not complete within :func:`head_timeout_s` gets 408."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is held no longer than one that trickles

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._between_requests():
            self._arm()  # the first byte of a further request on a kept-alive connection
        super().data_received(data)
        if self._head_timer is not None and not self._between_requests():
            self._head_timer.cancel()  # the head is parsed: the app (and its body deadline) takes over
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._between_requests():
            return
        self.transport.write(_TIMED_OUT)
        self.transport.close()
