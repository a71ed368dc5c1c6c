"""A TCP proxy a test can cut: every connection through it dropped, new ones refused, until resumed."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttableProxy"]


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``, one pair of pump threads per connection.

    :meth:`cut` closes every open connection both ways (what a restarted database or a reset
    network looks like to its clients) and, until :meth:`resume`, accepts new ones only to close
    them at once: a client connecting gets an immediate error, as from a database that is down.
    With ``stall=True`` a new connection is instead held open and never answered: a partition
    that drops packets, where only the client's own timeout ends the attempt.
    """

    def __init__(self, upstream: tuple[str, int], *, stall: bool = False) -> None:
        self.upstream = upstream
        self.stall = stall
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0  # connections closed at once while cut
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            _drop(sock)

    def resume(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        _drop(self._listener)
        self._acceptor.join(5)

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if self._cut.is_set():
                self.refused += 1
                if self.stall:
                    with self._lock:
                        self._open.add(client)  # silent until resume() and the next cut(), or close()
                else:
                    _drop(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _drop(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass  # cut, or the other side went away
        finally:
            with self._lock:
                self._open -= {source, sink}
            _drop(source)
            _drop(sink)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
