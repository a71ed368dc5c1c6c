"""Slow clients for the servers' tests: sockets that send a request's start, then trickle or fall silent."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["assert_408_and_closed", "trickling"]


@contextmanager
def trickling(
    port: int, head: bytes, *, count: int, byte: bytes = b" ", every_s: float = 0.2
) -> Iterator[list[socket.socket]]:
    """``count`` connections to 127.0.0.1:``port`` that send ``head``, then ``byte`` every ``every_s`` seconds
    (nothing at all when ``head`` is empty) until the block ends; closed after it."""
    slow = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(head)
        slow.append(client)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for client in slow:
                with contextlib.suppress(OSError):  # closed by the server: what the tests wait for
                    client.send(byte if head else b"")
            time.sleep(every_s)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield slow
    finally:
        stop.set()
        thread.join()
        for client in slow:
            client.close()


def assert_408_and_closed(slow: list[socket.socket]) -> None:
    """Each connection was answered 408 and closed: its rest reads to the end (a timeout is one left open).

    Stops the sending first (shutdown of our side): a byte sent after the server closed draws a reset, and a
    reset can discard the 408 before it is read.
    """
    for client in slow:
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
    time.sleep(0.3)  # the trickling thread's last send, if one was under way, is answered by then
    for client in slow:
        client.settimeout(5)
        first = client.recv(200)
        assert first.startswith(b"HTTP/1.1 408"), first
        with contextlib.suppress(ConnectionResetError):
            while client.recv(4096):
                pass
