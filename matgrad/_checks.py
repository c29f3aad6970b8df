"""Operand checks, driven by what each op declares (``Op.arity``, ``broadcast``, ``float_only``).

``operands(op, args)`` is called by ``Op.__call__`` for every op: it turns numbers and 2-D arrays
into constants where the op broadcasts, and refuses wrong types, mixed backends or dtypes, shapes
that do not broadcast and integer inputs to floating-only ops, each with a message that names the
op, the shapes and the fix. The user's file and line are added by the error class itself.
Functions built from several ops (``mse_loss``, ``where``) use the same helpers with their names.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from matgrad._errors import ArgumentTypeError, BackendError, DTypeError, ShapeError, TensorIndexError
from matgrad.backends.base import FLOAT_DTYPES
from matgrad.tensor import Tensor2D, _wrap, get_default_dtype

if TYPE_CHECKING:
    from matgrad.autograd.graph import Op
    from matgrad.backends.base import Axis, Index

__all__ = [
    "as_operand",
    "axis",
    "broadcast_shape",
    "fmt",
    "index_key",
    "inplace_operand",
    "need_float",
    "operands",
    "reshape_sizes",
    "same_storage",
    "tensor",
    "where_operands",
]


def fmt(shape: tuple[int, int]) -> str:
    """``"3x4"``."""
    return f"{shape[0]}x{shape[1]}"


def tensor(name: str, x: Any) -> Tensor2D:
    """``x`` itself when it is a Tensor2D, else a clear TypeError naming ``name``."""
    if not isinstance(x, Tensor2D):
        raise ArgumentTypeError(f"{name}: expected a Tensor2D, got {type(x).__name__}")
    return x


def constant(value: float, like: Tensor2D) -> Tensor2D:
    """A 1x1 constant on ``like``'s backend and dtype (how scalars enter the graph)."""
    return _wrap(like._backend.full(1, 1, value, like.dtype), like._backend)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_operand(x: Any, like: Tensor2D, name: str) -> Tensor2D:
    """A Python number or a 2-D NumPy array as a constant tensor matching ``like``."""
    if isinstance(x, Tensor2D):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        if like.dtype == "int64":
            if not float(x).is_integer():
                raise DTypeError(f"{name}: an int64 tensor with the non-integer {x!r}; convert with .float() first")
            value = int(x)  # type: ignore[call-overload]
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise DTypeError(f"{name}: {x!r} does not fit in int64 (-2**63 .. 2**63 - 1); convert with .double()")
            return constant(value, like)
        return constant(x, like)  # type: ignore[arg-type]
    if hasattr(x, "ndim") and hasattr(x, "dtype") and hasattr(x, "tolist"):
        try:
            return Tensor2D(x, dtype=like.dtype, backend=like._backend)
        except (ShapeError, TypeError, DTypeError) as exc:  # say which op the array was given to
            raise type(exc)(f"{name}: {str(exc).replace('Tensor2D: ', '', 1)}") from None
    raise ArgumentTypeError(
        f"{name}: cannot combine a Tensor2D with a {type(x).__name__}; use a number, a Tensor2D or a 2-D NumPy array"
    )


def same_storage(name: str, a: Tensor2D, b: Tensor2D) -> None:
    """Both tensors on one backend with one dtype."""
    if a._backend is not b._backend:
        if a.backend == b.backend:
            raise BackendError(
                f"{name}: operands live on different devices ({a._backend.label} and {b._backend.label}); "
                f"move one with .to(device={a.device!r})"
            )
        raise BackendError(
            f"{name}: operands live on different backends ({a._backend.label} and {b._backend.label}); "
            f"move one with .to(backend={a._backend.spec!r})"
        )
    if a.dtype != b.dtype:
        raise DTypeError(
            f"{name}: operands have different dtypes ({a.dtype} and {b.dtype}); convert one with .to({a.dtype!r})"
        )


def broadcast_error(name: str, sa: tuple[int, int], sb: tuple[int, int]) -> ShapeError:
    hint = "; did you mean to transpose one of them (.T)?" if sa == sb[::-1] else ""
    return ShapeError(
        f"{name}: shapes {fmt(sa)} and {fmt(sb)} do not broadcast; an (m,n) operand combines "
        f"only with (m,n), (1,n), (m,1) or (1,1){hint}"
    )


def broadcast_shape(name: str, sa: tuple[int, int], sb: tuple[int, int]) -> tuple[int, int]:
    """The shape ``sa`` and ``sb`` broadcast to; one of them must be it (no outer broadcasts)."""
    out = (max(sa[0], sb[0]), max(sa[1], sb[1]))
    for s in (sa, sb):
        if (s[0] != out[0] and s[0] != 1) or (s[1] != out[1] and s[1] != 1):
            raise broadcast_error(name, sa, sb)
    if sa != out and sb != out:  # (1,n) with (m,1): an outer broadcast, refused on purpose
        raise broadcast_error(name, sa, sb)
    return out


def need_float(name: str, *tensors: Tensor2D) -> None:
    """Every tensor floating (float32 or float64)."""
    for t in tensors:
        if t._data.dtype not in t._backend.float_types:
            raise DTypeError(f"{name}: needs a floating tensor, got {t.dtype}; convert with .float()")


def binary(name: str, a: Any, b: Any) -> tuple[Tensor2D, Tensor2D]:
    """Both operands as tensors on one backend and dtype, with shapes that broadcast."""
    if not isinstance(a, Tensor2D):
        if not isinstance(b, Tensor2D):
            raise ArgumentTypeError(f"{name}: at least one operand must be a Tensor2D")
        a = as_operand(a, b, name)
    elif not isinstance(b, Tensor2D):
        b = as_operand(b, a, name)
    ad, bd = a._data, b._data
    if a._backend is not b._backend or ad.dtype != bd.dtype:
        same_storage(name, a, b)
    if ad.shape != bd.shape:
        broadcast_shape(name, ad.shape, bd.shape)
    return a, b


def operands(op: Op, args: tuple[Any, ...]) -> tuple[Tensor2D, ...]:
    """``args`` as the tensors ``op`` runs on, checked as its class declares."""
    if op.broadcast:
        if len(args) != op.arity:
            raise ArgumentTypeError(f"{op.describe()}: takes {op.arity} operands, got {len(args)}")
        if op.arity == 3:  # where(cond, a, b): a condition of any dtype, then two values
            cond = tensor(op.describe(), args[0])
            a, b = binary(op.describe(), args[1], args[2])
            if cond._backend is not a._backend:
                same_storage(op.describe(), a, cond)
            return cond, a, b
        a, b = args
        if (  # the common case, checked without naming the op (describe() is for messages)
            type(a) is not Tensor2D
            or type(b) is not Tensor2D
            or a._backend is not b._backend
            or a._data.dtype != b._data.dtype
            or a._data.shape != b._data.shape
        ):
            a, b = binary(op.describe(), a, b)
        if op.float_only and a._data.dtype not in a._backend.float_types:
            need_float(op.describe(), a)
        return a, b
    n = len(args)
    if n == 1:
        a = args[0]
        if not isinstance(a, Tensor2D):
            raise ArgumentTypeError(f"{op.describe()}: expected a Tensor2D, got {type(a).__name__}")
        if op.float_only and a._data.dtype not in a._backend.float_types:
            need_float(op.describe(), a)
        return args
    if op.arity != -1 and n != op.arity:
        raise ArgumentTypeError(f"{op.describe()}: takes {op.arity} tensors, got {n}")
    if n == 0:
        raise ArgumentTypeError(f"{op.describe()}: needs at least one tensor")
    first = args[0]
    for t in args:
        if not isinstance(t, Tensor2D):
            raise ArgumentTypeError(f"{op.describe()}: expected Tensor2D operands, got {type(t).__name__}")
        if t._backend is not first._backend or t._data.dtype != first._data.dtype:
            same_storage(op.describe(), first, t)
    if op.float_only:
        need_float(op.describe(), first)
    return args


def axis(name: str, value: Any) -> Axis:
    """``None``, ``0`` or ``1`` (``-2`` and ``-1`` accepted, as NumPy), else a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: axis must be None, 0 or 1 (an int), got {type(value).__name__} {value!r}")
    if value not in (0, 1, -1, -2):
        raise ShapeError(f"{name}: axis must be None, 0 or 1 (or -1, -2), got {value!r}")
    return 0 if value % 2 == 0 else 1


def inplace_operand(name: str, target: Tensor2D, other: Any, alpha: float = 1.0) -> None:
    """Validate the operand of an in-place update (``add_``, ``copy_``, ``mul_``)."""
    if target.dtype == "int64":
        numbers_used = [alpha] if isinstance(other, Tensor2D) else [alpha, other]
        if any(isinstance(v, numbers.Real) and not float(v).is_integer() for v in numbers_used):
            raise DTypeError(f"{name}: an int64 tensor cannot take the non-integer {numbers_used[-1]!r}; use .float()")
    if isinstance(other, Tensor2D):
        same_storage(name, target, other)
        if other.shape != target.shape:
            broadcast_shape(name, target.shape, other.shape)
            if other.nrows > target.nrows or other.ncols > target.ncols:
                raise broadcast_error(name, target.shape, other.shape)
    elif not (isinstance(other, numbers.Real) and not isinstance(other, bool)):
        raise ArgumentTypeError(f"{name}: expected a Tensor2D or a number, got {type(other).__name__}")


def where_operands(cond: Any, a: Any, b: Any) -> tuple[Tensor2D, Tensor2D, Tensor2D]:
    """``where``'s operands: numbers become constants; ``a`` and ``b`` must broadcast to ``cond``'s shape."""
    cond = tensor("where", cond)
    if not isinstance(a, Tensor2D) and not isinstance(b, Tensor2D):  # two numbers: cond's floating dtype
        like = (
            cond
            if cond.dtype in FLOAT_DTYPES
            else _wrap(cond._backend.full(1, 1, 0, get_default_dtype()), cond._backend)
        )
        a = as_operand(a, like, "where")
    a, b = binary("where", a, b)
    if cond._backend is not a._backend:
        same_storage("where", a, cond)
    shape = (max(a.nrows, b.nrows), max(a.ncols, b.ncols))
    if shape != cond.shape:
        try:
            full: tuple[int, int] | None = broadcast_shape("where", cond.shape, shape)
        except ShapeError:
            full = None
        if full != cond.shape:
            raise ShapeError(
                f"where: cond is {fmt(cond.shape)} but the values are {fmt(a.shape)} and {fmt(b.shape)}; "
                "they must broadcast to cond's shape"
            )
    return cond, a, b


def reshape_sizes(shape: tuple[int, int], nrows: Any, ncols: Any) -> tuple[int, int]:
    """``(nrows, ncols)`` for reading ``shape``'s elements row-major, one of them possibly ``-1``."""
    size = shape[0] * shape[1]
    for v in (nrows, ncols):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArgumentTypeError(f"reshape: sizes must be ints (one may be -1), got ({nrows!r}, {ncols!r})")
        if v < 1 and v != -1:
            raise ShapeError(f"reshape: sizes must be positive (or one -1), got ({nrows!r}, {ncols!r})")
    if nrows == -1 and ncols == -1:
        raise ShapeError("reshape: only one size can be -1")
    if nrows == -1:
        nrows = size // ncols if size % ncols == 0 else -1
    elif ncols == -1:
        ncols = size // nrows if size % nrows == 0 else -1
    if nrows < 1 or ncols < 1 or nrows * ncols != size:
        raise ShapeError(f"reshape: cannot read {shape[0]}x{shape[1]} ({size} values) as ({nrows}, {ncols})")
    return nrows, ncols


def index_key(key: Any, shape: tuple[int, int]) -> tuple[str, Index, Index]:
    """``a[key]`` normalised: ``("pairs", rows, cols)`` for two paired lists, else ``("outer", rows, cols)``."""
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TensorIndexError(f"index: a Tensor2D takes 1 or 2 indices, got {len(key)}")
        rkey, ckey = key
    else:
        rkey, ckey = key, slice(None)
    rkind, rows = _one_axis(rkey, shape[0], 0, shape)
    ckind, cols = _one_axis(ckey, shape[1], 1, shape)
    if rkind == "list" and ckind == "list":
        if len(rows) != len(cols):  # type: ignore[arg-type]
            raise TensorIndexError(
                f"index: paired row and column lists must have equal lengths, got {len(rows)} and {len(cols)}"  # type: ignore[arg-type]
            )
        return "pairs", rows, cols
    return "outer", rows, cols


def fmt_index(ix: Index) -> str:
    """``":"``, ``"2:5"``, ``"[3]"`` or ``"<4 indices>"``."""
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
            raise ShapeError(f"index: slice {fmt_index(key)} selects no {what}s of a {fmt(shape)} tensor")
        return "slice", key
    if isinstance(key, bool):
        raise ArgumentTypeError("index: a bool is not an index; use an int, a slice or a list of ints")
    if isinstance(key, numbers.Integral):
        i = int(key)
        if not -size <= i < size:
            raise TensorIndexError(f"index {i} is out of range for {what}s of a {fmt(shape)} tensor (size {size})")
        return "int", [i % size]
    if isinstance(key, Tensor2D):
        if key.dtype != "int64":
            raise ArgumentTypeError(f"index: a tensor index must be int64, got {key.dtype}; use .long()")
        if key.nrows != 1 and key.ncols != 1:
            raise ShapeError(f"index: a tensor index must be a row or a column, got {fmt(key.shape)}")
        values = [v for row in key.tolist() for v in row]
    elif hasattr(key, "ndim") and hasattr(key, "tolist"):
        if key.ndim != 1 or key.dtype.kind not in "iu":
            raise ArgumentTypeError("index: an array index must be 1-D and of an integer dtype")
        values = key.tolist()
    elif isinstance(key, (list, tuple, range)):
        values = list(key)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ArgumentTypeError(f"index: a list index must hold ints, found {type(v).__name__} {v!r}")
    else:
        raise ArgumentTypeError(f"index: cannot index with {type(key).__name__}; use an int, a slice or a list of ints")
    if not values:
        raise ShapeError(f"index: an empty index list selects no {what}s")
    out = []
    for v in values:
        i = int(v)
        if not -size <= i < size:
            raise TensorIndexError(f"index {i} is out of range for {what}s of a {fmt(shape)} tensor (size {size})")
        out.append(i % size)
    return "list", out
