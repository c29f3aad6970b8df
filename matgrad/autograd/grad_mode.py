"""Grad mode, anomaly mode and debug mode: the engine's switches, one set per thread.

As in PyTorch, grad mode and anomaly mode are thread-local: ``no_grad()`` in one thread never
stops another thread's graph from being recorded, and a new thread starts with grad mode on and
anomaly detection off. Debug mode (recording call sites) is a process-wide setting.

The engine reads ``state.grad_enabled`` and ``state.anomaly`` directly (one attribute lookup on a
``threading.local``); everything outside the engine uses the functions below.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, TypeVar

__all__ = [
    "detect_anomaly",
    "enable_grad",
    "is_anomaly_enabled",
    "is_debug_enabled",
    "is_grad_enabled",
    "no_grad",
    "set_debug",
    "set_grad_enabled",
]

F = TypeVar("F", bound=Callable[..., Any])


GRAD, ANOMALY = 1, 2  # the bits of ``state.mode``


class _ThreadState(threading.local):
    """Per-thread switches, held as the bits of one int, ``mode`` (``GRAD | ANOMALY``).

    The apply path reads ``mode`` once per op; ``grad_enabled`` and ``anomaly`` read and write
    single bits. The class attribute is every new thread's default: grad on, anomaly off.
    """

    mode: int = GRAD

    @property
    def grad_enabled(self) -> bool:
        return bool(self.mode & GRAD)

    @grad_enabled.setter
    def grad_enabled(self, on: bool) -> None:
        self.mode = (self.mode | GRAD) if on else (self.mode & ~GRAD)

    @property
    def anomaly(self) -> bool:
        return bool(self.mode & ANOMALY)

    @anomaly.setter
    def anomaly(self, on: bool) -> None:
        self.mode = (self.mode | ANOMALY) if on else (self.mode & ~ANOMALY)


state = _ThreadState()
"""This thread's switches (read by the engine on every op)."""


class _Debug:
    on = os.environ.get("MATGRAD_DEBUG", "").strip() not in ("", "0", "false", "False")


debug = _Debug()
"""Process-wide: record the user's call site on every op."""


def is_grad_enabled() -> bool:
    """True when new ops record the graph in this thread (the default)."""
    return state.grad_enabled


def is_anomaly_enabled() -> bool:
    """True inside ``detect_anomaly()`` in this thread."""
    return state.anomaly


def is_debug_enabled() -> bool:
    """True after ``set_debug(True)`` or with ``MATGRAD_DEBUG=1``."""
    return debug.on


def set_debug(mode: bool = True) -> None:
    """Record the user's call site on every op (also ``MATGRAD_DEBUG=1``), so errors raised later,
    in backward or by anomaly detection, point at the user's own line. Costs a stack walk per op."""
    debug.on = bool(mode)


class _GradMode:
    """Context manager and decorator that sets this thread's grad mode and restores it on exit."""

    _mode: bool = True

    def __init__(self) -> None:
        self._prev: list[int] = []

    def __enter__(self) -> None:
        st = state
        mode = st.mode
        self._prev.append(mode)
        st.mode = (mode | GRAD) if self._mode else (mode & ~GRAD)

    def __exit__(self, *exc: object) -> None:
        state.mode = (state.mode & ~GRAD) | (self._prev.pop() & GRAD)

    def _fresh(self) -> _GradMode:
        return type(self)()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Run without recording the graph (inference, optimiser updates). Also a decorator."""

    _mode = False


class enable_grad(_GradMode):
    """Record the graph even inside ``no_grad``. Also a decorator."""

    _mode = True


class set_grad_enabled(_GradMode):
    """Set grad mode to ``mode``: a plain call, a context manager or a decorator (as PyTorch)."""

    def __init__(self, mode: bool) -> None:
        super().__init__()
        self._mode = bool(mode)
        self._prev.append(state.grad_enabled)
        state.grad_enabled = self._mode  # a plain call takes effect at once

    def __enter__(self) -> None:
        pass  # applied in __init__; __exit__ restores the mode saved there

    def _fresh(self) -> _GradMode:
        return enable_grad() if self._mode else no_grad()

    def __call__(self, fn: F) -> F:
        state.grad_enabled = bool(self._prev.pop())  # used as a decorator: undo the change made in __init__
        return super().__call__(fn)


class detect_anomaly:
    """Check every op's output and every gradient for NaN and Inf; raise ``AnomalyError`` at the first.

    A context manager (``with matgrad.detect_anomaly():``) and a decorator, for this thread. The
    error names the op that produced the first non-finite value, forward or backward, its shapes,
    and the user's file and line where that op was called. Outside it the check costs nothing.
    """

    def __init__(self) -> None:
        self._prev: list[bool] = []

    def __enter__(self) -> detect_anomaly:
        self._prev.append(state.anomaly)
        state.anomaly = True
        return self

    def __exit__(self, *exc: object) -> None:
        state.anomaly = self._prev.pop()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect_anomaly():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
