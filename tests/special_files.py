"""Paths that are not regular files (a FIFO, a device, a socket, ...), and a way to call a reader
on them that fails instead of hanging when the reader blocks (opening a FIFO for reading waits
for a writer: forever)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

KINDS = ["missing", "directory", "fifo", "device-link", "socket", "broken-link"]

posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, Unix sockets and /dev/null are POSIX")


def special_file(tmp_path: Path, kind: str, name: str = "thing") -> tuple[Path, str]:
    """A path of ``kind`` that is not a regular file, and the reason an error must give."""
    path = tmp_path / f"{kind}-{name}"
    if kind == "missing":
        return path, "no such file"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a FIFO"
    if kind == "device-link":
        path.symlink_to(os.devnull)
        return path, "is a symbolic link to a character device"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
        return path, "is a socket"
    assert kind == "broken-link"
    path.symlink_to(tmp_path / "gone")
    return path, "is a broken symbolic link"


def call_with_deadline(fn: Callable[[], Any], fifo: Path | None = None) -> BaseException | None:
    """``fn()`` in a thread: the exception it raised (None if none). Fails, never hangs, if it blocks."""
    box: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            box.append(exc)
        else:
            box.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        if fifo is not None:  # a writer releases the blocked open(), so the thread can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{fn} blocked for 20 s")
    return box[0]
