"""Factories: ``zeros``, ``ones``, ``full``, ``eye``, ``rand``, ``randn``, ``uniform`` and ``*_like``."""

from __future__ import annotations

import math
import numbers
from typing import Any

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, ShapeError
from matgrad.backends.base import FLOAT_DTYPES, Backend
from matgrad.tensor import Tensor2D, _wrap, check_int_range, check_size, dtype_name

__all__ = ["eye", "full", "full_like", "ones", "ones_like", "rand", "randn", "uniform", "zeros", "zeros_like"]


def _size(name: str, nrows: Any, ncols: Any) -> tuple[int, int]:
    """Accept ``f(m, n)`` and ``f((m, n))``; both sizes positive ints."""
    if isinstance(nrows, tuple) and ncols is None and len(nrows) == 2:
        nrows, ncols = nrows
    for v in (nrows, ncols):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArgumentTypeError(f"{name}: sizes must be ints, got ({nrows!r}, {ncols!r})")
        if v < 1:
            raise ShapeError(f"{name}: sizes must be at least 1, got ({nrows}, {ncols}); matgrad has no empty matrices")
    check_size(name, nrows, ncols)
    return nrows, ncols


def _check_fill(name: str, value: Any, dtype: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}: fill_value must be a real number, got {type(value).__name__}")
    check_int_range(name, [value], dtype)
    if dtype == "int64" and not math.isfinite(value):
        raise ArgumentError(f"{name}: int64 cannot hold {value}")


def _finish(data: Any, backend: Backend, requires_grad: bool) -> Tensor2D:
    t = _wrap(data, backend)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _float_dtype(name: str, dtype: Any) -> str:
    dt = dtype_name(dtype)
    if dt not in FLOAT_DTYPES:
        raise ArgumentError(f"{name}: random samples need a floating dtype, not {dt}")
    return dt


def full(
    nrows: Any,
    ncols: Any = None,
    fill_value: float = 0.0,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """An ``nrows x ncols`` matrix filled with ``fill_value`` (also ``full((m, n), value)``)."""
    if isinstance(nrows, tuple) and ncols is not None:
        nrows, ncols, fill_value = nrows, None, ncols
    m, n = _size("full", nrows, ncols)
    dt = dtype_name(dtype)
    _check_fill("full", fill_value, dt)
    be = _backends.get(backend, device)
    return _finish(be.full(m, n, fill_value, dt), be, requires_grad)


def zeros(
    nrows: Any,
    ncols: Any = None,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """An ``nrows x ncols`` matrix of zeros."""
    m, n = _size("zeros", nrows, ncols)
    be = _backends.get(backend, device)
    return _finish(be.full(m, n, 0, dtype_name(dtype)), be, requires_grad)


def ones(
    nrows: Any,
    ncols: Any = None,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """An ``nrows x ncols`` matrix of ones."""
    m, n = _size("ones", nrows, ncols)
    be = _backends.get(backend, device)
    return _finish(be.full(m, n, 1, dtype_name(dtype)), be, requires_grad)


def eye(
    nrows: Any,
    ncols: Any = None,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """The identity: ones on the diagonal (square when ``ncols`` is omitted)."""
    m, n = _size("eye", nrows, nrows if ncols is None else ncols)
    be = _backends.get(backend, device)
    return _finish(be.eye(m, n, dtype_name(dtype)), be, requires_grad)


def uniform(
    nrows: Any,
    ncols: Any = None,
    low: float = 0.0,
    high: float = 1.0,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """Samples of U(low, high), from the generator ``manual_seed`` resets."""
    m, n = _size("uniform", nrows, ncols)
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise ArgumentTypeError(f"uniform: low and high must be real numbers, got {bound!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ArgumentError(f"uniform: needs finite low <= high, got low={low}, high={high}")
    be = _backends.get(backend, device)
    return _finish(be.uniform(m, n, float(low), float(high), _float_dtype("uniform", dtype)), be, requires_grad)


def rand(
    nrows: Any,
    ncols: Any = None,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """Samples of U(0, 1)."""
    m, n = _size("rand", nrows, ncols)
    be = _backends.get(backend, device)
    return _finish(be.uniform(m, n, 0.0, 1.0, _float_dtype("rand", dtype)), be, requires_grad)


def randn(
    nrows: Any,
    ncols: Any = None,
    *,
    requires_grad: bool = False,
    dtype: Any = None,
    backend: Any = None,
    device: Any = None,
) -> Tensor2D:
    """Samples of N(0, 1)."""
    m, n = _size("randn", nrows, ncols)
    be = _backends.get(backend, device)
    return _finish(be.normal(m, n, 0.0, 1.0, _float_dtype("randn", dtype)), be, requires_grad)


def _like(name: str, t: Tensor2D, dtype: Any) -> tuple[int, int, Backend, str]:
    if not isinstance(t, Tensor2D):
        raise ArgumentTypeError(f"{name}: expected a Tensor2D, got {type(t).__name__}")
    return t.nrows, t.ncols, t._backend, t.dtype if dtype is None else dtype_name(dtype)


def zeros_like(t: Tensor2D, *, requires_grad: bool = False, dtype: Any = None) -> Tensor2D:
    """Zeros with ``t``'s shape, backend and dtype."""
    m, n, be, dt = _like("zeros_like", t, dtype)
    return _finish(be.full(m, n, 0, dt), be, requires_grad)


def ones_like(t: Tensor2D, *, requires_grad: bool = False, dtype: Any = None) -> Tensor2D:
    """Ones with ``t``'s shape, backend and dtype."""
    m, n, be, dt = _like("ones_like", t, dtype)
    return _finish(be.full(m, n, 1, dt), be, requires_grad)


def full_like(t: Tensor2D, fill_value: float, *, requires_grad: bool = False, dtype: Any = None) -> Tensor2D:
    """``fill_value`` with ``t``'s shape, backend and dtype."""
    m, n, be, dt = _like("full_like", t, dtype)
    _check_fill("full_like", fill_value, dt)
    return _finish(be.full(m, n, fill_value, dt), be, requires_grad)
