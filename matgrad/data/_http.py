"""HTTP(S) GET whose *whole* transfer is bounded, not only each wait.

``urlopen(timeout=t)`` bounds each socket operation: a server that sends one byte every
``t - 0.1`` seconds keeps a download going for months, and one that drips its status line or its
TLS handshake does the same before any body arrives. ``open_bounded`` adds a watchdog thread
that allows ``grace + N / min_rate`` seconds for the first ``N`` body bytes; past that it shuts
the connection's socket down, which wakes the blocked read at once, and ``Transfer.failure``
says why. Standard library only; imported only when downloading.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.request
from typing import Any, Iterator

__all__ = ["Transfer", "open_bounded"]


class Transfer:
    """The watchdog of one download: count ``received`` bytes; ``failure`` is set when it fired."""

    def __init__(self, grace: float, min_rate: float) -> None:
        self.grace = grace
        self.min_rate = min_rate
        self.received = 0
        self.failure: str | None = None
        self._start = time.monotonic()
        self._sockets: list[tuple[socket.socket, int, Any, Any]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="matgrad-download-watchdog", daemon=True)
        self._thread.start()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def allowed(self) -> float:
        """Seconds the transfer may have taken so far, given the bytes received."""
        return self.grace + self.received / self.min_rate

    def add(self, sock: socket.socket) -> None:
        """Watch a freshly connected TCP socket (before any TLS handshake)."""
        try:
            entry = (sock, sock.fileno(), sock.getsockname(), sock.getpeername())
        except OSError:
            return
        with self._lock:
            self._sockets.append(entry)
            fired = self.failure is not None
        if fired:
            self._shut(entry)

    def stop(self) -> None:
        """Stop watching (call before the connection is closed, so no descriptor is reused)."""
        with self._lock:
            self._done.set()
            self._sockets.clear()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        poll = min(max(self.grace / 20, 0.01), 0.5)
        while not self._done.wait(poll):
            elapsed = self.elapsed()
            if elapsed <= self.allowed():
                continue
            with self._lock:
                if self._done.is_set():
                    return
                self.failure = (
                    f"too slow: {self.received} bytes in {elapsed:.1f} s, past the transfer's deadline (a download "
                    f"must average {self.min_rate:,.0f} bytes/s after its first {self.grace:g} s; "
                    "matgrad.data.mnist.MIN_RATE sets the rate)"
                )
                entries = list(self._sockets)
            for entry in entries:
                self._shut(entry)
            return

    @staticmethod
    def _shut(entry: tuple[socket.socket, int, Any, Any]) -> None:
        """Shut the connection down for reading and writing: a blocked recv returns at once."""
        sock, fd, local, peer = entry
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # the plain socket, if TLS has not taken it over
        if os.name != "posix":
            return
        # TLS detaches the descriptor from ``sock``: reach it through a duplicate, after checking
        # that it is still this connection (a closed descriptor's number can be reused)
        with contextlib.suppress(OSError, ValueError):
            dup = socket.socket(fileno=os.dup(fd))
            with dup:
                if dup.getsockname() == local and dup.getpeername() == peer:
                    dup.shutdown(socket.SHUT_RDWR)


def _handlers(transfer: Transfer) -> list[Any]:
    """urllib handlers whose connections register their socket with ``transfer``."""

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.create_connection(*args, **kwargs)
        transfer.add(sock)
        return sock

    class Connection(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = create_connection

    class Handler(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(Connection, req, **kwargs)

    handlers: list[Any] = [Handler]
    if hasattr(http.client, "HTTPSConnection"):  # Python built with ssl

        class SecureConnection(http.client.HTTPSConnection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._create_connection = create_connection

        class SecureHandler(urllib.request.HTTPSHandler):
            def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
                return super().do_open(SecureConnection, req, **kwargs)

        handlers.append(SecureHandler)
    return handlers


@contextlib.contextmanager
def open_bounded(url: str, timeout: float, transfer: Transfer) -> Iterator[Any]:
    """The response to GET ``url``: each wait is bounded by ``timeout``, the whole transfer by
    ``transfer`` (add the body bytes read to ``transfer.received``; when an error comes, a set
    ``transfer.failure`` is its real cause). The watchdog stops before the connection closes."""
    try:
        opener = urllib.request.build_opener(*_handlers(transfer))
        request = urllib.request.Request(url, headers={"User-Agent": "matgrad (python urllib)"})
        with opener.open(request, timeout=timeout) as response:
            try:
                yield response
            finally:
                transfer.stop()
    finally:
        transfer.stop()
