"""The backends: the kernel interface, parity, IEEE edge cases, selection, isolation from numpy.

The Array API backends (torch, array_api_strict) take part where a test loops over backends;
tests/test_array_api.py checks them against numpy in depth.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from array import array
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import matgrad as mg
from matgrad import backends
from matgrad.backends.base import Backend
from matgrad.backends.python import Matrix, PythonBackend, dot_products

PY = backends.get("python")
NP = backends.get("numpy")
# array_api_strict on a simulated device: an array made on the default device would raise
ARRAY_API = [
    backends.get(name, device)
    for name, device in (("array_api_strict", "device1"), ("torch", "cpu"))
    if name in mg.available_backends()
]
EVERY = [PY, NP, *ARRAY_API]


def test_every_kernel_is_implemented_by_both() -> None:
    abstract = {
        name
        for name, _ in inspect.getmembers(Backend)
        if getattr(Backend, name, None) is not None and getattr(getattr(Backend, name), "__isabstractmethod__", False)
    }
    assert abstract, "the interface declares its kernels as abstract methods"
    from matgrad.backends.array_api import ArrayApiBackend

    for cls in (type(PY), type(NP), ArrayApiBackend):
        assert not cls.__abstractmethods__, f"{cls.__name__} misses {sorted(cls.__abstractmethods__)}"
        for name in abstract:
            assert getattr(cls, name) is not getattr(Backend, name), f"{cls.__name__}.{name}"


# -- the from-scratch Matrix ------------------------------------------------------------------


def test_matrix_is_row_major() -> None:
    m = Matrix(2, 3, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert m.shape == (2, 3)
    assert m.get(1, 0) == 3.0 and m.get(0, 2) == 2.0  # data[row * ncols + col]
    assert m.row(1) == [3.0, 4.0, 5.0] and m.col(2) == [2.0, 5.0]
    with pytest.raises(IndexError, match=r"\(2, 0\)"):
        m.get(2, 0)
    with pytest.raises(mg.ShapeError, match="len\\(data\\)"):
        Matrix(2, 2, [1.0])


# -- parity, kernel by kernel -------------------------------------------------------------------

values = st.floats(-5, 5, allow_nan=False, width=32)


def both(rows: list[list[float]], dtype: str = "float64") -> tuple[object, object]:
    return PY.from_rows(rows, dtype), NP.from_rows(rows, dtype)


def same(a: object, b: object, tol: float = 1e-12) -> None:
    la, lb = PY.tolist(a), NP.tolist(b)
    assert PY.dtype(a) == NP.dtype(b)
    assert len(la) == len(lb) and all(len(x) == len(y) for x, y in zip(la, lb))
    for ra, rb in zip(la, lb):
        for x, y in zip(ra, rb):
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(y)
            else:
                assert x == y or abs(x - y) <= tol * max(1.0, abs(y)), (x, y)


@st.composite
def matrix_rows(draw: st.DrawFn, rows: int | None = None, cols: int | None = None) -> list[list[float]]:
    r = rows or draw(st.integers(1, 4))
    c = cols or draw(st.integers(1, 4))
    return [draw(st.lists(values, min_size=c, max_size=c)) for _ in range(r)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=30)
@given(data=st.data())
def test_elementwise_parity(data: st.DataObject, dtype: str) -> None:
    rows = data.draw(matrix_rows())
    m, n = len(rows), len(rows[0])
    other_shape = data.draw(st.sampled_from([(m, n), (1, n), (m, 1), (1, 1)]))
    other = data.draw(matrix_rows(*other_shape))
    tol = 1e-12 if dtype == "float64" else 0.0  # float32 emulation rounds exactly like numpy
    (pa, na), (pb, nb) = both(rows, dtype), both(other, dtype)
    for kernel in ("add", "sub", "mul", "maximum", "minimum"):
        same(getattr(PY, kernel)(pa, pb), getattr(NP, kernel)(na, nb), tol)
        same(getattr(PY, kernel)(pb, pa), getattr(NP, kernel)(nb, na), tol)
    same(PY.div(pa, 2.5), NP.div(na, 2.5), tol)
    for op in ("eq", "ne", "lt", "le", "gt", "ge"):
        same(PY.compare(op, pa, pb, dtype), NP.compare(op, na, nb, dtype))
    for op in ("neg", "abs", "sign", "tanh", "sigmoid", "exp"):
        same(PY.unary(op, pa), NP.unary(op, na), 1e-12 if dtype == "float64" else 1e-6)
    # float32 sums round each partial sum (NumPy) or only the total (python): the difference is
    # bounded by n * eps * sum|x|, here at most 16 * 6e-8 * 80, not by the size of the result.
    for axis in (None, 0, 1):
        same(PY.sum(pa, axis), NP.sum(na, axis), 1e-12 if dtype == "float64" else 1e-4)
        same(PY.max(pa, axis), NP.max(na, axis))
        same(PY.argmin(pa, axis), NP.argmin(na, axis))
    same(PY.transpose(pa), NP.transpose(na))
    assert NP.transpose(na).flags["C_CONTIGUOUS"]


@settings(max_examples=30)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.data())
def test_matmul_parity_with_flags(m: int, k: int, n: int, data: st.DataObject) -> None:
    for ta in (False, True):
        for tb in (False, True):
            a_rows = data.draw(matrix_rows(*((k, m) if ta else (m, k))))
            b_rows = data.draw(matrix_rows(*((n, k) if tb else (k, n))))
            (pa, na), (pb, nb) = both(a_rows), both(b_rows)
            out = NP.matmul(na, nb, ta, tb)
            assert out.flags["C_CONTIGUOUS"] and out.shape == (m, n)
            same(PY.matmul(pa, pb, ta, tb), out, 1e-12)


# -- the pure-Python matmul: accuracy where the polarisation identity could go wrong ------------


def exact_dots(lefts: list[list[float]], rights: list[list[float]]) -> list[float]:
    return [math.fsum(a * b for a, b in zip(r, c)) for r in lefts for c in rights]


@pytest.mark.parametrize(
    "scale_left, scale_right",
    [(1.0, 1.0), (1e-3, 1.0), (1e-5, 1.0), (1e-150, 1e150), (1e100, 1e-100), (1e-9, 1.0)],
)
def test_dot_products_error_is_relative_to_norms(scale_left: float, scale_right: float) -> None:
    import random

    rng = random.Random(1)
    lefts = [[rng.gauss(0, 1) * scale_left for _ in range(300)] for _ in range(4)]
    rights = [[rng.gauss(0, 1) * scale_right for _ in range(300)] for _ in range(5)]
    got = dot_products(lefts, rights)
    want = exact_dots(lefts, rights)
    for i, r in enumerate(lefts):
        for j, c in enumerate(rights):
            bound = math.hypot(*r) * math.hypot(*c)
            assert abs(got[i * 5 + j] - want[i * 5 + j]) <= 1e-10 * bound  # 600x below float32's 6e-8


def test_dot_products_orthogonal_and_zero_vectors() -> None:
    got = dot_products([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]], [[0.0, 2.0], [0.0, 0.0], [4.0, -3.0]])
    want = [0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0]
    assert all(abs(g - w) <= 1e-15 * 10 for g, w in zip(got, want)), got


def test_dot_products_propagate_nan_and_inf() -> None:
    got = dot_products([[math.nan, 1.0], [math.inf, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, math.inf]])
    assert math.isnan(got[0]) and math.isnan(got[1])
    assert got[2] == math.inf and got[3] == math.inf
    assert got[4] == 2.0 and got[5] == math.inf


def test_dot_products_zero_vectors_give_exact_zeros() -> None:
    """Regression: one zero vector (an MNIST border pixel) sent every product to the slow path."""
    import random

    rng = random.Random(2)
    lefts = [[rng.gauss(0, 1) for _ in range(50)] for _ in range(3)] + [[0.0] * 50]
    rights = [[rng.gauss(0, 1) for _ in range(50)] for _ in range(3)] + [[0.0] * 50]
    got = dot_products(lefts, rights)
    assert got[3::4] == [0.0] * 4 and got[12:16] == [0.0] * 4
    want = exact_dots(lefts, rights)
    assert all(abs(g - w) <= 1e-12 * 50 for g, w in zip(got, want))


def test_dot_products_subnormal_norms() -> None:
    tiny = 5e-324
    got = dot_products([[tiny, tiny]], [[1.0, 1.0]])
    assert got == [2 * tiny]


def test_dot_products_exact_zero_where_the_identity_left_a_residue() -> None:
    """Regression (issue 11): [[1, 1]] . [[1, -1]] came out 1.1e-16, not 0, so relu and == downstream
    decided differently on the two backends."""
    got = dot_products([[1.0, 1.0], [0.5, 0.25]], [[1.0, -1.0], [0.5, -1.0]])
    assert got[0] == 0.0 and got[3] == 0.0  # exact zeros, before any rounding
    assert array("f", got).tolist() == [0.0, -0.5, 0.25, 0.0]  # the rest exact once rounded to float32


@st.composite
def exact_products(draw: st.DrawFn) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """``(a, b, bias)`` whose product and ``linear`` are exactly representable in float32.

    Entries are multiples of 1/16 up to 4 (a few significant bits) times a power of two per row of
    ``a`` and per column of ``b`` (norm ratios up to 2^40, so both of the kernel's identities are
    used), and some columns of ``b`` are orthogonal to some rows of ``a`` (exact zero products):
    every product and partial sum is exact, in NumPy's float32 BLAS as in exact arithmetic (with
    the bias too when the rows' scales are close).
    """
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    small = st.integers(-64, 64).map(lambda v: v / 16)
    rows = [draw(st.integers(-20, 20)) for _ in range(m)]
    cols = [draw(st.integers(-20, 20)) for _ in range(n)]
    a = [[draw(small) * 2.0 ** rows[i] for _ in range(k)] for i in range(m)]
    b = [[draw(small) * 2.0 ** cols[j] for j in range(n)] for _ in range(k)]
    if k >= 2:  # make column j orthogonal to row i: (x, y, 0...) . (y, -x, 0...) = 0
        for i, j in draw(st.lists(st.tuples(st.integers(0, m - 1), st.integers(0, n - 1)), max_size=2)):
            x, y = a[i][0] / 2.0 ** rows[i], a[i][1] / 2.0 ** rows[i]
            for p in range(k):
                b[p][j] = (y if p == 0 else -x if p == 1 else 0.0) * 2.0 ** cols[j]
    bias = [[draw(small) * 2.0 ** (min(rows) + cols[j]) for j in range(n)]]
    return a, b, bias


def _exact(a: list[list[float]], b: list[list[float]], bias: list[list[float]] | None = None) -> list[list[float]]:
    def entry(i: int, j: int) -> float:
        return math.fsum([*(a[i][p] * b[p][j] for p in range(len(b))), bias[0][j] if bias else 0.0])

    return [[entry(i, j) for j in range(len(b[0]))] for i in range(len(a))]


def _float32_exact(rows: list[list[float]]) -> bool:
    flat = [v for r in rows for v in r]
    return array("f", flat).tolist() == flat


@settings(max_examples=60)
@given(exact_products(), st.sampled_from(["float32", "float64"]))
def test_backends_agree_exactly_where_the_product_is_exact(case: tuple[Any, Any, Any], dtype: str) -> None:
    """The docs promise equal float32 values: where the exact result is representable (zeros,
    integer-valued inputs) both backends give it, in matmul, linear and the transposed products."""
    a_rows, b_rows, bias_rows = case
    want = _exact(a_rows, b_rows)
    want_linear = _exact(a_rows, b_rows, bias_rows)
    for backend in ("python", "numpy"):
        a = mg.Tensor2D(a_rows, dtype=dtype, backend=backend)
        b = mg.Tensor2D(b_rows, dtype=dtype, backend=backend)
        bias = mg.Tensor2D(bias_rows, dtype=dtype, backend=backend)
        assert (a @ b).tolist() == want, backend
        if _float32_exact(want_linear):  # rows of very different scales can need more bits with a bias
            assert mg.functional.linear(a, b.T, bias).tolist() == want_linear, backend
        assert mg.ops.gemm(a.T, b.T, True, True).tolist() == want, backend
        assert ((a @ b) == 0.0).tolist() == [[float(v == 0.0) for v in row] for row in want], backend


# -- IEEE semantics on the python backend where Python itself would raise -----------------------


def test_python_backend_ieee_edges() -> None:
    a = PY.from_rows([[1000.0, 0.0, -1.0, 1.0]], "float64")
    exp = PY.tolist(PY.unary("exp", a))[0]
    assert exp[0] == math.inf
    log = PY.tolist(PY.unary("log", a))[0]
    assert log[1] == -math.inf and math.isnan(log[2])
    assert math.isnan(PY.tolist(PY.unary("sqrt", a))[0][2])
    div = PY.tolist(PY.div(PY.from_rows([[1.0, -1.0, 0.0]], "float64"), 0.0))[0]
    assert div[0] == math.inf and div[1] == -math.inf and math.isnan(div[2])
    powed = PY.tolist(
        PY.pow(PY.from_rows([[-8.0, 0.0, 10.0]], "float64"), PY.from_rows([[1 / 3, -1.0, 400.0]], "float64"))
    )[0]
    assert math.isnan(powed[0]) and powed[1] == math.inf and powed[2] == math.inf
    sig = PY.tolist(PY.unary("sigmoid", PY.from_rows([[-1000.0, 1000.0]], "float64")))[0]
    assert sig == [0.0, 1.0]
    f32 = PY.tolist(PY.mul(PY.from_rows([[3e38]], "float32"), 10.0))[0]
    assert f32 == [math.inf]


def test_numpy_backend_is_quiet_at_the_edges() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NP.unary("log", NP.from_rows([[0.0, -1.0]], "float32"))
        NP.unary("sigmoid", NP.from_rows([[-1000.0, 1000.0]], "float32"))
        NP.div(NP.from_rows([[1.0]], "float32"), 0.0)


def test_all_finite() -> None:
    for be in EVERY:
        assert be.all_finite(be.from_rows([[1e308, 1e308]], "float64"))  # the sum overflows, the values do not
        assert not be.all_finite(be.from_rows([[1.0, math.nan]], "float64"))
        assert not be.all_finite(be.from_rows([[math.inf, -math.inf]], "float64"))


def test_float32_emulation_matches_numpy_bits() -> None:
    import random

    rng = random.Random(5)
    rows = [[rng.uniform(-3, 3) for _ in range(7)] for _ in range(5)]
    pa, na = both(rows, "float32")
    for kernel in ("add", "mul", "sub", "div"):
        got = PY.tolist(getattr(PY, kernel)(pa, pa))
        want = getattr(NP, kernel)(na, na).tolist()
        assert got == want
    assert array("f", PY.from_rows(rows, "float32").data).tolist() == PY.from_rows(rows, "float32").data


def test_uint8_loading_is_identical() -> None:
    buf = bytes(range(256)) * 3
    for dtype, divisor in (("float32", 255), ("float64", 255), ("int64", 1)):
        want = NP.from_uint8(buf, 3, 256, divisor, dtype).tolist()
        for be in (PY, *ARRAY_API):
            assert be.tolist(be.from_uint8(buf, 3, 256, divisor, dtype)) == want, be


# -- selection -----------------------------------------------------------------------------------


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "MATGRAD_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60)


def test_default_is_numpy_and_import_is_silent() -> None:
    result = run("import matgrad; print(matgrad.get_backend())")
    assert result.returncode == 0 and result.stdout == "numpy\n" and result.stderr == ""


def test_import_does_not_import_numpy() -> None:
    result = run("import sys, matgrad; print('numpy' in sys.modules)")
    assert result.stdout == "False\n"


def test_env_variable_selects_backend() -> None:
    result = run("import matgrad; print(matgrad.get_backend(), matgrad.zeros(1, 1).backend)", MATGRAD_BACKEND="python")
    assert result.stdout == "python python\n"
    bad = run("import matgrad; matgrad.zeros(1, 1)", MATGRAD_BACKEND="gpu")
    assert bad.returncode != 0 and "MATGRAD_BACKEND='gpu'" in bad.stderr


def test_python_backend_never_imports_numpy() -> None:
    """With numpy unimportable, the python backend is the default and everything but .numpy() works."""
    code = """
import sys
sys.modules['numpy'] = None  # any `import numpy` now raises ImportError
import matgrad as mg
import matgrad.functional as F
assert mg.get_backend() == 'python', mg.get_backend()
assert mg.available_backends() == ['python']
x = mg.randn(4, 3, requires_grad=True)
w = mg.randn(2, 3, requires_grad=True)
loss = F.cross_entropy(F.linear(x, w).relu(), [0, 1, 1, 0])
loss.backward()
assert mg.gradcheck(lambda a: (a @ a.T).tanh(), [mg.randn(2, 2, dtype='float64', requires_grad=True)])
try:
    mg.set_backend('numpy')
except mg.BackendError as e:
    assert 'pip install' in str(e)
else:
    raise AssertionError('numpy backend should be unavailable')
print('ok', 'numpy' in sys.modules and sys.modules['numpy'] is not None)
"""
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok False\n"


def test_set_backend_and_errors() -> None:
    previous = mg.get_backend()
    try:
        mg.set_backend("python")
        assert mg.zeros(1, 1).backend == "python"
        with pytest.raises(mg.BackendError, match="unknown backend 'tpu'"):
            mg.set_backend("tpu")
    finally:
        mg.set_backend(previous)
    assert {"numpy", "python"} <= set(mg.available_backends()) <= set(backends.NAMES)


def test_seed_is_shared_by_both_backends() -> None:
    mg.manual_seed(11)
    a = mg.rand(2, 2, backend="python").tolist()
    b = mg.rand(2, 2, backend="numpy").tolist()
    mg.manual_seed(11)
    assert mg.rand(2, 2, backend="python").tolist() == a
    assert mg.rand(2, 2, backend="numpy").tolist() == b


def test_backend_object_reuse() -> None:
    assert backends.get("python") is PY and isinstance(PY, PythonBackend)
    assert repr(PY) == "<matgrad backend 'python'>"
    assert np.asarray(NP.to_numpy(NP.full(1, 1, 2.0, "float32"))).item() == 2.0


@settings(max_examples=30)
@given(st.integers(1, 6), st.integers(2, 6), st.data())
def test_fused_kernels_agree(n: int, c: int, data: st.DataObject) -> None:
    """softmax_xent, softmax_xent_grad and matmul's bias: backend against backend, and the maths."""
    rows = data.draw(matrix_rows(n, c))
    targets = data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    px, nx = both(rows)
    pt, nt = PY.from_rows([[t] for t in targets], "int64"), NP.from_rows([[t] for t in targets], "int64")
    (pl, pp), (nl, npr) = PY.softmax_xent(px, pt), NP.softmax_xent(nx, nt)
    same(pl, nl, 1e-12)
    same(pp, npr, 1e-12)
    for i, row in enumerate(rows):
        lse = math.log(math.fsum(math.exp(v) for v in row))
        assert abs(PY.tolist(pl)[i][0] - (lse - row[targets[i]])) <= 1e-12 * max(1.0, abs(lse))
    scale = data.draw(st.sampled_from([0.25, "column"]))
    ps, ns = (0.25, 0.25) if scale == 0.25 else both([[float(i + 1)] for i in range(n)])
    same(PY.softmax_xent_grad(pp, pt, ps), NP.softmax_xent_grad(npr, nt, ns), 1e-12)
    w_rows = data.draw(matrix_rows(3, c))
    bias_rows = data.draw(matrix_rows(1, 3))
    (pw, nw), (pb, nb) = both(w_rows), both(bias_rows)
    same(PY.matmul(px, pw, False, True, pb), NP.matmul(nx, nw, False, True, nb), 1e-12)


def test_softmax_xent_refuses_classes_out_of_range() -> None:
    for be in EVERY:
        x = be.from_rows([[0.0, 1.0], [2.0, 3.0]], "float32")
        for bad in (2, -1):
            with pytest.raises(IndexError):
                be.softmax_xent(x, be.from_rows([[0], [bad]], "int64"))


def test_bad_index() -> None:
    for be in EVERY:
        idx = be.indices(be.from_rows([[0, 3, 2]], "int64"))
        assert be.bad_index(idx, 4) is None
        assert be.bad_index(idx, 3) == 3
        assert be.bad_index(be.indices(be.from_rows([[1, -1, 2]], "int64")), 3) == -1


@settings(max_examples=30)
@given(data=st.data())
def test_keep_selects_on_both_backends(data: st.DataObject) -> None:
    """``keep(a, mask)`` is where(mask, a, 0): an infinite or NaN ``a`` gives exactly 0 where the mask is 0."""
    m, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    values = st.sampled_from([0.0, -1.5, 2.0, math.inf, -math.inf, math.nan, 1e38])
    a = [[data.draw(values) for _ in range(n)] for _ in range(m)]
    mask = [[float(data.draw(st.booleans())) for _ in range(n)] for _ in range(m)]
    want = [[x if k else 0.0 for x, k in zip(ra, rk)] for ra, rk in zip(a, mask)]
    for be in EVERY:
        for dtype in ("float32", "float64"):
            got = be.tolist(be.keep(be.from_rows(a, dtype), be.from_rows(mask, dtype)))
            assert repr(got) == repr(be.tolist(be.from_rows(want, dtype))), (be.name, dtype)
    row = [[data.draw(values) for _ in range(n)]]  # a (1, n) row broadcasts to the mask
    want_row = [[x if k else 0.0 for x, k in zip(row[0], rk)] for rk in mask]
    for be in EVERY:
        got = be.tolist(be.keep(be.from_rows(row, "float64"), be.from_rows(mask, "float64")))
        assert repr(got) == repr(want_row), be.name


@pytest.mark.filterwarnings("error")
def test_keep_selects_exactly_whatever_the_values() -> None:
    """``keep`` multiplies when every value is finite and selects otherwise; the finiteness test
    must not be fooled by huge finite values, inf or NaN, and warns of nothing."""
    be = backends.get("numpy")
    mask = np.array([[1.0, 0.0, 1.0, 0.0]])
    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max
        for row in ([1e30, -1e30, 3.0, -2.0], [np.inf, -np.inf, np.nan, 5.0], [big, -big, 2.0, np.nan], [-1.5] * 4):
            a = np.array([row], dtype=dtype)
            got = be.keep(a, mask.astype(dtype))
            assert got.dtype == dtype
            assert np.array_equal(got, np.where(mask != 0, a, 0), equal_nan=True), (dtype, row)
            assert not np.signbit(got[mask == 0]).any()  # dropped entries are +0.0, whatever was there
