"""Every differentiable op: forward (backend kernels) and backward (tensor expressions) side by side.

Notation in the docstrings: ``G`` is the upstream gradient dL/dOut, shaped like the output.
A rule may return a gradient shaped like the output for a broadcast input; the engine sums it
back to the input's shape (``autograd._sum_to``), so no rule here thinks about broadcasting.
"""

from __future__ import annotations

import builtins
import math
import numbers
from typing import Any, Literal, Sequence, Union

from matgrad import autograd as _autograd
from matgrad import backends as _backends
from matgrad._errors import ArgumentError, BackendError, DTypeError, ShapeError, at_user_site
from matgrad.autograd import Op, record
from matgrad.backends.base import FLOAT_DTYPES, Axis, Backend, Data, Index
from matgrad.tensor import Tensor2D, _wrap, check_size, dtype_name, get_default_dtype

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


# ---------------------------------------------------------------------------------------------
# operand handling and checks
# ---------------------------------------------------------------------------------------------


def _fmt(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _const(value: float, like: Tensor2D) -> Tensor2D:
    """A 1x1 constant on ``like``'s backend and dtype (how scalars enter the graph)."""
    return _wrap(like._backend.full(1, 1, value, like.dtype), like._backend)


def _as_operand(x: Any, like: Tensor2D, name: str) -> Tensor2D:
    """A Python number or a 2-D NumPy array as a constant tensor matching ``like``."""
    if isinstance(x, Tensor2D):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        if like.dtype == "int64" and not float(x).is_integer():
            raise DTypeError(
                at_user_site(f"{name}: an int64 tensor with the non-integer {x!r}; convert with .float() first")
            )
        return _const(x, like)  # type: ignore[arg-type]
    if hasattr(x, "ndim") and hasattr(x, "dtype") and hasattr(x, "tolist"):
        try:
            return Tensor2D(x, dtype=like.dtype, backend=like._backend)
        except (ShapeError, TypeError, DTypeError) as exc:  # say which op the array was given to
            raise type(exc)(f"{name}: {str(exc).replace('Tensor2D: ', '', 1)}") from None
    raise TypeError(
        at_user_site(
            f"{name}: cannot combine a Tensor2D with a {type(x).__name__}; use a number, "
            "a Tensor2D or a 2-D NumPy array"
        )
    )


def _same_storage(name: str, a: Tensor2D, b: Tensor2D) -> None:
    if a._backend is not b._backend:
        raise BackendError(
            at_user_site(
                f"{name}: operands live on different backends ({a.backend} and {b.backend}); "
                f"move one with .to(backend={a.backend!r})"
            )
        )
    if a.dtype != b.dtype:
        raise DTypeError(
            at_user_site(
                f"{name}: operands have different dtypes ({a.dtype} and {b.dtype}); convert one with .to({a.dtype!r})"
            )
        )


def _broadcast_error(name: str, sa: tuple[int, int], sb: tuple[int, int]) -> ShapeError:
    hint = ""
    if sa == sb[::-1]:
        hint = "; did you mean to transpose one of them (.T)?"
    return ShapeError(
        at_user_site(
            f"{name}: shapes {_fmt(sa)} and {_fmt(sb)} do not broadcast; an (m,n) operand combines "
            f"only with (m,n), (1,n), (m,1) or (1,1){hint}"
        )
    )


def _check_broadcast(name: str, sa: tuple[int, int], sb: tuple[int, int]) -> None:
    out = (builtins.max(sa[0], sb[0]), builtins.max(sa[1], sb[1]))
    for s in (sa, sb):
        if (s[0] != out[0] and s[0] != 1) or (s[1] != out[1] and s[1] != 1):
            raise _broadcast_error(name, sa, sb)
    if sa != out and sb != out:  # (1,n) with (m,1): an outer broadcast, refused on purpose
        raise _broadcast_error(name, sa, sb)


def _binary(name: str, a: Any, b: Any) -> tuple[Tensor2D, Tensor2D]:
    """Both operands as tensors on one backend and dtype, with shapes that broadcast."""
    if not isinstance(a, Tensor2D):
        if not isinstance(b, Tensor2D):
            raise TypeError(f"{name}: at least one operand must be a Tensor2D")
        a = _as_operand(a, b, name)
    elif not isinstance(b, Tensor2D):
        b = _as_operand(b, a, name)
    ad, bd = a._data, b._data
    if a._backend is not b._backend or ad.dtype != bd.dtype:
        _same_storage(name, a, b)
    if ad.shape != bd.shape:
        _check_broadcast(name, ad.shape, bd.shape)
    return a, b


def _need_float(name: str, *tensors: Tensor2D) -> None:
    for t in tensors:
        if t._data.dtype not in t._backend.float_types:
            raise DTypeError(at_user_site(f"{name}: needs a floating tensor, got {t.dtype}; convert with .float()"))


def _tensor(name: str, x: Any) -> Tensor2D:
    if not isinstance(x, Tensor2D):
        raise TypeError(at_user_site(f"{name}: expected a Tensor2D, got {type(x).__name__}"))
    return x


def _axis(name: str, axis: Any) -> Axis:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(at_user_site(f"{name}: axis must be None, 0 or 1 (an int), got {type(axis).__name__} {axis!r}"))
    if axis not in (0, 1, -1, -2):
        raise ShapeError(at_user_site(f"{name}: axis must be None, 0 or 1 (or -1, -2), got {axis!r}"))
    return 0 if axis % 2 == 0 else 1


def check_inplace_operand(name: str, target: Tensor2D, other: Any, alpha: float = 1.0) -> None:
    """Validate the operand of an in-place update (``add_``, ``copy_``, ``mul_``)."""
    if target.dtype == "int64":
        numbers_used = [alpha] if isinstance(other, Tensor2D) else [alpha, other]
        if any(isinstance(v, numbers.Real) and not float(v).is_integer() for v in numbers_used):
            raise DTypeError(
                at_user_site(f"{name}: an int64 tensor cannot take the non-integer {numbers_used[-1]!r}; use .float()")
            )
    if isinstance(other, Tensor2D):
        _same_storage(name, target, other)
        if other.shape != target.shape:
            _check_broadcast(name, target.shape, other.shape)
            if other.nrows > target.nrows or other.ncols > target.ncols:
                raise _broadcast_error(name, target.shape, other.shape)
    elif not (isinstance(other, numbers.Real) and not isinstance(other, bool)):
        raise TypeError(at_user_site(f"{name}: expected a Tensor2D or a number, got {type(other).__name__}"))


# ---------------------------------------------------------------------------------------------
# element-wise binary ops
# ---------------------------------------------------------------------------------------------


class Add(Op):
    """``C = A + B``;  ``dA = G``,  ``dB = G``."""

    __slots__ = ()
    name = "add"

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.add(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return grad, grad


class Sub(Op):
    """``C = A - B``;  ``dA = G``,  ``dB = -G``."""

    __slots__ = ()
    name = "sub"

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.sub(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return grad, (-grad if self.needs_input_grad[1] else None)


class Mul(Op):
    """``C = A * B`` (element-wise);  ``dA = G * B``,  ``dB = G * A``."""

    __slots__ = ()
    name = "mul"

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.mul(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        return (grad * b if need_a else None), (grad * a if need_b else None)


class Div(Op):
    """``C = A / B``;  ``dA = G / B``,  ``dB = -G * A / B^2``."""

    __slots__ = ()
    name = "div"

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.div(a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        ga = grad / b if need_a else None
        gb = -(grad * a) / (b * b) if need_b else None
        return ga, gb


class Where(Op):
    """``C = where(cond, A, B)``;  ``dA = G * cond``,  ``dB = G * (1 - cond)`` (cond is a constant)."""

    __slots__ = ("cond",)
    name = "where"

    def __init__(self, cond: Tensor2D) -> None:
        self.cond = cond

    def forward(self, be: Backend, a: Data, b: Data) -> Data:
        return be.where(self.cond._data, a, b)

    def backward(self, grad: Tensor2D, a: Tensor2D, b: Tensor2D) -> tuple[Tensor2D | None, ...]:
        need_a, need_b = self.needs_input_grad
        return (grad * self.cond if need_a else None), (grad * (1.0 - self.cond) if need_b else None)


def add(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a + b`` with broadcasting of (1,n), (m,1), (1,1) and scalars."""
    a, b = _binary("add", a, b)
    be = a._backend
    return record(Add(), be.add(a._data, b._data), be, (a, b))


def sub(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a - b`` with broadcasting."""
    a, b = _binary("sub", a, b)
    be = a._backend
    return record(Sub(), be.sub(a._data, b._data), be, (a, b))


def mul(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a * b`` element-wise, with broadcasting."""
    a, b = _binary("mul", a, b)
    be = a._backend
    data = be.mul(a._data, b._data)
    if not (_autograd._grad_enabled or _autograd._anomaly):  # nothing to record: skip the op object
        return _wrap(data, be)
    return record(Mul(), data, be, (a, b))


def div(a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a / b`` element-wise, with broadcasting."""
    a, b = _binary("div", a, b)
    _need_float("div", a)
    be = a._backend
    return record(Div(), be.div(a._data, b._data), be, (a, b))


def where(cond: Tensor2D, a: TensorLike, b: TensorLike) -> Tensor2D:
    """``a`` where ``cond`` is non-zero, else ``b``; differentiable in ``a`` and ``b``."""
    cond = _tensor("where", cond)
    if not isinstance(a, Tensor2D) and not isinstance(b, Tensor2D):  # two numbers: cond's shape
        like = cond if cond.dtype in FLOAT_DTYPES else cond.to(get_default_dtype())
        a = expand(_as_operand(a, like, "where"), *like.shape)
    a, b = _binary("where", a, b)
    shape = (builtins.max(a.nrows, b.nrows), builtins.max(a.ncols, b.ncols))
    if cond._backend is not a._backend:
        _same_storage("where", a, cond)
    if cond.shape != shape:
        raise ShapeError(at_user_site(f"where: cond is {_fmt(cond.shape)} but the result is {_fmt(shape)}"))
    cond = cond.detach() if cond.dtype == a.dtype else cond.to(a.dtype).detach()
    op = Where(cond)
    return record(op, op.forward(a._backend, a._data, b._data), a._backend, (a, b))


_COMPARE_NAMES = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def compare(op: str, a: TensorLike, b: TensorLike) -> Tensor2D:
    """1 where ``a <op> b`` holds, else 0 (``op`` in eq ne lt le gt ge); not differentiable.

    The result has the operands' floating dtype, or float32 for int64 operands, so
    ``(pred == y).mean()`` is an accuracy.
    """
    name = f"compare ({_COMPARE_NAMES[op]})"
    a, b = _binary(name, a, b)
    out_dtype = a.dtype if a.dtype in FLOAT_DTYPES else get_default_dtype()
    return _wrap(a._backend.compare(op, a._data, b._data, out_dtype), a._backend)


# ---------------------------------------------------------------------------------------------
# element-wise unary ops
# ---------------------------------------------------------------------------------------------


class Neg(Op):
    """``C = -A``;  ``dA = -G``."""

    __slots__ = ()
    name = "neg"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("neg", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (-grad,)


class Pow(Op):
    """``C = A ** p`` for a constant ``p``;  ``dA = G * p * A ** (p - 1)``."""

    __slots__ = ("exponent",)
    name = "pow"

    def __init__(self, exponent: float) -> None:
        self.exponent = exponent

    def describe(self) -> str:
        return f"pow({self.exponent:g})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pow(a, self.exponent)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        p = self.exponent
        if p == 2:
            return (grad * (a * 2.0),)
        return (grad * (p * a ** (p - 1)),)


class Exp(Op):
    """``C = exp(A)``;  ``dA = G * C``."""

    __slots__ = ()
    name = "exp"
    needs_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("exp", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad * self.output,)


class Log(Op):
    """``C = log(A)``;  ``dA = G / A``."""

    __slots__ = ()
    name = "log"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("log", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad / a,)


class Sqrt(Op):
    """``C = sqrt(A)``;  ``dA = G / (2 C)``."""

    __slots__ = ()
    name = "sqrt"
    needs_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("sqrt", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad / (self.output * 2.0),)


class Abs(Op):
    """``C = |A|``;  ``dA = G * sign(A)`` (0 at A = 0, as PyTorch)."""

    __slots__ = ()
    name = "abs"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("abs", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad * _wrap(a._backend.unary("sign", a._data), a._backend),)


class ReLU(Op):
    """``C = max(A, 0)``;  ``dA = G * [A > 0]`` (0 at A = 0, as PyTorch)."""

    __slots__ = ()
    name = "relu"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.maximum(a, 0.0)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        mask = be.compare("gt", a._data, 0.0)
        if not (_autograd._grad_enabled or _autograd._anomaly):  # no graph to record: one kernel
            return (_wrap(be.mul(grad._data, mask), be),)
        return (grad * _wrap(mask, be),)


class LeakyReLU(Op):
    """``C = A if A > 0 else s * A``;  ``dA = G * (1 if A > 0 else s)``."""

    __slots__ = ("slope",)
    name = "leaky_relu"

    def __init__(self, slope: float) -> None:
        self.slope = slope

    def describe(self) -> str:
        return f"leaky_relu({self.slope:g})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.where(be.compare("gt", a, 0.0), a, be.mul(a, self.slope))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        factor = be.where(be.compare("gt", a._data, 0.0), 1.0, self.slope)
        return (grad * _wrap(factor, be),)


class Sigmoid(Op):
    """``C = 1 / (1 + exp(-A))``;  ``dA = G * C * (1 - C)``."""

    __slots__ = ()
    name = "sigmoid"
    needs_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("sigmoid", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        s = self.output
        return (grad * (s * (1.0 - s)),)


class Tanh(Op):
    """``C = tanh(A)``;  ``dA = G * (1 - C^2)``."""

    __slots__ = ()
    name = "tanh"
    needs_output = True

    def forward(self, be: Backend, a: Data) -> Data:
        return be.unary("tanh", a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        t = self.output
        return (grad * (1.0 - t * t),)


def _unary(op: Op, a: Any, float_only: bool = True) -> Tensor2D:
    a = _tensor(op.name, a)
    if float_only and a._data.dtype not in a._backend.float_types:
        _need_float(op.name, a)
    be = a._backend
    return record(op, op.forward(be, a._data), be, (a,))


def neg(a: Tensor2D) -> Tensor2D:
    """``-a``."""
    return _unary(Neg(), a, float_only=False)


def pow(a: Tensor2D, exponent: float) -> Tensor2D:
    """``a ** exponent`` for a constant real exponent."""
    if isinstance(exponent, (Tensor2D, bool)) or not isinstance(exponent, numbers.Real):
        raise TypeError(
            at_user_site(
                f"pow: the exponent must be a real number, got {type(exponent).__name__}; for a "
                "tensor exponent write exp(b * log(a))"
            )
        )
    return _unary(Pow(float(exponent)), a)


def rpow(base: Any, a: Tensor2D) -> Tensor2D:
    """``base ** a`` for a positive constant base, as ``exp(a * log(base))``."""
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(at_user_site(f"pow: {type(base).__name__} ** tensor: the base must be a real number"))
    if not float(base) > 0:
        raise ArgumentError(at_user_site(f"pow: {base!r} ** tensor needs a positive base (it is exp(x * log(base)))"))
    return exp(a * math.log(base))


def exp(a: Tensor2D) -> Tensor2D:
    """``e ** a`` element-wise."""
    return _unary(Exp(), a)


def log(a: Tensor2D) -> Tensor2D:
    """Natural logarithm (``log 0 = -inf``, negative values give NaN)."""
    return _unary(Log(), a)


def sqrt(a: Tensor2D) -> Tensor2D:
    """Square root (negative values give NaN)."""
    return _unary(Sqrt(), a)


def abs(a: Tensor2D) -> Tensor2D:
    """``|a|`` element-wise."""
    return _unary(Abs(), a, float_only=False)


def relu(a: Tensor2D) -> Tensor2D:
    """``max(a, 0)`` element-wise."""
    return _unary(ReLU(), a)


def leaky_relu(a: Tensor2D, negative_slope: float = 0.01) -> Tensor2D:
    """``a`` where positive, ``negative_slope * a`` elsewhere."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(at_user_site("leaky_relu: negative_slope must be a real number"))
    return _unary(LeakyReLU(float(negative_slope)), a)


def sigmoid(a: Tensor2D) -> Tensor2D:
    """``1 / (1 + exp(-a))``, computed without overflow for any input."""
    return _unary(Sigmoid(), a)


def tanh(a: Tensor2D) -> Tensor2D:
    """Hyperbolic tangent."""
    return _unary(Tanh(), a)


# ---------------------------------------------------------------------------------------------
# matrix product, layout and copies
# ---------------------------------------------------------------------------------------------


class MatMul(Op):
    """``C = op(A) @ op(B)``, ``op`` transposing when flagged (as BLAS gemm).

    Plain ``C = A @ B``:  ``dA = G @ B.T``,  ``dB = A.T @ G``. The flags let the rules, and
    ``linear``, reach transposed operands without copying them.
    """

    __slots__ = ("trans_a", "trans_b")
    name = "matmul"

    def __init__(self, trans_a: bool = False, trans_b: bool = False) -> None:
        self.trans_a = trans_a
        self.trans_b = trans_b

    def describe(self) -> str:
        if self.trans_a or self.trans_b:
            return f"matmul({'A.T' if self.trans_a else 'A'} @ {'B.T' if self.trans_b else 'B'})"
        return "matmul"

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
    be = a._backend
    data = be.matmul(a._data, b._data, trans_a, trans_b)
    if not (_autograd._grad_enabled or _autograd._anomaly):  # backward without create_graph: no op
        return _wrap(data, be)
    return record(MatMul(trans_a, trans_b), data, be, (a, b))


def matmul(a: Tensor2D, b: Tensor2D) -> Tensor2D:
    """The matrix product ``a @ b``: ``(m, k) @ (k, n) -> (m, n)``."""
    if not isinstance(a, Tensor2D) or not isinstance(b, Tensor2D):
        if isinstance(a, numbers.Real) or isinstance(b, numbers.Real):
            raise TypeError(at_user_site("matmul: @ needs two matrices; to scale by a number use *"))
        if isinstance(a, Tensor2D):
            b = _as_operand(b, a, "matmul")
        elif isinstance(b, Tensor2D):
            a = _as_operand(a, b, "matmul")
        else:
            raise TypeError("matmul: at least one operand must be a Tensor2D")
    if a._backend is not b._backend or a._data.dtype != b._data.dtype:
        _same_storage("matmul", a, b)
    (m, k), (k2, n) = a._data.shape, b._data.shape
    if k != k2:
        hint = ""
        if k == n:
            hint = "; did you mean to transpose the right operand (a @ b.T)?"
        elif m == k2:
            hint = "; did you mean to transpose the left operand (a.T @ b)?"
        raise ShapeError(at_user_site(f"matmul ({m}x{k}) @ ({k2}x{n}): inner dimensions {k} and {k2} differ{hint}"))
    if a._data.dtype not in a._backend.float_types:
        _need_float("matmul", a)
    be = a._backend
    return record(MatMul(), be.matmul(a._data, b._data), be, (a, b))


class Transpose(Op):
    """``C = A.T``;  ``dA = G.T``."""

    __slots__ = ()
    name = "transpose"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.transpose(a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad.T,)


def transpose(a: Tensor2D) -> Tensor2D:
    """``a.T``: the (n, m) matrix with rows and columns swapped."""
    return _unary(Transpose(), a, float_only=False)


class Reshape(Op):
    """``C`` = the row-major elements of ``A`` read as ``(p, q)``;  ``dA = G`` read as ``A``'s shape."""

    __slots__ = ("shape",)
    name = "reshape"

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def describe(self) -> str:
        return f"reshape({_fmt(self.shape)})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.reshape(a, *self.shape)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad.reshape(*a.shape),)


def reshape(a: Tensor2D, nrows: int, ncols: int) -> Tensor2D:
    """The same row-major elements as an ``nrows x ncols`` matrix; one size may be ``-1``."""
    a = _tensor("reshape", a)
    size = a.nrows * a.ncols
    for v in (nrows, ncols):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(at_user_site(f"reshape: sizes must be ints (one may be -1), got ({nrows!r}, {ncols!r})"))
        if v < 1 and v != -1:
            raise ShapeError(at_user_site(f"reshape: sizes must be positive (or one -1), got ({nrows!r}, {ncols!r})"))
    if nrows == -1 and ncols == -1:
        raise ShapeError(at_user_site("reshape: only one size can be -1"))
    if nrows == -1:
        nrows = size // ncols if size % ncols == 0 else -1
    elif ncols == -1:
        ncols = size // nrows if size % nrows == 0 else -1
    if nrows < 1 or ncols < 1 or nrows * ncols != size:
        raise ShapeError(
            at_user_site(f"reshape: cannot read {a.nrows}x{a.ncols} ({size} values) as ({nrows}, {ncols})")
        )
    if (nrows, ncols) == a.shape:
        return a
    return _unary(Reshape((nrows, ncols)), a, float_only=False)


class Expand(Op):
    """``C`` = ``A`` broadcast to ``(m, n)``;  ``dA`` = ``G`` summed back (by the engine)."""

    __slots__ = ("shape",)
    name = "expand"

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def describe(self) -> str:
        return f"expand({_fmt(self.shape)})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.add(be.full(self.shape[0], self.shape[1], 0, be.dtype(a)), a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad,)


def expand(a: Tensor2D, nrows: int, ncols: int) -> Tensor2D:
    """``a`` (1x1, 1xn or mx1) repeated to ``nrows x ncols``."""
    a = _tensor("expand", a)
    if a.shape == (nrows, ncols):
        return a
    check_size("expand", nrows, ncols)
    _check_broadcast("expand", (nrows, ncols), a.shape)
    if a.nrows > nrows or a.ncols > ncols:
        raise _broadcast_error("expand", a.shape, (nrows, ncols))
    return _unary(Expand((nrows, ncols)), a, float_only=False)


class Clone(Op):
    """``C = A`` in new storage;  ``dA = G``."""

    __slots__ = ()
    name = "clone"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.copy(a)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad,)


def clone(a: Tensor2D) -> Tensor2D:
    """A copy of ``a`` with its own storage."""
    return _unary(Clone(), a, float_only=False)


class To(Op):
    """``C = A`` converted to another dtype and/or backend;  ``dA = G`` converted back."""

    __slots__ = ("backend", "dtype")
    name = "to"

    def __init__(self, dtype: str, backend: Backend) -> None:
        self.dtype = dtype
        self.backend = backend

    def describe(self) -> str:
        return f"to({self.dtype}, {self.backend.name})"

    def forward(self, be: Backend, a: Data) -> Data:
        if self.backend is be:
            return be.astype(a, self.dtype)
        return self.backend.from_rows(be.tolist(a), self.dtype)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (grad.to(a.dtype, a._backend),)


def to(a: Tensor2D, dtype: Any = None, backend: str | Backend | None = None) -> Tensor2D:
    """``a`` on another dtype and/or backend; differentiable between floating dtypes."""
    a = _tensor("to", a)
    dt = a.dtype if dtype is None else dtype_name(dtype)
    be = a._backend if backend is None else _backends.get(backend)
    if dt == a.dtype and be is a._backend:
        return a
    if dt == "int64" and a.dtype != "int64" and not a._backend.all_finite(a._data):
        raise DTypeError(at_user_site("to(int64): cannot convert NaN or Inf to int64"))
    op = To(dt, be)
    data = op.forward(a._backend, a._data)
    if dt == "int64" or a.dtype == "int64":
        return _wrap(data, be)  # integers carry no gradient
    return record(op, data, be, (a,))


class Cat(Op):
    """``C = [A1 | A2 | ...]`` along an axis;  ``dAi`` = the slice of ``G`` where ``Ai`` sits."""

    __slots__ = ("axis",)
    name = "cat"

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def describe(self) -> str:
        return f"cat(axis={self.axis})"

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
        raise TypeError(at_user_site("cat: expected a non-empty list of Tensor2D"))
    parts = tuple(_tensor("cat", t) for t in tensors)
    ax = _axis("cat", axis)
    if ax is None:
        raise ShapeError(at_user_site("cat: axis must be 0 or 1"))
    first = parts[0]
    for i, t in enumerate(parts[1:], 1):
        _same_storage("cat", first, t)
        other = 1 - ax
        if t.shape[other] != first.shape[other]:
            what = "columns" if ax == 0 else "rows"
            raise ShapeError(
                at_user_site(
                    f"cat(axis={ax}): tensor 0 is {_fmt(first.shape)} but tensor {i} is "
                    f"{_fmt(t.shape)}; all need the same number of {what}"
                )
            )
    if len(parts) == 1:
        return first
    op = Cat(ax)
    be = first._backend
    return record(op, op.forward(be, *(t._data for t in parts)), be, parts)


# ---------------------------------------------------------------------------------------------
# indexing
# ---------------------------------------------------------------------------------------------


class Take(Op):
    """``C = A[rows][:, cols]`` (outer indexing);  ``dA`` = ``G`` scatter-added into zeros."""

    __slots__ = ("cols", "rows")
    name = "index"

    def __init__(self, rows: Index, cols: Index) -> None:
        self.rows = rows
        self.cols = cols

    def describe(self) -> str:
        return f"index[{_fmt_index(self.rows)}, {_fmt_index(self.cols)}]"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.take(a, self.rows, self.cols)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        op = TakeAdjoint(self.rows, self.cols, a.shape)
        return (record(op, op.forward(grad._backend, grad._data), grad._backend, (grad,)),)


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
        op = Take(self.rows, self.cols)
        return (record(op, op.forward(grad._backend, grad._data), grad._backend, (grad,)),)


class Pick(Op):
    """``C[i] = A[rows[i], cols[i]]`` (paired indexing, a column);  ``dA`` = ``G`` added back there."""

    __slots__ = ("cols", "rows")
    name = "pick"

    def __init__(self, rows: Any, cols: Any) -> None:
        self.rows = rows
        self.cols = cols

    def forward(self, be: Backend, a: Data) -> Data:
        return be.pick(a, self.rows, self.cols)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        op = PickAdjoint(self.rows, self.cols, a.shape)
        return (record(op, op.forward(grad._backend, grad._data), grad._backend, (grad,)),)


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
        op = Pick(self.rows, self.cols)
        return (record(op, op.forward(grad._backend, grad._data), grad._backend, (grad,)),)


def _fmt_index(ix: Index) -> str:
    if isinstance(ix, slice):
        if ix == slice(None):
            return ":"
        parts = ["" if v is None else str(v) for v in (ix.start, ix.stop)]
        return ":".join(parts) + (f":{ix.step}" if ix.step not in (None, 1) else "")
    return f"[{ix[0]}]" if len(ix) == 1 else f"<{len(ix)} indices>"


def _one_axis(key: Any, size: int, axis: int, shape: tuple[int, int]) -> tuple[str, Index]:
    """Normalise one axis of an index: ``("int" | "slice" | "list", slice or list of ints)``."""
    what = "row" if axis == 0 else "column"
    if isinstance(key, slice):
        if len(range(size)[key]) == 0:  # matgrad has no empty matrices
            raise ShapeError(
                at_user_site(f"index: slice {_fmt_index(key)} selects no {what}s of a {_fmt(shape)} tensor")
            )
        return "slice", key
    if isinstance(key, bool):
        raise TypeError(at_user_site("index: a bool is not an index; use an int, a slice or a list of ints"))
    if isinstance(key, numbers.Integral):
        i = int(key)
        if not -size <= i < size:
            raise IndexError(
                at_user_site(f"index {i} is out of range for {what}s of a {_fmt(shape)} tensor (size {size})")
            )
        return "int", [i % size]
    if isinstance(key, Tensor2D):
        if key.dtype != "int64":
            raise TypeError(at_user_site(f"index: a tensor index must be int64, got {key.dtype}; use .long()"))
        if key.nrows != 1 and key.ncols != 1:
            raise ShapeError(at_user_site(f"index: a tensor index must be a row or a column, got {_fmt(key.shape)}"))
        values = [v for row in key.tolist() for v in row]
    elif hasattr(key, "ndim") and hasattr(key, "tolist"):
        if key.ndim != 1 or key.dtype.kind not in "iu":
            raise TypeError(at_user_site("index: an array index must be 1-D and of an integer dtype"))
        values = key.tolist()
    elif isinstance(key, (list, tuple, range)):
        values = list(key)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(at_user_site(f"index: a list index must hold ints, found {type(v).__name__} {v!r}"))
    else:
        raise TypeError(
            at_user_site(f"index: cannot index with {type(key).__name__}; use an int, a slice or a list of ints")
        )
    if not values:
        raise ShapeError(at_user_site(f"index: an empty index list selects no {what}s"))
    out = []
    for v in values:
        i = int(v)
        if not -size <= i < size:
            raise IndexError(
                at_user_site(f"index {i} is out of range for {what}s of a {_fmt(shape)} tensor (size {size})")
            )
        out.append(i % size)
    return "list", out


def index(a: Tensor2D, key: Any) -> Tensor2D:
    """``a[key]``, always 2-D.

    ``a[i]`` is row ``i`` (1, n); ``a[2:5]`` rows; ``a[[3, 1, 4]]`` gathers rows (a batch);
    ``a[:, j]`` is column ``j`` (m, 1); ``a[rows, cols]`` with ints, slices or lists selects
    the submatrix, except that two lists pair up as in NumPy: ``a[[0, 1], [2, 3]]`` is the
    (2, 1) column ``[a[0, 2], a[1, 3]]``. Backward scatter-adds, so repeated indices accumulate.
    """
    a = _tensor("index", a)
    shape = a.shape
    if isinstance(key, tuple):
        if len(key) != 2:
            raise IndexError(at_user_site(f"index: a Tensor2D takes 1 or 2 indices, got {len(key)}"))
        rkey, ckey = key
    else:
        rkey, ckey = key, slice(None)
    rkind, rows = _one_axis(rkey, shape[0], 0, shape)
    ckind, cols = _one_axis(ckey, shape[1], 1, shape)
    be = a._backend
    op: Op
    if rkind == "list" and ckind == "list":
        if len(rows) != len(cols):  # type: ignore[arg-type]
            raise IndexError(
                at_user_site(
                    f"index: paired row and column lists must have equal lengths, got {len(rows)} and {len(cols)}"  # type: ignore[arg-type]
                )
            )
        op = Pick(rows, cols)
    else:
        if rows == slice(None) and cols == slice(None):
            return a
        op = Take(rows, cols)
    return record(op, op.forward(be, a._data), be, (a,))


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------


def _count(shape: tuple[int, int], axis: Any) -> int:
    return shape[0] * shape[1] if axis is None else shape[axis]


class Sum(Op):
    """``C = sum(A)`` over all / axis 0 / axis 1, kept 2-D;  ``dA`` = ``G`` broadcast back."""

    __slots__ = ("axis",)
    name = "sum"

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return "sum" if self.axis is None else f"sum(axis={self.axis})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.sum(a, self.axis)

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (expand(grad, *a.shape),)


class Mean(Op):
    """``C = sum(A) / N`` over all / axis 0 / axis 1;  ``dA`` = ``G / N`` broadcast back."""

    __slots__ = ("axis",)
    name = "mean"

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return "mean" if self.axis is None else f"mean(axis={self.axis})"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.div(be.sum(a, self.axis), float(_count(a.shape, self.axis)))

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        return (expand(grad / float(_count(a.shape, self.axis)), *a.shape),)


class _Extreme(Op):
    """Shared rule of ``max`` and ``min``.

    ``dA = G * M / count(M)`` where ``M`` marks the elements equal to the result: ties share the
    gradient equally (as ``torch.amax``), so the rule is symmetric and gradchecks cleanly.
    """

    __slots__ = ("axis",)
    needs_output = True

    def __init__(self, axis: Any) -> None:
        self.axis = axis

    def describe(self) -> str:
        return self.name if self.axis is None else f"{self.name}(axis={self.axis})"

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        be = a._backend
        hits = be.compare("eq", a._data, self.output._data)
        share = be.div(hits, be.sum(hits, self.axis))
        return (grad * _wrap(share, be),)


class Max(_Extreme):
    """``C = max(A)`` over all / axis 0 / axis 1;  ``dA = G * M / count(M)``, ``M = [A == C]``."""

    __slots__ = ()
    name = "max"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.max(a, self.axis)


class Min(_Extreme):
    """``C = min(A)`` over all / axis 0 / axis 1;  ``dA = G * M / count(M)``, ``M = [A == C]``."""

    __slots__ = ()
    name = "min"

    def forward(self, be: Backend, a: Data) -> Data:
        return be.min(a, self.axis)


def _reduce(op: Op, a: Any, int_ok: bool) -> Tensor2D:
    a = _tensor(op.name, a)
    if not int_ok:
        _need_float(op.name, a)
    be = a._backend
    return record(op, op.forward(be, a._data), be, (a,))


def sum(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Sum of all elements (1x1), of each column (``axis=0``, 1xn) or of each row (``axis=1``, mx1)."""
    return _reduce(Sum(_axis("sum", axis)), a, int_ok=True)


def mean(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Mean, with ``sum``'s axes."""
    return _reduce(Mean(_axis("mean", axis)), a, int_ok=False)


def max(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Maximum, with ``sum``'s axes; the gradient is shared among ties."""
    return _reduce(Max(_axis("max", axis)), a, int_ok=True)


def min(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """Minimum, with ``sum``'s axes; the gradient is shared among ties."""
    return _reduce(Min(_axis("min", axis)), a, int_ok=True)


def argmax(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """int64 index of the first maximum: (1,1) flat row-major index, (1,n) per column or (m,1) per row."""
    a = _tensor("argmax", a)
    return _wrap(a._backend.argmax(a._data, _axis("argmax", axis)), a._backend)


def argmin(a: Tensor2D, axis: int | None = None) -> Tensor2D:
    """int64 index of the first minimum, with ``argmax``'s shapes."""
    a = _tensor("argmin", a)
    return _wrap(a._backend.argmin(a._data, _axis("argmin", axis)), a._backend)


# ---------------------------------------------------------------------------------------------
# softmax family (numerically stable: the maximum is subtracted before exp)
# ---------------------------------------------------------------------------------------------


def _log_sum_exp(be: Backend, a: Data, axis: Literal[0, 1]) -> tuple[Data, Data]:
    """``(shifted, lse)``: ``a - max`` and ``log(sum(exp(a - max))) + max`` along ``axis``."""
    top = be.max(a, axis)
    top = be.where(be.compare("eq", top, -math.inf), 0.0, top)  # a row of -inf
    shifted = be.sub(a, top)
    lse = be.add(be.unary("log", be.sum(be.unary("exp", shifted), axis)), top)
    return shifted, lse


class LogSumExp(Op):
    """``C = log(sum(exp(A), axis))``;  ``dA = G * exp(A - C)`` (the softmax)."""

    __slots__ = ("axis",)
    name = "logsumexp"

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def forward(self, be: Backend, a: Data) -> Data:
        return _log_sum_exp(be, a, self.axis)[1]

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        # softmax(a), not exp(a - C): C is rounded, and at |a| ~ 1e4 in float32 that costs 4 digits
        return (grad * softmax(a, self.axis),)


class Softmax(Op):
    """``C = exp(A) / sum(exp(A), axis)``;  ``dA = C * (G - sum(G * C, axis))``."""

    __slots__ = ("axis",)
    name = "softmax"
    needs_output = True

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
    """``C = A - logsumexp(A, axis)``;  ``dA = G - exp(C) * sum(G, axis)``."""

    __slots__ = ("axis",)
    name = "log_softmax"

    def __init__(self, axis: Literal[0, 1]) -> None:
        self.axis = axis

    def forward(self, be: Backend, a: Data) -> Data:
        return be.sub(a, _log_sum_exp(be, a, self.axis)[1])

    def backward(self, grad: Tensor2D, a: Tensor2D) -> tuple[Tensor2D | None, ...]:
        # softmax(a), not exp(C): C = a - logsumexp(a) is rounded, and at |a| ~ 1e4 in float32
        # that rounding costs 4 digits; the softmax of the input subtracts the max exactly.
        return (grad - softmax(a, self.axis) * grad.sum(self.axis),)


def _axis01(name: str, axis: Any) -> Literal[0, 1]:
    ax = _axis(name, axis)
    if ax is None:
        raise ShapeError(at_user_site(f"{name}: axis must be 0 or 1 (1 = along each row)"))
    return ax


def logsumexp(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``log(sum(exp(a), axis))``, stable for large inputs: (m,1) for axis 1, (1,n) for axis 0."""
    return _unary(LogSumExp(_axis01("logsumexp", axis)), a)


def softmax(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``exp(a) / sum(exp(a), axis)``, stable for large inputs (rows sum to 1 for axis 1)."""
    return _unary(Softmax(_axis01("softmax", axis)), a)


def log_softmax(a: Tensor2D, axis: int = 1) -> Tensor2D:
    """``a - logsumexp(a, axis)``, stable for large inputs."""
    return _unary(LogSoftmax(_axis01("log_softmax", axis)), a)
