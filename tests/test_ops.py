"""Every op in the table: hand-computed values, backend parity, and numerical gradient checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_table import CASES, CASES_BY_NAME, DOMAINS, HAND, Case, all_op_classes

import matgrad as mg
from matgrad.testing import assert_close, shapes


def _draw_inputs(data: st.DataObject, case: Case, backend: str, dtype: str = "float64") -> list[mg.Tensor2D]:
    m, n = data.draw(shapes(max_rows=4, max_cols=4), label="shape")
    tensors = []
    for i, (r, c) in enumerate(case.shapes(m, n)):
        domain = case.domains[min(i, len(case.domains) - 1)]
        values = data.draw(
            st.lists(DOMAINS[domain], min_size=r * c, max_size=r * c, unique=domain == "distinct"),
            label=f"input {i}",
        )
        rows = [values[k * c : (k + 1) * c] for k in range(r)]
        tensors.append(mg.Tensor2D(rows, dtype=dtype, backend=backend, requires_grad=True))
    return tensors


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@settings(max_examples=15)
@given(data=st.data())
def test_gradcheck(case: Case, backend: str, data: st.DataObject) -> None:
    inputs = _draw_inputs(data, case, backend)
    assert mg.gradcheck(case.fn, inputs)


SMOOTH = [c for c in CASES if c.smooth]


@pytest.mark.parametrize("case", SMOOTH, ids=lambda c: c.name)
@settings(max_examples=5)
@given(data=st.data())
def test_gradgradcheck(case: Case, backend: str, data: st.DataObject) -> None:
    inputs = _draw_inputs(data, case, backend)
    assert mg.gradgradcheck(case.fn, inputs)


DETERMINISTIC = [c for c in CASES if not c.random]


@pytest.mark.parametrize("case", DETERMINISTIC, ids=lambda c: c.name)
@settings(max_examples=5)
@given(data=st.data())
def test_backends_agree(case: Case, data: st.DataObject) -> None:
    """The same inputs give the same outputs and gradients on both backends, in float64 and float32."""
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-6)):
        py = _draw_inputs(data, case, "python", dtype)
        np_ = [mg.Tensor2D(t, dtype=dtype, backend="numpy", requires_grad=True) for t in py]
        out_py, out_np = case.fn(*py), case.fn(*np_)
        assert out_py.shape == out_np.shape
        assert out_py.dtype == out_np.dtype == dtype
        assert_close(out_py, out_np, rtol=tol, atol=tol)
        upstream = mg.Tensor2D(
            [[0.5 + 0.25 * ((i + 2 * j) % 5) for j in range(out_py.ncols)] for i in range(out_py.nrows)]
        )
        out_py.backward(upstream.to(dtype, out_py.backend))
        out_np.backward(upstream.to(dtype, out_np.backend))
        for a, b in zip(py, np_):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert a.grad.dtype == dtype
                assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("name, inputs, expected", HAND, ids=[h[0] for h in HAND])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hand_computed(name: str, inputs: list, expected: list, backend: str, dtype: str) -> None:
    case = CASES_BY_NAME[name]
    tensors = [mg.Tensor2D(x, dtype=dtype) for x in inputs]
    out = case.fn(*tensors)
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert_close(out, expected, rtol=tol, atol=tol)


def test_every_op_has_a_row() -> None:
    covered = {cls for case in CASES for cls in case.ops}
    missing = sorted(cls.__qualname__ for cls in all_op_classes() - covered)
    assert not missing, f"ops without a row in tests/op_table.py: {missing}"


def test_every_hand_case_names_a_row() -> None:
    assert {h[0] for h in HAND} <= set(CASES_BY_NAME)


def test_table_cases_are_differentiable_somewhere() -> None:
    """Guard against a table row whose function ignores its inputs (its gradcheck would be vacuous)."""
    for case in CASES:
        inputs = []
        for k, (r, c) in enumerate(case.shapes(3, 4)):
            # distinct values, away from 0, different in every input
            rows = [[(-1) ** (i + j) * (0.25 + 0.125 * (i * c + j) + 0.5 * k) for j in range(c)] for i in range(r)]
            if case.domains[min(k, len(case.domains) - 1)] in ("positive", "probability"):
                rows = [[abs(v) / (1 + abs(v)) for v in row] for row in rows]
            inputs.append(mg.Tensor2D(rows, dtype="float64", requires_grad=True))
        out = case.fn(*inputs)
        assert out.requires_grad, case.name
        out.sum().backward()
        total = sum(abs(v) for t in inputs if t.grad is not None for row in t.grad.tolist() for v in row)
        assert total > 0 and math.isfinite(total), case.name
