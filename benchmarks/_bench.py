"""Helpers shared by the benchmark scripts: threads, memory, statistics, tables, metadata.

Standard library only, and nothing here imports NumPy: a script calls ``set_threads`` before its
first NumPy or PyTorch import, so the BLAS thread pools start at the size asked for.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "matgrad", "data", "mnist_sample")
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def set_threads(n: int) -> None:
    """Cap the BLAS / OpenMP pools at ``n`` threads; effective only before NumPy or torch is imported."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)


def thread_env(n: int) -> dict[str, str]:
    """This process's environment with the thread variables set to ``n`` (for subprocesses)."""
    env = dict(os.environ)
    env.update({var: str(n) for var in THREAD_VARS})
    return env


# -- memory ------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size in MiB (VmRSS; falls back to the peak where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            kib //= 1024
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs). False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# -- statistics --------------------------------------------------------------------------------


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3); for fewer than 2 values all three are the value."""
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def summary(xs: Sequence[float]) -> dict[str, Any]:
    q1, med, q3 = quartiles(xs)
    return {"n": len(xs), "median": med, "q1": q1, "q3": q3, "min": min(xs), "max": max(xs), "values": list(xs)}


# -- output ------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub pipe table; ``align`` is one letter per column, ``l`` or ``r`` (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)) + " |"

    marks = [("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)]
    rule = "|" + "|".join(marks) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# -- metadata ----------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def source_fingerprint() -> str:
    """SHA-256 (first 12 hex digits) of matgrad's Python sources: ties a figure to the exact code,
    uncommitted edits included."""
    digest = hashlib.sha256()
    root = os.path.join(REPO, "matgrad")
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    digest.update(fh.read())
    return digest.hexdigest()[:12]


def machine_info() -> dict[str, Any]:
    """Date, commit, interpreter, CPU and load: what a reader needs to judge a figure."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "matgrad_sources": source_fingerprint(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "loadavg": loadavg(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    dirty = " with uncommitted changes" if info.get("dirty") else ""
    dirty += f" (matgrad sources {info.get('matgrad_sources')})"
    load = info.get("loadavg")
    return (
        f"{info['date']}, commit {info['commit']}{dirty}; Python {info['python']} on {info['cpu']} "
        f"({info['cpus']} CPUs); load average at start {load}"
    )
