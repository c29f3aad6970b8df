"""Every op against PyTorch at the edges of its domain, forward and backward, on both backends.

One table drives it: a row names an op, its PyTorch equivalent and the edge inputs to try: 0 and
-0, +-1, +-inf, NaN, values near the range limits (``H`` = 1e30 / 1e300, ``T`` = 1e-30 / 1e-300,
``S`` = 3e19 / 1e155, whose square overflows), ties, exact kinks, exponents 0 and 1, targets of
exactly 0 and 1. Binary element-wise ops see every pair of edge values. For each row, backend and
dtype the test compares with PyTorch (in the same dtype):

* the forward value;
* the input gradients for a random finite upstream gradient and for an infinite one, each
  computed twice: by the fast rules (plain ``backward``) and by the recorded ones
  (``create_graph=True``), which take different code paths in several ops;
* second derivatives (the gradient of ``sum(grad * V)`` for a random ``V``) through the recorded
  rules, on the rows marked ``second``.

Equality is NaN-aware and inf-aware (same positions, same signs), with a relative tolerance for
the dtype; ``scaled`` rows (sums and products of many terms) measure the error against the
largest magnitude in the result instead, as a summation order may legitimately change tiny
results. This is where the four numeric classes of issue 11 would show: 0 * inf at an edge, a
guard (``where``) that cuts a gradient path, cancellation, an intermediate out of range.

Where matgrad differs from PyTorch on purpose, the row carries a ``Differs`` entry: the value
matgrad gives instead, and why (docs/reliability.md, "Where matgrad differs from PyTorch on
purpose", lists the same cases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pytest

import matgrad as mg
import matgrad.functional as F
from matgrad import ops

torch = pytest.importorskip("torch")
TF = torch.nn.functional

# NumPy's own floating-point warnings (inf - inf, 0 * inf, overflow) from the numpy backend's
# binary kernels are not what this module tests: quieting them would cost an errstate per op.
pytestmark = [
    pytest.mark.filterwarnings("error"),
    pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning"),
]

DTYPES = ["float32", "float64"]
RTOL = {"float32": 1e-5, "float64": 1e-12}
# Symbolic edge values, made concrete per dtype.
NEAR_LIMIT = {
    "float32": {"H": 1e30, "T": 1e-30, "S": 3e19},
    "float64": {"H": 1e300, "T": 1e-300, "S": 1e155},
}
EDGES = ["0", "-0", "1", "-1", "0.5", "-2", "inf", "-inf", "nan", "H", "-H", "T", "-T", "S", "-S"]
# Finite edges, also for second derivatives (without -0: the sign of an infinite second derivative
# at -0 is an accident of how each library writes its rules).
FINITE = ["0", "1", "-1", "0.5", "-2", "H", "-H", "T", "-T", "S", "-S", "0"]

Rows = list[list[Any]]


def value(v: Any, dtype: str) -> float:
    if not isinstance(v, str):
        return float(v)
    sign = -1.0 if v.startswith("-") and v != "-0" else 1.0
    key = v.lstrip("-")
    if key in NEAR_LIMIT[dtype]:
        return sign * NEAR_LIMIT[dtype][key]
    return float(v)


def concrete(rows: Rows, dtype: str) -> np.ndarray:
    return np.array([[value(v, dtype) for v in row] for row in rows], dtype=dtype)


def row(values: Sequence[Any]) -> Rows:
    return [list(values)]


def pairs(values: Sequence[Any]) -> list[Rows]:
    """Every ordered pair of ``values``, as two 1 x len^2 rows."""
    return [row([a for a in values for _ in values]), row([b for _ in values for b in values])]


# Matrices for reductions and the softmax family: ties, kinks, a row of -inf, +inf, NaN, and
# values near the range limits next to ordinary ones.
LINES: Rows = [
    ["1", "1", "-1", "0.5"],
    ["0", "0", "0", "0"],
    ["-inf", "-inf", "-inf", "-inf"],
    ["inf", "1", "-2", "0"],
    ["nan", "1", "-1", "0"],
    ["H", "-H", "0", "1"],
    ["T", "-T", "0", "T"],
    ["H", "H", "1", "-1"],
    ["-inf", "0.5", "-inf", "1"],
    ["S", "0.5", "-S", "S"],
]
FINITE_LINES: Rows = [r for r in LINES if not any(v in ("inf", "-inf", "nan") for v in r)]


@dataclass(frozen=True)
class Differs:
    """Where matgrad gives another value than PyTorch on purpose.

    ``expect(inputs, upstream, torch_value)`` returns the value matgrad gives (numpy arrays);
    ``what`` is ``"forward"``, ``"grad"`` (finite upstream), ``"grad_inf"`` (infinite upstream) or
    ``"second"`` (then ``expect`` also takes the vector ``V`` of the second derivative).
    """

    what: str
    expect: Callable[..., np.ndarray]
    reason: str
    input: int | None = None  # for gradients: which input (None: all)


@dataclass(frozen=True)
class Edge:
    name: str
    fn: Callable[..., Any]  # on Tensor2D inputs
    ref: Callable[..., Any]  # the same on torch tensors
    inputs: list[list[Rows]]  # input sets; each a list of matrices (symbolic values)
    grads: tuple[int, ...] | None = None  # inputs that get gradients (None: all)
    scaled: bool = False
    second: bool = True
    differs: tuple[Differs, ...] = field(default_factory=tuple)


# -- intended differences ---------------------------------------------------------------------


def _zero_where(mask_fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """PyTorch's value, except 0 where ``mask_fn(inputs, upstream)`` holds (selection, not 0 * inf)."""

    def expect(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
        return np.where(mask_fn(inputs, upstream, want), 0.0, want).astype(want.dtype)

    return expect


def _not_selected_extreme(kind: str, axis: int | None) -> Callable[..., np.ndarray]:
    def mask(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
        a = inputs[0]
        red = np.max if kind == "max" else np.min
        top = red(a, axis=axis, keepdims=True)
        return (a != top) & ~np.isnan(top)

    return mask


SELECTION = (
    "the rule selects (where(mask, G, 0)) instead of multiplying by a 0/1 mask: an entry whose "
    "derivative is 0 gets 0 even from an infinite upstream gradient, where PyTorch's inf * 0 is NaN"
)
ABS_AT_ZERO = Differs(
    "grad_inf",
    _zero_where(lambda x, g, w: (x[0] == 0) | np.isnan(x[0])),
    "abs'(x) = 0 at 0 and at NaN (sign(x) is 0 there) is selected, not sign(x) * G: " + SELECTION,
)


def _at(mask_fn: Callable[[np.ndarray], np.ndarray], value_fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """PyTorch's value, except ``value_fn(inputs, upstream)`` where ``mask_fn(first input)`` holds."""

    def expect(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            mine = np.asarray(value_fn(inputs, upstream), dtype=np.float64)
        return np.where(mask_fn(inputs[0]), mine, want).astype(want.dtype)

    return expect


def _pow_value(p: float) -> Callable[..., np.ndarray]:
    return lambda inputs, g: np.power(inputs[0], p)


def _pow_rule(p: float) -> Callable[..., np.ndarray]:
    """``G * p * x ** (p - 1)`` with x ** (p - 1) evaluated directly (in float64, then rounded)."""
    return lambda inputs, g: g.astype(np.float64) * (p * np.power(inputs[0].astype(np.float64), p - 1))


def _near_limit(x: np.ndarray) -> np.ndarray:
    big = np.abs(x) >= np.float64(NEAR_LIMIT[str(x.dtype)]["S"]) * 0.999
    return big & np.isfinite(x) & (np.abs(x) < NEAR_LIMIT[str(x.dtype)]["H"] * 0.999)


POW_DIFFERS: dict[float, tuple[Differs, ...]] = {
    -0.5: (
        Differs(
            "forward",
            _at(lambda x: np.signbit(x) & ((x == 0) | np.isneginf(x)), _pow_value(-0.5)),
            "x ** -0.5 follows NumPy and C99 pow (+inf at -0, 0 at -inf); PyTorch computes it as "
            "rsqrt (-inf at -0, NaN at -inf)",
        ),
    ),
    -1.0: (
        Differs(
            "grad_inf",
            _at(_near_limit, _pow_rule(-1.0)),
            "the rule evaluates x ** (p - 1) directly: at x = S its tiny value times an infinite G is "
            "inf, where PyTorch's intermediate underflows to 0 and 0 * inf is NaN",
        ),
    ),
}


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax in x's dtype, NaN on a line holding +inf or NaN or only -inf (as matgrad's)."""
    with np.errstate(all="ignore"):
        top = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - top)
        return e / np.sum(e, axis=axis, keepdims=True)


def _lse_grad(axis: int) -> Callable[..., np.ndarray]:
    def expect(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
        x = inputs[0]
        mine = (upstream.astype(np.float64) * _softmax(x.astype(np.float64), axis)).astype(want.dtype)
        with np.errstate(all="ignore"):
            special = np.any(
                np.isposinf(x) | (np.abs(x) >= NEAR_LIMIT[str(x.dtype)]["S"] * 0.999), axis=axis, keepdims=True
            )
        return np.where(special, mine, want)

    return expect


def _lse_second(axis: int) -> Callable[..., np.ndarray]:
    """d/dx sum(G softmax(x) V) = G s (V - sum(V s)), from an accurate softmax, on the huge lines."""

    def expect(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = inputs[0]
        sm = _softmax(x.astype(np.float64), axis)
        mine = upstream.astype(np.float64) * sm * (v - np.sum(v * sm, axis=axis, keepdims=True))
        special = np.any(np.abs(x) >= NEAR_LIMIT[str(x.dtype)]["S"] * 0.999, axis=axis, keepdims=True)
        return np.where(special, mine, want).astype(want.dtype)

    return expect


def _lse_differs(axis: int) -> tuple[Differs, ...]:
    reason = (
        "logsumexp's gradient is G * softmax(x), not G * exp(x - logsumexp(x)): where the maximum is "
        "tied at 1e30 / 1e300 the rounded logsumexp makes PyTorch's weights sum to 2 (and its second "
        "derivative is off as much); a line holding +inf has a NaN softmax, so its whole gradient is "
        "NaN (PyTorch: NaN at the +inf only)"
    )
    return (
        Differs("grad", _lse_grad(axis), reason),
        Differs("grad_inf", _lse_grad(axis), reason),
        Differs("second", _lse_second(axis), reason),
    )


FUSED = (
    "the fused loss computes (softmax(x) - target) * G directly: with an infinite upstream gradient its "
    "entries are +-inf (NaN only where softmax(x) - target is 0 or NaN), where PyTorch's composed rule "
    "subtracts inf - inf"
)


def _hard_ce_inf(reduction: str) -> Callable[..., np.ndarray]:
    def expect(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
        x = inputs[0]
        n = x.shape[0]
        onehot = np.zeros_like(x)
        onehot[np.arange(n), targets_for(x)] = 1.0
        with np.errstate(all="ignore"):
            d = (_softmax(x, 1) - onehot) * upstream.reshape(-1, 1)[: n if reduction == "none" else 1]
            return (d / n if reduction == "mean" else d).astype(want.dtype)

    return expect


def _soft_ce_inf(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
    x, t = inputs
    with np.errstate(all="ignore"):
        d = (_softmax(x, 1) * t.sum(axis=1, keepdims=True) - t) * upstream
        return (d / x.shape[0]).astype(want.dtype)


def _bce_limit(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
    x, y = (a.astype(np.float64) for a in inputs)
    with np.errstate(all="ignore"):
        tail = np.log1p(np.exp(-np.abs(x)))
        below, above = np.maximum(-x, 0) + tail, np.maximum(x, 0) + tail
        mine = np.where(y == 0, 0.0, y * below) + np.where(y == 1, 0.0, (1 - y) * above)
    return np.where(np.isinf(x), mine, want).astype(want.dtype)


BCE_DIFFERS = (
    Differs(
        "forward",
        _bce_limit,
        "at an infinite logit the loss is its limit (0 for a matching target, +inf otherwise): a term "
        "whose weight y or 1 - y is exactly 0 adds nothing; PyTorch's formula gives NaN at x = -inf",
    ),
)


RELU_AT_NAN = (
    "relu's rule selects [x > 0] at multiply speed, so a NaN input gets gradient 0 where PyTorch "
    "passes G on; the output, and the loss, are NaN there already"
)


def _extreme_differs(kind: str, axis: int | None) -> tuple[Differs, ...]:
    return (Differs("grad_inf", _zero_where(_not_selected_extreme(kind, axis)), SELECTION),)


def _soft_ce_forward(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
    """PyTorch sums t * log_softmax(x) including 0 * -inf = NaN; matgrad skips zero targets."""
    x, t = (a.astype(np.float64) for a in inputs)
    top = np.max(x, axis=1, keepdims=True)
    top = np.where(np.isneginf(top), 0.0, top)
    with np.errstate(all="ignore"):
        logp = (x - top) - np.log(np.sum(np.exp(x - top), axis=1, keepdims=True))
        terms = np.where(t == 0, 0.0, t * logp)
        losses = -terms.sum(axis=1, keepdims=True)
    return losses.mean(keepdims=True).reshape(want.shape).astype(want.dtype)


SOFT_CE_DIFFERS = (
    Differs(
        "forward",
        _soft_ce_forward,
        "a target of exactly 0 adds nothing to the loss, even where its logit is -inf "
        "(PyTorch: 0 * -inf = NaN); its gradient -log_softmax(x) is kept (it is -inf there, as PyTorch's)",
    ),
)


# -- the table --------------------------------------------------------------------------------

SMALL_SET = ["0", "-0", "1", "-2", "inf", "-inf", "nan", "H", "-H", "T", "S"]


def _unary(name: str, fn: Callable[..., Any], ref: Callable[..., Any], **kw: Any) -> Edge:
    """Every edge value in a row, then in a 3x5 matrix; finite ones alone for second derivatives."""
    return Edge(name, fn, ref, [[row(EDGES)], [[EDGES[:5], EDGES[5:10], EDGES[10:]]], [row(FINITE)]], **kw)


def _lines(name: str, fn: Callable[..., Any], ref: Callable[..., Any], **kw: Any) -> Edge:
    columns = [list(r) for r in zip(*LINES)]
    return Edge(name, fn, ref, [[LINES], [columns], [FINITE_LINES]], **kw)


def _binary(name: str, fn: Callable[..., Any], ref: Callable[..., Any], **kw: Any) -> Edge:
    broadcast = [row(SMALL_SET), [["-2"]]]  # (1, n) with (1, 1): the engine sums the gradient back
    column = [[[v] for v in SMALL_SET[:4]], [SMALL_SET[4:8]] * 4]  # (m, 1) with (m, n)
    sets = [pairs(EDGES), broadcast, [broadcast[1], broadcast[0]], column, pairs(FINITE)]
    return Edge(name, fn, ref, sets, **kw)


def targets_for(x: Any) -> list[int]:
    n, c = x.shape
    return [(2 * i + 1) % c for i in range(n)]


def _ce(reduction: str) -> Edge:
    def fn(x: mg.Tensor2D) -> mg.Tensor2D:
        return F.cross_entropy(x, targets_for(x), reduction=reduction)

    def ref(x: Any) -> Any:
        out = TF.cross_entropy(x, torch.tensor(targets_for(x)), reduction=reduction)
        return out.reshape(-1, 1) if reduction == "none" else out.reshape(1, 1)

    differs = (Differs("grad_inf", _hard_ce_inf(reduction), FUSED),)
    return Edge(f"cross_entropy_{reduction}", fn, ref, [[LINES], [FINITE_LINES]], scaled=True, differs=differs)


SOFT_TARGETS: Rows = [
    ["0", "1", "0", "0"],
    ["0.25", "0.25", "0.25", "0.25"],
    ["1", "0", "0", "0"],
    ["0", "0", "0.5", "0.5"],
]


SOFT_LOGITS: Rows = [
    ["1", "-inf", "0", "-2"],
    ["H", "-H", "0", "1"],
    ["-inf", "0.5", "-inf", "1"],
    ["0", "0", "T", "-T"],
]
SOFT_FINITE_LOGITS: Rows = [
    ["1", "-2", "0", "0.5"],
    ["H", "-H", "0", "1"],
    ["S", "0.5", "-S", "1"],
    ["0", "0", "T", "-T"],
]


def _power(p: float) -> Callable[[Any], Any]:
    return lambda a: a**p


def _where_fn(c: mg.Tensor2D, a: mg.Tensor2D, b: mg.Tensor2D) -> mg.Tensor2D:
    return mg.where(c.detach() > 0, a, b)


def _where_ref(c: Any, a: Any, b: Any) -> Any:
    return torch.where(c.detach() > 0, a, b)


DROPOUT_MASK: dict[str, np.ndarray] = {}


def _dropout(x: mg.Tensor2D) -> mg.Tensor2D:
    mg.manual_seed(3)
    out = F.dropout(x, 0.5)
    DROPOUT_MASK["mask"] = np.array(x._backend.to_numpy(out.op.mask) if out.op is not None else 0)
    return out


def _dropout_ref(x: Any) -> Any:
    return x * torch.tensor(DROPOUT_MASK["mask"], dtype=x.dtype) * 2.0


def _mask_dropped(inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray) -> np.ndarray:
    return DROPOUT_MASK["mask"] == 0


TABLE: list[Edge] = [
    # element-wise binary: every pair of edge values, and broadcast operands
    _binary("add", lambda a, b: a + b, lambda a, b: a + b),
    _binary("sub", lambda a, b: a - b, lambda a, b: a - b),
    _binary("mul", lambda a, b: a * b, lambda a, b: a * b),
    _binary("div", lambda a, b: a / b, lambda a, b: a / b),
    Edge(
        "where",
        _where_fn,
        _where_ref,
        [[row(["1", "-1"] * 8), row([*EDGES, "0"]), row([*reversed(EDGES), "1"])]],
        grads=(1, 2),
    ),
    # element-wise unary
    _unary("neg", lambda a: -a, lambda a: -a),
    *[
        _unary(
            f"pow({p:g})",
            _power(p),
            _power(p),
            differs=POW_DIFFERS.get(p, ()),
        )
        for p in (0.0, 1.0, 2.0, 3.0, 0.5, -1.0, -2.0, 1.5, -0.5)
    ],
    _unary("rpow", lambda a: 2.0**a, lambda a: torch.pow(2.0, a)),
    _unary("exp", lambda a: a.exp(), torch.exp),
    _unary("log", lambda a: a.log(), torch.log),
    _unary("sqrt", lambda a: a.sqrt(), torch.sqrt),
    _unary("abs", lambda a: a.abs(), torch.abs, differs=(ABS_AT_ZERO,)),
    _unary(
        "relu",
        lambda a: a.relu(),
        torch.relu,
        differs=(
            Differs("grad", _zero_where(lambda x, g, w: np.isnan(x[0])), RELU_AT_NAN),
            Differs("grad_inf", _zero_where(lambda x, g, w: np.isnan(x[0])), RELU_AT_NAN),
        ),
    ),
    _unary("leaky_relu", lambda a: a.leaky_relu(0.1), lambda a: TF.leaky_relu(a, 0.1)),
    _unary("sigmoid", lambda a: a.sigmoid(), torch.sigmoid),
    _unary("tanh", lambda a: a.tanh(), torch.tanh),
    _unary("softplus", F.softplus, TF.softplus),
    _unary("softplus_beta", lambda a: F.softplus(a, beta=2.0, threshold=5.0), lambda a: TF.softplus(a, 2.0, 5.0)),
    Edge(
        "dropout",
        _dropout,
        _dropout_ref,
        [[row(EDGES)], [row(FINITE)]],
        differs=(Differs("grad_inf", _zero_where(_mask_dropped), SELECTION),),
    ),
    # matrix products (sums of products: scaled tolerance)
    Edge(
        "matmul",
        lambda a, b: a @ b,
        lambda a, b: a @ b,
        [
            [[["0", "inf"], ["1", "-2"], ["T", "H"]], [["0", "1", "-1"], ["0", "T", "S"]]],
            [[["nan", "1"], ["S", "S"]], [["S", "-inf"], ["S", "0"]]],
            [[["1", "1"], ["2", "-2"]], [["1", "1"], ["-1", "1"]]],  # exact zeros in the product
        ],
        scaled=True,
    ),
    Edge(
        "matmul_at_bt",
        lambda a, b: ops.gemm(a, b, True, True),
        lambda a, b: a.T @ b.T,
        [[[["0", "inf"], ["1", "-2"], ["T", "H"]], [["0", "1", "-1"], ["0", "T", "S"]]]],
        scaled=True,
    ),
    Edge(
        "linear",
        F.linear,
        TF.linear,
        [
            [[["0", "inf", "1"], ["1", "-2", "T"]], [["0", "1", "-1"], ["H", "T", "S"]], [["nan", "1"]]],
            [[["1", "1", "0"], ["2", "-2", "0"]], [["1", "1", "0"], ["-1", "1", "0"]], [["0", "-0"]]],
        ],
        scaled=True,
    ),
    # layout and copies
    _unary("transpose", lambda a: a.T, lambda a: a.T),
    _unary("reshape", lambda a: a.reshape(-1, 1), lambda a: a.reshape(-1, 1)),
    Edge("expand", lambda a: ops.expand(a, 3, a.ncols), lambda a: a.expand(3, -1), [[row(EDGES)], [row(FINITE)]]),
    _unary("clone", lambda a: a.clone(), lambda a: a.clone()),
    _unary("alias", lambda a: a[:, :], lambda a: a[:, :]),
    _unary(
        "to_other_dtype",
        lambda a: a.to("float64" if a.dtype == "float32" else "float32"),
        lambda a: a.to(torch.float64 if a.dtype == torch.float32 else torch.float32),
    ),
    Edge("cat", lambda a, b: mg.cat([a, b, a], axis=1), lambda a, b: torch.cat([a, b, a], 1), [[LINES, LINES]]),
    Edge("index_gather", lambda a: a[[3, 0, 3]], lambda a: a[[3, 0, 3]], [[LINES], [FINITE_LINES]]),
    Edge(
        "index_pairs",
        lambda a: a[[0, 5, 0], [1, 0, 1]],
        lambda a: a[[0, 5, 0], [1, 0, 1]].reshape(-1, 1),
        [[LINES], [FINITE_LINES]],
    ),
    # reductions
    _lines("sum", lambda a: a.sum(), lambda a: a.sum().reshape(1, 1), scaled=True),
    _lines("sum_axis0", lambda a: a.sum(0), lambda a: a.sum(0, keepdim=True), scaled=True),
    _lines("sum_axis1", lambda a: a.sum(1), lambda a: a.sum(1, keepdim=True), scaled=True),
    _lines("mean", lambda a: a.mean(), lambda a: a.mean().reshape(1, 1), scaled=True),
    _lines("mean_axis1", lambda a: a.mean(1), lambda a: a.mean(1, keepdim=True), scaled=True),
    *[
        _lines(
            f"{kind}{'' if axis is None else f'_axis{axis}'}",
            (lambda k, ax: lambda a: getattr(a, k)(ax))(kind, axis),
            (lambda k, ax: lambda a: getattr(torch, "a" + k)(a, dim=(0, 1) if ax is None else ax, keepdim=True))(
                kind, axis
            ),
            differs=_extreme_differs(kind, axis),
        )
        for kind in ("max", "min")
        for axis in (None, 0, 1)
    ],
    # softmax family
    _lines("softmax", lambda a: a.softmax(1), lambda a: torch.softmax(a, 1)),
    _lines("softmax_axis0", lambda a: a.softmax(0), lambda a: torch.softmax(a, 0)),
    _lines("log_softmax", lambda a: a.log_softmax(1), lambda a: torch.log_softmax(a, 1)),
    _lines("log_softmax_axis0", lambda a: a.log_softmax(0), lambda a: torch.log_softmax(a, 0)),
    _lines(
        "logsumexp",
        lambda a: a.logsumexp(1),
        lambda a: torch.logsumexp(a, 1, keepdim=True),
        differs=_lse_differs(1),
    ),
    _lines(
        "logsumexp_axis0",
        lambda a: a.logsumexp(0),
        lambda a: torch.logsumexp(a, 0, keepdim=True),
        differs=_lse_differs(0),
    ),
    # losses
    _ce("mean"),
    _ce("sum"),
    _ce("none"),
    Edge(
        "nll_loss",
        lambda x: F.nll_loss(x, targets_for(x)),
        lambda x: TF.nll_loss(x, torch.tensor(targets_for(x))).reshape(1, 1),
        [[LINES], [FINITE_LINES]],
        scaled=True,
    ),
    Edge(
        "cross_entropy_soft",
        lambda x, t: F.cross_entropy(x, t),
        lambda x, t: TF.cross_entropy(x, t).reshape(1, 1),
        [[SOFT_LOGITS, SOFT_TARGETS], [SOFT_FINITE_LOGITS, SOFT_TARGETS]],
        scaled=True,
        differs=(*SOFT_CE_DIFFERS, Differs("grad_inf", _soft_ce_inf, FUSED, input=0)),
    ),
    Edge(
        "mse_loss",
        F.mse_loss,
        lambda a, b: TF.mse_loss(a, b).reshape(1, 1),
        [pairs(SMALL_SET), pairs(FINITE)],
        scaled=True,
    ),
    Edge(
        "bce_with_logits",
        F.binary_cross_entropy_with_logits,
        lambda x, y: TF.binary_cross_entropy_with_logits(x, y).reshape(1, 1),
        [
            [row(EDGES * 3), row(["0"] * 15 + ["1"] * 15 + ["0.5"] * 15)],
            [row(FINITE * 3), row(["0"] * 12 + ["1"] * 12 + ["0.5"] * 12)],
        ],
        scaled=True,
    ),
    Edge(
        "bce_with_logits_none",
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"),
        lambda x, y: TF.binary_cross_entropy_with_logits(x, y, reduction="none"),
        [
            [row(EDGES * 3), row(["0"] * 15 + ["1"] * 15 + ["0.5"] * 15)],
        ],
        differs=BCE_DIFFERS,
    ),
]


# -- comparison ---------------------------------------------------------------------------------


def mismatches(got: np.ndarray, want: np.ndarray, dtype: str, scaled: bool) -> list[str]:
    """Positions where ``got`` and ``want`` differ: NaN and inf must match exactly."""
    if got.shape != want.shape:
        return [f"shape {got.shape} != {want.shape}"]
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    rtol = RTOL[dtype]
    finite = np.isfinite(w)
    atol = float(np.finfo(dtype).tiny) * 4
    if scaled and finite.any():
        atol = max(atol, rtol * float(np.max(np.abs(w[finite]))))
    with np.errstate(all="ignore"):
        ok = np.where(
            finite,
            np.isfinite(g) & (np.abs(g - w) <= atol + rtol * np.abs(w)),
            (np.isnan(w) & np.isnan(g)) | (w == g),
        )
    return [f"{idx}: got {g[idx]!r}, PyTorch {w[idx]!r}" for idx in zip(*np.nonzero(~ok))]


def apply_differs(
    row_: Edge, what: str, inputs: list[np.ndarray], upstream: np.ndarray, want: np.ndarray, index: int | None = None
) -> np.ndarray:
    for d in row_.differs:
        if d.what == what and (d.input is None or index is None or d.input == index):
            want = d.expect(inputs, upstream, want)
    return want


def upstream_for(shape: tuple[int, ...], dtype: str, infinite: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=shape)
    if infinite:
        return (sign * np.inf).astype(dtype)
    return (sign * rng.uniform(0.5, 2.0, size=shape)).astype(dtype)


def run_row(row_: Edge, backend: str, dtype: str) -> list[str]:
    problems: list[str] = []
    for k, symbolic in enumerate(row_.inputs):
        arrays = [concrete(m, dtype) for m in symbolic]
        grads = row_.grads if row_.grads is not None else tuple(range(len(arrays)))
        label = f"{row_.name} set {k}"

        def make(arrays: list[np.ndarray] = arrays, grads: tuple[int, ...] = grads) -> list[mg.Tensor2D]:
            return [
                mg.Tensor2D(a, dtype=dtype, backend=backend, requires_grad=i in grads) for i, a in enumerate(arrays)
            ]

        def make_torch(arrays: list[np.ndarray] = arrays, grads: tuple[int, ...] = grads) -> list[Any]:
            return [torch.tensor(a).requires_grad_(i in grads) for i, a in enumerate(arrays)]

        xs = make()
        out = row_.fn(*xs)
        txs = make_torch()
        tout = row_.ref(*txs)
        want = apply_differs(row_, "forward", arrays, np.empty(0), tout.detach().numpy())
        problems += [f"{label} forward {m}" for m in mismatches(out.numpy(), want, dtype, row_.scaled)]
        for infinite in (False, True):
            g_np = upstream_for(tuple(out.shape), out.dtype, infinite, seed=k)
            tg = torch.autograd.grad(
                tout, [txs[i] for i in grads], torch.tensor(g_np), retain_graph=True, allow_unused=True
            )
            what = "grad_inf" if infinite else "grad"
            for create_graph in (False, True):
                xs = make()
                out = row_.fn(*xs)
                out.backward(mg.Tensor2D(g_np, dtype=out.dtype, backend=backend), create_graph=create_graph)
                for j, i in enumerate(grads):
                    t_grad = tg[j].numpy() if tg[j] is not None else np.zeros_like(arrays[i])
                    want = apply_differs(row_, what, arrays, g_np, t_grad, i)
                    got = xs[i].grad.detach().numpy() if xs[i].grad is not None else np.zeros_like(arrays[i])
                    path = "recorded" if create_graph else "fast"
                    problems += [
                        f"{label} {what} ({path} rules) of input {i} {m}"
                        for m in mismatches(got, want, dtype, row_.scaled)
                    ]
        if row_.second and all(np.isfinite(a).all() for a in arrays):
            problems += [f"{label} {m}" for m in second_order(row_, make, make_torch, grads, out.shape, dtype, k)]
    return problems


def second_order(
    row_: Edge,
    make: Callable[[], list[mg.Tensor2D]],
    make_torch: Callable[[], list[Any]],
    grads: tuple[int, ...],
    out_shape: tuple[int, int],
    dtype: str,
    seed: int,
) -> list[str]:
    """d/dx sum(dL/dx * V) through the recorded rules, against PyTorch's double backward."""
    g_np = upstream_for(tuple(out_shape), "float64", False, seed=seed + 100)
    xs = make()
    txs = make_torch()
    out = row_.fn(*xs)
    g_np = g_np.astype(out.dtype)
    first = mg.grad(
        out, [xs[i] for i in grads], mg.Tensor2D(g_np, dtype=out.dtype, backend=out.backend), create_graph=True
    )
    tfirst = torch.autograd.grad(row_.ref(*txs), [txs[i] for i in grads], torch.tensor(g_np), create_graph=True)
    vs = [upstream_for(xs[i].shape, dtype, False, seed=seed + 200 + i) for i in grads]
    total = None
    for g, v in zip(first, vs):
        if g is not None and g.requires_grad:
            term = (g * mg.Tensor2D(v, dtype=dtype, backend=g.backend)).sum()
            total = term if total is None else total + term
    ttotal = sum((tg * torch.tensor(v)).sum() for tg, v in zip(tfirst, vs) if tg is not None and tg.requires_grad)
    # A first derivative that does not depend on the inputs (relu's, a linear op's) has no graph on
    # one side or both: its second derivative is zero.
    second: Sequence[Any] = [None] * len(grads)
    if total is not None:
        second = mg.grad(total, [xs[i] for i in grads], allow_unused=True)
    tsecond: Sequence[Any] = [None] * len(grads)
    if isinstance(ttotal, torch.Tensor) and ttotal.requires_grad:
        tsecond = torch.autograd.grad(ttotal, [txs[i] for i in grads], allow_unused=True)
    arrays = [x.numpy() for x in xs]
    problems = []
    for j, i in enumerate(grads):
        got = second[j].numpy() if second[j] is not None else np.zeros(xs[i].shape, dtype=dtype)
        want = tsecond[j].numpy(force=True) if tsecond[j] is not None else np.zeros(xs[i].shape, dtype=dtype)
        for d in row_.differs:
            if d.what == "second":
                want = d.expect(arrays, g_np, want, vs[j])
        problems += [f"second derivative wrt input {i} {m}" for m in mismatches(got, want, dtype, True)]
    return problems


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_", TABLE, ids=[r.name for r in TABLE])
def test_edge_values_match_pytorch(row_: Edge, backend: str, dtype: str) -> None:
    problems = run_row(row_, backend, dtype)
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:40])
