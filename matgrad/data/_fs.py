"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import BinaryIO, Iterator

__all__ = ["TEMP_SUFFIX", "atomic_write", "new_temp", "remove_quietly", "remove_stale_temps"]

TEMP_SUFFIX = ".part"


def new_temp(directory: str, name: str) -> tuple[str, BinaryIO]:
    """A fresh ``.NAME.<random>.part`` in ``directory``, opened for binary writing.

    Created with ``O_EXCL`` and mode 0o666 (so the umask applies, unlike ``mkstemp``'s 0o600):
    the file renamed into place gets the permissions a plain ``open`` would have given it.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(directory, f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")


def remove_quietly(path: str) -> None:
    """Delete ``path`` if it exists; never raises."""
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Write to a temporary file next to ``path``; rename it over ``path`` only on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was: a reader never sees a partial file.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp, f = new_temp(directory, name)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_stale_temps(directory: str, prefix: str, older_than: float) -> list[str]:
    """Delete ``.PREFIX*.part`` files in ``directory`` untouched for ``older_than`` seconds.

    What a killed process (SIGKILL, power loss) leaves behind. Recent ones are kept: another
    process may be writing them right now.
    """
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if entry.startswith(f".{prefix}") and entry.endswith(TEMP_SUFFIX):
            path = os.path.join(directory, entry)
            try:
                if now - os.stat(path).st_mtime >= older_than:
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                pass
    return removed
