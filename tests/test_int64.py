"""int64 arithmetic wraps around (two's complement) on both backends, as NumPy's and PyTorch's.

``ones(1, 1, dtype="int64") * 2**62 * 4`` was 0 on the numpy backend and 2**64 on the python one.
Now every int64 kernel that can overflow (add, sub, mul, neg, abs of -2**63, sum, the in-place
add_ / mul_ / copy_) gives NumPy's result on both, checked here against NumPy itself on random
values drawn towards the extremes. Converting floats outside int64's range is an error.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matgrad as mg

LO, HI = -(2**63), 2**63 - 1
EXTREMES = [LO, LO + 1, -(2**62), -(2**32), -2, -1, 0, 1, 2, 3, 2**31, 2**32 + 1, 2**62, HI - 1, HI]
int64s = st.one_of(st.sampled_from(EXTREMES), st.integers(LO, HI))


@st.composite
def int_matrices(draw: st.DrawFn, shape: tuple[int, int] | None = None) -> list[list[int]]:
    r, c = shape if shape is not None else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return [[draw(int64s) for _ in range(c)] for _ in range(r)]


def both(rows: list[list[int]]) -> tuple[mg.Tensor2D, mg.Tensor2D, Any]:
    return (
        mg.Tensor2D(rows, dtype="int64", backend="python"),
        mg.Tensor2D(rows, dtype="int64", backend="numpy"),
        np.array(rows, dtype=np.int64),
    )


def agree(fn: Callable[..., Any], ref: Callable[..., Any], *operands: list[list[int]]) -> None:
    """``fn`` on both backends equals ``ref`` on NumPy int64 arrays, exactly."""
    py, nu, arrays = zip(*(both(rows) for rows in operands))
    with np.errstate(over="ignore"):
        want = np.asarray(ref(*arrays)).tolist()
    got_py, got_np = fn(*py), fn(*nu)
    assert got_py.dtype == got_np.dtype == "int64"
    assert got_py.tolist() == want
    assert got_np.tolist() == want


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=30)
@given(data=st.data())
def test_binary_ops_wrap_as_numpy(name: str, data: st.DataObject) -> None:
    fn, ref = BINARY[name]
    a = data.draw(int_matrices())
    shape = data.draw(st.sampled_from([(len(a), len(a[0])), (1, len(a[0])), (len(a), 1), (1, 1)]))
    b = data.draw(int_matrices(shape))
    agree(fn, ref, a, b)
    agree(fn, ref, b, a)


@settings(max_examples=30)
@given(int_matrices(), int64s)
def test_ops_with_a_python_int_wrap_as_numpy(a: list[list[int]], k: int) -> None:
    agree(lambda t: t * k, lambda t: t * np.int64(k), a)
    agree(lambda t: t + k, lambda t: t + np.int64(k), a)
    agree(lambda t: k - t, lambda t: np.int64(k) - t, a)


@settings(max_examples=40)
@given(int_matrices())
def test_unary_ops_and_sums_wrap_as_numpy(a: list[list[int]]) -> None:
    agree(lambda t: -t, np.negative, a)
    agree(lambda t: t.abs(), np.abs, a)
    agree(lambda t: t.sum(), lambda t: t.sum(keepdims=True), a)
    agree(lambda t: t.sum(axis=0), lambda t: t.sum(axis=0, keepdims=True), a)
    agree(lambda t: t.sum(axis=1), lambda t: t.sum(axis=1, keepdims=True), a)
    agree(lambda t: t.max(axis=1), lambda t: t.max(axis=1, keepdims=True), a)


@settings(max_examples=30)
@given(data=st.data())
def test_in_place_updates_wrap_as_numpy(data: st.DataObject) -> None:
    a = data.draw(int_matrices())
    b = data.draw(int_matrices((len(a), len(a[0]))))
    k = data.draw(int64s)
    alpha = data.draw(st.sampled_from([1, -1, 2, 3, -(2**40)]))
    with np.errstate(over="ignore"):
        ref_a, ref_b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
        want = {
            "add_": (ref_a + ref_b * np.int64(alpha)).tolist(),
            "add_number": (ref_a + np.int64(alpha) * np.int64(k)).tolist(),
            "mul_": (ref_a * ref_b).tolist(),
            "mul_number": (ref_a * np.int64(k)).tolist(),
            "copy_": np.full_like(ref_a, k).tolist(),
        }
    for backend in ("python", "numpy"):

        def fresh() -> mg.Tensor2D:
            return mg.Tensor2D(a, dtype="int64", backend=backend)  # noqa: B023 - used at once

        other = mg.Tensor2D(b, dtype="int64", backend=backend)
        assert fresh().add_(other, alpha=alpha).tolist() == want["add_"], backend
        assert fresh().add_(k, alpha=alpha).tolist() == want["add_number"], backend
        assert fresh().mul_(other).tolist() == want["mul_"], backend
        assert fresh().mul_(k).tolist() == want["mul_number"], backend
        assert fresh().copy_(k).tolist() == want["copy_"], backend


def test_the_issues_example(backend: str) -> None:
    assert (mg.ones(1, 1, dtype="int64") * 2**62 * 4).tolist() == [[0]]
    assert (mg.Tensor2D([[HI]], dtype="int64") + 1).tolist() == [[LO]]
    assert mg.Tensor2D([[LO]], dtype="int64").abs().tolist() == [[LO]]


def test_large_int64_values_keep_every_digit_in_place(backend: str) -> None:
    """add_ and mul_ with a number went through float64 (2**60 + 1 became 2**60)."""
    t = mg.Tensor2D([[2**60 + 1]], dtype="int64")
    assert t.mul_(1).tolist() == [[2**60 + 1]]
    assert t.add_(2).tolist() == [[2**60 + 3]]


@pytest.mark.parametrize("value", [1e30, -1e30, 2.0**63, float("inf"), float("nan")])
def test_floats_outside_int64_are_refused_on_both_backends(backend: str, value: float) -> None:
    x = mg.Tensor2D([[value, 1.0]], dtype="float64")
    with pytest.raises(mg.DTypeError, match="int64"):
        x.long()
    with pytest.raises(mg.DTypeError, match="int64"):
        mg.Tensor2D([[value]], dtype="int64")
    with pytest.raises(mg.DTypeError, match="int64"):
        mg.Tensor2D(np.array([[value]]), dtype="int64")


def test_the_largest_float_below_2_63_converts(backend: str) -> None:
    big = 2.0**63 - 1024  # the float just below 2**63
    assert mg.Tensor2D([[big, -(2.0**63)]], dtype="float64").long().tolist() == [[int(big), LO]]
