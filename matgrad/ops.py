"""Every built-in differentiable op: forward (backend kernels) and backward (tensor expressions) side by side.

Notation in the docstrings: ``G`` is the upstream gradient dL/dOut, shaped like the output.
A rule may return a gradient shaped like the output for a broadcast input; the engine sums it
back to the input's shape, so no rule here thinks about broadcasting. Operands are checked by
``Op.__call__`` from each class's declarations (``arity``, ``broadcast``, ``float_only``,
``check``); the functions at the end of each section are one line where nothing else is needed.

Rules that zero entries *select* (``where``) rather than multiply by a 0/1 mask: an infinite
upstream gradient times 0 is NaN, while the derivative there is 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Sequence, Union

from matgrad import _checks
from matgrad import backends as _backends
from matgrad._checks import fmt as _fmt
from matgrad._errors import ArgumentError, ArgumentTypeError, ShapeError
from matgrad.autograd.grad_mode import state as _state
from matgrad.autograd.graph import Op
from matgrad.backends.base import FLOAT_DTYPES, Backend, Data, Index
from matgrad.tensor import Tensor2D, _wrap, check_size, dtype_name, get_default_dtype, require_int64_range

__all__ = [
    "abs",
    "add",
    "argmax",
    "argmin",
    "cat",
    "clone",
    "compare",
    "div",
    "exp",
    "expand",
    "index",
    "leaky_relu",
    "log",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max",
    "mean",
    "min",
    "mul",
    "neg",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sqrt",
    "sub",
    "sum",
    "tanh",
    "to",
    "transpose",
    "where",
]

TensorLike = Union[Tensor2D, int, float]


def _recording() -> bool:
    """True when a rule's result must itself be recorded (create_graph) or checked (anomaly)."""
    st = _state
    return st.grad_enabled or st.anomaly


def _select(mask: Data, grad: Tensor2D) -> Tensor2D:
    """``where(mask, grad, 0)`` for a 0/1 ``mask`` built by ``compare``: one kernel unless it must be recorded."""
    be = grad._backend
    st = _state
    if not (st.grad_enabled or st.anomaly):
        return _wrap(be.keep(grad._data, mask), be)
    return Where()(_wrap(mask, be), grad, 0.0)


# ---------------------------------------------------------------------------------------------
# element-wise binary ops
# ---------------------------------------------------------------------------------------------


class Add(Op):
    """``C = A + B``;  ``dA = G``,  ``dB = G``."""

    arity, broadcast, float_only = 2, True, False

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.add(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return grad, grad


class Sub(Op):
    """``C = A - B``;  ``dA = G``,  ``dB = -G``."""

    arity, broadcast, float_only = 2, True, False

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.sub(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return grad, (-grad if self.needs_input_grad[1] else None)


class Mul(Op):
    """``C = A * B`` (element-wise);  ``dA = G * B``,  ``dB = G * A``."""

    arity, broadcast, float_only = 2, True, False
    saves = (0, 1)

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.mul(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        return (grad * b if need_a else None), (grad * a if need_b else None)


class Div(Op):
    """``C = A / B``;  ``dA = G / B``,  ``dB = -G * (A / B) / B``.

    Written ``(A / B) / B``, not ``A / B^2``: ``B^2`` leaves float32's range (b = 3e19) long
    before the gradient does (as PyTorch writes it).
    """

    arity, broadcast = 2, True
    saves = (0, 1)

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.div(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        ga = grad / b if need_a else None
        gb = -(grad * ((a / b) / b)) if need_b else None
        return ga, gb


class Where(Op):
    """``C = where(cond, A, B)``;  ``dA = where(cond, G, 0)``,  ``dB = where(cond, 0, G)`` (cond is a constant).

    ``A`` and ``B`` broadcast to ``cond``'s shape; ``cond`` is any dtype, non-zero meaning true.
    """

    arity, broadcast, float_only = 3, True, False
    saves = (0,)

    def forward(self, be: Backend, cond: Data, a: Data, b: Data) -> Data:
        return be.where(cond, a, b)

    def backward(self, grad: Tensor2D, cond: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        _, need_a, need_b = self.needs_input_grad
        be = grad._backend
        ga = _select(be.compare("ne", cond._data, 0.0, grad.dtype), grad) if need_a else None  # cond: any non-zero
        gb = _select(be.compare("eq", cond._data, 0.0, grad.dtype), grad) if need_b else None
        return None, ga, gb


def add(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a + b`` with broadcasting of (1,n), (m,1), (1,1) and scalars."""
    return Add()(a, b)


def sub(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a - b`` with broadcasting."""
    return Sub()(a, b)


def mul(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a * b`` element-wise, with broadcasting."""
    return Mul()(a, b)


def div(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a / b`` element-wise, with broadcasting (floating tensors only)."""
    return Div()(a, b)


def where(cond: Tensor2D, a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a`` where ``cond`` is non-zero, else ``b``; differentiable in ``a`` and ``b``.

    ``a`` and ``b`` (tensors or numbers) broadcast to ``cond``'s shape, which is the result's.
    """
    cond, a, b = _checks.where_operands(cond, a, b)
    return Where()(cond, a, b)


_COMPARE_NAMES = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def compare(op: str, a: TensorLike, b: TensorLike) -> Tensor2D:
    """1 where ``a <op> b`` holds, else 0 (``op`` in eq ne lt le gt ge); not differentiable.

    The result has the operands' floating dtype, or float32 for int64 operands, so
    ``(pred == y).mean()`` is an accuracy.
    """
    a, b = _checks.binary(f"compare ({_COMPARE_NAMES[op]})", a, b)
    out_dtype = a.dtype if a.dtype in FLOAT_DTYPES else get_default_dtype()
    return _wrap(a._backend.compare(op, a._data, b._data, out_dtype), a._backend)


# ---------------------------------------------------------------------------------------------
# element-wise unary ops
# ---------------------------------------------------------------------------------------------


class Neg(Op):
    """``C = -A``;  ``dA = -G``."""

    float_only = False

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("neg", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (-grad,)


class Pow(Op):
    """``C = A ** p`` for a constant ``p``;  ``dA = G * p * A ** (p - 1)`` (0 for ``p = 0``, ``G`` for ``p = 1``).

    ``p = 0`` and ``p = 1`` are special-cased: written as the general rule, ``0 * 0 ** -1`` is
    ``0 * inf = nan`` at ``A = 0``, where the derivative of a constant is 0 (PyTorch: 0), also
    for an infinite ``G`` and under ``create_graph``. ``p = 0.5`` uses sqrt's rule ``G / (2 C)``:
    NumPy computes ``A ** 0.5`` as ``sqrt(A)`` (NaN at -inf), and the rule must be NaN there too.
    """

    __slots__ = ("exponent",)
    saves = (0,)

    def __init__(self, exponent: float) -> None:
        self.exponent = exponent

    def describe(self) -> str:
        return f"pow({self.exponent:g})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pow(a, self.exponent)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        p = self.exponent
        if p == 0:  # a constant zero, also under create_graph (grad * 0 would be NaN for an infinite G)
            return (_wrap(a._backend.full(*a.shape, 0.0, a.dtype), a._backend),)
        if p == 1:
            return (grad,)
        if p == 2:
            return (grad * (a * 2.0),)
        if p == 0.5:  # sqrt's rule, G / (2 sqrt(A)): NaN where the output is (A = -inf), as PyTorch
            return (grad / (a**0.5 * 2.0),)
        return (grad * (p * a ** (p - 1)),)


class Exp(Op):
    """``C = exp(A)``;  ``dA = G * C``."""

    saves_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("exp", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad * self.output,)


class Log(Op):
    """``C = log(A)``;  ``dA = G / A``."""

    saves = (0,)

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("log", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad / a,)


class Sqrt(Op):
    """``C = sqrt(A)``;  ``dA = G / (2 C)``."""

    saves_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("sqrt", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad / (self.output * 2.0),)


class Abs(Op):
    """``C = |A|``;  ``dA = G * sign(A)``, selected: 0 at ``A = 0`` (PyTorch: 0, NaN for an infinite ``G``)."""

    float_only = False
    saves = (0,)

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("abs", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        positive, negative = be.compare("gt", a._data, 0.0), be.compare("lt", a._data, 0.0)
        if not _recording():
            g = grad._data
            return (_wrap(be.where(positive, g, be.where(negative, be.unary("neg", g), 0.0)), be),)
        return (Where()(_wrap(positive, be), grad, Where()(_wrap(negative, be), -grad, 0.0)),)


class ReLU(Op):
    """``C = max(A, 0)``;  ``dA = where(A > 0, G, 0)`` (0 at A = 0, as PyTorch).

    Selected at multiply speed (``keep``). At a NaN input the gradient is 0, where PyTorch's
    ``threshold_backward`` passes ``G`` on; the output (and so the loss) is NaN there already,
    and passing it would cost a kernel per step.
    """

    saves = (0,)

    def forward(self, be: Backend, a: Data) -> Data:
        return be.maximum(a, 0.0)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (_select(a._backend.compare("gt", a._data, 0.0), grad),)


class LeakyReLU(Op):
    """``C = A if A > 0 else s * A``;  ``dA = where(A > 0, G, s * G)``."""

    __slots__ = ("slope",)
    name = "leaky_relu"
    saves = (0,)

    def __init__(self, slope: float) -> None:
        self.slope = slope

    def describe(self) -> str:
        return f"leaky_relu({self.slope:g})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.where(be.compare("gt", a, 0.0), a, be.mul(a, self.slope))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        positive = be.compare("gt", a._data, 0.0)
        if not _recording():
            return (_wrap(be.where(positive, grad._data, be.mul(grad._data, self.slope)), be),)
        return (Where()(_wrap(positive, be), grad, grad * self.slope),)


class Sigmoid(Op):
    """``C = 1 / (1 + exp(-A))``;  ``dA = G * C * (1 - C)``."""

    saves_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("sigmoid", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        s = self.output
        return (grad * (s * (1.0 - s)),)


class Tanh(Op):
    """``C = tanh(A)``;  ``dA = G * (1 - C^2)``."""

    saves_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("tanh", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        t = self.output
        return (grad * (1.0 - t * t),)


def neg(a: Tensor2D) -> Tensor2D:
    """``-a``."""
    return Neg()(a)


def pow(a: Tensor2D, exponent: float) -> Tensor2D:
    """``a ** exponent`` for a constant real exponent."""
    if isinstance(exponent, (Tensor2D, bool)) or not isinstance(exponent, numbers.Real):
        raise ArgumentTypeError(
            f"pow: the exponent must be a real number, got {type(exponent).__name__}; for a "
            "tensor exponent write exp(b * log(a))"
        )
    return Pow(float(exponent))(a)


def rpow(base: Any, a: Tensor2D) -> Tensor2D:
    """``base ** a`` for a positive constant base, as ``exp(a * log(base))``."""
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise ArgumentTypeError(f"pow: {type(base).__name__} ** tensor: the base must be a real number")
    if not float(base) > 0:
        raise ArgumentError(f"pow: {base!r} ** tensor needs a positive base (it is exp(x * log(base)))")
    return exp(a * math.log(base))


def exp(a: Tensor2D) -> Tensor2D:
    """``e ** a`` element-wise."""
    return Exp()(a)


def log(a: Tensor2D) -> Tensor2D:
    """Natural logarithm (``log 0 = -inf``, negative values give NaN)."""
    return Log()(a)


def sqrt(a: Tensor2D) -> Tensor2D:
    """Square root (negative values give NaN)."""
    return Sqrt()(a)


def abs(a: Tensor2D) -> Tensor2D:
    """``|a|`` element-wise."""
    return Abs()(a)


def relu(a: Tensor2D) -> Tensor2D:
    """``max(a, 0)`` element-wise."""
    return ReLU()(a)


def leaky_relu(a: Tensor2D, negative_slope: float = 0.01) -> Tensor2D:
    """``a`` where positive, ``negative_slope * a`` elsewhere."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise ArgumentTypeError("leaky_relu: negative_slope must be a real number")
    return LeakyReLU(float(negative_slope))(a)


def sigmoid(a: Tensor2D) -> Tensor2D:
    """``1 / (1 + exp(-a))``, computed without overflow for any input."""
    return Sigmoid()(a)


def tanh(a: Tensor2D) -> Tensor2D:
    """Hyperbolic tangent."""
    return Tanh()(a)


# ---------------------------------------------------------------------------------------------
# matrix product, layout and copies
# ---------------------------------------------------------------------------------------------


class MatMul(Op):
    """``C = op(A) @ op(B)``, ``op`` transposing when flagged (as BLAS gemm).

    Plain ``C = A @ B``:  ``dA = G @ B.T``,  ``dB = A.T @ G``. The flags let the rules, and
    ``linear``, reach transposed operands without copying them.
    """

    __slots__ = ("trans_a", "trans_b")
    arity = 2
    saves = (0, 1)

    def __init__(self, trans_a: bool = False, trans_b: bool = False) -> None:
        self.trans_a = trans_a
        self.trans_b = trans_b

    def describe(self) -> str:
        if self.trans_a or self.trans_b:
            return f"matmul({'A.T' if self.trans_a else 'A'} @ {'B.T' if self.trans_b else 'B'})"
        return "matmul"

    def check(self, a: Tensor2D, b: Tensor2D) -> None:
        m, k = a._data.shape[::-1] if self.trans_a else a._data.shape
        k2, n = b._data.shape[::-1] if self.trans_b else b._data.shape
        if k != k2:
            hint = ""
            if k == n:
                hint = "; did you mean to transpose the right operand (a @ b.T)?"
            elif m == k2:
                hint = "; did you mean to transpose the left operand (a.T @ b)?"
            raise ShapeError(f"matmul ({m}x{k}) @ ({k2}x{n}): inner dimensions {k} and {k2} differ{hint}")

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.matmul(a, b, self.trans_a, self.trans_b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        ta, tb = self.trans_a, self.trans_b
        ga = gb = None
        if need_a:
            # C = A B -> G B^T;  A^T B -> B G^T;  A B^T -> G B;  A^T B^T -> B^T G^T
            ga = gemm(b, grad, tb, True) if ta else gemm(grad, b, False, not tb)
        if need_b:
            # C = A B -> A^T G;  A^T B -> A G;  A B^T -> G^T A;  A^T B^T -> G^T A^T
            gb = gemm(grad, a, True, ta) if tb else gemm(a, grad, not ta, False)
        return ga, gb


def gemm(a: Tensor2D, b: Tensor2D, trans_a: bool = False, trans_b: bool = False) -> Tensor2D:
    """``op(a) @ op(b)`` without materialising the transposes (used by backward rules)."""
    st = _state
    if not (st.grad_enabled or st.anomaly):  # backward without create_graph: the kernel alone
        be = a._backend
        return _wrap(be.matmul(a._data, b._data, trans_a, trans_b), be)
    return MatMul(trans_a, trans_b)(a, b)


def matmul(a: Tensor2D, b: Tensor2D) -> Tensor2D:
    """The matrix product ``a @ b``: ``(m, k) @ (k, n) -> (m, n)``."""
    if not isinstance(a, Tensor2D) or not isinstance(b, Tensor2D):
        if isinstance(a, numbers.Real) or isinstance(b, numbers.Real):
            raise ArgumentTypeError("matmul: @ needs two matrices; to scale by a number use *")
        if isinstance(a, Tensor2D):
            b = _checks.as_operand(b, a, "matmul")
        elif isinstance(b, Tensor2D):
            a = _checks.as_operand(a, b, "matmul")
        else:
            raise ArgumentTypeError("matmul: at least one operand must be a Tensor2D")
    return MatMul()(a, b)


class Transpose(Op):
    """``C = A.T``;  ``dA = G.T``.

    Always a copy in its own storage (row-major storage cannot hold a transpose as a view; PyTorch's
    ``.T`` is one), on both backends alike.
    """

    float_only = False

    def forward(self, be: Backend, a: Data) -> Data:
        return be.transpose(a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad.T,)


def transpose(a: Tensor2D) -> Tensor2D:
    """``a.T``: the (n, m) matrix with rows and columns swapped."""
    return Transpose()(a)


class Reshape(Op):
    """``C`` = the row-major elements of ``A`` read as ``(p, q)``;  ``dA = G`` read as ``A``'s shape."""

    __slots__ = ("shape",)
    float_only = False
    views = True

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def describe(self) -> str:
        return f"reshape({_fmt(self.shape)})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.reshape(a, *self.shape)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad if grad.shape == a.shape and not _recording() else grad.reshape(*a.shape),)


def reshape(a: Tensor2D, nrows: int, ncols: int) -> Tensor2D:
    """The same row-major elements as an ``nrows x ncols`` matrix; one size may be ``-1``.

    Always a new tensor (sharing storage where the backend can, as PyTorch's view), even for
    the shape ``a`` already has.
    """
    a = _checks.tensor("reshape", a)
    nrows, ncols = _checks.reshape_sizes(a.shape, nrows, ncols)
    return Reshape((nrows, ncols))(a)


class Expand(Op):
    """``C`` = ``A`` broadcast to ``(m, n)``;  ``dA`` = ``G`` summed back (by the engine)."""

    __slots__ = ("shape",)
    float_only = False

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def describe(self) -> str:
        return f"expand({_fmt(self.shape)})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.add(be.full(self.shape[0], self.shape[1], 0, be.dtype(a)), a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad,)


def expand(a: Tensor2D, nrows: int, ncols: int) -> Tensor2D:
    """``a`` (1x1, 1xn or mx1) repeated to ``nrows x ncols`` (a new tensor even for ``a``'s own shape)."""
    a = _checks.tensor("expand", a)
    check_size("expand", nrows, ncols)
    _checks.broadcast_shape("expand", (nrows, ncols), a.shape)
    if a.nrows > nrows or a.ncols > ncols:
        raise _checks.broadcast_error("expand", a.shape, (nrows, ncols))
    return Expand((nrows, ncols))(a)


class Clone(Op):
    """``C = A`` in new storage;  ``dA = G``."""

    float_only = False

    def forward(self, be: Backend, a: Data) -> Data:
        return be.copy(a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad,)


def clone(a: Tensor2D) -> Tensor2D:
    """A copy of ``a`` with its own storage."""
    return Clone()(a)


class To(Op):
    """``C = A`` converted to another dtype and/or backend;  ``dA = G`` converted back."""

    __slots__ = ("backend", "dtype")
    float_only = False

    def __init__(self, dtype: str, backend: Backend) -> None:
        self.dtype = dtype
        self.backend = backend

    def describe(self) -> str:
        return f"to({self.dtype}, {self.backend.label})"

    def forward(self, be: Backend, a: Data) -> Data:
        if self.backend is be:
            return be.astype(a, self.dtype)
        return self.backend.from_backend(be, a, self.dtype)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad.to(a.dtype, a._backend),)

    def result_backend(self, be: Backend) -> Backend:
        return self.backend


def to(a: Tensor2D, dtype: Any = None, backend: str | Backend | None = None, device: str | None = None) -> Tensor2D:
    """``a`` on another dtype, backend and/or device; differentiable between floating dtypes.

    ``a`` itself when nothing changes (as PyTorch's ``Tensor.to``); ``device`` alone keeps ``a``'s library.
    """
    a = _checks.tensor("to", a)
    dt = a.dtype if dtype is None else dtype_name(dtype)
    if backend is None:
        be = a._backend if device is None else _backends.get(a._backend, device)
    else:
        be = _backends.get(backend, device)
    if dt == a.dtype and be is a._backend:
        return a
    if dt == "int64" and a.dtype != "int64":
        require_int64_range(a._backend, a._data, "to(int64)")
    op = To(dt, be)
    if dt == "int64" or a.dtype == "int64":  # integers carry no gradient
        return _wrap(op.forward(a._backend, a._data), be)
    return op(a)


class Cat(Op):
    """``C = [A1 | A2 | ...]`` along an axis;  ``dAi`` = the slice of ``G`` where ``Ai`` sits."""

    __slots__ = ("axis",)
    arity, float_only = -1, False

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def describe(self) -> str:
        return f"cat(axis={self.axis})"

    def check(self, *parts: Tensor2D) -> None:
        first, ax = parts[0], self.axis
        for i, t in enumerate(parts[1:], 1):
            if t.shape[1 - ax] != first.shape[1 - ax]:
                what = "columns" if ax == 0 else "rows"
                raise ShapeError(
                    f"cat(axis={ax}): tensor 0 is {_fmt(first.shape)} but tensor {i} is "
                    f"{_fmt(t.shape)}; all need the same number of {what}"
                )

    def forward(self, be: Backend, *parts: Data) -> Data:
        return be.cat(parts, self.axis)

    def backward(self, grad: Tensor2D, *inputs: Tensor2D) -> tuple[Tensor2D | None, ...]:
        out: list[Tensor2D | None] = []
        start = 0
        for t, need in zip(inputs, self.needs_input_grad):
            size = t.shape[self.axis]
            if need:
                part = slice(start, start + size)
                out.append(grad[part] if self.axis == 0 else grad[:, part])
            else:
                out.append(None)
            start += size
        return tuple(out)


def cat(tensors: Sequence[Tensor2D], axis: int = 0) -> Tensor2D:
    """Concatenate along rows (``axis=0``, same ncols) or columns (``axis=1``, same nrows)."""
    if isinstance(tensors, Tensor2D) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise ArgumentTypeError("cat: expected a non-empty list of Tensor2D")
    ax = _checks.axis("cat", axis)
    if ax is None:
        raise ShapeError("cat: axis must be 0 or 1")
    parts = tuple(_checks.tensor("cat", t) for t in tensors)
    return Cat(ax)(*parts)


# ---------------------------------------------------------------------------------------------
# indexing
# ---------------------------------------------------------------------------------------------


class Take(Op):
    """``C = A[rows][:, cols]`` (outer indexing);  ``dA`` = ``G`` scatter-added into zeros."""

    __slots__ = ("cols", "rows")
    name = "index"
    float_only = False

    def __init__(self, rows: Index, cols: Index) -> None:
        self.rows = rows
        self.cols = cols

    def describe(self) -> str:
        return f"index[{_checks.fmt_index(self.rows)}, {_checks.fmt_index(self.cols)}]"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.take(a, self.rows, self.cols)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (TakeAdjoint(self.rows, self.cols, a.shape)(grad),)


class TakeAdjoint(Op):
    """``C`` = zeros of ``A``'s source shape with ``G`` added at ``Take``'s positions;  ``dG = Take(dC)``."""

    __slots__ = ("cols", "rows", "shape")
    name = "index_backward"

    def __init__(self, rows: Index, cols: Index, shape: tuple[int, int]) -> None:
        self.rows = rows
        self.cols = cols
        self.shape = shape

    def forward(self, be: Backend, g: Data) -> Data:
        return be.take_adjoint(g, self.shape[0], self.shape[1], self.rows, self.cols)

    def backward(self, grad: Tensor2D, g: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (Take(self.rows, self.cols)(grad),)


class Pick(Op):
    """``C[i] = A[rows[i], cols[i]]`` (paired indexing, a column);  ``dA`` = ``G`` added back there."""

    __slots__ = ("cols", "rows")
    float_only = False

    def __init__(self, rows: Any, cols: Any) -> None:
        self.rows = rows
        self.cols = cols

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pick(a, self.rows, self.cols)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (PickAdjoint(self.rows, self.cols, a.shape)(grad),)


class PickAdjoint(Op):
    """``C`` = zeros with ``G[i]`` added at ``(rows[i], cols[i])``;  ``dG = Pick(dC)``."""

    __slots__ = ("cols", "rows", "shape")
    name = "pick_backward"

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int]) -> None:
        self.rows = rows
        self.cols = cols
        self.shape = shape

    def forward(self, be: Backend, g: Data) -> Data:
        return be.pick_adjoint(g, self.shape[0], self.shape[1], self.rows, self.cols)

    def backward(self, grad: Tensor2D, g: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (Pick(self.rows, self.cols)(grad),)


class Alias(Op):
    """``C = A`` sharing ``A``'s storage (a full slice ``a[:, :]``);  ``dA = G``."""

    float_only = False
    views = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.reshape(a, *a.shape)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad,)


def index(a: Tensor2D, key: Any) -> Tensor2D:
    """``a[key]``, always 2-D.

    ``a[i]`` is row ``i`` (1, n); ``a[2:5]`` rows; ``a[[3, 1, 4]]`` gathers rows (a batch);
    ``a[:, j]`` is column ``j`` (m, 1); ``a[rows, cols]`` with ints, slices or lists selects
    the submatrix, except that two lists pair up as in NumPy: ``a[[0, 1], [2, 3]]`` is the
    (2, 1) column ``[a[0, 2], a[1, 3]]``. Backward scatter-adds, so repeated indices accumulate.
    A full slice ``a[:, :]`` is a new tensor sharing ``a``'s storage.
    """
    a = _checks.tensor("index", a)
    kind, rows, cols = _checks.index_key(key, a.shape)
    if kind == "pairs":
        return Pick(rows, cols)(a)
    if rows == slice(None) and cols == slice(None):
        return Alias()(a)
    return Take(rows, cols)(a)


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------


def _count(shape: tuple[int, int], axis: Any) -> int:
    return shape[0] * shape[1] if axis is None else shape[axis]


def _expand_grad(grad: Tensor2D, shape: tuple[int, int]) -> Tensor2D:
    """``grad`` broadcast to ``shape`` (the rule of every reduction)."""
    if grad.shape == shape and not _recording():
        return grad
    return Expand(shape)(grad)


class Sum(Op):
    """``C = sum(A)`` over all / axis 0 / axis 1, kept 2-D;  ``dA`` = ``G`` broadcast back."""

    __slots__ = ("axis",)
    float_only = False

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return "sum" if self.axis is None else f"sum(axis={self.axis})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.sum(a, self.axis)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (_expand_grad(grad, a.shape),)


class Mean(Op):
    """``C = sum(A) / N`` over all / axis 0 / axis 1;  ``dA`` = ``G / N`` broadcast back."""

    __slots__ = ("axis",)

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return "mean" if self.axis is None else f"mean(axis={self.axis})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.div(be.sum(a, self.axis), float(_count(a.shape, self.axis)))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (_expand_grad(grad / float(_count(a.shape, self.axis)), a.shape),)


class _Extreme(Op):
    """Shared rule of ``max`` and ``min``.

    ``dA = where(M, G / count(M), 0)`` where ``M`` marks the elements equal to the result: ties
    share the gradient equally (as ``torch.amax``), so the rule is symmetric and gradchecks
    cleanly; the others get exactly 0, even from an infinite ``G`` (``torch.amax``: NaN). A line
    holding a NaN (its result is NaN, nothing equals it) gets NaN throughout, as ``torch.amax``.
    """

    __slots__ = ("axis",)
    float_only = False
    saves = (0,)
    saves_output = True

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return self.name if self.axis is None else f"{self.name}(axis={self.axis})"

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        out = self.output._data
        hits = be.compare("eq", a._data, out)
        count = be.sum(hits, self.axis)
        # A line whose result is NaN (it holds a NaN) has no hit: its gradient is NaN, as
        # torch.amax's, not a silent 0 (then count is 0, and "else" gives G / 0 * 0 = NaN).
        other: Any = 0.0 if be.all_finite(out) else be.where(be.compare("eq", count, 0.0), math.nan, 0.0)
        if not _recording():
            if isinstance(other, float):
                return (_wrap(be.keep(be.div(grad._data, count), hits), be),)
            return (_wrap(be.where(hits, be.div(grad._data, count), other), be),)
        rest = other if isinstance(other, float) else _wrap(other, be)
        return (Where()(_wrap(hits, be), grad / _wrap(count, be), rest),)


class Max(_Extreme):
    """``C = max(A)`` over all / axis 0 / axis 1;  ``dA = where(M, G / count(M), 0)``, ``M = [A == C]``."""

    def forward(self, be: Backend, a: Data) -> Data:
        return be.max(a, self.axis)


class Min(_Extreme):
    """``C = min(A)`` over all / axis 0 / axis 1;  ``dA = where(M, G / count(M), 0)``, ``M = [A == C]``."""

    def forward(self, be: Backend, a: Data) -> Data:
        return be.min(a, self.axis)


def sum(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Sum of all elements (1x1), of each column (``axis=0``, 1xn) or of each row (``axis=1``, mx1)."""
    return Sum(_checks.axis("sum", axis))(a)


def mean(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Mean, with ``sum``'s axes."""
    return Mean(_checks.axis("mean", axis))(a)


def max(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Maximum, with ``sum``'s axes; the gradient is shared among ties."""
    return Max(_checks.axis("max", axis))(a)


def min(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Minimum, with ``sum``'s axes; the gradient is shared among ties."""
    return Min(_checks.axis("min", axis))(a)


def argmax(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """int64 index of the first maximum: (1,1) flat row-major index, (1,n) per column or (m,1) per row."""
    a = _checks.tensor("argmax", a)
    return _wrap(a._backend.argmax(a._data, _checks.axis("argmax", axis)), a._backend)


def argmin(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """int64 index of the first minimum, with ``argmax``'s shapes."""
    a = _checks.tensor("argmin", a)
    return _wrap(a._backend.argmin(a._data, _checks.axis("argmin", axis)), a._backend)


# ---------------------------------------------------------------------------------------------
# softmax family (numerically stable: the maximum is subtracted before exp)
# ---------------------------------------------------------------------------------------------


def _shifted(be: Backend, a: Data, axis: Literal[0, 1]) -> tuple[Data, Data, Data]:
    """``(a - max, max, log(sum(exp(a - max))))`` along ``axis`` (a row of -inf keeps max 0)."""
    top = be.max(a, axis)
    top = be.where(be.compare("eq", top, -math.inf), 0.0, top)
    shifted = be.sub(a, top)
    return shifted, top, be.unary("log", be.sum(be.unary("exp", shifted), axis))


class LogSumExp(Op):
    """``C = log(sum(exp(A), axis))``;  ``dA = G * softmax(A)``."""

    __slots__ = ("axis",)
    saves = (0,)

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def forward(self, be: Backend, a: Data) -> Data:
        top = be.max(a, self.axis)
        # An infinite maximum is not subtracted (as PyTorch): inf - inf would turn a line holding
        # +inf into NaN, where its log-sum-exp is +inf (and a line of -inf gives -inf).
        top = be.where(be.compare("eq", be.unary("abs", top), math.inf), 0.0, top)
        total = be.sum(be.unary("exp", be.sub(a, top)), self.axis)
        return be.add(be.unary("log", total), top)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        # softmax(a), not exp(a - C): C is rounded, and at |a| ~ 1e4 in float32 that costs 4 digits
        return (grad * softmax(a, self.axis),)


class Softmax(Op):
    """``C = exp(A) / sum(exp(A), axis)``;  ``dA = C * (G - sum(G * C, axis))``."""

    __slots__ = ("axis",)
    saves_output = True

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def forward(self, be: Backend, a: Data) -> Data:
        top = be.max(a, self.axis)
        e = be.unary("exp", be.sub(a, top))
        return be.div(e, be.sum(e, self.axis))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        s = self.output
        return (s * (grad - (grad * s).sum(self.axis)),)


class LogSoftmax(Op):
    """``C = (A - max) - log(sum(exp(A - max), axis))``;  ``dA = G - softmax(A) * sum(G, axis)``.

    Written with the shift on both sides: ``A - (max + log sum)`` cancels catastrophically once
    ``|A|`` dwarfs the log-sum (float32 logits of 1e13 gave 0, 0, 0).
    """

    __slots__ = ("axis",)
    name = "log_softmax"
    saves = (0,)

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def forward(self, be: Backend, a: Data) -> Data:
        shifted, _, log_total = _shifted(be, a, self.axis)
        return be.sub(shifted, log_total)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        # softmax(a), not exp(C): C is rounded, and at |a| ~ 1e4 in float32 that rounding costs
        # 4 digits; the softmax of the input subtracts the max exactly.
        return (grad - softmax(a, self.axis) * grad.sum(self.axis),)


def _axis01(name: str, axis: Any) -> Literal[0, 1]:
    ax = _checks.axis(name, axis)
    if ax is None:
        raise ShapeError(f"{name}: axis must be 0 or 1 (1 = along each row)")
    return ax


def logsumexp(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``log(sum(exp(a), axis))``, stable for large inputs: (m,1) for axis 1, (1,n) for axis 0."""
    return LogSumExp(_axis01("logsumexp", axis))(a)


def softmax(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``exp(a) / sum(exp(a), axis)``, stable for large inputs (rows sum to 1 for axis 1)."""
    return Softmax(_axis01("softmax", axis))(a)


def log_softmax(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``log(softmax(a))``, computed as ``(a - max) - log(sum(exp(a - max)))``: stable for large inputs."""
    return LogSoftmax(_axis01("log_softmax", axis))(a)
