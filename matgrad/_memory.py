"""A memory budget: refuse a job clearly *before* allocating what the machine does not have.

The budget is ``MATGRAD_MEMORY_LIMIT`` when set (bytes, or with a K/M/G/T suffix, powers of
1024; ``off`` for no limit), else the least of what this process can still get: the kernel's
``MemAvailable`` (or ``sysconf``), a cgroup memory limit, and ``RLIMIT_AS``. Estimates are
rough on purpose: they catch a job that needs gigabytes more than there is, not 10% more.
Standard library only.
"""

from __future__ import annotations

import os
import re
from typing import Callable

from matgrad._errors import ArgumentError

__all__ = ["ENV", "check_memory", "element_bytes", "format_bytes", "memory_budget"]

ENV = "MATGRAD_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _parse(text: str) -> int | None:
    if text.lower() in ("off", "none", "unlimited"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise ArgumentError(
            f"{ENV}={text!r} is not a size; write bytes or a size such as 512M or 16G, or off for no limit"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:  # a pseudo-file of a few bytes
            text = f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _proc_field(path: str, field: str) -> int | None:
    """A ``Field:  123 kB`` line of ``/proc/meminfo`` or ``/proc/self/status``, in bytes."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if parts[2:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return None


def _sources() -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    available = _proc_field("/proc/meminfo", "MemAvailable")
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            available = None
    if available is not None and available > 0:
        out.append((available, "of memory available"))
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 2**60:
            out.append((max(limit - (_read_int(usage_file) or 0), 0), "left under this container's memory limit"))
    try:
        import resource
    except ImportError:  # not on Windows
        return out
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        used = _proc_field("/proc/self/status", "VmSize") or 0
        out.append((max(soft - used, 0), "of address space left under ulimit -v"))
    return out


def memory_budget() -> tuple[int, str] | None:
    """``(bytes, what they are)`` this process may still allocate, or None when unknown or off."""
    text = os.environ.get(ENV, "").strip()
    if text:
        limit = _parse(text)
        return None if limit is None else (limit, f"allowed by {ENV}={text}")
    sources = _sources()
    return min(sources) if sources else None


def check_memory(need: int, what: str, fix: str, error: Callable[[str], Exception]) -> None:
    """Raise ``error(message)`` when ``need`` bytes exceed the budget; the message says what to do."""
    budget = memory_budget()
    if budget is None or need <= budget[0]:
        return
    limit, source = budget
    raise error(
        f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(limit)} {source}; "
        f"{fix} (or set {ENV}, e.g. {ENV}=64G, or off to try anyway)"
    )


def element_bytes(backend: str, dtype: str, shared: bool = False) -> int:
    """Bytes per matrix element: the itemsize on NumPy; a pointer plus a float object in a list
    on the python backend (only the pointer when values are ``shared`` objects)."""
    if backend == "python":
        return 8 if shared else 32
    return 4 if dtype == "float32" else 8
