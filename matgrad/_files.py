"""Files, safely: read only regular files, write atomically, clean up after killed writers.

- ``open_regular`` refuses a directory, FIFO, device or socket *before* opening it (opening a
  FIFO for reading blocks until a writer comes, which may be never), names the true reason, and
  opens with ``O_NONBLOCK`` so that a file swapped for a FIFO in between cannot hang it either.
- ``atomic_write`` checks the target first (not a directory, folder exists, not read-only),
  writes a temporary file beside it, syncs it and renames it over the target. The target keeps
  its permission bits; a new file gets the umask default, as ``open()`` would give it. Every
  error names the user's path, never the temporary file's.
- Temporary files are named ``.NAME.PID-HOST.RANDOM.part``. Before each write to ``NAME``, the
  ones left by a process of this host that no longer runs (SIGKILL, power loss) are deleted, and
  any untouched for ``STALE_AFTER`` seconds.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from io import BufferedReader
from typing import BinaryIO, Callable, Iterator

from matgrad._errors import ArgumentError

__all__ = [
    "STALE_AFTER",
    "TEMP_SUFFIX",
    "atomic_write",
    "check_output",
    "new_temp",
    "open_regular",
    "remove_quietly",
    "remove_stale_temps",
    "why_not_regular",
]

TEMP_SUFFIX = ".part"
STALE_AFTER = 600.0
"""Seconds after which any temporary file of ours is deleted, whoever made it."""

_NAME_BYTES = 180  # room for ".PID-HOST.RANDOM.part" within the usual 255-byte file name limit
_OURS = re.compile(r"(\d+)-([A-Za-z0-9]*)\.[0-9a-f]{8}")
# what earlier versions named their temporary files (no pid): removed by age only
_LEGACY = re.compile(r"[0-9a-f]{8}\.part|[0-9a-f]{16}\.tmp|[a-z0-9_]{8}\.tmp")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def why_not_regular(path: str) -> str | None:
    """Why ``path`` is not an existing regular file (following symlinks), or None if it is one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of its path is not a folder)"
    except PermissionError:
        return "cannot be read: permission denied on a folder of its path"
    except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG; ValueError: an embedded NUL
        return f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = _kind(st.st_mode)
    if os.path.islink(path):
        return f"is a symbolic link to {kind} ({os.path.realpath(path)}), not a regular file"
    return f"is {kind}, not a regular file" if kind != "not a regular file" else "is not a regular file"


def open_regular(path: str, error: Callable[[str], Exception]) -> BufferedReader:
    """``path`` opened for binary reading; ``error("PATH: reason")`` is raised if it is not a
    regular file (checked before opening, so a FIFO is never opened) or cannot be opened."""
    why = why_not_regular(path)
    if why is not None:
        raise error(f"{path}: {why}")
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0) | nonblock)
    except OSError as exc:
        raise error(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the check and the open
            raise error(f"{path}: is {_kind(mode)}, not a regular file")
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# -- writing --------------------------------------------------------------------------------------


def _host() -> str:
    import socket  # here: ``import matgrad`` stays light

    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16]


def _short(name: str) -> str:
    return name.encode("utf-8", "surrogateescape")[:_NAME_BYTES].decode("utf-8", "ignore")


def new_temp(directory: str, name: str, mode: int = 0o666) -> tuple[str, BinaryIO]:
    """A fresh ``.NAME.PID-HOST.RANDOM.part`` in ``directory``, opened for binary writing.

    Created with ``O_EXCL`` and ``mode`` (the umask applies): with the default 0o666, unlike
    ``mkstemp``'s 0o600, the file renamed into place gets the permissions ``open`` would give it.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tag = f"{os.getpid()}-{_host()}"
    while True:
        path = os.path.join(directory, f".{_short(name)}.{tag}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")


def remove_quietly(path: str) -> None:
    """Delete ``path`` if it exists; never raises."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # on Windows, signal 0 is not a probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_temps(directory: str, name: str, older_than: float = STALE_AFTER) -> list[str]:
    """Delete the temporary files for ``name`` in ``directory`` that no live writer owns.

    Ours (``.NAME.PID-HOST.RANDOM.part``) go when PID is not running on this host; any (ours or
    an earlier version's) when untouched for ``older_than`` seconds. Recent ones of another host
    are kept: that process may be writing them right now (a shared folder).
    """
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    prefix = f".{_short(name)}."
    host: str | None = None
    now = time.time()
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        rest = entry[len(prefix) :]
        ours = _OURS.fullmatch(rest[: -len(TEMP_SUFFIX)]) if rest.endswith(TEMP_SUFFIX) else None
        if ours is None and not _LEGACY.fullmatch(rest):
            continue
        path = os.path.join(directory, entry)
        try:
            stale = now - os.lstat(path).st_mtime >= older_than
            if not stale and ours is not None:
                host = _host() if host is None else host
                stale = ours.group(2) == host and not _alive(int(ours.group(1)))
            if stale:
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _target(path: str) -> str:
    """Where writing ``path`` lands: symlinks (of the file and its folders) are followed, so the
    file a link points to is replaced, not the link."""
    return os.path.realpath(path)


def check_output(path: str, what: str) -> str:
    """Refuse, before any work, an output path that cannot be written; returns the real target.

    Raises ``IsADirectoryError``, ``FileNotFoundError`` (no such folder), ``NotADirectoryError``,
    ``PermissionError`` (a read-only file, as ``open(path, "wb")`` would refuse it) or
    ``ArgumentError`` (a FIFO, device or socket), each naming ``path`` and the fix.
    """
    target = _target(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except OSError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{what}: {path} is a directory; name a file inside it")
        if not stat.S_ISREG(st.st_mode):
            raise ArgumentError(
                f"{what}: {path} is {_kind(st.st_mode)}; {what} writes a regular file (it renames a new file into "
                "place), so name one"
            )
        if not os.access(target, os.W_OK):
            raise PermissionError(
                errno.EACCES,
                f"{what}: cannot write {path}: the file is read-only (mode {stat.S_IMODE(st.st_mode):04o}); "
                "make it writable (chmod u+w) or name another file",
            )
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(errno.ENOTDIR, f"{what}: cannot write {path}: {folder} is not a folder")
        raise FileNotFoundError(errno.ENOENT, f"{what}: cannot write {path}: the folder {folder} does not exist")
    return target


def _reworded(exc: OSError, what: str, path: str) -> OSError:
    """``exc`` as the same kind of OSError, naming the user's ``path`` (not a temporary file)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, PermissionError):
        reason += f" (check that you can write to the folder {os.path.dirname(os.path.abspath(path))})"
    message = f"{what}: cannot write {path}: {reason}"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


@contextlib.contextmanager
def atomic_write(path: str, what: str) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; rename it over ``path`` only once complete.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was: a reader never sees a partial file. ``what`` (e.g. ``"save"``) starts every
    error message. The target keeps its permission bits.
    """
    target = check_output(path, what)
    directory, name = os.path.split(target)
    remove_stale_temps(directory, name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    try:
        # replacing a file: private until given the target's mode, so no reader can slip in first
        tmp, f = new_temp(directory, name, 0o666 if mode is None else 0o600)
    except OSError as exc:
        raise _reworded(exc, what, path) from None
    try:
        with f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise _reworded(exc, what, path) from None
        raise
    _sync_folder(directory)


def _sync_folder(directory: str) -> None:
    """fsync the folder, so the rename itself survives a power loss (POSIX; best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
