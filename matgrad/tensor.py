"""``Tensor2D``: a row-major matrix on a backend, and the graph node that records how it was made."""

from __future__ import annotations

import builtins
import numbers
import operator
from itertools import chain
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

from matgrad import backends as _backends
from matgrad._errors import (
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    DTypeError,
    GraphError,
    ShapeError,
    user_site,
)
from matgrad.backends.base import DTYPES, FLOAT_DTYPES, Backend

if TYPE_CHECKING:
    from matgrad.autograd import Op

__all__ = [
    "Tensor2D",
    "from_dlpack",
    "from_numpy",
    "get_default_dtype",
    "set_default_dtype",
]

_default_dtype = "float32"

Scalar = Union[int, float]


def set_default_dtype(dtype: Any) -> None:
    """Set the floating dtype new tensors get when none is given (``"float32"`` initially)."""
    global _default_dtype
    name = dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise DTypeError(f"set_default_dtype: the default must be float32 or float64, not {name}")
    _default_dtype = name


def get_default_dtype() -> str:
    """The floating dtype new tensors get when none is given."""
    return _default_dtype


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float64"`` or ``"int64"`` from a name, a NumPy dtype or a NumPy type."""
    if dtype is None:
        return _default_dtype
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None) or getattr(dtype, "__name__", None)
    if name not in DTYPES:
        raise DTypeError(f"unknown dtype {dtype!r}; use 'float32', 'float64' or 'int64'")
    return str(name)


def _is_array(x: Any) -> bool:
    return hasattr(x, "ndim") and hasattr(x, "dtype") and hasattr(x, "tolist")


def _integer_array(x: Any) -> bool:
    """An array of integers (NumPy, or another library's): it keeps int64, as ``torch.tensor`` does."""
    if not _is_array(x):
        return False
    kind = getattr(x.dtype, "kind", None)
    if kind is not None:
        return kind in ("i", "u")
    name = str(x.dtype)
    return "int" in name and "float" not in name and "bool" not in name


def _reject_element(v: Any, where: str) -> None:
    """Raise the error that fits a non-numeric element."""
    if isinstance(v, bool):
        raise ArgumentTypeError(f"Tensor2D: element {where} is a bool; write 1.0 or 0.0 (or float(flag))")
    if isinstance(v, complex):
        raise ArgumentTypeError(f"Tensor2D: element {where} is complex; matgrad holds real numbers only")
    if isinstance(v, (list, tuple)):
        raise ShapeError(f"Tensor2D: element {where} is a {type(v).__name__}: data has more than 2 dimensions")
    raise ArgumentTypeError(f"Tensor2D: element {where} is a {type(v).__name__} ({v!r}), not a number")


def _validate_rows(data: Sequence[Any]) -> Sequence[Sequence[Any]]:
    """Check that ``data`` is a non-empty, rectangular list of rows of real numbers."""
    if len(data) == 0:
        raise ShapeError("Tensor2D: empty list; a matrix needs at least one row and one column")
    if not all(isinstance(r, (list, tuple)) for r in data):
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in data):
            raise ShapeError(
                f"Tensor2D: got a flat list of {len(data)} numbers, but a matrix is a list of rows; "
                "write [[1, 2, 3]] for a 1xn row or [[1], [2], [3]] for an nx1 column"
            )
        bad = next(i for i, r in enumerate(data) if not isinstance(r, (list, tuple)))
        raise ShapeError(f"Tensor2D: row {bad} is a {type(data[bad]).__name__}, not a list of numbers")
    ncols = len(data[0])
    if ncols == 0:
        raise ShapeError("Tensor2D: row 0 is empty; a matrix needs at least one column")
    for i, row in enumerate(data):
        if len(row) != ncols:
            raise ShapeError(
                f"Tensor2D: ragged rows: row 0 has {ncols} values but row {i} has {len(row)}; "
                "every row needs the same length"
            )
    kinds = set(map(type, chain.from_iterable(data)))
    if not kinds <= {float, int}:
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if type(v) not in (float, int) and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                    _reject_element(v, f"[{i}][{j}]")
    return data


MAX_ELEMENTS = 2**31
"""The most elements one matrix may hold (8 GiB of float32): larger requests are surely mistakes."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX_INT = 2**1024  # ints at or beyond this cannot become a float


def check_size(name: str, nrows: int, ncols: int) -> None:
    """Refuse a matrix too large to be anything but a mistake, before trying to allocate it."""
    if nrows * ncols > MAX_ELEMENTS:
        raise ShapeError(
            f"{name}: a {nrows}x{ncols} matrix has {nrows * ncols:,} elements, beyond matgrad's "
            f"limit of {MAX_ELEMENTS:,} per matrix"
        )


def check_int_range(name: str, values: Any, dtype: str) -> None:
    """Python ints must fit the dtype: int64's range, or a float's (|v| < 2**1024)."""
    values = list(values)
    if int not in set(map(type, values)):  # C-speed: most data is all floats
        return
    ints = [v for v in values if type(v) is int]
    lo, hi = min(ints), max(ints)
    if dtype == "int64":
        if lo < _INT64_MIN or hi > _INT64_MAX:
            bad = lo if lo < _INT64_MIN else hi
            raise ArgumentError(f"{name}: {_short(bad)} does not fit in int64 (-2**63 .. 2**63 - 1)")
    elif hi >= _FLOAT_MAX_INT or lo <= -_FLOAT_MAX_INT:
        bad = lo if lo <= -_FLOAT_MAX_INT else hi
        raise ArgumentError(f"{name}: the integer {_short(bad)} is too large for a float ({dtype})")


def _short(v: int) -> str:
    text = str(v)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def _validate_array(a: Any) -> None:
    if a.ndim != 2:
        hint = "; use .reshape(1, -1) for a row or .reshape(-1, 1) for a column" if a.ndim == 1 else ""
        raise ShapeError(f"Tensor2D: expected a 2-D array, got {a.ndim}-D with shape {tuple(a.shape)}{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(
            f"Tensor2D: the array is {a.shape[0]}x{a.shape[1]}; a matrix needs at least one row and one column"
        )
    kind = a.dtype.kind
    if kind == "b":
        raise ArgumentTypeError("Tensor2D: a bool array is not numeric data; convert it with .astype(float)")
    if kind == "c":
        raise ArgumentTypeError("Tensor2D: a complex array; matgrad holds real numbers only")
    if kind not in "iuf":
        raise ArgumentTypeError(f"Tensor2D: an array of dtype {a.dtype} is not numeric")


def _foreign_array(data: Any) -> Any:
    """A NumPy array (or nested lists) from another library's tensor, detached and on the CPU."""
    from matgrad.backends.array_api import native_backend

    if native_backend(data) is not None:  # torch, cupy, array_api_strict: the backend's own copy
        be = _backends.get(*native_backend(data))  # type: ignore[misc]
        return be.to_numpy(data)
    for method in ("detach", "cpu"):
        if callable(getattr(data, method, None)):
            data = getattr(data, method)()
    if callable(getattr(data, "numpy", None)):
        try:
            return data.numpy()
        except (ImportError, RuntimeError, TypeError):
            pass
    return data.tolist()


def require_int64_range(backend: Backend, data: Any, name: str = "Tensor2D") -> None:
    """Floating values must fit int64 to convert: no NaN or Inf, nothing beyond -2**63 .. 2**63 - 1.

    (NumPy's conversion of such values is undefined, usually -2**63; Python's int would keep
    them exactly: refused, so that both backends agree.)
    """
    if not backend.all_finite(data):
        raise DTypeError(f"{name}: cannot convert NaN or Inf to int64")
    hi, lo = backend.tolist(backend.max(data, None))[0][0], backend.tolist(backend.min(data, None))[0][0]
    if hi >= 2.0**63 or lo < -(2.0**63):
        bad = hi if hi >= 2.0**63 else lo
        raise DTypeError(f"{name}: {bad:g} does not fit in int64 (-2**63 .. 2**63 - 1); keep it floating")


def _convert(data: Any, backend: Backend, dtype: str) -> Any:
    """Native storage on ``backend`` for user data, validated."""
    if isinstance(data, Tensor2D):
        src = data._backend
        if dtype == "int64" and data.dtype != "int64":
            require_int64_range(src, data._data)
        if src is backend:
            return backend.astype(data._data, dtype)
        return backend.from_backend(src, data._data, dtype)
    if isinstance(data, bool):
        raise ArgumentTypeError("Tensor2D: a bool is not numeric data; use 1.0 or 0.0")
    if isinstance(data, numbers.Real):
        check_int_range("Tensor2D", [data], dtype)
        if dtype == "int64" and not (float(data) == float(data) and abs(float(data)) != float("inf")):
            raise DTypeError("Tensor2D: cannot convert NaN or Inf to int64")
        return backend.full(1, 1, data, dtype)  # type: ignore[arg-type]
    if isinstance(data, complex):
        raise ArgumentTypeError("Tensor2D: complex numbers are not supported; matgrad holds real numbers only")
    if (_is_array(data) or hasattr(data, "__dlpack__")) and not hasattr(getattr(data, "dtype", None), "kind"):
        data = _foreign_array(data)  # e.g. a torch tensor: go through NumPy (or nested lists)
    if _is_array(data):
        _validate_array(data)
        if dtype == "int64" and data.dtype.kind == "f":
            require_int64_range(backend, backend.from_array(data, "float64"))
        return backend.from_array(data, dtype)
    if isinstance(data, (list, tuple)):
        rows = _validate_rows(data)
        check_size("Tensor2D", len(rows), len(rows[0]))
        check_int_range("Tensor2D", chain.from_iterable(rows), dtype)
        if dtype == "int64":  # Python ints were range-checked above; floats must be finite and fit
            floats = [v for v in chain.from_iterable(rows) if type(v) is not int]
            if floats:
                require_int64_range(backend, backend.from_rows([floats], "float64"))
        return backend.from_rows(rows, dtype)
    raise ArgumentTypeError(
        f"Tensor2D: cannot make a matrix from {type(data).__name__}; pass a list of rows, "
        "a 2-D NumPy array, a number or a Tensor2D"
    )


_object_new = object.__new__


CHANGES = [0]
"""In-place changes of any tensor so far: an op recorded since the last one need not check its saved tensors."""


class Version:
    """A storage's version counter: in-place changes seen, what made the last one, and when.

    ``clock`` is the value of ``CHANGES`` after the last change: an op recorded at a later
    clock saw the storage as it is now, one recorded earlier saw older values.
    """

    __slots__ = ("changed", "clock", "count")

    def __init__(self) -> None:
        self.count = 0
        self.changed = ""
        self.clock = -1


class Tensor2D:
    """A 2-D matrix that remembers the op and the inputs that produced it.

    ``Tensor2D(data, requires_grad=False, dtype=None, backend=None, name=None)``: ``data`` is a
    list of rows, a 2-D NumPy array, a Python number (a 1x1 matrix) or another ``Tensor2D``
    (copied, keeping its dtype and backend unless given). ``dtype`` is ``"float32"`` (the
    default, ``get_default_dtype()``), ``"float64"`` or ``"int64"``; an integer NumPy array
    becomes int64 (as ``torch.tensor``), lists and other arrays the default float dtype, unless
    ``dtype`` says otherwise. ``backend`` is ``"numpy"``, ``"python"``, ``"torch"``, ``"cupy"``
    or ``"array_api_strict"`` (default: ``matgrad.get_backend()``), ``device`` where its library
    has devices (``"cuda"``, ``"cuda:1"``; default: the library's default device).
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_data",
        "_op",
        "_retain",
        "_vc",
        "grad",
        "name",
        "requires_grad",
    )

    # NumPy defers to our reflected operators (ndarray + Tensor2D calls Tensor2D.__radd__).
    __array_ufunc__ = None

    _backend: Backend
    _data: Any
    _op: Op | None
    _retain: bool
    _vc: Version | None  # the storage's version counter, shared with aliases; None: never changed nor shared
    grad: Tensor2D | None
    name: str | None
    requires_grad: bool

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        dtype: Any = None,
        backend: str | Backend | None = None,
        name: str | None = None,
        device: str | None = None,
    ) -> None:
        if isinstance(data, Tensor2D):  # a copy keeps the source's dtype and backend unless told
            if backend is None:
                be = data._backend if device is None else _backends.get(data._backend, device)
            else:
                be = _backends.get(backend, device)
            dt = data.dtype if dtype is None else dtype_name(dtype)
        else:
            be = _backends.get(backend, device)
            dt = "int64" if dtype is None and _integer_array(data) else dtype_name(dtype)
        self._data = _convert(data, be, dt)
        self._backend = be
        self._vc = None
        self._op = None
        self._retain = False
        self.grad = None
        self.name = name
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- attributes ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(nrows, ncols)``."""
        shape: tuple[int, int] = self._data.shape
        return shape

    @property
    def nrows(self) -> int:
        return int(self._data.shape[0])

    @property
    def ncols(self) -> int:
        return int(self._data.shape[1])

    @property
    def dtype(self) -> str:
        """``"float32"``, ``"float64"`` or ``"int64"``."""
        return self._backend.dtype(self._data)

    @property
    def backend(self) -> str:
        """The name of the backend holding the data: ``"numpy"``, ``"python"``, ``"torch"``, ..."""
        return self._backend.name

    @property
    def device(self) -> str:
        """Where the data lives, in its library's words: ``"cpu"``, ``"cuda:0"``, ``"device1"``."""
        return self._backend.device

    @property
    def is_leaf(self) -> bool:
        """True for tensors the user made (no op recorded them)."""
        return self._op is None

    @property
    def op(self) -> Op | None:
        """The op that produced this tensor, or None for a leaf."""
        return self._op

    grad_fn = op

    @property
    def inputs(self) -> tuple[Tensor2D, ...]:
        """The op's inputs, in order (empty for a leaf)."""
        return self._op.inputs if self._op is not None else ()

    # C-level getters (operator.attrgetter), not Python functions: optimisers read these per step.
    native = property(
        operator.attrgetter("_data"),
        doc="""The backend's own matrix holding the values (a NumPy array, a python-backend ``Matrix``).

        The door to the kernel level, for optimisers, I/O and extensions: it shares storage, and
        an in-place change through it bypasses the version checks (call ``_mark_changed``).
        """,
    )
    kernels = property(
        operator.attrgetter("_backend"),
        doc="The backend object whose kernels work on ``native`` (``t.kernels.matmul(a, b)``).",
    )

    @classmethod
    def from_native(cls, data: Any, backend: str | Backend | None = None) -> Tensor2D:
        """A leaf around a backend's own matrix, sharing it: no copy, no conversion (the kernel-level door).

        ``backend`` defaults to the one whose matrices look like ``data`` (a NumPy array: numpy).
        The matrix must be 2-D, non-empty and of a matgrad dtype; NumPy arrays C-contiguous.
        """
        be = _native_backend(data) if backend is None else _backends.get(backend)
        shape = getattr(data, "shape", None)
        if not (isinstance(shape, tuple) and len(shape) == 2 and shape[0] >= 1 and shape[1] >= 1):
            raise ShapeError(f"from_native: expected a non-empty 2-D matrix of {be.name}, got shape {shape}")
        name = be.dtype(data)
        if name not in DTYPES:
            raise DTypeError(f"from_native: a matrix of dtype {name}; matgrad holds float32, float64 and int64")
        owns = getattr(be, "owns", None)
        if owns is not None and not owns(data):  # an Array API backend: its library, its device
            from matgrad.backends.array_api import native_backend

            found = native_backend(data)
            where = "an array of another library" if found is None else f"{found[0]} on {found[1]}"
            raise BackendError(
                f"from_native: the matrix is {where}, not of the {be.label} backend; "
                "copy it with Tensor2D(data, backend=...)"
            )
        flags = getattr(data, "flags", None)
        if flags is not None and not flags["C_CONTIGUOUS"]:
            raise ShapeError("from_native: the array is not C-contiguous (row-major); pass numpy.ascontiguousarray(a)")
        return _wrap(data, be)

    @property
    def T(self) -> Tensor2D:
        """The transpose."""
        return _ops.transpose(self)

    # -- conversion ---------------------------------------------------------------------------
    def tolist(self) -> list[list[Any]]:
        """Nested Python lists, one per row."""
        return self._backend.tolist(self._data)

    def numpy(self) -> Any:
        """A NumPy array (sharing memory on the numpy backend, a copy on the others, from any device)."""
        return self._backend.to_numpy(self._data)

    def __dlpack__(self, **kwargs: Any) -> Any:
        """The native array's DLPack capsule (shared memory): ``numpy.from_dlpack(t)``, ``torch.from_dlpack(t)``."""
        export = getattr(self._data, "__dlpack__", None)
        if export is None:
            raise BackendError(
                f"DLPack: the {self.backend} backend's matrices have no DLPack export; "
                "use .numpy() or .to(backend='numpy')"
            )
        return export(**kwargs)

    def __dlpack_device__(self) -> Any:
        device = getattr(self._data, "__dlpack_device__", None)
        if device is None:
            raise BackendError(f"DLPack: the {self.backend} backend's matrices have no DLPack export; use .numpy()")
        return device()

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def item(self) -> Any:
        """The single value of a 1x1 tensor, as a Python number."""
        if self.shape != (1, 1):
            raise ShapeError(
                f"item: needs a 1x1 tensor, this one is {self.nrows}x{self.ncols}; reduce it first (.sum(), .mean())"
            )
        return self._backend.tolist(self._data)[0][0]

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        if self.shape != (1, 1):
            raise ShapeError(
                f"the truth value of a {self.nrows}x{self.ncols} tensor is ambiguous; "
                "reduce it first, e.g. (a == b).min().item() == 1"
            )
        return bool(self.item())

    def to(self, dtype: Any = None, backend: str | Backend | None = None, device: str | None = None) -> Tensor2D:
        """This tensor converted to another dtype, backend and/or device (differentiable for floats).

        ``device`` alone keeps the library: ``t.to(device="cuda")`` on a torch tensor.
        """
        return _ops.to(self, dtype, backend, device)

    def float(self) -> Tensor2D:
        """``to("float32")``."""
        return _ops.to(self, "float32", None)

    def double(self) -> Tensor2D:
        """``to("float64")``."""
        return _ops.to(self, "float64", None)

    def long(self) -> Tensor2D:
        """``to("int64")`` (truncates toward zero; not differentiable)."""
        return _ops.to(self, "int64", None)

    # -- autograd -----------------------------------------------------------------------------
    def backward(
        self, grad: Tensor2D | None = None, retain_graph: bool | None = None, create_graph: bool = False
    ) -> None:
        """Accumulate ``d self / d leaf`` into the ``.grad`` of every leaf that requires grad.

        A 1x1 output is seeded with 1; any other needs ``grad`` of its own shape. The graph's saved
        buffers are released afterwards unless ``retain_graph=True`` (default: ``create_graph``);
        ``create_graph=True`` records the backward pass itself, for higher-order gradients.
        """
        _engine.backward(self, grad, retain_graph, create_graph)

    def detach(self) -> Tensor2D:
        """A new leaf sharing this tensor's data (and its version counter), cut from the graph."""
        t = _wrap(self._data, self._backend)
        t._vc = self._version_counter()
        return t

    @property
    def _version(self) -> int:
        """How many in-place changes this tensor's storage has seen (shared with its aliases, as PyTorch).

        An op that saves a tensor for backward remembers its version; backward raises if it changed.
        """
        vc = self._vc
        return 0 if vc is None else vc.count

    def _version_counter(self) -> Version:
        """The storage's counter, made on first need; an alias of this tensor shares it."""
        vc = self._vc
        if vc is None:
            vc = self._vc = Version()
        return vc

    def _mark_changed(self, how: str) -> None:
        """Count an in-place change of the storage (every alias sees it); ``how`` says what did it."""
        vc = self._vc
        if vc is None:
            vc = self._vc = Version()
        vc.count += 1
        vc.changed = how
        CHANGES[0] += 1
        vc.clock = CHANGES[0]

    def requires_grad_(self, requires_grad: bool = True) -> Tensor2D:
        """Set ``requires_grad`` in place on a leaf; returns ``self``."""
        if self._op is not None and not requires_grad:
            raise GraphError("requires_grad_(False) on a non-leaf tensor; use .detach() to cut it from the graph")
        if requires_grad and self.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"only floating tensors can require grad, this one is {self.dtype}; convert with .float()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> Tensor2D:
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves keep it anyway)."""
        if not self.requires_grad:
            raise GraphError("retain_grad on a tensor that does not require grad")
        self._retain = True
        return self

    def clone(self) -> Tensor2D:
        """A copy with its own storage; gradients flow through it."""
        return _ops.clone(self)

    # -- in place (optimisers and initialisers, under no_grad) --------------------------------
    def _check_inplace(self, name: str) -> None:
        if self.requires_grad and _grad_mode.state.mode & _grad_mode.GRAD:
            raise GraphError(
                f"{name}: in-place change of a tensor that requires grad while the graph is being "
                "recorded; do it under `with matgrad.no_grad():`"
            )

    def _changed_by(self, name: str) -> None:
        site = user_site()
        self._mark_changed(f"{name}() at {site}" if site else f"{name}()")

    def _scalar(self, v: Any) -> Any:
        """A number as this tensor's kind: an int wrapped to int64 (two's complement), else a float."""
        if self._data.dtype in self._backend.float_types:
            return float(v)
        return (int(v) - _INT64_MIN) % 2**64 + _INT64_MIN

    def copy_(self, src: Tensor2D | Scalar) -> Tensor2D:
        """Overwrite the values with ``src`` (same shape, or broadcast); returns ``self``."""
        self._check_inplace("copy_")
        _checks.inplace_operand("copy_", self, src)
        self._backend.assign(self._data, src._data if isinstance(src, Tensor2D) else self._scalar(src))
        self._changed_by("copy_")
        return self

    def set_(self, source: Tensor2D) -> Tensor2D:
        """Make this tensor share ``source``'s storage, shape, dtype and backend (as PyTorch's ``set_``).

        How ``Module.to`` converts parameters while keeping them the same objects; counts as an
        in-place change for the version checks.
        """
        self._check_inplace("set_")
        if not isinstance(source, Tensor2D):
            raise ArgumentTypeError(f"set_: expected a Tensor2D, got {type(source).__name__}")
        self._data, self._backend = source._data, source._backend
        self._changed_by("set_")
        return self

    def add_(self, other: Tensor2D | Scalar, alpha: builtins.float = 1.0) -> Tensor2D:
        """``self += alpha * other`` in place; returns ``self``."""
        self._check_inplace("add_")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ArgumentTypeError(f"add_: alpha must be a real number, got {type(alpha).__name__}")
        _checks.inplace_operand("add_", self, other, alpha)
        be = self._backend
        if isinstance(other, Tensor2D):
            be.axpy(self._data, other._data, self._scalar(alpha))
        elif self.dtype == "int64":  # exact integers, wrapping as int64 does
            be.assign(self._data, be.add(self._data, self._scalar(int(alpha) * int(other))))
        else:
            be.assign(self._data, be.add(self._data, float(alpha) * float(other)))
        self._changed_by("add_")
        return self

    def mul_(self, factor: Tensor2D | Scalar) -> Tensor2D:
        """``self *= factor`` in place; returns ``self``."""
        self._check_inplace("mul_")
        _checks.inplace_operand("mul_", self, factor)
        be = self._backend
        operand = factor._data if isinstance(factor, Tensor2D) else self._scalar(factor)
        be.assign(self._data, be.mul(self._data, operand))
        self._changed_by("mul_")
        return self

    def zero_(self) -> Tensor2D:
        """Set every value to 0 in place; returns ``self``."""
        self._check_inplace("zero_")
        self._backend.assign(self._data, 0.0)
        self._changed_by("zero_")
        return self

    # -- operators ----------------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor2D:
        return _Add()(self, other)

    def __radd__(self, other: Any) -> Tensor2D:
        return _Add()(other, self)

    def __sub__(self, other: Any) -> Tensor2D:
        return _Sub()(self, other)

    def __rsub__(self, other: Any) -> Tensor2D:
        return _Sub()(other, self)

    def __mul__(self, other: Any) -> Tensor2D:
        return _Mul()(self, other)

    def __rmul__(self, other: Any) -> Tensor2D:
        return _Mul()(other, self)

    def __truediv__(self, other: Any) -> Tensor2D:
        return _Div()(self, other)

    def __rtruediv__(self, other: Any) -> Tensor2D:
        return _Div()(other, self)

    def __matmul__(self, other: Any) -> Tensor2D:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor2D:
        return _ops.matmul(other, self)

    def __pow__(self, exponent: Any) -> Tensor2D:
        return _ops.pow(self, exponent)

    def __rpow__(self, base: Any) -> Tensor2D:
        return _ops.rpow(base, self)

    def __neg__(self) -> Tensor2D:
        return _Neg()(self)

    def __pos__(self) -> Tensor2D:
        return self

    def __abs__(self) -> Tensor2D:
        return _ops.abs(self)

    def __eq__(self, other: Any) -> Tensor2D:  # type: ignore[override]
        return _ops.compare("eq", self, other)

    def __ne__(self, other: Any) -> Tensor2D:  # type: ignore[override]
        return _ops.compare("ne", self, other)

    def __lt__(self, other: Any) -> Tensor2D:
        return _ops.compare("lt", self, other)

    def __le__(self, other: Any) -> Tensor2D:
        return _ops.compare("le", self, other)

    def __gt__(self, other: Any) -> Tensor2D:
        return _ops.compare("gt", self, other)

    def __ge__(self, other: Any) -> Tensor2D:
        return _ops.compare("ge", self, other)

    __hash__ = object.__hash__

    def __getitem__(self, key: Any) -> Tensor2D:
        return _ops.index(self, key)

    def __len__(self) -> int:
        return self.nrows

    def __iter__(self) -> Iterator[Tensor2D]:
        for i in range(self.nrows):
            yield _ops.index(self, i)

    # -- methods mirroring the functions in matgrad.ops and matgrad.functional ---------------
    def matmul(self, other: Tensor2D) -> Tensor2D:
        return _ops.matmul(self, other)

    def pow(self, exponent: builtins.float) -> Tensor2D:
        return _ops.pow(self, exponent)

    def exp(self) -> Tensor2D:
        return _ops.exp(self)

    def log(self) -> Tensor2D:
        return _ops.log(self)

    def sqrt(self) -> Tensor2D:
        return _ops.sqrt(self)

    def abs(self) -> Tensor2D:
        return _ops.abs(self)

    def transpose(self) -> Tensor2D:
        return _ops.transpose(self)

    t = transpose

    def reshape(self, nrows: int, ncols: int) -> Tensor2D:
        return _ops.reshape(self, nrows, ncols)

    def sum(self, axis: int | None = None) -> Tensor2D:
        return _ops.sum(self, axis)

    def mean(self, axis: int | None = None) -> Tensor2D:
        return _ops.mean(self, axis)

    def max(self, axis: int | None = None) -> Tensor2D:
        return _ops.max(self, axis)

    def min(self, axis: int | None = None) -> Tensor2D:
        return _ops.min(self, axis)

    def argmax(self, axis: int | None = None) -> Tensor2D:
        return _ops.argmax(self, axis)

    def argmin(self, axis: int | None = None) -> Tensor2D:
        return _ops.argmin(self, axis)

    def relu(self) -> Tensor2D:
        return _ops.relu(self)

    def leaky_relu(self, negative_slope: builtins.float = 0.01) -> Tensor2D:
        return _ops.leaky_relu(self, negative_slope)

    def sigmoid(self) -> Tensor2D:
        return _ops.sigmoid(self)

    def tanh(self) -> Tensor2D:
        return _ops.tanh(self)

    def softmax(self, axis: int = 1) -> Tensor2D:
        return _ops.softmax(self, axis)

    def log_softmax(self, axis: int = 1) -> Tensor2D:
        return _ops.log_softmax(self, axis)

    def logsumexp(self, axis: int = 1) -> Tensor2D:
        return _ops.logsumexp(self, axis)

    # -- display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        body = _format_rows(self, len("Tensor2D("))
        extras = [f"shape={self.nrows}x{self.ncols}", f"dtype={self.dtype}", f"backend={self.backend}"]
        if self.device not in ("cpu", "CPU_DEVICE"):
            extras.append(f"device={self.device}")
        if self._op is not None:
            extras.append(f"grad_fn={self._op.describe()}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        if self.name:
            extras.append(f"name={self.name!r}")
        return f"Tensor2D({body}, {', '.join(extras)})"


def _format_rows(t: Tensor2D, indent: int) -> str:
    """The values as an aligned nested list, summarised with ``...`` past 6 rows or columns."""
    be = t._backend

    def shown(n: int) -> list[int] | slice:
        return slice(None) if n <= 6 else [0, 1, 2, n - 3, n - 2, n - 1]

    rsel, csel = shown(t.nrows), shown(t.ncols)
    rows = be.tolist(be.take(t._data, rsel, csel))
    integer = t.dtype == "int64"

    def number(v: Any) -> str:
        if integer:
            return str(v)
        text = f"{v:.4g}"
        return text if any(ch in text for ch in ".eni") else text + "."  # 8. like NumPy; keep nan, inf

    def cells(row: list[Any]) -> list[str]:
        text = [number(v) for v in row]
        return text if isinstance(csel, slice) else [*text[:3], "...", *text[3:]]

    table: list[list[str] | None] = [cells(r) for r in rows]
    if not isinstance(rsel, slice):
        table.insert(3, None)
    width = max(len(c) for r in table if r is not None for c in r)
    lines = ["..." if r is None else "[" + ", ".join(c.rjust(width) for c in r) + "]" for r in table]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _native_backend(data: Any) -> Backend:
    """The backend whose native matrices look like ``data`` (on ``data``'s device)."""
    if type(data).__module__.startswith("matgrad.backends.python"):
        return _backends.get("python")
    if type(data).__module__ == "numpy":
        return _backends.get("numpy")
    from matgrad.backends.array_api import native_backend

    found = native_backend(data)
    if found is not None:
        return _backends.get(*found)
    raise ArgumentTypeError(
        f"from_native: cannot tell which backend holds a {type(data).__name__}; pass backend='numpy' or 'python'"
    )


def from_dlpack(array: Any, backend: str | Backend | None = None) -> Tensor2D:
    """A tensor sharing the memory of a DLPack array (NumPy, PyTorch, CuPy), as ``torch.from_dlpack``.

    ``backend`` defaults to the array's own library where matgrad has it as a backend (else
    numpy); the array must be 2-D, of a matgrad dtype, on a device that backend can read.
    """
    if not hasattr(array, "__dlpack__"):
        raise ArgumentTypeError(
            f"from_dlpack: a {type(array).__name__} has no __dlpack__; pass a NumPy array or a tensor"
        )
    if backend is None:
        try:
            be = _native_backend(array)
        except ArgumentTypeError:
            be = _backends.get("numpy")
    else:
        be = _backends.get(backend)
    if be.name == "python":
        raise BackendError("from_dlpack: the python backend cannot share memory; use Tensor2D(array, backend='python')")
    from matgrad.backends.array_api import native_backend

    if native_backend(array) == (be.name, be.device):
        return Tensor2D.from_native(array, be)  # already this backend's own matrix
    xp = getattr(be, "xp", None)
    try:
        native = xp.from_dlpack(array)  # type: ignore[union-attr]
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise BackendError(f"from_dlpack: the {be.label} backend cannot read this array in place ({exc})") from None
    if be.name != "numpy" and native_backend(native) != (be.name, be.device):
        raise BackendError(
            f"from_dlpack: the array is not on {be.label}, so it cannot be shared; "
            f"copy it with Tensor2D(array, backend={be.spec!r})"
        )
    return Tensor2D.from_native(native, be)


def from_numpy(array: Any) -> Tensor2D:
    """A tensor sharing ``array``'s memory, as ``torch.from_numpy``: float32, float64 and int64 keep their dtype.

    The numpy backend's tensor *is* the array: changes to one show in the other. Other integer
    dtypes are refused (``array.astype(numpy.int64)``); so are views that are not row-major.
    """
    if not (hasattr(array, "dtype") and hasattr(array, "ndim") and type(array).__module__ == "numpy"):
        raise ArgumentTypeError(f"from_numpy: expected a NumPy array, got {type(array).__name__}")
    if array.ndim != 2:
        raise ShapeError(f"from_numpy: expected a 2-D array, got {array.ndim}-D with shape {tuple(array.shape)}")
    return Tensor2D.from_native(array, "numpy")


def _wrap(data: Any, backend: Backend) -> Tensor2D:
    """A fresh leaf around native ``data`` (no validation: for ops and backends only)."""
    t = _object_new(Tensor2D)
    t._data = data
    t._backend = backend
    t._vc = None
    t._op = None
    t._retain = False
    t.grad = None
    t.name = None
    t.requires_grad = False
    return t


# Bound last: these modules import Tensor2D from here.
from matgrad import _checks  # noqa: E402
from matgrad import ops as _ops  # noqa: E402
from matgrad.autograd import engine as _engine  # noqa: E402
from matgrad.autograd import grad_mode as _grad_mode  # noqa: E402
from matgrad.ops import Add as _Add  # noqa: E402
from matgrad.ops import Div as _Div  # noqa: E402
from matgrad.ops import Mul as _Mul  # noqa: E402
from matgrad.ops import Neg as _Neg  # noqa: E402
from matgrad.ops import Sub as _Sub  # noqa: E402
