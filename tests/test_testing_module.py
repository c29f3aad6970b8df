"""The hypothesis strategies users import from matgrad.testing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

import matgrad as mg
from matgrad.testing import assert_close, broadcastable_pairs, matmul_pairs, matrices, shapes

seen_shapes: set[tuple[int, int]] = set()


@settings(max_examples=200, derandomize=True)
@given(shapes(max_rows=3, max_cols=3))
def test_shapes_cover_edges(shape: tuple[int, int]) -> None:
    assert 1 <= shape[0] <= 3 and 1 <= shape[1] <= 3
    seen_shapes.add(shape)


def test_shapes_drew_vectors_and_scalars() -> None:
    # runs after test_shapes_cover_edges (same module, file order)
    assert (1, 1) in seen_shapes
    assert any(r == 1 and c > 1 for r, c in seen_shapes)
    assert any(c == 1 and r > 1 for r, c in seen_shapes)


@given(matrices(shape=(2, 3), requires_grad=True))
def test_matrices(t: mg.Tensor2D) -> None:
    assert t.shape == (2, 3) and t.dtype == "float64" and t.requires_grad


@given(broadcastable_pairs())
def test_broadcastable_pairs_broadcast(pair: tuple[mg.Tensor2D, mg.Tensor2D]) -> None:
    a, b = pair
    out = a + b
    assert out.shape == (max(a.nrows, b.nrows), max(a.ncols, b.ncols))


@given(matmul_pairs(backend="python"))
def test_matmul_pairs_multiply(pair: tuple[mg.Tensor2D, mg.Tensor2D]) -> None:
    a, b = pair
    assert (a @ b).shape == (a.nrows, b.ncols)
    assert a.backend == "python"


def test_assert_close() -> None:
    assert_close(mg.Tensor2D([[1.0, 2.0]]), [[1.0, 2.0 + 1e-9]])
    assert_close([[float("nan")]], [[float("nan")]])
    with pytest.raises(AssertionError, match=r"\(row 0, col 1\)"):
        assert_close([[1.0, 2.0]], [[1.0, 2.1]])
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close([[1.0]], [[1.0, 2.0]])
