"""The NumPy backend: the same kernels on C-contiguous 2-D arrays.

Every kernel is written against the module object ``self.xp`` rather than ``numpy`` itself, so an
array library with NumPy's API could be dropped in later by passing it to ``NumpyBackend(xp)``.
float32 by default; float64 on request.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Literal, Sequence

from matgrad._errors import TensorIndexError
from matgrad.backends.base import QUIET_UNARY, Axis, Backend, Index, Operand, Window, unary_kernels

__all__ = ["NumpyBackend"]


class NumpyBackend(Backend):
    """Kernels over C-contiguous ``xp.ndarray`` matrices."""

    name = "numpy"
    _writes_out = ("add", "sub", "mul", "maximum", "compare", "keep", "matmul", "softmax_xent_grad", "sum")
    buffered = MappingProxyType({**dict.fromkeys(_writes_out, "out"), "axpy": "work"})

    def __init__(self, xp: Any = None) -> None:
        if xp is None:
            import numpy as xp
        self.xp = xp
        self._dtypes = {"float32": xp.float32, "float64": xp.float64, "int64": xp.int64}
        # dtype.name is computed in Python by NumPy (~5 us); a dict lookup is ~0.1 us.
        self._names = {xp.dtype(t): name for name, t in self._dtypes.items()}
        self.float_types = frozenset({xp.dtype(xp.float32), xp.dtype(xp.float64)})
        self._rng = xp.random.default_rng(0)
        self._row_index: dict[int, Any] = {}
        self._tap_cache: dict[Window, list[tuple[int, int, slice, slice]]] = {}
        self._compare = {
            "eq": xp.equal,
            "ne": xp.not_equal,
            "lt": xp.less,
            "le": xp.less_equal,
            "gt": xp.greater,
            "ge": xp.greater_equal,
        }
        self._unary = unary_kernels(xp, self._sigmoid)
        self._quiet = QUIET_UNARY

    # -- construction and conversion ---------------------------------------------------------
    def from_rows(self, rows: Sequence[Sequence[Any]], dtype: str) -> Any:
        return self.xp.array(rows, dtype=self._dtypes[dtype])

    def from_array(self, array_: Any, dtype: str) -> Any:
        return self.xp.array(array_, dtype=self._dtypes[dtype], order="C", copy=True)

    def from_uint8(self, buffer: bytes, nrows: int, ncols: int, divisor: float, dtype: str) -> Any:
        xp = self.xp
        raw = xp.frombuffer(buffer, dtype=xp.uint8, count=nrows * ncols).reshape(nrows, ncols)
        out = raw.astype(self._dtypes[dtype])
        if divisor != 1:
            out /= out.dtype.type(divisor)
        return out

    def full(self, nrows: int, ncols: int, value: float, dtype: str) -> Any:
        return self.xp.full((nrows, ncols), value, dtype=self._dtypes[dtype])

    def eye(self, nrows: int, ncols: int, dtype: str) -> Any:
        return self.xp.eye(nrows, ncols, dtype=self._dtypes[dtype])

    def seed(self, seed: int) -> None:
        self._rng = self.xp.random.default_rng(seed)

    def uniform(self, nrows: int, ncols: int, low: float, high: float, dtype: str) -> Any:
        dt = self._dtypes[dtype]
        sample = self._rng.random((nrows, ncols), dtype=dt)
        sample *= dt(high - low)
        sample += dt(low)
        return sample

    def normal(self, nrows: int, ncols: int, mean: float, std: float, dtype: str) -> Any:
        dt = self._dtypes[dtype]
        sample = self._rng.standard_normal((nrows, ncols), dtype=dt)
        sample *= dt(std)
        sample += dt(mean)
        return sample

    def permutation(self, n: int) -> list[int]:
        order: list[int] = self._rng.permutation(n).tolist()
        return order

    def tolist(self, a: Any) -> list[list[Any]]:
        rows: list[list[Any]] = a.tolist()
        return rows

    def to_numpy(self, a: Any) -> Any:
        return a

    def dtype(self, a: Any) -> str:
        name = self._names.get(a.dtype)
        return name if name is not None else str(a.dtype.name)

    def astype(self, a: Any, dtype: str) -> Any:
        return a.astype(self._dtypes[dtype])

    def copy(self, a: Any) -> Any:
        return a.copy()

    def storage(self, a: Any) -> int:
        base = a.base
        return id(a) if base is None else id(base)

    def aliases(self, a: Any, b: Any) -> bool:
        base = a.base
        return base is not None and (base is b or base is b.base)

    def assign(self, a: Any, b: Operand) -> None:
        a[...] = b

    def axpy(self, a: Any, b: Any, alpha: float, *, work: Any = None) -> None:
        if a.dtype.kind == "i":  # an integer alpha (checked upstream): int64 arithmetic, wrapping
            alpha = int(alpha)
        if alpha == 1.0:
            a += b
        elif alpha == -1.0:
            a -= b
        elif work is not None:  # b's shape and dtype: the same products, in a buffer a plan owns
            a += self.xp.multiply(b, alpha, out=work)
        else:
            a += alpha * b  # a Python float keeps b's dtype (NumPy's scalar casting rules)

    # -- element-wise ------------------------------------------------------------------------
    def add(self, a: Operand, b: Operand, *, out: Any = None) -> Any:
        return self.xp.add(a, b, out=out)

    def sub(self, a: Operand, b: Operand, *, out: Any = None) -> Any:
        return self.xp.subtract(a, b, out=out)

    def mul(self, a: Operand, b: Operand, *, out: Any = None) -> Any:
        return self.xp.multiply(a, b, out=out)

    def div(self, a: Operand, b: Operand) -> Any:
        if isinstance(b, float) and b != 0.0 and hasattr(a, "dtype"):
            return self.xp.true_divide(a, b)  # cannot divide by zero: skip the errstate (~1 us)
        with self.xp.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self.xp.true_divide(a, b)

    def pow(self, a: Operand, b: Operand) -> Any:
        with self.xp.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self.xp.power(a, b)

    def maximum(self, a: Operand, b: Operand, *, out: Any = None) -> Any:
        return self.xp.maximum(a, b, out=out)

    def minimum(self, a: Operand, b: Operand) -> Any:
        return self.xp.minimum(a, b)

    def compare(self, op: str, a: Operand, b: Operand, out_dtype: str | None = None, *, out: Any = None) -> Any:
        if out_dtype is None and isinstance(b, float):  # the common mask (relu): write 0/1 directly
            if out is None:
                out = self.xp.empty(a.shape, a.dtype)  # type: ignore[union-attr]
            return self._compare[op](a, b, out=out)
        dt = (a if hasattr(a, "dtype") else b).dtype if out_dtype is None else self._dtypes[out_dtype]
        return self._compare[op](a, b).astype(dt)

    def where(self, cond: Any, a: Operand, b: Operand) -> Any:
        out = self.xp.where(cond, a, b)
        if isinstance(a, float) and isinstance(b, float):
            out = out.astype(cond.dtype)
        return out

    def keep(self, a: Any, mask: Any, *, out: Any = None) -> Any:
        # A multiply is 2-4x faster than where, and selects exactly when ``a`` is finite (inf * 0
        # would be nan, with a warning). No errstate: entering one costs more than the check.
        xp = self.xp
        if xp.isfinite(a).all():
            out = xp.multiply(a, mask, out=out)
            xp.add(out, 0.0, out=out)  # -1.5 * 0 is -0.0; selection gives +0.0
            return out
        return xp.where(mask != 0, a, xp.zeros((), a.dtype))

    def _sigmoid(self, a: Any) -> Any:
        # exp(-|x|) never overflows; 1 / (1 + exp(-x)) would at x = -1000.
        xp = self.xp
        e = xp.exp(-xp.abs(a))
        r = 1.0 / (1.0 + e)
        return xp.where(a >= 0, r, e * r)

    def unary(self, op: str, a: Any) -> Any:
        if op in self._quiet:
            with self.xp.errstate(divide="ignore", invalid="ignore", over="ignore"):
                return self._unary[op](a)
        return self._unary[op](a)

    def all_finite(self, a: Any) -> bool:
        # A finite sum proves every element finite; only otherwise scan each one.
        with self.xp.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(a.sum()):
                return True
        return bool(self.xp.isfinite(a).all())

    # -- linear algebra and layout ------------------------------------------------------------
    def matmul(
        self, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False, bias: Any | None = None, *, out: Any = None
    ) -> Any:
        # Transposed operands are views; BLAS reads them in place and writes a C-contiguous result.
        out = self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)
        if bias is not None:
            out += bias
        return out

    def _rows(self, n: int) -> Any:
        """The (n, 1) column 0, 1, ..., n-1, cached: it pairs each row with its target."""
        rows = self._row_index.get(n)
        if rows is None:
            rows = self.xp.arange(n).reshape(n, 1)
            rows.flags.writeable = False  # shared by every call (and thread): never written
            rows = self._row_index.setdefault(n, rows)
        return rows

    # Tiny arrays: each NumPy call costs more than the arithmetic, so these use as few as possible.
    def softmax_xent(self, x: Any, targets: Any) -> tuple[Any, Any]:
        xp = self.xp
        # Read as unsigned, a negative class is huge: one reduction checks both ends of the range.
        # (Gathering with the unsigned view would not: NumPy casts it back and -1 means the last.)
        if int(xp.maximum.reduce(targets.view(xp.uint64), axis=None)) >= x.shape[1]:
            raise TensorIndexError("a class index is out of range")
        z = x - xp.maximum.reduce(x, axis=1, keepdims=True)
        picked = z[self._rows(x.shape[0]), targets]
        xp.exp(z, out=z)
        total = xp.add.reduce(z, axis=1, keepdims=True)
        z /= total
        losses = xp.log(total)
        losses -= picked
        return losses, z

    def softmax_xent_grad(self, probs: Any, targets: Any, scale: Operand, *, out: Any = None) -> Any:
        # (probs - onehot) * scale, in that order: probs * scale - scale is inf - inf = NaN at the
        # target for an infinite scale, where the gradient is (p - 1) * inf = -inf.
        if out is None:
            out = probs.copy()
        else:
            self.xp.copyto(out, probs)
        out[self._rows(probs.shape[0]), targets] -= 1.0
        out *= scale
        return out

    def transpose(self, a: Any) -> Any:
        out = self.xp.ascontiguousarray(a.T)
        # A row's or a column's transpose is already contiguous, and ascontiguousarray returns the
        # view itself: copy it, so that a transpose never shares storage, as on the python backend
        # (an in-place change of the input would otherwise show through on one backend only).
        return out.copy() if out.base is not None else out

    def reshape(self, a: Any, nrows: int, ncols: int) -> Any:
        return a.reshape(nrows, ncols)

    def cat(self, parts: Sequence[Any], axis: Literal[0, 1]) -> Any:
        return self.xp.concatenate(parts, axis=axis)

    # -- images: sliding windows --------------------------------------------------------------
    # One strided slice per kernel tap (kh * kw of them): each reads or writes the tap's element
    # of every window at once, needing only slicing, permute_dims and reshape from the Array API.
    # Measured against a gather with precomputed indices, a scatter with bincount and
    # sliding_window_view, this was the fastest or level. Images go through in blocks of about
    # _BLOCK output elements: each tap sweeps its whole output, and a block that stays in cache
    # made unfold 4 times faster on a batch of 1,000 images (and 1.5 times on 64).
    _BLOCK = 1 << 17

    def _blocks(self, n: int, per_image: int) -> list[slice]:
        step = max(1, self._BLOCK // per_image)
        return [slice(b, min(b + step, n)) for b in range(0, n, step)]

    def _padded(self, a: Any, w: Window, value: float) -> Any:
        """``a`` as ``(B, C, H + 2 ph, W + 2 pw)`` with ``value`` in the border (a view when unpadded)."""
        xp = self.xp
        x = xp.reshape(a, (a.shape[0], w.channels, w.height, w.width))
        if w.ph == 0 and w.pw == 0:
            return x
        out = xp.full((a.shape[0], w.channels, w.height + 2 * w.ph, w.width + 2 * w.pw), value, dtype=a.dtype)
        out[:, :, w.ph : w.ph + w.height, w.pw : w.pw + w.width] = x
        return out

    def _taps(self, w: Window) -> list[tuple[int, int, slice, slice]]:
        """Each kernel tap ``(i, j)``, with the rows and columns of the padded images it reads at every position."""
        taps = self._tap_cache.get(w)
        if taps is None:
            out_h, out_w = w.out_h, w.out_w
            taps = self._tap_cache[w] = [
                (
                    i,
                    j,
                    slice(i * w.dh, i * w.dh + w.sh * (out_h - 1) + 1, w.sh),
                    slice(j * w.dw, j * w.dw + w.sw * (out_w - 1) + 1, w.sw),
                )
                for i in range(w.kh)
                for j in range(w.kw)
            ]
        return taps

    def _unpadded(self, x: Any, w: Window) -> Any:
        """``(B, C, Hp, Wp)`` padded images back to ``(B, C*H*W)`` rows (the border dropped)."""
        if w.ph or w.pw:
            x = x[:, :, w.ph : w.ph + w.height, w.pw : w.pw + w.width]
        return self.xp.reshape(x, (x.shape[0], w.image_size))  # copies a cropped view into rows

    def unfold(self, a: Any, window: Window, pad_value: float = 0.0) -> Any:
        xp, w = self.xp, window
        n = a.shape[0]
        out = xp.empty((n, w.out_h, w.out_w, w.channels, w.kh, w.kw), dtype=a.dtype)
        for block in self._blocks(n, w.positions * w.patch_size):
            x = xp.permute_dims(self._padded(a[block], w, pad_value), (0, 2, 3, 1))  # a channels-last view
            o = out[block]
            for i, j, rows, cols in self._taps(w):
                o[:, :, :, :, i, j] = x[:, rows, cols, :]
        return xp.reshape(out, (n * w.positions, w.patch_size))

    def fold(self, a: Any, window: Window) -> Any:
        xp, w = self.xp, window
        n = a.shape[0] // w.positions
        patches = xp.reshape(a, (n, w.out_h, w.out_w, w.channels, w.kh, w.kw))
        # Summed channels-last, (B, Hp, Wp, C), so each tap adds without a transpose; one
        # permute at the end. Three times faster than summing into (B, C, Hp, Wp) at C = 16.
        out = xp.zeros((n, w.height + 2 * w.ph, w.width + 2 * w.pw, w.channels), dtype=a.dtype)
        for block in self._blocks(n, w.positions * w.patch_size):
            p, o = patches[block], out[block]
            for i, j, rows, cols in self._taps(w):  # one tap never visits a position twice: += is safe
                o[:, rows, cols, :] += p[:, :, :, :, i, j]
        if w.ph or w.pw:
            out = out[:, w.ph : w.ph + w.height, w.pw : w.pw + w.width, :]
        return xp.reshape(xp.permute_dims(out, (0, 3, 1, 2)), (n, w.image_size))  # the reshape copies

    def block_transpose(self, a: Any, p: int, q: int) -> Any:
        xp = self.xp
        n = a.shape[0] * a.shape[1] // (p * q)
        blocks = xp.permute_dims(xp.reshape(a, (n, p, q)), (0, 2, 1))
        return xp.reshape(blocks, (n, q * p))  # reshaping the permuted view copies it, row-major

    def max_pool(self, a: Any, window: Window) -> Any:
        xp, w = self.xp, window
        n = a.shape[0]
        out = xp.empty((n, w.channels, w.out_h, w.out_w), dtype=a.dtype)
        for block in self._blocks(n, w.image_size):
            x, o = self._padded(a[block], w, -math.inf), out[block]
            for i, j, rows, cols in self._taps(w):
                o[...] = x[:, :, rows, cols] if i == j == 0 else xp.maximum(o, x[:, :, rows, cols])
        return xp.reshape(out, (n, w.channels * w.positions))

    def max_pool_adjoint(self, a: Any, out: Any, g: Any, window: Window) -> Any:
        xp, w = self.xp, window
        n = a.shape[0]
        shape = (n, w.channels, w.out_h, w.out_w)
        tops, shares = xp.reshape(out, shape), xp.reshape(g, shape)
        grad = xp.zeros((n, w.channels, w.height + 2 * w.ph, w.width + 2 * w.pw), dtype=a.dtype)
        for block in self._blocks(n, w.image_size):
            x, top, dx = self._padded(a[block], w, -math.inf), tops[block], grad[block]
            hits, count = [], xp.zeros(top.shape, dtype=a.dtype)
            for _, _, rows, cols in self._taps(w):
                hit = x[:, :, rows, cols] == top
                hits.append(hit)
                count += xp.astype(hit, a.dtype)
            share = shares[block] / xp.where(count > 0, count, 1.0)  # a NaN window has no maximum
            # Windows that do not overlap (the usual stride = kernel) never write a position twice:
            # assigning instead of adding saves a read of the gradient (15% of this kernel).
            disjoint = w.dh == w.dw == 1 and w.sh >= w.kh and w.sw >= w.kw
            for hit, (_, _, rows, cols) in zip(hits, self._taps(w)):
                if disjoint:
                    dx[:, :, rows, cols] = xp.where(hit, share, 0.0)
                else:
                    dx[:, :, rows, cols] += xp.where(hit, share, 0.0)
        return self._unpadded(grad, w)

    # -- reductions ---------------------------------------------------------------------------
    # ufunc.reduce directly: np.sum / np.max add a Python wrapper (~2 us) per call.
    def sum(self, a: Any, axis: Axis, *, out: Any = None) -> Any:
        return self.xp.add.reduce(a, axis=axis, keepdims=True, out=out)

    def max(self, a: Any, axis: Axis) -> Any:
        return self.xp.maximum.reduce(a, axis=axis, keepdims=True)

    def min(self, a: Any, axis: Axis) -> Any:
        return self.xp.minimum.reduce(a, axis=axis, keepdims=True)

    def _arg(self, index: Any, axis: Axis) -> Any:
        index = index.astype(self.xp.int64)
        if axis is None:
            return index.reshape(1, 1)
        return index.reshape(1, -1) if axis == 0 else index.reshape(-1, 1)

    def argmax(self, a: Any, axis: Axis) -> Any:
        return self._arg(self.xp.argmax(a, axis=axis), axis)

    def argmin(self, a: Any, axis: Axis) -> Any:
        return self._arg(self.xp.argmin(a, axis=axis), axis)

    # -- indexing -----------------------------------------------------------------------------
    def _ids(self, index: Index, size: int) -> Any:
        if isinstance(index, slice):
            return self.xp.arange(size)[index]
        return self.xp.asarray(index, dtype=self.xp.intp)

    def take(self, a: Any, rows: Index, cols: Index) -> Any:
        xp = self.xp
        if isinstance(cols, slice):
            out = a[rows] if isinstance(rows, slice) else xp.take(a, rows, axis=0)
            if cols != slice(None):
                out = out[:, cols]
        elif isinstance(rows, slice):
            out = xp.take(a[rows], cols, axis=1)
        else:
            out = a[xp.ix_(rows, cols)]
        # basic slicing returns a view, contiguous or not: copy, so the result owns its storage
        return out.copy() if out.base is not None else out

    def take_adjoint(self, g: Any, nrows: int, ncols: int, rows: Index, cols: Index) -> Any:
        xp = self.xp
        out = xp.zeros((nrows, ncols), dtype=g.dtype)
        if isinstance(rows, slice) and isinstance(cols, slice):
            out[rows, cols] = g  # slices never repeat a position
        else:
            r = self._ids(rows, nrows)
            c = self._ids(cols, ncols)
            xp.add.at(out, (r[:, None], c[None, :]), g)
        return out

    def indices(self, a: Any) -> Any:
        return a.reshape(-1)

    def bad_index(self, index: Any, bound: int) -> int | None:
        # Read as unsigned, a negative index is huge: one reduction checks both ends.
        if int(self.xp.maximum.reduce(index.view(self.xp.uint64))) < bound:
            return None
        return int(index[(index < 0) | (index >= bound)][0])

    def pick(self, a: Any, rows: Any, cols: Any) -> Any:
        xp = self.xp
        cols = xp.asarray(cols, dtype=xp.intp)
        if rows is None:  # one pick per row: a[i, cols[i]]
            return xp.take_along_axis(a, cols.reshape(-1, 1), axis=1)
        return a[xp.asarray(rows, dtype=xp.intp), cols].reshape(-1, 1)

    def pick_adjoint(self, g: Any, nrows: int, ncols: int, rows: Any, cols: Any) -> Any:
        xp = self.xp
        out = xp.zeros((nrows, ncols), dtype=g.dtype)
        cols = xp.asarray(cols, dtype=xp.intp)
        if rows is None:  # each row hit once: no repeats, a plain scatter suffices
            xp.put_along_axis(out, cols.reshape(-1, 1), g, axis=1)
        else:
            xp.add.at(out, (xp.asarray(rows, dtype=xp.intp), cols), g[:, 0])
        return out
