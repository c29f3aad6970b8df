"""The kernel interface every matrix backend implements.

A backend owns matrix storage and a small, closed set of primitive kernels. It knows nothing of
graphs or gradients: ``Tensor2D`` and the ops call these kernels and nothing else.

Conventions shared by every kernel:

* matrices are 2-D and row-major, with at least one row and one column;
* element-wise binary kernels broadcast a ``(1, n)``, ``(m, 1)`` or ``(1, 1)`` operand (or a
  Python float) against an ``(m, n)`` one, in either order; the caller has validated shapes;
* the result has the operands' dtype (the caller has checked they agree), except comparisons,
  which return 0/1 in ``out_dtype``, and ``argmax`` / ``argmin``, which return ``int64``;
* int64 arithmetic (``add``, ``sub``, ``mul``, ``neg``, ``abs``, ``sum``, ``axpy``, the adjoints)
  wraps around modulo 2**64, two's complement, as NumPy's and PyTorch's: ``2**63 - 1 + 1`` is
  ``-2**63``; an int64 ``alpha`` or operand is an integer;
* reductions keep two dimensions: axis ``None`` gives ``(1, 1)``, ``0`` gives ``(1, n)``,
  ``1`` gives ``(m, 1)``;
* an index is either a ``slice`` or a list of non-negative, in-range ints (validated upstream).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence, Union

Data = Any
"""A backend's native matrix: ``backends.python.Matrix`` or a 2-D ``numpy.ndarray``."""

Operand = Union[Data, float]
Axis = Literal[None, 0, 1]
Index = Union[slice, list[int]]

DTYPES = ("float32", "float64", "int64")
FLOAT_DTYPES = ("float32", "float64")


class Window(NamedTuple):
    """A window sliding over ``channels x height x width`` images: a convolution's or a pooling's.

    An image is one matrix row in NCHW order, element ``(c, h, w)`` at column ``(c*H + h)*W + w``.
    The window's top-left corner visits rows ``oh*sh - ph`` and columns ``ow*sw - pw`` for
    ``oh < out_h``, ``ow < out_w``; its element ``(i, j)`` reads image position
    ``(oh*sh - ph + i*dh, ow*sw - pw + j*dw)``, which lies in the padding when outside the image.
    """

    channels: int
    height: int
    width: int
    kh: int  # kernel size
    kw: int
    sh: int = 1  # stride
    sw: int = 1
    ph: int = 0  # zero padding on each side
    pw: int = 0
    dh: int = 1  # dilation: the gap between the kernel's taps
    dw: int = 1

    @property
    def out_h(self) -> int:
        """Window positions down an image: ``(H + 2 ph - dh (kh - 1) - 1) // sh + 1``."""
        return (self.height + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1

    @property
    def out_w(self) -> int:
        """Window positions across an image: ``(W + 2 pw - dw (kw - 1) - 1) // sw + 1``."""
        return (self.width + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1

    @property
    def positions(self) -> int:
        """``L = out_h * out_w``: how many patches one image gives."""
        return self.out_h * self.out_w

    @property
    def image_size(self) -> int:
        """``C * H * W``: the width of an image row."""
        return self.channels * self.height * self.width

    @property
    def patch_size(self) -> int:
        """``C * kh * kw``: the width of a patch row."""
        return self.channels * self.kh * self.kw


# Ops that can meet a domain edge (log 0, 1/0, overflow): IEEE results, no warnings, exactly as
# the python backend. Anomaly detection is the tool for finding them.
QUIET_UNARY = frozenset({"exp", "log", "log1p", "sqrt", "sigmoid"})


def unary_kernels(xp: Any, sigmoid: Callable[[Any], Any]) -> dict[str, Callable[[Any], Any]]:
    """``unary``'s ops over an array namespace with NumPy's names (NumPy, the Array API): name -> function."""
    return {
        "neg": xp.negative,
        "exp": xp.exp,
        "log": xp.log,
        "log1p": xp.log1p,
        "sqrt": xp.sqrt,
        "abs": xp.abs,
        "sign": xp.sign,
        "tanh": xp.tanh,
        "sigmoid": sigmoid,
    }


class Backend(ABC):
    """Storage and primitive kernels for row-major 2-D matrices."""

    name: str = ""
    device: str = "cpu"
    """Where the matrices live, in the library's words: ``"cpu"``, ``"cuda:0"``, ``"device1"``."""
    float_types: frozenset[Any] = frozenset()
    """The raw ``dtype`` values (``a.dtype``) of floating matrices, for cheap checks in hot paths."""
    buffered: Mapping[str, str] = MappingProxyType({})
    """Kernels that accept a buffer they may write into, by the keyword that takes it: ``out`` (the
    result, of the result's shape and dtype) or ``work`` (scratch, of the second argument's). Only
    ``matgrad.compile`` passes them, for buffers its plan proves nothing else can see."""

    @property
    def spec(self) -> str:
        """``name`` for the CPU-only backends, ``name:device`` for the others (``"torch:cuda:0"``)."""
        return self.name if self.name in ("numpy", "python") else f"{self.name}:{self.device}"

    @property
    def label(self) -> str:
        """How messages name this backend: ``numpy``, or ``torch on cuda:0``."""
        return self.name if self.name in ("numpy", "python") else f"{self.name} on {self.device}"

    def __repr__(self) -> str:
        if self.name in ("numpy", "python"):
            return f"<matgrad backend {self.name!r}>"
        return f"<matgrad backend {self.name!r} on {self.device!r}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Backends are per-process singletons holding modules: pickle (and deepcopy) by name and device.
        from matgrad.backends import get

        return get, (self.spec,)

    # -- construction and conversion ---------------------------------------------------------
    @abstractmethod
    def from_rows(self, rows: Sequence[Sequence[float]], dtype: str) -> Data:
        """A matrix from validated, rectangular nested lists of numbers."""

    @abstractmethod
    def from_array(self, array: Any, dtype: str) -> Data:
        """A matrix from a validated 2-D array (anything with ``tolist()``), copied."""

    @abstractmethod
    def from_uint8(self, buffer: bytes, nrows: int, ncols: int, divisor: float, dtype: str) -> Data:
        """A matrix from raw unsigned bytes (row-major), each divided by ``divisor``.

        How image data enters (MNIST pixels with ``divisor = 255``); for int64, ``divisor`` is 1.
        """

    @abstractmethod
    def full(self, nrows: int, ncols: int, value: float, dtype: str) -> Data:
        """An ``nrows x ncols`` matrix filled with ``value``."""

    @abstractmethod
    def eye(self, nrows: int, ncols: int, dtype: str) -> Data:
        """Ones on the main diagonal, zeros elsewhere."""

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Reset this backend's random generator."""

    @abstractmethod
    def uniform(self, nrows: int, ncols: int, low: float, high: float, dtype: str) -> Data:
        """Samples of U(low, high)."""

    @abstractmethod
    def normal(self, nrows: int, ncols: int, mean: float, std: float, dtype: str) -> Data:
        """Samples of N(mean, std^2)."""

    @abstractmethod
    def permutation(self, n: int) -> list[int]:
        """A random permutation of ``range(n)`` from this backend's generator."""

    def from_backend(self, source: Backend, a: Data, dtype: str) -> Data:
        """A copy on this backend of ``source``'s matrix ``a``, converted to ``dtype``.

        Through NumPy where both sides have it (DLPack on the Array API backends), else through
        nested lists.
        """
        if source.name == "python" or self.name == "python":
            return self.from_rows(source.tolist(a), dtype)
        return self.from_array(source.to_numpy(a), dtype)

    @abstractmethod
    def tolist(self, a: Data) -> list[list[Any]]:
        """Nested Python lists (floats, or ints for int64)."""

    @abstractmethod
    def to_numpy(self, a: Data) -> Any:
        """A NumPy array (a copy, except on the numpy backend where it may share memory)."""

    @abstractmethod
    def dtype(self, a: Data) -> str:
        """The dtype name: ``"float32"``, ``"float64"`` or ``"int64"``."""

    @abstractmethod
    def astype(self, a: Data, dtype: str) -> Data:
        """A copy converted to ``dtype``."""

    @abstractmethod
    def copy(self, a: Data) -> Data:
        """An independent copy."""

    @abstractmethod
    def storage(self, a: Data) -> int:
        """An identity of the memory ``a`` lives in: equal for a matrix and its views (reshape)."""

    def aliases(self, a: Data, b: Data) -> bool:
        """True when ``a`` and ``b`` share memory (one is a view of the other, or both of a third)."""
        return self.storage(a) == self.storage(b)

    @abstractmethod
    def assign(self, a: Data, b: Operand) -> None:
        """In place: ``a[...] = b`` (same shape, or broadcast). For optimisers only."""

    @abstractmethod
    def axpy(self, a: Data, b: Data, alpha: float) -> None:
        """In place: ``a += alpha * b`` (``b`` same shape, or broadcast). For optimisers only."""

    # -- element-wise ------------------------------------------------------------------------
    @abstractmethod
    def add(self, a: Operand, b: Operand) -> Data:
        """``a + b``."""

    @abstractmethod
    def sub(self, a: Operand, b: Operand) -> Data:
        """``a - b``."""

    @abstractmethod
    def mul(self, a: Operand, b: Operand) -> Data:
        """``a * b``."""

    @abstractmethod
    def div(self, a: Operand, b: Operand) -> Data:
        """``a / b`` with IEEE semantics (``1/0 = inf``, ``0/0 = nan``)."""

    @abstractmethod
    def pow(self, a: Operand, b: Operand) -> Data:
        """``a ** b`` with IEEE semantics (a negative base to a fractional power is nan)."""

    @abstractmethod
    def maximum(self, a: Operand, b: Operand) -> Data:
        """Element-wise maximum."""

    @abstractmethod
    def minimum(self, a: Operand, b: Operand) -> Data:
        """Element-wise minimum."""

    @abstractmethod
    def compare(self, op: str, a: Operand, b: Operand, out_dtype: str | None = None) -> Data:
        """1 where ``a <op> b`` holds, else 0; ``op`` is one of ``eq ne lt le gt ge``.

        ``out_dtype=None`` gives the (matrix) operands' own dtype.
        """

    @abstractmethod
    def where(self, cond: Data, a: Operand, b: Operand) -> Data:
        """``a`` where ``cond`` is non-zero, else ``b``."""

    @abstractmethod
    def keep(self, a: Data, mask: Data) -> Data:
        """``a`` where ``mask`` is 1, exactly 0 where it is 0 (``mask`` holds only 0 and 1; ``a`` broadcasts to it).

        ``where(mask, a, 0)`` for the 0/1 masks that rules build with ``compare``: it selects, so
        an infinite or NaN ``a`` gives 0 where the mask is 0 (``a * mask`` would give NaN there).
        """

    @abstractmethod
    def unary(self, op: str, a: Data) -> Data:
        """``op`` in ``neg exp log log1p sqrt abs sign tanh sigmoid`` applied element-wise."""

    @abstractmethod
    def all_finite(self, a: Data) -> bool:
        """True when no element is NaN or +-Inf."""

    # -- linear algebra and layout ------------------------------------------------------------
    @abstractmethod
    def matmul(self, a: Data, b: Data, trans_a: bool = False, trans_b: bool = False, bias: Data | None = None) -> Data:
        """``op(a) @ op(b) (+ bias)`` where ``op`` transposes when its flag is set (as BLAS gemm).

        ``bias`` (a ``(1, n)`` row) is added in place to the fresh product: ``linear`` in one pass.
        """

    @abstractmethod
    def transpose(self, a: Data) -> Data:
        """A row-major copy of ``a.T``."""

    @abstractmethod
    def reshape(self, a: Data, nrows: int, ncols: int) -> Data:
        """The same row-major elements read as ``nrows x ncols``."""

    @abstractmethod
    def cat(self, parts: Sequence[Data], axis: Literal[0, 1]) -> Data:
        """Concatenation along rows (axis 0) or columns (axis 1)."""

    # -- images: sliding windows (convolution and pooling) --------------------------------------
    @abstractmethod
    def unfold(self, a: Data, window: Window, pad_value: float = 0.0) -> Data:
        """im2col: the ``(B*L, C*kh*kw)`` matrix of patches of the ``(B, C*H*W)`` images ``a``.

        Row ``b*L + oh*out_w + ow`` is the patch of image ``b`` at window position ``(oh, ow)``;
        its column ``(c*kh + i)*kw + j`` holds image element ``(c, oh*sh - ph + i*dh,
        ow*sw - pw + j*dw)``, or ``pad_value`` where that lies in the padding.
        """

    @abstractmethod
    def fold(self, a: Data, window: Window) -> Data:
        """col2im, the adjoint of ``unfold``: ``(B*L, C*kh*kw)`` patches summed back into ``(B, C*H*W)`` images.

        Every patch element is added to the image element ``unfold`` read it from (padding drops it).
        """

    @abstractmethod
    def block_transpose(self, a: Data, p: int, q: int) -> Data:
        """The elements of ``a`` read as consecutive ``p x q`` blocks, each transposed: ``(blocks, q*p)``.

        ``out[b, j*p + i] = flat(a)[b*p*q + i*q + j]``: how ``(B*L, C)`` patch-major rows become
        ``(B, C*L)`` image rows (``p = L``, ``q = C``) and back (``p = C``, ``q = L``).
        """

    @abstractmethod
    def max_pool(self, a: Data, window: Window) -> Data:
        """The ``(B, C*out_h*out_w)`` maxima of each window over each channel of the ``(B, C*H*W)`` images ``a``.

        Channels are pooled separately; padding is ``-inf`` (never a maximum); NaN propagates.
        """

    @abstractmethod
    def max_pool_adjoint(self, a: Data, out: Data, g: Data, window: Window) -> Data:
        """The gradient of ``max_pool``: each window's ``g`` split equally among its maxima, summed per element.

        ``a`` is the pooled input, ``out`` the pooled maxima, ``g`` shaped as ``out``; the result
        is shaped as ``a``. Elements equal to their window's maximum share ``g`` (ties split, as
        the ``max`` reduction's rule); the others get exactly 0.
        """

    # -- fused softmax cross-entropy ---------------------------------------------------------
    @abstractmethod
    def softmax_xent(self, x: Data, targets: Data) -> tuple[Data, Data]:
        """``(losses, probs)`` for logits ``x`` (n, c) and the int64 (n, 1) column of classes ``targets``.

        ``losses[i] = logsumexp(x[i]) - x[i, t_i]`` as an (n, 1) column and ``probs`` the
        row-wise softmax, both computed after subtracting each row's maximum (stable for any
        finite logits; a row of -inf gives NaN, as in PyTorch). A class outside ``0 .. c-1``
        raises IndexError (the caller turns it into a clear error).
        """

    @abstractmethod
    def softmax_xent_grad(self, probs: Data, targets: Data, scale: Operand) -> Data:
        """``(probs - onehot(targets)) * scale``: the gradient of the losses w.r.t. the logits.

        ``scale`` is a number or an (n, 1) column. Subtract first, then scale: written
        ``probs * scale - scale`` an infinite scale gives inf - inf = NaN at the target.
        """

    # -- reductions ---------------------------------------------------------------------------
    @abstractmethod
    def sum(self, a: Data, axis: Axis) -> Data:
        """Sum over all elements, each column (axis 0) or each row (axis 1)."""

    @abstractmethod
    def max(self, a: Data, axis: Axis) -> Data:
        """Maximum, as ``sum``; NaN propagates."""

    @abstractmethod
    def min(self, a: Data, axis: Axis) -> Data:
        """Minimum, as ``sum``; NaN propagates."""

    @abstractmethod
    def argmax(self, a: Data, axis: Axis) -> Data:
        """int64 index of the first maximum (a flat row-major index for axis None)."""

    @abstractmethod
    def argmin(self, a: Data, axis: Axis) -> Data:
        """int64 index of the first minimum (a flat row-major index for axis None)."""

    # -- indexing -----------------------------------------------------------------------------
    @abstractmethod
    def take(self, a: Data, rows: Index, cols: Index) -> Data:
        """The submatrix of the selected rows and columns (outer indexing, as ``np.ix_``)."""

    @abstractmethod
    def take_adjoint(self, g: Data, nrows: int, ncols: int, rows: Index, cols: Index) -> Data:
        """Zeros of ``nrows x ncols`` with ``g`` scatter-added at ``take``'s positions."""

    @abstractmethod
    def indices(self, a: Data) -> Any:
        """The values of an int64 matrix as a flat index, in a form ``pick`` and ``take`` accept."""

    @abstractmethod
    def bad_index(self, index: Any, bound: int) -> int | None:
        """A value of ``index`` (from ``indices``) outside ``0 .. bound - 1``, or None if all are in range."""

    @abstractmethod
    def pick(self, a: Data, rows: Any, cols: Any) -> Data:
        """The column ``[a[rows[i], cols[i]] for i]`` (paired indexing), shape ``(k, 1)``.

        ``rows=None`` means one pick per row, ``rows[i] = i``: how a loss reads each target.
        """

    @abstractmethod
    def pick_adjoint(self, g: Data, nrows: int, ncols: int, rows: Any, cols: Any) -> Data:
        """Zeros of ``nrows x ncols`` with ``g[i]`` added at ``(rows[i], cols[i])``."""
