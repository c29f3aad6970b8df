"""The pure-Python backend: a row-major ``Matrix`` over one flat list. Standard library only.

``Matrix.get(row, col)`` is ``data[row * ncols + col]``, as in the blog post matgrad grew from.
Every kernel walks the flat list with C-level helpers (``map``, slicing, ``itertools``) so the
interpreter loop runs per row, not per element, wherever the maths allows.

float32 is emulated faithfully: values are Python floats rounded to the nearest float32 after
every kernel (``array("f", ...)``), so a float32 tensor holds the same numbers on both backends.
int64 tensors hold Python ints, wrapped into int64's range after every kernel (two's complement,
``2**63 - 1 + 1 == -2**63``), so integer overflow gives NumPy's and PyTorch's results.

This module must never import numpy (``to_numpy`` imports it only when asked to convert).
"""

from __future__ import annotations

import functools
import math
import operator
import random
from array import array
from itertools import chain, islice, repeat
from typing import Any, Callable, Iterable, Literal, Sequence

from matgrad._errors import ShapeError, TensorIndexError
from matgrad.backends.base import Axis, Backend, Index, Operand, Window

__all__ = ["Matrix", "PythonBackend", "dot_products"]

_INF = math.inf
_NAN = math.nan
_mul = operator.mul


class Matrix:
    """A dense row-major matrix: ``nrows x ncols`` floats (or ints) in one flat list."""

    __slots__ = ("data", "dtype", "ncols", "nrows")

    def __init__(self, nrows: int, ncols: int, data: list[Any], dtype: str = "float64") -> None:
        if nrows < 1 or ncols < 1 or len(data) != nrows * ncols:
            raise ShapeError(
                f"Matrix({nrows}, {ncols}, data): needs nrows, ncols >= 1 and "
                f"len(data) == nrows * ncols = {nrows * ncols}, got {len(data)}"
            )
        self.nrows = nrows
        self.ncols = ncols
        self.data = data
        self.dtype = dtype

    @classmethod
    def _wrap(cls, nrows: int, ncols: int, data: list[Any], dtype: str) -> Matrix:
        """Build without validation; ``data`` is already the right length and dtype."""
        m = cls.__new__(cls)
        m.nrows = nrows
        m.ncols = ncols
        m.data = data
        m.dtype = dtype
        return m

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nrows, self.ncols)

    def get(self, row: int, col: int) -> Any:
        """Element ``(row, col)``: ``data[row * ncols + col]``."""
        if not (0 <= row < self.nrows and 0 <= col < self.ncols):
            raise TensorIndexError(f"Matrix.get({row}, {col}) out of range for shape {self.shape}")
        return self.data[row * self.ncols + col]

    def row(self, i: int) -> list[Any]:
        """Row ``i`` as a new list (one contiguous slice of the flat buffer)."""
        n = self.ncols
        return self.data[i * n : (i + 1) * n]

    def col(self, j: int) -> list[Any]:
        """Column ``j`` as a new list (a strided slice of the flat buffer)."""
        return self.data[j :: self.ncols]

    def rows(self) -> list[list[Any]]:
        n = self.ncols
        d = self.data
        return [d[i : i + n] for i in range(0, len(d), n)]

    def __repr__(self) -> str:
        return f"Matrix({self.nrows}, {self.ncols}, <{len(self.data)} values>, dtype={self.dtype!r})"


# -- IEEE-754 semantics where Python raises ---------------------------------------------------


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return _INF


def _safe_log(x: float) -> float:
    try:
        return math.log(x)
    except ValueError:
        return -_INF if x == 0 else _NAN


def _safe_log1p(x: float) -> float:
    try:
        return math.log1p(x)
    except ValueError:
        return -_INF if x == -1 else _NAN


def _safe_sqrt(x: float) -> float:
    try:
        return math.sqrt(x)
    except ValueError:
        return _NAN


def _safe_div(x: float, y: float) -> float:
    try:
        return x / y
    except ZeroDivisionError:
        if x != x or x == 0:
            return _NAN
        return math.copysign(_INF, x) * math.copysign(1.0, y)


def _odd_integer(y: float) -> bool:
    return y == int(y) and int(y) % 2 == 1 if math.isfinite(y) else False


def _safe_pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except OverflowError:
        return -_INF if x < 0 and _odd_integer(y) else _INF
    except ValueError:
        if x == 0 and y < 0:
            return math.copysign(_INF, x) if _odd_integer(y) else _INF
        return _NAN


def _sigmoid(x: float) -> float:
    # Two branches so exp never overflows: written as 1/(1+exp(-x)), sigmoid(-1000) overflows.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = _safe_exp(x)
    return e / (1.0 + e)


def _sign(x: float) -> float:
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x  # 0.0, -0.0 and nan map to themselves, as numpy.sign


def _maximum(x: float, y: float) -> float:
    return x if x >= y or x != x else y  # nan propagates from either side, as numpy.maximum


def _minimum(x: float, y: float) -> float:
    return x if x <= y or x != x else y


def _map_safe(fast: Callable[[float], float], safe: Callable[[float], float], xs: list[float]) -> list[float]:
    """``map(fast)``, redone with the IEEE-safe version only when ``fast`` raised."""
    try:
        return list(map(fast, xs))
    except (ValueError, OverflowError, ZeroDivisionError):
        return list(map(safe, xs))


_UNARY: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "neg": (operator.neg, operator.neg),
    "exp": (math.exp, _safe_exp),
    "log": (math.log, _safe_log),
    "log1p": (math.log1p, _safe_log1p),
    "sqrt": (math.sqrt, _safe_sqrt),
    "abs": (abs, abs),
    "sign": (_sign, _sign),
    "tanh": (math.tanh, math.tanh),
    "sigmoid": (_sigmoid, _sigmoid),
}

_BINARY: dict[str, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    "add": (operator.add, operator.add),
    "sub": (operator.sub, operator.sub),
    "mul": (operator.mul, operator.mul),
    "div": (operator.truediv, _safe_div),
    "pow": (math.pow, _safe_pow),
    "maximum": (_maximum, _maximum),
    "minimum": (_minimum, _minimum),
}

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT64_SPAN = 2**64


def _int64(values: list[Any]) -> list[int]:
    """Python ints wrapped into int64's range, two's complement (as NumPy and PyTorch wrap)."""
    if float in set(map(type, values)):  # an integer-valued float operand: keep ints
        values = list(map(int, values))
    if values and (min(values) < _INT64_MIN or max(values) > _INT64_MAX):
        return [(v - _INT64_MIN) % _INT64_SPAN + _INT64_MIN for v in values]
    return values


def _finish(nrows: int, ncols: int, values: list[Any], dtype: str) -> Matrix:
    """Wrap kernel output, rounding to float32 or wrapping to int64 when that is the dtype."""
    if dtype == "float32":
        values = array("f", values).tolist()
    elif dtype == "int64":
        values = _int64(values)
    return Matrix._wrap(nrows, ncols, values, dtype)


def _expand(x: Matrix | float, nrows: int, ncols: int) -> Iterable[Any]:
    """The values of ``x`` broadcast to ``nrows x ncols``, row-major (possibly an endless iterator)."""
    if not isinstance(x, Matrix):
        return repeat(x)
    if x.nrows == nrows and x.ncols == ncols:
        return x.data
    if x.nrows == 1 and x.ncols == 1:
        return repeat(x.data[0])
    if x.nrows == 1:  # (1, n): the row, repeated for every row
        return x.data * nrows
    # (m, 1): each value repeated across its row
    return chain.from_iterable(map(repeat, x.data, repeat(ncols)))


def _materialise(values: Iterable[Any], size: int) -> list[Any]:
    return values if isinstance(values, list) else list(islice(values, size))


def _out_shape(a: Matrix | float, b: Matrix | float) -> tuple[int, int, str]:
    if isinstance(a, Matrix):
        if isinstance(b, Matrix):
            return max(a.nrows, b.nrows), max(a.ncols, b.ncols), a.dtype
        return a.nrows, a.ncols, a.dtype
    assert isinstance(b, Matrix), "a kernel needs at least one matrix operand"
    return b.nrows, b.ncols, b.dtype


def dot_products(lefts: Sequence[list[float]], rights: Sequence[list[float]]) -> list[float]:
    """``[l . r for l in lefts for r in rights]``, row-major: the inner loop of matmul.

        Each dot product is one C call. On Python 3.12+ that is ``math.sumprod``. Before it, the
        fastest C helper is ``math.dist`` with the polarisation identity
        ``a . b = (|a|^2 + |b|^2 - |a - b|^2) / 2``, whose rounding error is below
        ``_POLAR_ERR (|a|^2 + |b|^2)`` (about ``eps (|a|^2 + |b|^2) / 2`` in practice): relative to
        ``|a| |b|`` that is ``eps (t + 1/t) / 2`` for ``t = |a| / |b|``, so below ``1e-10 |a| |b|``
        while every ratio of nonzero norms stays within ``_RATIO`` (600 times below float32's
        rounding, the only dtype that uses this; float64 takes plain sums). Beyond it the vectors are
        first scaled to unit length, ``a . b = |a| |b| (1 - |a_hat - b_hat|^2 / 2)``, which keeps the
        error below ``_UNIT_ERR |a| |b|``.

        Exact where exactness is observable: a result within ``2^26`` times its error bound of zero is
        recomputed as ``sum(map(mul, a, b))`` (each product of two float32 values is exact in
        float64), so a product that is exactly 0, or any result exactly representable in float32
        (integer-valued inputs), comes out exactly, as NumPy's and PyTorch's do; every other result
        is more than ``2^26`` error bounds from zero, so its error is below half a float32 ulp and it
        rounds to float32 exactly as the exact value would when that is representable (results in
    float32's subnormal range, whose ulp is absolute, are recomputed too). (Written
        plainly, ``[[1, 1]] @ [[1], [-1]]`` left a residue of 1e-16, and relu or ``==`` downstream
        then decided differently on the two backends.) A zero vector gives exact zeros. Vectors
        that are not finite, or so tiny that ``1/|a|`` overflows, take the plain ``sum(map(mul, ...))``
        path so NaN and Inf propagate exactly as in IEEE arithmetic.
        ``benchmarks/matmul_python.py`` measures the strategies side by side.
    """
    if _SUMPROD is not None:
        sumprod = _SUMPROD
        return [sumprod(r, c) for r in lefts for c in rights]
    hypot = math.hypot
    dist = math.dist
    lnorms = [hypot(*r) for r in lefts]
    rnorms = [hypot(*c) for c in rights]
    nonzero = [x for x in lnorms + rnorms if x != 0.0]
    if nonzero and all(1e-300 < x < _INF for x in nonzero) and max(nonzero) <= _RATIO * min(nonzero):
        rsq = [x * x for x in rnorms]
        rsq_max = max(rsq)
        near = _EXACT_MARGIN * _POLAR_ERR  # |result| below near * (|a|^2 + |b|^2): recompute exactly
        n = len(rights)
        out: list[float] = []
        extend = out.extend
        for r, x in zip(lefts, lnorms):
            if x == 0.0:
                extend(repeat(0.0, n))
                continue
            lsq = x * x
            row = [0.5 * (lsq + y - d * d) for y, d in zip(rsq, map(dist, repeat(r), rights))]
            if min(map(abs, row)) <= max(near * (lsq + rsq_max), _TINY32):  # one C pass settles most rows
                for j, (v, y) in enumerate(zip(row, rsq)):
                    if abs(v) <= near * (lsq + y) or abs(v) < _TINY32:
                        row[j] = sum(map(_mul, r, rights[j]))
            extend(row)
        return out
    return _dot_products_unit(lefts, rights, lnorms, rnorms)


_RATIO = 1e6
# Error bounds of the two identities in float64 (unit roundoff u = 2^-53), with room to spare:
# the polarisation result is within _POLAR_ERR (|a|^2 + |b|^2) of the exact dot product (the
# squares, the sum and the difference each add a few u of |a|^2 + |b|^2, and |a - b|^2 <=
# 2 (|a|^2 + |b|^2)), the unit-vector one within _UNIT_ERR |a| |b|.
_POLAR_ERR = 2.0**-49  # 16 u
_UNIT_ERR = 2.0**-47  # 64 u
# A result more than 2^26 bounds from zero has an error below 2^-26 of itself, under half a
# float32 ulp: it rounds to float32 as the exact value would. Closer to zero, recompute.
_EXACT_MARGIN = 2.0**26
# Below float32's smallest normal (2^-126, with margin) its ulp is absolute (2^-149), so a relative
# error bound does not decide the rounding: results that small are recomputed too.
_TINY32 = 2.0**-120


def _plain_dot_products(lefts: Sequence[list[float]], rights: Sequence[list[float]]) -> list[float]:
    """``dot_products`` with ordinary float64 summation (``math.sumprod`` on 3.12+, which is exact-er)."""
    if _SUMPROD is not None:
        sumprod = _SUMPROD
        return [sumprod(r, c) for r in lefts for c in rights]
    return [sum(map(_mul, r, c)) for r in lefts for c in rights]


def _dot_products_unit(
    lefts: Sequence[list[float]], rights: Sequence[list[float]], lnorms: list[float], rnorms: list[float]
) -> list[float]:
    """``dot_products`` on unit vectors: accurate whatever the norms (see there)."""
    dist = math.dist
    k = len(rights[0])
    if not all(1e-300 < x < _INF or x == 0.0 for x in rnorms):
        return [sum(map(_mul, r, c)) for r in lefts for c in rights]
    units = [list(map(_mul, c, repeat(1.0 / x, k))) if x else c for c, x in zip(rights, rnorms)]
    halves = [0.5 * x for x in rnorms]
    near = _EXACT_MARGIN * _UNIT_ERR  # |result| below near * |a| |b|: recompute exactly
    rmax = max(rnorms)
    out: list[float] = []
    extend = out.extend
    for r, nr in zip(lefts, lnorms):
        if 1e-300 < nr < _INF:
            ru = list(map(_mul, r, repeat(1.0 / nr, k)))
            row = [nr * (h * (2.0 - d * d)) for h, d in zip(halves, map(dist, repeat(ru), units))]
            if min(map(abs, row)) <= max(near * nr * rmax, _TINY32):
                for j, (v, y) in enumerate(zip(row, rnorms)):
                    if abs(v) <= near * nr * y or abs(v) < _TINY32:
                        row[j] = sum(map(_mul, r, rights[j]))
            extend(row)
        elif nr == 0.0:
            extend(repeat(0.0, len(rights)))
        else:
            extend([sum(map(_mul, r, c)) for c in rights])
    return out


_SUMPROD: Callable[[Sequence[float], Sequence[float]], float] | None = getattr(math, "sumprod", None)


@functools.lru_cache(maxsize=64)
def patch_index(w: Window) -> list[int]:
    """For every element of one image's patch matrix, row-major, where ``unfold`` reads it.

    The position is a flat index into the *padded* image, ``C x (H + 2 ph) x (W + 2 pw)``, so
    padding needs no special case: patch ``(oh, ow)``'s element ``(c, i, j)`` is image element
    ``(c, oh*sh + i*dh, ow*sw + j*dw)`` of the padded image, stored at
    ``(c*Hp + oh*sh + i*dh)*Wp + ow*sw + j*dw``: matmul's ``row * ncols + col`` twice over.
    """
    hp, wp = w.height + 2 * w.ph, w.width + 2 * w.pw
    index = []
    for oh in range(w.out_h):  # one patch per window position: the rows of the patch matrix
        for ow in range(w.out_w):
            for c in range(w.channels):  # the columns: channel, kernel row, kernel column
                for i in range(w.kh):
                    h = oh * w.sh + i * w.dh
                    for j in range(w.kw):
                        x = ow * w.sw + j * w.dw
                        index.append((c * hp + h) * wp + x)
    return index


def _padded_images(a: Matrix, w: Window, value: float) -> Iterable[list[Any]]:
    """Each row of ``a`` as a ``C x Hp x Wp`` image with ``value`` in the border (the row itself when unpadded)."""
    size, hw, width = w.image_size, w.height * w.width, w.width
    for b in range(a.nrows):
        row = a.data[b * size : (b + 1) * size]
        if not (w.ph or w.pw):
            yield row
            continue
        wp = width + 2 * w.pw
        border = [value] * (w.ph * wp)
        side = [value] * w.pw
        image: list[Any] = []
        for c in range(w.channels):
            image.extend(border)
            for h in range(w.height):
                start = c * hw + h * width
                image.extend(side)
                image.extend(row[start : start + width])
                image.extend(side)
            image.extend(border)
        yield image


def _unpad(image: list[Any], w: Window) -> list[Any]:
    """A ``C x Hp x Wp`` padded image (flat) without its border: ``C*H*W`` values."""
    if not (w.ph or w.pw):
        return image
    wp = w.width + 2 * w.pw
    out: list[Any] = []
    for c in range(w.channels):
        for h in range(w.height):
            start = (c * (w.height + 2 * w.ph) + h + w.ph) * wp + w.pw
            out.extend(image[start : start + w.width])
    return out


def _index_list(index: Index, size: int) -> list[int] | range:
    return range(size)[index] if isinstance(index, slice) else index


class PythonBackend(Backend):
    """Kernels over ``Matrix``; every loop the interpreter runs is per row or per output."""

    name = "python"
    float_types = frozenset({"float32", "float64"})

    def __init__(self) -> None:
        self._rng = random.Random(0)

    # -- construction and conversion ---------------------------------------------------------
    def from_rows(self, rows: Sequence[Sequence[Any]], dtype: str) -> Matrix:
        flat = list(chain.from_iterable(rows))
        values = list(map(int, flat)) if dtype == "int64" else list(map(float, flat))
        return _finish(len(rows), len(rows[0]), values, dtype)

    def from_array(self, array_: Any, dtype: str) -> Matrix:
        return self.from_rows(array_.tolist(), dtype)

    def from_uint8(self, buffer: bytes, nrows: int, ncols: int, divisor: float, dtype: str) -> Matrix:
        # 256 possible values: map each byte through a table of shared float objects, so a
        # 60000x784 image matrix costs one pointer per pixel, built at C speed.
        if dtype == "int64":
            table: list[Any] = list(range(256))
        else:
            table = [i / divisor for i in range(256)]
            if dtype == "float32":
                table = array("f", table).tolist()
        data = list(map(table.__getitem__, memoryview(buffer)[: nrows * ncols]))
        return Matrix._wrap(nrows, ncols, data, dtype)

    def full(self, nrows: int, ncols: int, value: float, dtype: str) -> Matrix:
        v = int(value) if dtype == "int64" else float(value)
        return _finish(nrows, ncols, [v] * (nrows * ncols), dtype)

    def eye(self, nrows: int, ncols: int, dtype: str) -> Matrix:
        zero, one = (0, 1) if dtype == "int64" else (0.0, 1.0)
        data = [zero] * (nrows * ncols)
        for i in range(min(nrows, ncols)):
            data[i * ncols + i] = one
        return Matrix._wrap(nrows, ncols, data, dtype)

    def seed(self, seed: int) -> None:
        self._rng.seed(seed)

    def uniform(self, nrows: int, ncols: int, low: float, high: float, dtype: str) -> Matrix:
        r = self._rng.random
        span = high - low
        return _finish(nrows, ncols, [low + span * r() for _ in range(nrows * ncols)], dtype)

    def normal(self, nrows: int, ncols: int, mean: float, std: float, dtype: str) -> Matrix:
        g = self._rng.gauss
        return _finish(nrows, ncols, [g(mean, std) for _ in range(nrows * ncols)], dtype)

    def permutation(self, n: int) -> list[int]:
        order = list(range(n))
        self._rng.shuffle(order)
        return order

    def tolist(self, a: Matrix) -> list[list[Any]]:
        return a.rows()

    def to_numpy(self, a: Matrix) -> Any:
        import numpy  # only here, on explicit request: the backend itself never needs it

        return numpy.array(a.data, dtype=a.dtype).reshape(a.nrows, a.ncols)

    def dtype(self, a: Matrix) -> str:
        return a.dtype

    def astype(self, a: Matrix, dtype: str) -> Matrix:
        if dtype == "int64":
            return Matrix._wrap(a.nrows, a.ncols, list(map(int, a.data)), dtype)
        return _finish(a.nrows, a.ncols, list(map(float, a.data)), dtype)

    def copy(self, a: Matrix) -> Matrix:
        return Matrix._wrap(a.nrows, a.ncols, list(a.data), a.dtype)

    def storage(self, a: Matrix) -> int:
        return id(a.data)

    def aliases(self, a: Matrix, b: Matrix) -> bool:
        return a.data is b.data

    def assign(self, a: Matrix, b: Operand) -> None:
        values = _materialise(_expand(b, a.nrows, a.ncols), a.nrows * a.ncols)
        a.data[:] = _finish(a.nrows, a.ncols, values, a.dtype).data

    def axpy(self, a: Matrix, b: Matrix, alpha: float) -> None:
        ys = _expand(b, a.nrows, a.ncols)
        if a.dtype == "int64":  # an integer alpha (checked upstream): exact integer arithmetic
            alpha = int(alpha)
        values = list(map(operator.add, a.data, map(_mul, ys, repeat(alpha))))
        a.data[:] = _finish(a.nrows, a.ncols, values, a.dtype).data

    # -- element-wise ------------------------------------------------------------------------
    def _binary(self, op: str, a: Operand, b: Operand) -> Matrix:
        nrows, ncols, dtype = _out_shape(a, b)
        xs = _expand(a, nrows, ncols)
        ys = _expand(b, nrows, ncols)
        fast, safe = _BINARY[op]
        if fast is safe:
            return _finish(nrows, ncols, list(map(fast, xs, ys)), dtype)
        xs, ys = _materialise(xs, nrows * ncols), _materialise(ys, nrows * ncols)
        try:
            values = list(map(fast, xs, ys))
        except (ValueError, OverflowError, ZeroDivisionError):
            values = list(map(safe, xs, ys))
        return _finish(nrows, ncols, values, dtype)

    def add(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("add", a, b)

    def sub(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("sub", a, b)

    def mul(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("mul", a, b)

    def div(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("div", a, b)

    def pow(self, a: Operand, b: Operand) -> Matrix:
        if b == 0.5 and isinstance(a, Matrix):  # NumPy computes x ** 0.5 as sqrt(x): NaN at -inf, -0 at -0
            return self.unary("sqrt", a)
        return self._binary("pow", a, b)

    def maximum(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("maximum", a, b)

    def minimum(self, a: Operand, b: Operand) -> Matrix:
        return self._binary("minimum", a, b)

    def compare(self, op: str, a: Operand, b: Operand, out_dtype: str | None = None) -> Matrix:
        nrows, ncols, dtype = _out_shape(a, b)
        out_dtype = dtype if out_dtype is None else out_dtype
        flags = map(_COMPARE[op], _expand(a, nrows, ncols), _expand(b, nrows, ncols))
        return Matrix._wrap(nrows, ncols, list(map(int if out_dtype == "int64" else float, flags)), out_dtype)

    def where(self, cond: Matrix, a: Operand, b: Operand) -> Matrix:
        nrows, ncols = cond.nrows, cond.ncols
        dtype = a.dtype if isinstance(a, Matrix) else b.dtype if isinstance(b, Matrix) else cond.dtype
        xs = _expand(a, nrows, ncols)
        ys = _expand(b, nrows, ncols)
        values = [x if c else y for c, x, y in zip(cond.data, xs, ys)]
        return _finish(nrows, ncols, values, dtype)

    def keep(self, a: Matrix, mask: Matrix) -> Matrix:
        zero = 0 if a.dtype == "int64" else 0.0
        values = _expand(a, mask.nrows, mask.ncols)
        return Matrix._wrap(mask.nrows, mask.ncols, [x if m else zero for x, m in zip(values, mask.data)], a.dtype)

    def unary(self, op: str, a: Matrix) -> Matrix:
        fast, safe = _UNARY[op]
        if a.dtype == "int64":  # neg and abs of -2**63 wrap back to -2**63, as in NumPy
            return _finish(a.nrows, a.ncols, list(map(fast, a.data)), "int64")
        return _finish(a.nrows, a.ncols, _map_safe(fast, safe, a.data), a.dtype)

    def all_finite(self, a: Matrix) -> bool:
        # A finite sum proves every term finite; only otherwise look at each element.
        return math.isfinite(sum(a.data)) or all(map(math.isfinite, a.data))

    # -- linear algebra and layout ------------------------------------------------------------
    def matmul(
        self, a: Matrix, b: Matrix, trans_a: bool = False, trans_b: bool = False, bias: Matrix | None = None
    ) -> Matrix:
        ad, bd = a.data, b.data
        if trans_a:  # rows of a.T are the columns of a
            m, k = a.ncols, a.nrows
            lefts = [ad[i::m] for i in range(m)]
        else:
            m, k = a.nrows, a.ncols
            lefts = [ad[i * k : (i + 1) * k] for i in range(m)]
        if trans_b:  # columns of b.T are the rows of b
            n = b.nrows
            rights = [bd[j * k : (j + 1) * k] for j in range(n)]
        else:
            n = b.ncols
            rights = [bd[j::n] for j in range(n)]
        # float64 keeps float64 accuracy (plain sums, exact on small integers); for float32 the
        # C-level trick's error (~1e-13 |a||b|) vanishes in the rounding to float32.
        out = dot_products(lefts, rights) if a.dtype == "float32" else _plain_dot_products(lefts, rights)
        if bias is not None:
            out = list(map(operator.add, out, bias.data * m))
        return _finish(m, n, out, a.dtype)

    def softmax_xent(self, x: Matrix, targets: Matrix) -> tuple[Matrix, Matrix]:
        losses: list[float] = []
        probs: list[float] = []
        exp = _safe_exp
        c = x.ncols
        for row, t in zip(x.rows(), targets.data):
            if not 0 <= t < c:
                raise TensorIndexError(f"class {t} out of range for {c} classes")
            top = max(row)
            if top != top or top == -_INF:
                top = 0.0 if top == -_INF else top
            e = [exp(v - top) for v in row]
            total = sum(e)
            losses.append(_safe_log(total) - (row[t] - top))
            inv = 1.0 / total if total else _NAN
            probs.extend([v * inv for v in e])
        return _finish(x.nrows, 1, losses, x.dtype), _finish(x.nrows, x.ncols, probs, x.dtype)

    def softmax_xent_grad(self, probs: Matrix, targets: Matrix, scale: Operand) -> Matrix:
        n = probs.ncols
        scales = _materialise(_expand(scale, probs.nrows, 1), probs.nrows)
        out: list[float] = []
        for i, (t, s) in enumerate(zip(targets.data, scales)):
            row = probs.data[i * n : (i + 1) * n]
            row[t] -= 1.0
            out.extend([v * s for v in row])
        return _finish(probs.nrows, n, out, probs.dtype)

    def transpose(self, a: Matrix) -> Matrix:
        d, n = a.data, a.ncols
        return Matrix._wrap(n, a.nrows, list(chain.from_iterable(d[j::n] for j in range(n))), a.dtype)

    def reshape(self, a: Matrix, nrows: int, ncols: int) -> Matrix:
        return Matrix._wrap(nrows, ncols, a.data, a.dtype)

    def cat(self, parts: Sequence[Matrix], axis: Literal[0, 1]) -> Matrix:
        dtype = parts[0].dtype
        if axis == 0:
            data = list(chain.from_iterable(p.data for p in parts))
            return Matrix._wrap(sum(p.nrows for p in parts), parts[0].ncols, data, dtype)
        nrows = parts[0].nrows
        rows = [p.rows() for p in parts]
        data = list(chain.from_iterable(chain.from_iterable(r[i] for r in rows) for i in range(nrows)))
        return Matrix._wrap(nrows, sum(p.ncols for p in parts), data, dtype)

    # -- images: sliding windows --------------------------------------------------------------
    def unfold(self, a: Matrix, window: Window, pad_value: float = 0.0) -> Matrix:
        index = patch_index(window)
        out: list[Any] = []
        for image in _padded_images(a, window, pad_value):
            out.extend(map(image.__getitem__, index))  # out[r] = image[index[r]]: a gather
        return Matrix._wrap(a.nrows * window.positions, window.patch_size, out, a.dtype)

    def fold(self, a: Matrix, window: Window) -> Matrix:
        index = patch_index(window)
        per_image = len(index)
        padded = window.channels * (window.height + 2 * window.ph) * (window.width + 2 * window.pw)
        out: list[Any] = []
        for b in range(a.nrows // window.positions):
            image = [0.0] * padded
            for k, v in zip(index, a.data[b * per_image : (b + 1) * per_image]):
                image[k] += v  # the adjoint of the gather: a scatter-add, where patches overlap too
            out.extend(_unpad(image, window))
        return _finish(a.nrows // window.positions, window.image_size, out, a.dtype)

    def block_transpose(self, a: Matrix, p: int, q: int) -> Matrix:
        d, size = a.data, p * q
        out: list[Any] = []
        for base in range(0, len(d), size):
            for j in range(q):  # column j of the p x q block, read down its rows
                out.extend(d[base + j : base + size : q])
        return Matrix._wrap(len(d) // size, size, out, a.dtype)

    def _pool_windows(self, a: Matrix, w: Window) -> Iterable[tuple[list[Any], list[list[int]]]]:
        """Per channel of each image: the padded plane (``-inf`` border) and each window's positions in it."""
        plane = w._replace(channels=1)
        index = patch_index(plane)
        k = w.kh * w.kw
        windows = [index[p * k : (p + 1) * k] for p in range(w.positions)]
        planes = Matrix._wrap(a.nrows * w.channels, w.height * w.width, a.data, a.dtype)
        for image in _padded_images(planes, plane, -_INF):
            yield image, windows

    def max_pool(self, a: Matrix, window: Window) -> Matrix:
        out: list[Any] = []
        for image, windows in self._pool_windows(a, window):
            out.extend(self._extreme(list(map(image.__getitem__, ix)), max) for ix in windows)
        return Matrix._wrap(a.nrows, window.channels * window.positions, out, a.dtype)

    def max_pool_adjoint(self, a: Matrix, out: Matrix, g: Matrix, window: Window) -> Matrix:
        grads: list[Any] = []
        plane = window._replace(channels=1)
        n = window.positions
        for p, (image, windows) in enumerate(self._pool_windows(a, window)):
            acc = [0.0] * len(image)
            for ix, top, share in zip(windows, out.data[p * n : (p + 1) * n], g.data[p * n : (p + 1) * n]):
                hits = [k for k in ix if image[k] == top]  # ties share the gradient equally
                if len(hits) == 1:
                    acc[hits[0]] += share
                else:
                    for k in hits:
                        acc[k] += share / len(hits)
            grads.extend(_unpad(acc, plane))
        return _finish(a.nrows, a.ncols, grads, a.dtype)

    # -- reductions ---------------------------------------------------------------------------
    def _lines(self, a: Matrix, axis: Axis) -> tuple[int, int, list[list[Any]]]:
        """The groups a reduction folds, and the result's shape."""
        if axis is None:
            return 1, 1, [a.data]
        if axis == 0:
            n = a.ncols
            return 1, n, [a.data[j::n] for j in range(n)]
        return a.nrows, 1, a.rows()

    def sum(self, a: Matrix, axis: Axis) -> Matrix:
        nrows, ncols, lines = self._lines(a, axis)
        return _finish(nrows, ncols, list(map(sum, lines)), a.dtype)

    @staticmethod
    def _extreme(line: list[Any], pick: Callable[[Iterable[Any]], Any]) -> Any:
        """``max``/``min`` of a line with NaN propagating, as in numpy."""
        best = pick(line)
        total = sum(line)
        if total == total:  # a NaN anywhere would make the sum NaN
            return best
        return next((x for x in line if x != x), best)

    def max(self, a: Matrix, axis: Axis) -> Matrix:
        nrows, ncols, lines = self._lines(a, axis)
        return Matrix._wrap(nrows, ncols, [self._extreme(ln, max) for ln in lines], a.dtype)

    def min(self, a: Matrix, axis: Axis) -> Matrix:
        nrows, ncols, lines = self._lines(a, axis)
        return Matrix._wrap(nrows, ncols, [self._extreme(ln, min) for ln in lines], a.dtype)

    def _arg(self, a: Matrix, axis: Axis, pick: Callable[[Iterable[Any]], Any]) -> Matrix:
        nrows, ncols, lines = self._lines(a, axis)
        out = []
        for ln in lines:
            best = self._extreme(ln, pick)
            out.append(next(i for i, x in enumerate(ln) if x != x) if best != best else ln.index(best))
        return Matrix._wrap(nrows, ncols, out, "int64")

    def argmax(self, a: Matrix, axis: Axis) -> Matrix:
        return self._arg(a, axis, max)

    def argmin(self, a: Matrix, axis: Axis) -> Matrix:
        return self._arg(a, axis, min)

    # -- indexing -----------------------------------------------------------------------------
    def take(self, a: Matrix, rows: Index, cols: Index) -> Matrix:
        n = a.ncols
        d = a.data
        row_ids = _index_list(rows, a.nrows)
        out: list[Any] = []
        if isinstance(cols, slice):
            for i in row_ids:
                out.extend(d[i * n : (i + 1) * n][cols])
            ncols = len(range(n)[cols])
        else:
            for i in row_ids:
                out.extend(map(d[i * n : (i + 1) * n].__getitem__, cols))
            ncols = len(cols)
        return Matrix._wrap(len(row_ids), ncols, out, a.dtype)

    def take_adjoint(self, g: Matrix, nrows: int, ncols: int, rows: Index, cols: Index) -> Matrix:
        zero = 0 if g.dtype == "int64" else 0.0
        out = [zero] * (nrows * ncols)
        col_ids = _index_list(cols, ncols)
        gd, gn = g.data, g.ncols
        for gi, i in enumerate(_index_list(rows, nrows)):
            base = i * ncols
            grow = gi * gn
            for gj, j in enumerate(col_ids):
                out[base + j] += gd[grow + gj]
        return _finish(nrows, ncols, out, g.dtype)

    def indices(self, a: Matrix) -> list[int]:
        return a.data

    def bad_index(self, index: list[int], bound: int) -> int | None:
        lo, hi = min(index), max(index)
        return lo if lo < 0 else hi if hi >= bound else None

    def pick(self, a: Matrix, rows: list[int] | None, cols: list[int]) -> Matrix:
        d, n = a.data, a.ncols
        row_ids = range(a.nrows) if rows is None else rows
        return Matrix._wrap(len(row_ids), 1, [d[r * n + c] for r, c in zip(row_ids, cols)], a.dtype)

    def pick_adjoint(self, g: Matrix, nrows: int, ncols: int, rows: list[int] | None, cols: list[int]) -> Matrix:
        zero = 0 if g.dtype == "int64" else 0.0
        out = [zero] * (nrows * ncols)
        for v, r, c in zip(g.data, range(nrows) if rows is None else rows, cols):
            out[r * ncols + c] += v
        return _finish(nrows, ncols, out, g.dtype)
