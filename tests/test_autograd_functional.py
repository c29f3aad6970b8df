"""matgrad.autograd.functional against torch.autograd.functional, on both backends, in float64.

Every function of the CASES table is written twice, with matgrad and with torch; matgrad's
Jacobian must equal torch's reshaped row-major to ``(p*q, m*n)``, and likewise the Hessian, vjp,
jvp, hvp and vhp. One case goes through a user ``Function``. Then: the nesting of results, the
row-major convention on hand-computed Jacobians, ``strict`` (same cases raise as in torch, and the
message names the input), ``create_graph`` (results are differentiable again: gradcheck through
them) and input validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import matgrad as mg
from matgrad.autograd import functional as AF
from matgrad.testing import shapes

torch = pytest.importorskip("torch")
TF = torch.autograd.functional

RTOL, ATOL = 1e-10, 1e-12


class Cube(mg.Function):
    """A user op: ``C = A^3``;  ``dA = 3 A^2 G`` (written with ops: differentiable again)."""

    @staticmethod
    def forward(ctx: Any, x: mg.Tensor2D) -> mg.Tensor2D:
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx: Any, grad: mg.Tensor2D) -> mg.Tensor2D:
        (x,) = ctx.saved_tensors
        return grad * (x * x) * 3.0


@dataclass
class Case:
    name: str
    mg_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    shapes: list[tuple[int, int]]


def _tsum(x: Any, axis: int) -> Any:
    return x.sum(dim=axis, keepdim=True)


CASES = [
    Case(
        "chain",
        lambda x: ((x @ x.T).tanh() * x.sum(axis=1)).exp(),
        lambda x: ((x @ x.T).tanh() * _tsum(x, 1)).exp(),
        [(3, 2)],
    ),
    Case(
        "layer-tuple-out",
        lambda x, w, b: ((x @ w + b).sigmoid(), (x * x).mean(axis=0)),
        lambda x, w, b: (torch.sigmoid(x @ w + b), (x * x).mean(dim=0, keepdim=True)),
        [(2, 3), (3, 4), (1, 4)],
    ),
    Case(
        "user-function",
        lambda x, y: Cube.apply(x) @ y + y.sum() / (1.0 + x * x).sum(),
        lambda x, y: x**3 @ y + y.sum() / (1.0 + x * x).sum(),
        [(2, 2), (2, 3)],
    ),
    Case(
        "softmax-div-pow",
        lambda x: mg.log_softmax(x, axis=1) * x / (1.0 + x**2) + x.softmax(axis=0).sqrt(),
        lambda x: torch.log_softmax(x, dim=1) * x / (1.0 + x**2) + torch.softmax(x, dim=0).sqrt(),
        [(2, 3)],
    ),
    Case(
        "broadcast-column",
        lambda a, c: (a - c).tanh() * c.exp(),
        lambda a, c: torch.tanh(a - c) * c.exp(),
        [(3, 2), (3, 1)],
    ),
]
IDS = [c.name for c in CASES]


def _inputs(case: Case, seed: int = 0) -> tuple[list[mg.Tensor2D], list[Any]]:
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(0.0, 0.6, size=s) for s in case.shapes]
    return (
        [mg.Tensor2D(a.tolist(), dtype="float64") for a in arrays],
        [torch.tensor(a, dtype=torch.float64) for a in arrays],
    )


def _scalar(case: Case, seed: int = 1) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A 1x1 function from a case: every output weighted by fixed random numbers, summed."""
    xs, _ = _inputs(case)
    outs = case.mg_fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, size=o.shape) * rng.choice([-1.0, 1.0], size=o.shape) for o in outs]
    mg_w = [mg.Tensor2D(w.tolist(), dtype="float64") for w in weights]
    t_w = [torch.tensor(w) for w in weights]

    def mg_scalar(*args: mg.Tensor2D) -> mg.Tensor2D:
        o = case.mg_fn(*args)
        o = o if isinstance(o, tuple) else (o,)
        total = (o[0] * mg_w[0]).sum()
        for oi, wi in zip(o[1:], mg_w[1:]):
            total = total + (oi * wi).sum()
        return total

    def t_scalar(*args: Any) -> Any:
        o = case.torch_fn(*args)
        o = o if isinstance(o, tuple) else (o,)
        return sum((oi * wi).sum() for oi, wi in zip(o, t_w))

    return mg_scalar, t_scalar


def _np(t: mg.Tensor2D) -> Any:
    return np.array(t.tolist(), dtype=np.float64)


def _close(ours: mg.Tensor2D, theirs: Any, rows: int | None = None) -> None:
    ref = theirs.detach().numpy()
    ref = ref.reshape(rows, -1) if rows is not None else ref.reshape(ours.shape)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(_np(ours), ref, rtol=RTOL, atol=ATOL)


def _blocks(result: Any, n_out: int, n_in: int) -> list[list[mg.Tensor2D]]:
    """A nested result as a list of lists [output][input], checking the nesting on the way."""
    if n_out == 1 and n_in == 1:
        assert isinstance(result, mg.Tensor2D)
        return [[result]]
    assert isinstance(result, tuple)
    if n_out == 1:
        assert len(result) == n_in and all(isinstance(r, mg.Tensor2D) for r in result)
        return [list(result)]
    if n_in == 1:
        assert len(result) == n_out and all(isinstance(r, mg.Tensor2D) for r in result)
        return [[r] for r in result]
    assert len(result) == n_out and all(isinstance(r, tuple) and len(r) == n_in for r in result)
    return [list(r) for r in result]


def _args(xs: list[Any]) -> Any:
    return xs[0] if len(xs) == 1 else tuple(xs)


# -- against torch ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["reverse-mode", "forward-mode"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jacobian_equals_torch_reshaped_row_major(backend: str, case: Case, strategy: str) -> None:
    xs, ts = _inputs(case)
    ours = AF.jacobian(case.mg_fn, _args(xs), strategy=strategy)
    theirs = TF.jacobian(case.torch_fn, _args(ts))
    outs = case.torch_fn(*ts)
    outs = outs if isinstance(outs, tuple) else (outs,)
    n_out, n_in = len(outs), len(xs)
    blocks = _blocks(ours, n_out, n_in)
    ref = [[theirs]] if n_out == n_in == 1 else [list(theirs)] if n_out == 1 else [[t] for t in theirs]
    if n_out > 1 and n_in > 1:
        ref = [list(r) for r in theirs]
    for i, o in enumerate(outs):
        for j, x in enumerate(xs):
            block = blocks[i][j]
            assert block.shape == (o.numel(), x.nrows * x.ncols)
            assert block.dtype == "float64" and block.backend == backend and not block.requires_grad
            _close(block, ref[i][j], rows=o.numel())


@pytest.mark.parametrize("strategy", ["reverse-mode", "forward-mode"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hessian_equals_torch_reshaped_row_major(backend: str, case: Case, strategy: str) -> None:
    mg_f, t_f = _scalar(case)
    xs, ts = _inputs(case)
    ours = AF.hessian(mg_f, _args(xs), outer_jacobian_strategy=strategy)
    theirs = TF.hessian(t_f, _args(ts))
    n = len(xs)
    blocks = _blocks(ours, n, n)
    ref = [[theirs]] if n == 1 else [list(r) for r in theirs]
    for i, xi in enumerate(xs):
        for j, xj in enumerate(xs):
            assert blocks[i][j].shape == (xi.nrows * xi.ncols, xj.nrows * xj.ncols)
            _close(blocks[i][j], ref[i][j], rows=xi.nrows * xi.ncols)
    if n == 1:  # a Hessian is symmetric
        np.testing.assert_allclose(_np(ours), _np(ours).T, rtol=1e-10, atol=1e-12)


def _random_like(xs: list[Any], seed: int) -> tuple[list[mg.Tensor2D], list[Any]]:
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=tuple(x.shape)) for x in xs]
    return [mg.Tensor2D(a.tolist(), dtype="float64") for a in arrays], [torch.tensor(a) for a in arrays]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vjp_and_jvp_equal_torch(backend: str, case: Case) -> None:
    xs, ts = _inputs(case)
    touts = case.torch_fn(*ts)
    tuple_out = isinstance(touts, tuple)
    touts = touts if tuple_out else (touts,)
    mv, tv = _random_like(list(touts), seed=2)
    out, res = AF.vjp(case.mg_fn, _args(xs), mv[0] if not tuple_out else tuple(mv))
    tout, tres = TF.vjp(case.torch_fn, _args(ts), tv[0] if not tuple_out else tuple(tv))
    for a, b in zip(_blocks(out, 1, len(touts))[0], _blocks_t(tout)):
        _close(a, b)
    for a, b in zip(_blocks(res, 1, len(xs))[0], _blocks_t(tres)):
        assert not a.requires_grad
        _close(a, b)

    mv, tv = _random_like(ts, seed=3)
    out, res = AF.jvp(case.mg_fn, _args(xs), _args(mv))
    tout, tres = TF.jvp(case.torch_fn, _args(ts), _args(tv))
    for a, b in zip(_blocks(res, 1, len(touts))[0], _blocks_t(tres)):
        assert not a.requires_grad
        _close(a, b)


def _blocks_t(x: Any) -> list[Any]:
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hvp_and_vhp_equal_torch(backend: str, case: Case) -> None:
    mg_f, t_f = _scalar(case)
    xs, ts = _inputs(case)
    mv, tv = _random_like(ts, seed=4)
    for ours_fn, theirs_fn in ((AF.hvp, TF.hvp), (AF.vhp, TF.vhp)):
        out, res = ours_fn(mg_f, _args(xs), _args(mv))
        tout, tres = theirs_fn(t_f, _args(ts), _args(tv))
        assert isinstance(out, mg.Tensor2D) and out.shape == (1, 1)
        np.testing.assert_allclose(out.item(), tout.item(), rtol=RTOL)
        for a, b in zip(_blocks(res, 1, len(xs))[0], _blocks_t(tres)):
            _close(a, b)


def test_closure_capture_of_the_input_is_not_differentiated(backend: str) -> None:
    """``func`` that also reads the input from a closure: only the argument is differentiated (torch #32576)."""
    x = mg.Tensor2D([[0.5, -1.0, 2.0]], dtype="float64", requires_grad=True)
    tx = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    ours = AF.jacobian(lambda inp: inp * x, x)
    theirs = TF.jacobian(lambda inp: inp * tx, tx)
    _close(ours, theirs, rows=3)
    assert x.grad is None


# -- the convention, by hand ------------------------------------------------------------------


def test_jacobian_of_transpose_is_the_row_major_permutation(backend: str) -> None:
    m, n = 2, 3
    x = mg.Tensor2D([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype="float64")
    jac = _np(AF.jacobian(lambda t: t.T, x))  # f: (2x3) -> (3x2), f[i, j] = x[j, i]
    assert jac.shape == (n * m, m * n)
    for i in range(n):
        for j in range(m):
            for k in range(m):
                for c in range(n):
                    assert jac[i * m + j, k * n + c] == (1.0 if (k, c) == (j, i) else 0.0)


def test_jacobian_of_a_matrix_product_is_a_kronecker_product(backend: str) -> None:
    """Row-major vec: vec(A X) = (A kron I) vec(X) and vec(X B) = (I kron B^T) vec(X)."""
    rng = np.random.default_rng(0)
    a, x, b = rng.normal(size=(4, 2)), rng.normal(size=(2, 3)), rng.normal(size=(3, 5))
    A, X, B = (mg.Tensor2D(m.tolist(), dtype="float64") for m in (a, x, b))
    np.testing.assert_allclose(_np(AF.jacobian(lambda t: A @ t, X)), np.kron(a, np.eye(3)), atol=1e-15)
    np.testing.assert_allclose(_np(AF.jacobian(lambda t: t @ B, X)), np.kron(np.eye(2), b.T), atol=1e-15)


def test_hessian_of_a_quadratic_form(backend: str) -> None:
    """f(x) = x^T A x for a column x: H = A + A^T."""
    a = np.array([[1.0, 2.0, 0.0], [-1.0, 3.0, 4.0], [0.5, 0.0, -2.0]])
    A = mg.Tensor2D(a.tolist(), dtype="float64")
    x = mg.Tensor2D([[0.3], [-0.2], [0.9]], dtype="float64")
    np.testing.assert_allclose(_np(AF.hessian(lambda t: t.T @ A @ t, x)), a + a.T, atol=1e-14)


@given(shapes(max_rows=3, max_cols=3), shapes(max_rows=3, max_cols=3), st.integers(0, 2**16))
def test_jacobian_agrees_with_vjp_and_jvp(in_shape: tuple[int, int], out_rows_cols: tuple[int, int], seed: int) -> None:
    """v^T J = vjp(v) and J u = jvp(u), read through the row-major convention, for shapes 1x1, 1xn, mx1, ..."""
    (m, n), (p, _) = in_shape, out_rows_cols
    rng = np.random.default_rng(seed)
    A = mg.Tensor2D(rng.normal(size=(p, m)).tolist(), dtype="float64")
    x = mg.Tensor2D(rng.normal(size=(m, n)).tolist(), dtype="float64")

    def f(t: mg.Tensor2D) -> mg.Tensor2D:
        return (A @ t).tanh() * t.sum(axis=0)

    v = rng.normal(size=(p, n))
    u = rng.normal(size=(m, n))
    jac = _np(AF.jacobian(f, x))
    _, vj = AF.vjp(f, x, mg.Tensor2D(v.tolist(), dtype="float64"))
    _, ju = AF.jvp(f, x, mg.Tensor2D(u.tolist(), dtype="float64"))
    np.testing.assert_allclose(v.reshape(-1) @ jac, _np(vj).reshape(-1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jac @ u.reshape(-1), _np(ju).reshape(-1), rtol=1e-10, atol=1e-12)


def test_float32_input_gives_a_float32_jacobian(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float32")
    jac = AF.jacobian(lambda t: t * t, x)
    assert jac.dtype == "float32" and jac.tolist() == [[2.0, 0.0], [0.0, 4.0]]


def test_vectorize_is_accepted_and_changes_nothing(backend: str) -> None:
    case = CASES[0]
    xs, _ = _inputs(case)
    np.testing.assert_array_equal(
        _np(AF.jacobian(case.mg_fn, xs[0], vectorize=True)), _np(AF.jacobian(case.mg_fn, xs[0]))
    )


def test_scalar_v_may_be_left_out(backend: str) -> None:
    x = mg.Tensor2D([[2.0]], dtype="float64")
    assert AF.vjp(lambda t: t * t * t, x)[1].item() == 12.0
    assert AF.jvp(lambda t: t * t * t, x)[1].item() == 12.0
    assert AF.hvp(lambda t: t * t * t, x)[1].item() == 12.0
    assert AF.vhp(lambda t: t * t * t, x)[1].item() == 12.0


# -- nesting ----------------------------------------------------------------------------------


def test_results_nest_like_torch(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    y = mg.Tensor2D([[3.0], [4.0], [5.0]], dtype="float64")
    single = AF.jacobian(lambda a: a * 2.0, x)
    assert isinstance(single, mg.Tensor2D)
    one_tuple = AF.jacobian(lambda a: a * 2.0, (x,))
    assert isinstance(one_tuple, tuple) and len(one_tuple) == 1 and one_tuple[0].shape == (2, 2)
    many_in = AF.jacobian(lambda a, b: a.sum() * b, (x, y))
    assert isinstance(many_in, tuple) and [t.shape for t in many_in] == [(3, 2), (3, 3)]
    many_out = AF.jacobian(lambda a: (a, a.sum()), x)
    assert isinstance(many_out, tuple) and [t.shape for t in many_out] == [(2, 2), (1, 2)]
    both = AF.jacobian(lambda a, b: (a, b.T), (x, y))
    assert [[t.shape for t in row] for row in both] == [[(2, 2), (2, 3)], [(3, 2), (3, 3)]]
    hess = AF.hessian(lambda a, b: (a @ b[:2]).sum(), (x, y))
    assert [[t.shape for t in row] for row in hess] == [[(2, 2), (2, 3)], [(3, 2), (3, 3)]]
    out, res = AF.vjp(lambda a, b: (a * 2.0, b), (x, y), (x, y))
    assert isinstance(out, tuple) and isinstance(res, tuple) and len(out) == len(res) == 2
    out, res = AF.jvp(lambda a: (a, a.sum()), x, x)
    assert isinstance(out, tuple) and isinstance(res, tuple) and res[1].item() == 3.0
    out, res = AF.hvp(lambda a, b: (a * a).sum() + b.sum(), (x, y), (x, y))
    assert isinstance(out, mg.Tensor2D) and isinstance(res, tuple) and res[0].tolist() == [[2.0, 4.0]]


# -- strict -------------------------------------------------------------------------------------


def _strict_call(lib: str, name: str, f: Callable[..., Any], xs: tuple[Any, ...], create_graph: bool) -> Any:
    module = AF if lib == "mg" else TF
    fn = getattr(module, name)
    if name in ("jacobian", "hessian"):
        return fn(f, xs, strict=True, create_graph=create_graph)
    v = xs
    if name == "vjp":
        out = f(*xs)
        v = (
            out.detach() * 0.0 + 1.0
            if lib == "torch"
            else mg.Tensor2D(out.detach().tolist(), dtype="float64") * 0.0 + 1.0
        )
    return fn(f, xs, v, strict=True, create_graph=create_graph)


STRICT_FUNCS = {
    "unused": (lambda x, y: (x * x).sum(), lambda x, y: (x * x).sum()),
    "separable": (lambda x, y: (x * x).sum() + (y * y * y).sum(), lambda x, y: (x * x).sum() + (y * y * y).sum()),
    "linear-in-y": (lambda x, y: (x * x).sum() + (y * 2.0).sum(), lambda x, y: (x * x).sum() + (y * 2.0).sum()),
    "coupled": (lambda x, y: (x * y).tanh().sum(), lambda x, y: (x * y).tanh().sum()),
}


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("name", ["vjp", "jvp", "jacobian", "hessian", "hvp", "vhp"])
@pytest.mark.parametrize("kind", list(STRICT_FUNCS))
def test_strict_raises_where_torch_raises(kind: str, name: str, create_graph: bool) -> None:
    mg_f, t_f = STRICT_FUNCS[kind]
    xs = (mg.Tensor2D([[0.5, 1.5]], dtype="float64"), mg.Tensor2D([[2.0, -1.0]], dtype="float64"))
    ts = (torch.tensor([[0.5, 1.5]], dtype=torch.float64), torch.tensor([[2.0, -1.0]], dtype=torch.float64))
    try:
        _strict_call("torch", name, t_f, ts, create_graph)
    except RuntimeError as exc:
        message = str(exc)
    else:
        _strict_call("mg", name, mg_f, xs, create_graph)
        return
    named = re.findall(r"input (\d)", message)
    assert len(named) == 1, "torch's message should name one input"
    index = named[0]
    if name in ("jacobian", "hessian") and "when create_graph=True" in message:
        index = r"\d"  # torch's jacobian names the OUTPUT index there (`input {i}`, i the output): a torch slip
    with pytest.raises(mg.GraphError, match=rf"^{name}\(strict=True\): .*\binput {index}\b") as err:
        _strict_call("mg", name, mg_f, xs, create_graph)
    assert "test_autograd_functional.py" in str(err.value)  # the error points at the caller's line


def test_strict_names_the_output_that_does_not_require_grad(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    const = mg.Tensor2D([[1.0]], dtype="float64")
    with pytest.raises(mg.GraphError, match=r"output 1 of func \(1x1\) does not require grad"):
        AF.jacobian(lambda t: (t * 2.0, const), x, strict=True)


def test_jacobian_strict_names_output_and_input(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    y = mg.Tensor2D([[3.0]], dtype="float64")
    for strategy in ("reverse-mode", "forward-mode"):
        with pytest.raises(mg.GraphError, match=r"output 1 \(1x1\) does not depend on input 0 \(1x2\)"):
            AF.jacobian(lambda a, b: (a * b, b * 2.0), (x, y), strict=True, strategy=strategy)


def test_without_strict_independent_parts_are_zeros(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    y = mg.Tensor2D([[3.0], [4.0]], dtype="float64")
    const = mg.Tensor2D([[7.0]], dtype="float64")

    def f(a: mg.Tensor2D, b: mg.Tensor2D) -> tuple[mg.Tensor2D, mg.Tensor2D]:
        return a * 2.0, const

    for strategy in ("reverse-mode", "forward-mode"):
        (jxa, jya), (jxc, jyc) = AF.jacobian(f, (x, y), strategy=strategy)
        assert jxa.tolist() == [[2.0, 0.0], [0.0, 2.0]]
        assert jya.tolist() == [[0.0, 0.0], [0.0, 0.0]]
        assert jxc.tolist() == [[0.0, 0.0]] and jyc.tolist() == [[0.0, 0.0]]
    assert AF.vjp(f, (x, y), (x, const))[1][1].tolist() == [[0.0], [0.0]]
    assert AF.jvp(f, (x, y), (x, y))[1][1].tolist() == [[0.0]]
    hess = AF.hessian(lambda a, b: (a * 2.0).sum(), (x, y))
    assert all(t.tolist() == [[0.0] * t.ncols] * t.nrows for row in hess for t in row)
    assert AF.hvp(lambda a, b: (a * a).sum(), (x, y), (x, y))[1][1].tolist() == [[0.0], [0.0]]


# -- create_graph -------------------------------------------------------------------------------


def _leaf(rows: list[list[float]]) -> mg.Tensor2D:
    return mg.Tensor2D(rows, dtype="float64", requires_grad=True)


def _f(t: mg.Tensor2D) -> mg.Tensor2D:
    return (t @ t.T).tanh() * t.sum(axis=1)


def _s(t: mg.Tensor2D) -> mg.Tensor2D:
    return (Cube.apply(t) * t.sigmoid()).sum()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x: AF.jacobian(_f, x, create_graph=True), id="jacobian"),
        pytest.param(lambda x: AF.jacobian(_f, x, create_graph=True, strategy="forward-mode"), id="jacobian-fwd"),
        pytest.param(lambda x: AF.hessian(_s, x, create_graph=True), id="hessian"),
        pytest.param(
            lambda x: AF.hessian(_s, x, create_graph=True, outer_jacobian_strategy="forward-mode"), id="hessian-fwd"
        ),
        pytest.param(lambda x: AF.vjp(_f, x, x * 2.0 + 0.5, create_graph=True), id="vjp"),
        pytest.param(lambda x: AF.jvp(_f, x, x * x, create_graph=True), id="jvp"),
        pytest.param(lambda x: AF.hvp(_s, x, x * 3.0 - 1.0, create_graph=True), id="hvp"),
        pytest.param(lambda x: AF.vhp(_s, x, x * 3.0 - 1.0, create_graph=True), id="vhp"),
    ],
)
def test_create_graph_results_are_differentiable_again(backend: str, make: Callable[..., Any]) -> None:
    x = _leaf([[0.3, -0.7], [0.5, 0.2]])

    def flat(t: mg.Tensor2D) -> tuple[mg.Tensor2D, ...]:
        res = make(t)
        items = res if isinstance(res, tuple) else (res,)
        out = tuple(r for r in items if isinstance(r, mg.Tensor2D))
        assert out and all(r.requires_grad for r in out)
        return out

    assert mg.gradcheck(flat, [x])
    assert x.grad is None


def test_create_graph_flows_back_to_the_inputs_as_torch(backend: str) -> None:
    rows = [[0.3, -0.7], [0.5, 0.2]]
    x = _leaf(rows)
    tx = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    w = np.random.default_rng(0).normal(size=(4, 4))
    (AF.hessian(_s, x, create_graph=True) * mg.Tensor2D(w.tolist(), dtype="float64")).sum().backward()
    (
        TF.hessian(lambda t: (t**3 * torch.sigmoid(t)).sum(), tx, create_graph=True).reshape(4, 4) * torch.tensor(w)
    ).sum().backward()
    np.testing.assert_allclose(_np(x.grad), tx.grad.numpy(), rtol=1e-10)


def test_without_create_graph_results_are_cut_and_grad_is_untouched(backend: str) -> None:
    x = _leaf([[0.3, -0.7], [0.5, 0.2]])
    results = [
        AF.jacobian(_f, x),
        AF.jacobian(_f, x, strategy="forward-mode"),
        AF.hessian(_s, x),
        *AF.vjp(_f, x, x),
        *AF.jvp(_f, x, x),
        *AF.hvp(_s, x, x),
        *AF.vhp(_s, x, x),
    ]
    assert all(isinstance(r, mg.Tensor2D) and r.is_leaf and not r.requires_grad for r in results)
    assert x.grad is None


def test_works_under_no_grad(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 2.0]], dtype="float64")
    with mg.no_grad():
        jac = AF.jacobian(lambda t: t * t, x)
        hess = AF.hessian(lambda t: (t * t * t).sum(), x, create_graph=True)
        assert not mg.is_grad_enabled()
    assert jac.tolist() == [[2.0, 0.0], [0.0, 4.0]]
    assert hess.tolist() == [[6.0, 0.0], [0.0, 12.0]]


# -- validation ---------------------------------------------------------------------------------


def _x() -> mg.Tensor2D:
    return mg.Tensor2D([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype="float64")


@pytest.mark.parametrize("name", ["vjp", "jvp", "jacobian", "hessian", "hvp", "vhp"])
def test_inputs_must_be_a_tensor_or_a_tuple(name: str) -> None:
    fn = getattr(AF, name)
    x = _x()
    with pytest.raises(
        mg.ArgumentTypeError,
        match=rf"^{name}: inputs must be a Tensor2D or a tuple of Tensor2D, got list; make it a tuple",
    ):
        fn(lambda t: t.sum(), [x])
    with pytest.raises(mg.ArgumentTypeError, match=rf"{name}: inputs .* but entry 1 is a float"):
        fn(lambda a, b: a.sum(), (x, 2.0))
    with pytest.raises(mg.ArgumentTypeError, match=rf"{name}: inputs must be .* got int"):
        fn(lambda t: t.sum(), 3)
    with pytest.raises(mg.ArgumentError, match=rf"{name}: inputs is an empty tuple"):
        fn(lambda: x.sum(), ())
    with pytest.raises(mg.ArgumentTypeError, match=rf"{name}: func must be a function"):
        fn(x, x)
    with pytest.raises(mg.DTypeError, match=rf"{name}: input 0 \(2x3\) is int64"):
        fn(lambda t: t.sum(), mg.Tensor2D([[1, 2, 3], [4, 5, 6]], dtype="int64"))
    v = (x,) if name in ("jvp", "hvp", "vhp") else ()
    with pytest.raises(
        mg.ArgumentTypeError, match=rf"{name}: func must return a Tensor2D or a tuple of Tensor2D, got float"
    ):
        fn(lambda t: 1.0, x, *v)
    with pytest.raises(mg.ArgumentTypeError, match=rf"{name}: func must return .* got list; make it a tuple"):
        fn(lambda t: [t.sum()], x, *v)


def test_v_is_checked_against_what_it_multiplies() -> None:
    x = _x()
    with pytest.raises(mg.ShapeError, match=r"jvp: v is 3x2 but input 0 is 2x3; v must have the shape"):
        AF.jvp(lambda t: t * 2.0, x, x.T)
    with pytest.raises(mg.ShapeError, match=r"vjp: v is 2x3 but output 0 is 3x3"):
        AF.vjp(lambda t: t.T @ t, x, x)
    with pytest.raises(mg.ShapeError, match=r"hvp: v\[1\] is 2x3 but input 1 is 1x1"):
        AF.hvp(lambda a, b: (a * b).sum(), (x, x[:1, :1]), (x, x))
    with pytest.raises(mg.ShapeError, match=r"vhp: v holds 2 tensor\(s\) but there is 1 input\(s\)"):
        AF.vhp(lambda t: t.sum(), x, (x, x))
    with pytest.raises(mg.DTypeError, match=r"jvp: v is float32 but input 0 is float64"):
        AF.jvp(lambda t: t * 2.0, x, x.float())
    with pytest.raises(mg.BackendError, match=r"jvp: v is on python but input 0 is on numpy"):
        AF.jvp(lambda t: t * 2.0, x.to(backend="numpy"), x.to(backend="python"))
    with pytest.raises(
        mg.GraphError, match=r"vjp: v can be left out only when there is a single 1x1 output, .* are 2x3"
    ):
        AF.vjp(lambda t: t * 2.0, x)
    with pytest.raises(mg.GraphError, match=r"jvp: v can be left out only .* inputs are 2x3, 1x1"):
        AF.jvp(lambda a, b: a * b, (x, x[:1, :1]))


@pytest.mark.parametrize("name", ["hessian", "hvp", "vhp"])
def test_hessians_need_a_scalar_function(name: str) -> None:
    fn = getattr(AF, name)
    x = _x()
    args = (x,) if name == "hessian" else (x, x)
    with pytest.raises(mg.ShapeError, match=rf"{name}: func must return a 1x1 Tensor2D .* got 2x3"):
        fn(lambda t: t * 2.0, *args)
    with pytest.raises(
        mg.ArgumentTypeError, match=rf"{name}: func must return a single 1x1 Tensor2D, got a tuple of 2"
    ):
        fn(lambda t: (t.sum(), t.sum()), *args)


def test_unknown_strategy() -> None:
    with pytest.raises(
        mg.ArgumentError, match=r'jacobian: strategy must be "reverse-mode" or "forward-mode", got \'forward\''
    ):
        AF.jacobian(lambda t: t, _x(), strategy="forward")
    with pytest.raises(mg.ArgumentError, match=r"hessian: outer_jacobian_strategy must be"):
        AF.hessian(lambda t: t.sum(), _x(), outer_jacobian_strategy="both")


def test_submodule_is_reachable_both_ways() -> None:
    import matgrad.autograd.functional as by_path

    assert mg.autograd.functional is AF is by_path
    assert set(AF.__all__) == {"vjp", "jvp", "jacobian", "hessian", "hvp", "vhp"}
