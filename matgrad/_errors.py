"""matgrad's error hierarchy. Every matgrad error points at the user's own line, stamped once.

A ``MatgradError`` built with a message appends `` (at file.py:LINE)``: the innermost frame
outside the matgrad package when the error was made, i.e. the line of the user's code that
called into matgrad (or the user's own ``Function`` whose rule went wrong). Raise sites write
the message only; nothing else stamps it.
"""

from __future__ import annotations

import os
import re
import sys
import threading

__all__ = [
    "AnomalyError",
    "ArgumentError",
    "ArgumentTypeError",
    "BackendError",
    "CheckpointError",
    "DataError",
    "DTypeError",
    "GradcheckError",
    "GraphError",
    "MatgradError",
    "ShapeError",
    "TensorIndexError",
    "user_site",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The standard library can stand between matgrad and the user (contextlib, functools, threading):
# its frames are skipped too, unless it is the only caller there is.
_STDLIB_DIR = os.path.dirname(os.path.abspath(os.__file__)) + os.sep
_SITE_PACKAGES = os.sep + "site-packages" + os.sep


class _Stamping(threading.local):
    enabled = True


_stamping = _Stamping()
_STAMPED = re.compile(r" \(at [^()]*:\d+\)$")


def set_site_stamping(enabled: bool) -> None:
    """Turn the `` (at file:line)`` suffix on or off in this thread (the command line turns it off)."""
    _stamping.enabled = bool(enabled)


class MatgradError(Exception):
    """Base class of every error matgrad raises on purpose; the message ends with the user's call site."""

    stamp_site = True  # a subclass whose message is not about one call of the user's sets False

    def __init__(self, *args: object, site: bool = True) -> None:
        if (
            site
            and self.stamp_site
            and len(args) == 1
            and isinstance(args[0], str)
            and _stamping.enabled
            and not _STAMPED.search(args[0])
        ):
            where = user_site()
            if where:
                args = (f"{args[0]} (at {where})",)
        super().__init__(*args)


class ArgumentTypeError(MatgradError, TypeError):
    """An argument of the wrong Python type (also a TypeError, as Python and PyTorch raise)."""


class TensorIndexError(MatgradError, IndexError):
    """A tensor index out of range, or too many indices (also an IndexError, as Python raises)."""


class ShapeError(MatgradError, ValueError):
    """Operand shapes do not fit the op (also a ValueError, as NumPy and PyTorch users expect)."""


class ArgumentError(MatgradError, ValueError):
    """An argument's value is outside what the op accepts (a label out of range, p > 1, ...)."""


class DTypeError(MatgradError, TypeError):
    """An op mixes dtypes, or needs a floating dtype and got an integer one."""


class BackendError(MatgradError):
    """An unknown or unavailable backend, or an op that mixes tensors of two backends."""


class CheckpointError(MatgradError, ValueError):
    """A checkpoint file is malformed, hostile or does not fit the model."""

    stamp_site = False  # the message names the file, which is what to look at


class DataError(MatgradError, ValueError):
    """A data file is missing, truncated, corrupted or fails its checksum."""

    stamp_site = False  # the message names the file, which is what to look at


class GraphError(MatgradError, RuntimeError):
    """Misuse of the autograd graph: backward twice, backward on a non-scalar without grad=, ..."""


class GradcheckError(MatgradError, RuntimeError):
    """Analytical and numerical gradients disagree."""

    stamp_site = False  # the report names the function, the input and the op; the call site adds nothing


class AnomalyError(MatgradError, RuntimeError):
    """Anomaly detection found a NaN or Inf produced by an op."""


def user_site() -> str:
    """``"file.py:LINE"`` of the innermost frame outside the matgrad package, or ``""``.

    Called only while an error is being built, so it costs nothing on the success path.
    """
    frame = sys._getframe(1)
    fallback = ""
    while frame is not None:
        filename = frame.f_code.co_filename
        path = os.path.abspath(filename)
        if not path.startswith(_PACKAGE_DIR):
            if not path.startswith(_STDLIB_DIR) or _SITE_PACKAGES in path or filename.startswith("<"):
                return f"{filename}:{frame.f_lineno}"
            fallback = fallback or f"{filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return fallback


def at_user_site(message: str) -> str:
    """Append `` (at file.py:LINE)`` to ``message`` for an error that is not a ``MatgradError``."""
    site = user_site()
    return f"{message} (at {site})" if site and _stamping.enabled and not _STAMPED.search(message) else message
