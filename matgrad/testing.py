"""Hypothesis strategies and assertions for testing code built on matgrad.

Needs ``hypothesis`` (``pip install "matgrad[test]"``)::

    from hypothesis import given
    from matgrad.testing import matrices, matmul_pairs

    @given(matmul_pairs())
    def test_matmul_shape(pair):
        a, b = pair
        assert (a @ b).shape == (a.nrows, b.ncols)
"""

from __future__ import annotations

import math
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        'matgrad.testing needs hypothesis: pip install "matgrad[test]" (or pip install hypothesis)'
    ) from exc

from matgrad.tensor import Tensor2D

__all__ = ["assert_close", "broadcastable_pairs", "matmul_pairs", "matrices", "shapes"]

SearchStrategy = st.SearchStrategy


def shapes(
    *, min_rows: int = 1, max_rows: int = 5, min_cols: int = 1, max_cols: int = 5
) -> SearchStrategy[tuple[int, int]]:
    """``(nrows, ncols)`` pairs; shrinks towards 1x1 and draws 1xn and mx1 often."""
    return st.tuples(st.integers(min_rows, max_rows), st.integers(min_cols, max_cols))


def _elements(elements: SearchStrategy[float] | None) -> SearchStrategy[float]:
    if elements is not None:
        return elements
    return st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(
    draw: Any,
    shape: tuple[int, int] | SearchStrategy[tuple[int, int]] | None = None,
    elements: SearchStrategy[float] | None = None,
    *,
    dtype: str = "float64",
    backend: str | None = None,
    requires_grad: bool = False,
) -> Tensor2D:
    """A ``Tensor2D`` of the given (or a drawn) shape with values from ``elements``."""
    if shape is None:
        shape = shapes()
    nrows, ncols = draw(shape) if isinstance(shape, SearchStrategy) else shape
    values = draw(st.lists(_elements(elements), min_size=nrows * ncols, max_size=nrows * ncols))
    rows = [values[i * ncols : (i + 1) * ncols] for i in range(nrows)]
    return Tensor2D(rows, dtype=dtype, backend=backend, requires_grad=requires_grad)


@st.composite
def broadcastable_pairs(
    draw: Any,
    shape: tuple[int, int] | SearchStrategy[tuple[int, int]] | None = None,
    elements: SearchStrategy[float] | None = None,
    *,
    dtype: str = "float64",
    backend: str | None = None,
    requires_grad: bool = False,
) -> tuple[Tensor2D, Tensor2D]:
    """``(a, b)`` where one is (m, n) and the other (m, n), (1, n), (m, 1) or (1, 1), in either order."""
    if shape is None:
        shape = shapes()
    m, n = draw(shape) if isinstance(shape, SearchStrategy) else shape
    other = draw(st.sampled_from([(m, n), (1, n), (m, 1), (1, 1)]))
    kw = dict(elements=elements, dtype=dtype, backend=backend, requires_grad=requires_grad)
    full = draw(matrices((m, n), **kw))  # type: ignore[arg-type]
    small = draw(matrices(other, **kw))  # type: ignore[arg-type]
    return (full, small) if draw(st.booleans()) else (small, full)


@st.composite
def matmul_pairs(
    draw: Any,
    max_size: int = 5,
    elements: SearchStrategy[float] | None = None,
    *,
    dtype: str = "float64",
    backend: str | None = None,
    requires_grad: bool = False,
) -> tuple[Tensor2D, Tensor2D]:
    """``(a, b)`` with ``a`` (m, k) and ``b`` (k, n), so ``a @ b`` is defined."""
    m, k, n = (draw(st.integers(1, max_size)) for _ in range(3))
    kw = dict(elements=elements, dtype=dtype, backend=backend, requires_grad=requires_grad)
    return draw(matrices((m, k), **kw)), draw(matrices((k, n), **kw))  # type: ignore[arg-type]


def _rows(x: Any) -> list[list[float]]:
    if isinstance(x, Tensor2D):
        return x.tolist()
    if hasattr(x, "tolist"):
        return x.tolist()  # type: ignore[no-any-return]
    if isinstance(x, (int, float)):
        return [[float(x)]]
    return [list(r) for r in x]


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Assert equal shapes and ``|actual - expected| <= atol + rtol * |expected|`` everywhere.

    Accepts tensors, NumPy arrays, nested lists or numbers; NaNs must match NaNs.
    """
    a, e = _rows(actual), _rows(expected)
    shape_a = (len(a), len(a[0]) if a else 0)
    shape_e = (len(e), len(e[0]) if e else 0)
    if shape_a != shape_e:
        raise AssertionError(f"shapes differ: {shape_a[0]}x{shape_a[1]} vs {shape_e[0]}x{shape_e[1]}")
    for r, (ra, re) in enumerate(zip(a, e)):
        for c, (va, ve) in enumerate(zip(ra, re)):
            if math.isnan(ve) and math.isnan(va):
                continue
            if va == ve:
                continue
            if not abs(va - ve) <= atol + rtol * abs(ve):
                raise AssertionError(
                    f"values differ at (row {r}, col {c}): {va!r} vs expected {ve!r} "
                    f"(|diff| {abs(va - ve):.3g} > atol {atol:g} + rtol {rtol:g} * |expected|)"
                )
