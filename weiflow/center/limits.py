"""What one client may cost the center: body size and time, batch size, concurrent ingestion, pool waits.

Every bound has a default that fits the runtime's own traffic with room to spare (its spool posts
500 events of about 1 KiB each) and a ``WEIFLOW_CENTER_*`` variable; ``weiflow center serve``
sets those from its flags so every worker process gets the same numbers.

:class:`BodyLimits` is a plain ASGI middleware, ahead of routing and of any database work: a
declared ``Content-Length`` over the bound is answered 413 before a byte is read, a body that
grows past it is cut off with 413, and a body that has not fully arrived ``timeout_s`` after the
request began gets 408. A client trickling a body byte by byte therefore holds one socket and one
coroutine for at most ``timeout_s``, and never a database connection or a worker thread. It also
puts security headers on every API answer.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weiflow.center.eventschema import EventLimits

__all__ = ["API_CSP", "BodyLimits", "Limits"]

# API answers are data, never pages: nothing may run, load or frame them.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# The docs page runs Swagger UI from this server (fastapi-offline's assets) with one inline start-up script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = 10.0  # the whole body must arrive within this, from the request's start
    max_events: int = 1000  # per request; the runtime's spool sends 500
    ingest_concurrency: int = 2  # batches applied at once per worker process
    ingest_wait_s: float = 20.0  # a batch waits this long for its turn, then gets 503
    # Per worker process: at most pool_size + max_overflow connections; a PostgreSQL server
    # needs that many times the number of workers (default 4 x 16) plus what else connects.
    pool_size: int = 8
    max_overflow: int = 8
    pool_timeout_s: float = 5.0  # waiting longer for a pooled connection answers 503
    api_docs: bool = True  # /api/docs, served with its assets from this server
    events: EventLimits = field(default_factory=EventLimits)

    def pool_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`weiflow.center.db.make_engine` (SQLite file databases pool too)."""
        return {"pool_size": self.pool_size, "max_overflow": self.max_overflow, "pool_timeout": self.pool_timeout_s}

    def to_env(self) -> dict[str, str]:
        """``WEIFLOW_CENTER_*`` variables that :meth:`from_env` reads back: how serve hands workers its flags."""
        return {_env_name(name): json.dumps(value) for name, value in _flat(self).items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        values = {name: json.loads(env[_env_name(name)]) for name in _flat(cls()) if _env_name(name) in env}
        events = EventLimits(**{k: v for k, v in values.items() if k in _names(EventLimits)})
        return cls(**{k: v for k, v in values.items() if k in _names(cls) and k != "events"}, events=events)


def _names(cls: Any) -> set[str]:
    return {f.name for f in fields(cls)}


def _flat(limits: Limits) -> dict[str, Any]:
    own = {f.name: getattr(limits, f.name) for f in fields(limits) if f.name != "events"}
    return {**own, **{f.name: getattr(limits.events, f.name) for f in fields(limits.events)}}


def _env_name(name: str) -> str:
    return "WEIFLOW_CENTER_" + name.upper()


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class BodyLimits:
    """Bound each request body's size and arrival time; put security headers on API answers."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _answer(send, 413, f"request body over {self.max_bytes} bytes")
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        body_done = False
        started = False
        path = str(scope.get("path", ""))
        csp = DOCS_CSP if path.endswith("/api/docs") else API_CSP

        async def bounded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: only a disconnect to wait for, however long
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
                body_done = not message.get("more_body", False)
            return message

        async def headed_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if "/api/" in path:
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    for name, value in _api_headers(csp):
                        if name not in present:
                            headers.append((name, value))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, bounded_receive, headed_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, f"request body over {self.max_bytes} bytes")
        except _TooSlow:
            if not started:
                await _answer(send, 408, f"request body not received within {self.timeout_s:g} s")


def _api_headers(csp: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-store"),
    ]


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The rest of the body is not read: the connection closes after this answer.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers + _api_headers(API_CSP)})
    await send({"type": "http.response.body", "body": body})
