"""matgrad's error hierarchy, and the helper that points an error at the user's own line."""

from __future__ import annotations

import os
import sys

__all__ = [
    "AnomalyError",
    "ArgumentError",
    "BackendError",
    "CheckpointError",
    "DataError",
    "DTypeError",
    "GradcheckError",
    "GraphError",
    "MatgradError",
    "ShapeError",
    "user_site",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class MatgradError(Exception):
    """Base class of every error matgrad raises on purpose."""


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


class DataError(MatgradError, ValueError):
    """A data file is missing, truncated, corrupted or fails its checksum."""


class GraphError(MatgradError, RuntimeError):
    """Misuse of the autograd graph: backward twice, backward on a non-scalar without grad=, ..."""


class GradcheckError(MatgradError, RuntimeError):
    """Analytical and numerical gradients disagree."""


class AnomalyError(MatgradError, RuntimeError):
    """Anomaly detection found a NaN or Inf produced by an op."""


def user_site() -> str:
    """``"file.py:LINE"`` of the innermost frame outside the matgrad package, or ``""``.

    Called only while an error is being built, so it costs nothing on the success path.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def at_user_site(message: str) -> str:
    """Append `` (at file.py:LINE)`` naming the user's call site to ``message``."""
    site = user_site()
    return f"{message} (at {site})" if site else message
