"""The Array API backends: PyTorch, CuPy and array-api-strict through one implementation.

Every kernel is written against the Python Array API standard (2023.12 and later): ``self.xp`` is
the namespace ``array-api-compat`` gives for the library (``array_api_compat.torch``,
``array_api_compat.cupy``) or ``array_api_strict`` itself, and every array a kernel creates is
placed on ``self.device``. What the standard leaves out is in one small adapter per library
(``_Library``): the identity of an array's memory (``storage``), a row-major transposed copy,
the copy to a NumPy array, and whether NumPy's floating-point warnings must be silenced.

Where the standard differs from NumPy, and what the kernels do about it:

* No scatter-add (``np.add.at``) and no integer-array assignment: ``take_adjoint`` and
  ``pick_adjoint`` sum repeated positions with gathers (``_scatter_rows``), in the order NumPy's
  ``add.at`` adds them, so the results are NumPy's bit for bit; one pick per row (the loss's
  gradient, ``one_hot``) is a selection against ``arange``.
* Mixed-kind promotion is not defined (array-api-strict refuses ``int64 array + 2.0``): a float
  that meets an int64 matrix becomes an int first (the ops have checked it is integral).
* Slices with a negative step are not in every library (PyTorch refuses them): they become lists.
* In-place updates (``assign``, ``axpy``) use ``a[...] = b`` and ``a += b``, which the standard
  defines; they reach the views of ``a`` in every library served here (the standard leaves that
  open, JAX would not).
* No random numbers: draws come from NumPy's generator on the host (``NumpyBackend``'s, seeded
  alike) and are moved to the device, so one seed gives the numpy backend's numbers everywhere.
  So does data entry (``from_rows``, ``from_uint8``): NumPy rounds, then the device receives.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from typing import Any, Callable, ContextManager, Literal, Sequence

from matgrad._errors import BackendError, TensorIndexError
from matgrad.backends.base import QUIET_UNARY, Axis, Backend, Index, Operand, unary_kernels

__all__ = ["ArrayApiBackend", "library_devices", "native_backend", "normalize_device"]

_NO_DLPACK = (AttributeError, BufferError, NotImplementedError, RuntimeError, TypeError, ValueError)


# ---------------------------------------------------------------------------------------------
# what the standard leaves to each library
# ---------------------------------------------------------------------------------------------


class _Library:
    """The generic adapter, for NumPy-backed namespaces (array-api-compat's numpy)."""

    host = True  # arrays live in host memory, so NumPy can read them through DLPack

    def __init__(self, name: str) -> None:
        import numpy

        self.name = name
        self.np = numpy
        self.xp = self.namespace()

    def namespace(self) -> Any:
        return importlib.import_module("array_api_compat.numpy")

    def default_device(self) -> str:
        return "cpu"

    def devices(self) -> list[str]:
        return ["cpu"]

    def normalize(self, device: str | None) -> str:
        if device is None or device.lower() in ("cpu", "cpu:0"):
            return "cpu"
        raise BackendError(f"the {self.name} backend has only the device 'cpu', not {device!r}")

    def native_device(self, device: str) -> Any:
        return device

    def storage(self, a: Any) -> int:
        base = a.base
        return id(a) if base is None else id(base)

    def transposed(self, a: Any) -> Any:
        """A row-major copy of ``a.T`` that never shares ``a``'s memory."""
        return a.T.copy()

    def to_numpy(self, a: Any) -> Any:
        return a

    def quiet(self) -> ContextManager[Any]:
        """A context where the library warns of no floating-point edge (log 0, 1/0, overflow)."""
        return self.np.errstate(all="ignore")


class _Torch(_Library):
    host = False

    def namespace(self) -> Any:
        import torch

        self.torch = torch
        return importlib.import_module("array_api_compat.torch")

    def devices(self) -> list[str]:
        torch = self.torch
        found = ["cpu"]
        if torch.cuda.is_available():
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append("mps")
        return found

    def normalize(self, device: str | None) -> str:
        torch = self.torch
        try:
            dev = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"torch: {device!r} is not a device ({exc}); use 'cpu', 'cuda' or 'cuda:1'") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                build = f"this PyTorch ({torch.__version__}) is a CPU build" if torch.version.cuda is None else ""
                raise BackendError(
                    f"torch: device {device!r} needs CUDA, and torch.cuda.is_available() is False"
                    f"{'; ' + build if build else ''}; use device='cpu'"
                )
            index = torch.cuda.current_device() if dev.index is None else dev.index
            if index >= torch.cuda.device_count():
                raise BackendError(f"torch: there is no {device!r}; {torch.cuda.device_count()} CUDA device(s) here")
            return f"cuda:{index}"
        if dev.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise BackendError(f"torch: device {device!r} is not available here; use device='cpu'")
            return "mps"
        if dev.type != "cpu":
            raise BackendError(f"torch: device {device!r} is not supported; use 'cpu' or 'cuda'")
        return "cpu"

    def native_device(self, device: str) -> Any:
        return self.torch.device(device)

    def storage(self, a: Any) -> int:
        return int(a.untyped_storage().data_ptr())

    def transposed(self, a: Any) -> Any:
        return a.T.clone(memory_format=self.torch.contiguous_format)

    def to_numpy(self, a: Any) -> Any:
        return a.detach().to("cpu", copy=True).numpy()

    def quiet(self) -> ContextManager[Any]:
        return contextlib.nullcontext()  # PyTorch never warns of IEEE edges


class _CuPy(_Library):
    host = False

    def namespace(self) -> Any:
        import cupy

        self.cupy = cupy
        return importlib.import_module("array_api_compat.cupy")

    def _count(self) -> int:
        try:
            return int(self.cupy.cuda.runtime.getDeviceCount())
        except Exception:  # CUDARuntimeError without a driver: no device
            return 0

    def default_device(self) -> str:
        return f"cuda:{self.cupy.cuda.runtime.getDevice()}" if self._count() else "cuda:0"

    def devices(self) -> list[str]:
        return [f"cuda:{i}" for i in range(self._count())]

    def normalize(self, device: str | None) -> str:
        count = self._count()
        if count == 0:
            raise BackendError("cupy: no CUDA device is available here (CuPy needs a GPU and its driver)")
        text = "cuda" if device is None else device.lower()
        if text in ("cuda", "gpu"):
            return self.default_device()
        index = text.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= count:
            raise BackendError(
                f"cupy: there is no device {device!r}; {count} CUDA device(s): cuda:0 .. cuda:{count - 1}"
            )
        return f"cuda:{int(index)}"

    def native_device(self, device: str) -> Any:
        return self.cupy.cuda.Device(int(device.split(":")[1]))

    def storage(self, a: Any) -> int:
        return int(a.data.mem.ptr)

    def transposed(self, a: Any) -> Any:
        return a.T.copy()  # CuPy's copy is C-ordered

    def to_numpy(self, a: Any) -> Any:
        return self.cupy.asnumpy(a)

    def quiet(self) -> ContextManager[Any]:
        return contextlib.nullcontext()


class _Strict(_Library):
    """array-api-strict: the standard and nothing else, with simulated devices."""

    def namespace(self) -> Any:
        return importlib.import_module("array_api_strict")

    def default_device(self) -> str:
        return "CPU_DEVICE"

    def devices(self) -> list[str]:
        # "no_float64" and "no_x64" simulate devices without float64: matgrad needs it
        names = [_strict_name(d) for d in self.xp.__array_namespace_info__().devices()]
        return [n for n in names if n not in ("no_float64", "no_x64")]

    def normalize(self, device: str | None) -> str:
        if device is None or device.lower() in ("cpu", "cpu:0"):
            return "CPU_DEVICE"
        known = self.devices()
        if device not in known:
            raise BackendError(f"array_api_strict: no device {device!r}; its devices are {', '.join(known)}")
        return device

    def native_device(self, device: str) -> Any:
        return self.xp.Device(device)

    def storage(self, a: Any) -> int:
        # The standard has no memory identity; array-api-strict wraps a NumPy array (private name).
        return super().storage(a._array)

    def transposed(self, a: Any) -> Any:
        return self.xp.asarray(a.T, copy=True)

    def to_numpy(self, a: Any) -> Any:
        cpu = self.xp.Device("CPU_DEVICE")
        return self.np.from_dlpack(a if a.device == cpu else a.to_device(cpu)).copy()


def _strict_name(device: Any) -> str:
    text = repr(device)  # array_api_strict.Device('device1')
    return text.split("'")[1] if "'" in text else text


_ADAPTERS: dict[str, type[_Library]] = {"torch": _Torch, "cupy": _CuPy, "array_api_strict": _Strict, "numpy": _Library}
_libraries: dict[str, _Library] = {}


def _library(name: str) -> _Library:
    lib = _libraries.get(name)
    if lib is None:
        try:
            lib = _libraries[name] = _ADAPTERS[name](name)
        except ImportError as exc:
            raise BackendError(f"the {name} backend cannot import {exc.name or name}: {exc}") from exc
    return lib


def library_devices(name: str) -> list[str]:
    """The devices ``name``'s library can use here (``[]`` for CuPy without a GPU)."""
    return _library(name).devices()


def normalize_device(name: str, device: str | None) -> str:
    """``device`` in the library's canonical words (``"cuda"`` -> ``"cuda:0"``), or a BackendError."""
    return _library(name).normalize(device)


def native_backend(data: Any) -> tuple[str, str] | None:
    """``(backend name, device)`` of an array of one of the libraries served here, else None."""
    module = type(data).__module__.split(".")[0]
    if module == "torch":
        return "torch", str(data.device) if data.device.type != "cuda" else f"cuda:{data.device.index or 0}"
    if module == "cupy":
        return "cupy", f"cuda:{data.device.id}"
    if module == "array_api_strict":
        return "array_api_strict", _strict_name(data.device)
    return None


# ---------------------------------------------------------------------------------------------
# the kernels
# ---------------------------------------------------------------------------------------------


class ArrayApiBackend(Backend):
    """Kernels over 2-D arrays of any Array API library, on one device.

    ``ArrayApiBackend("torch", "cuda:0")``; ``ArrayApiBackend("numpy")`` serves NumPy through
    the same code (not registered: the hand-tuned ``NumpyBackend`` is the numpy backend, see
    docs/backends.md for the measurement).
    """

    def __init__(self, library: str, device: str | None = None) -> None:
        from matgrad.backends.numpy import NumpyBackend

        lib = _library(library)
        self._lib = lib
        self.library = library
        self.name = library if library != "numpy" else "array_api_numpy"
        self.device = lib.normalize(device)
        self._dev = lib.native_device(self.device)
        self._host = NumpyBackend()  # random numbers and data entry: NumPy's, then moved here
        self._np = lib.np
        xp = self.xp = lib.xp
        self._dtypes = {"float32": xp.float32, "float64": xp.float64, "int64": xp.int64}
        # Each library's own dtype objects, as arrays report them (a.dtype), for cheap lookups.
        try:
            probes = {name: xp.zeros((1, 1), dtype=t, device=self._dev) for name, t in self._dtypes.items()}
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a device without float64 (MPS)
            raise BackendError(
                f"{library} on {self.device}: matgrad needs float32, float64 and int64 there ({exc})"
            ) from None
        self._names = {p.dtype: name for name, p in probes.items()}
        self.float_types = frozenset({probes["float32"].dtype, probes["float64"].dtype})
        self._int64 = probes["int64"].dtype
        self._bool = (probes["int64"] == 0).dtype
        self._quiet = lib.quiet
        self._zeros = {p.dtype: xp.zeros((), dtype=p.dtype, device=self._dev) for p in probes.values()}
        self._aranges: dict[int, Any] = {}
        self._consts: dict[tuple[str, Any], Any] = {}
        self._compare: dict[str, Callable[[Any, Any], Any]] = {
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
            "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b,
            "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b,
        }
        self._unary = unary_kernels(xp, self._sigmoid)
        self._quiet_ops = QUIET_UNARY

    def owns(self, data: Any) -> bool:
        """True when ``data`` is an array of this backend's library on its device."""
        if self.library == "numpy":
            return type(data).__module__ == "numpy"
        return native_backend(data) == (self.library, self.device)

    # -- helpers ------------------------------------------------------------------------------
    def _from_host(self, array: Any) -> Any:
        """A fresh host NumPy array on this device (on a CPU device it may keep the NumPy memory)."""
        return self.xp.asarray(array, device=self._dev)

    def _num(self, a: Any, v: float) -> Any:
        """A Python float that meets the matrix ``a``: an int when ``a`` is int64 (no mixed kinds)."""
        if a.dtype == self._int64 and float(v).is_integer():
            return int(v)
        return v

    def _const(self, v: float, dtype: Any) -> Any:
        """A 0-D array holding ``v`` in ``dtype`` (where a function, not an operator, needs an array).

        Cached (relu's 0.0 comes every step): kernels never write to their operands.
        """
        key = (float(v).hex(), dtype)
        out = self._consts.get(key)
        if out is None:
            if len(self._consts) > 256:
                self._consts.clear()
            if dtype == self._int64 and float(v).is_integer():
                v = int(v)
            out = self._consts[key] = self.xp.asarray(v, dtype=dtype, device=self._dev)
        return out

    def _operands(self, a: Operand, b: Operand) -> tuple[Any, Any]:
        if isinstance(b, (int, float)):
            return a, self._num(a, b)
        if isinstance(a, (int, float)):
            return self._num(b, a), b
        return a, b

    def _index(self, index: Any) -> Any:
        """A list of ints (or an index array already here) as a 1-D int64 array on this device."""
        if isinstance(index, list):
            return self.xp.asarray(index, dtype=self.xp.int64, device=self._dev)
        return index

    def _host_index(self, index: Any, size: int) -> Any:
        """Any index (slice, list, array here) as a host NumPy int64 array."""
        np = self._np
        if isinstance(index, slice):
            return np.arange(size)[index]
        if isinstance(index, list):
            return np.asarray(index, dtype=np.int64)
        return np.asarray(self._lib.to_numpy(index), dtype=np.int64).reshape(-1)

    def _arange(self, n: int) -> Any:
        out = self._aranges.get(n)
        if out is None:
            out = self._aranges[n] = self.xp.arange(n, dtype=self.xp.int64, device=self._dev)
        return out

    @staticmethod
    def _plain(index: Index, size: int) -> Index:
        """A slice every library takes (bounds inside the axis, a positive step), or the list it stands for."""
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            return list(range(start, stop, step)) if step < 0 else slice(start, stop, step)
        return index

    # -- construction and conversion ---------------------------------------------------------
    def from_rows(self, rows: Sequence[Sequence[Any]], dtype: str) -> Any:
        return self._from_host(self._host.from_rows(rows, dtype))

    def from_array(self, array_: Any, dtype: str) -> Any:
        return self._from_host(self._host.from_array(array_, dtype))  # a fresh host copy: no copy here

    def _moved(self, a: Any) -> Any:
        import array_api_compat

        return array_api_compat.to_device(a, self._dev)

    def from_backend(self, source: Backend, a: Any, dtype: str) -> Any:
        if source.name == "python":
            return self.from_rows(source.tolist(a), dtype)
        try:  # DLPack: no copy to the host when both sides are on one device (or both on the host)
            x = self.xp.from_dlpack(a)
        except _NO_DLPACK:
            return self.from_array(source.to_numpy(a), dtype)
        if native_backend(x) != (self.library, self.device) and self.library != "numpy":
            x = self._moved(x)
        return self.xp.astype(x, self._dtypes[dtype], copy=True)  # never sharing the source's memory

    def from_uint8(self, buffer: bytes, nrows: int, ncols: int, divisor: float, dtype: str) -> Any:
        return self._from_host(self._host.from_uint8(buffer, nrows, ncols, divisor, dtype))

    def full(self, nrows: int, ncols: int, value: float, dtype: str) -> Any:
        dt = self._dtypes[dtype]
        if dtype == "int64":
            value = int(value)
        return self.xp.full((nrows, ncols), value, dtype=dt, device=self._dev)

    def eye(self, nrows: int, ncols: int, dtype: str) -> Any:
        return self.xp.eye(nrows, ncols, dtype=self._dtypes[dtype], device=self._dev)

    def seed(self, seed: int) -> None:
        self._host.seed(seed)

    def uniform(self, nrows: int, ncols: int, low: float, high: float, dtype: str) -> Any:
        return self._from_host(self._host.uniform(nrows, ncols, low, high, dtype))

    def normal(self, nrows: int, ncols: int, mean: float, std: float, dtype: str) -> Any:
        return self._from_host(self._host.normal(nrows, ncols, mean, std, dtype))

    def permutation(self, n: int) -> list[int]:
        return self._host.permutation(n)

    def tolist(self, a: Any) -> list[list[Any]]:
        rows: list[list[Any]] = self._lib.to_numpy(a).tolist()
        return rows

    def to_numpy(self, a: Any) -> Any:
        return self._lib.to_numpy(a)

    def dtype(self, a: Any) -> str:
        name = self._names.get(a.dtype)
        return name if name is not None else str(a.dtype)

    def astype(self, a: Any, dtype: str) -> Any:
        return self.xp.astype(a, self._dtypes[dtype])

    def copy(self, a: Any) -> Any:
        return self.xp.asarray(a, copy=True)

    def storage(self, a: Any) -> int:
        return self._lib.storage(a)

    def assign(self, a: Any, b: Operand) -> None:
        a[...] = self._num(a, b) if isinstance(b, (int, float)) else b

    def axpy(self, a: Any, b: Any, alpha: float) -> None:
        if alpha == 1.0:
            a += b
        elif alpha == -1.0:
            a -= b
        else:
            a += b * self._num(b, alpha)

    # -- element-wise ------------------------------------------------------------------------
    # Operators rather than functions: every library takes a Python number on either side of one.
    def add(self, a: Operand, b: Operand) -> Any:
        a, b = self._operands(a, b)
        return a + b

    def sub(self, a: Operand, b: Operand) -> Any:
        a, b = self._operands(a, b)
        return a - b

    def mul(self, a: Operand, b: Operand) -> Any:
        a, b = self._operands(a, b)
        return a * b

    def div(self, a: Operand, b: Operand) -> Any:
        with self._quiet():
            return a / b

    def pow(self, a: Operand, b: Operand) -> Any:
        a, b = self._operands(a, b)
        with self._quiet():
            return a**b

    def _arrays(self, a: Any, b: Any) -> tuple[Any, Any]:
        """Both operands as arrays: a number becomes a 0-D array of the other's dtype."""
        if isinstance(b, (int, float)):
            return a, self._const(b, a.dtype)
        if isinstance(a, (int, float)):
            return self._const(a, b.dtype), b
        return a, b

    def maximum(self, a: Operand, b: Operand) -> Any:
        return self.xp.maximum(*self._arrays(a, b))

    def minimum(self, a: Operand, b: Operand) -> Any:
        return self.xp.minimum(*self._arrays(a, b))

    def compare(self, op: str, a: Operand, b: Operand, out_dtype: str | None = None) -> Any:
        left = isinstance(a, (int, float))
        matrix: Any = b if left else a
        number = a if left else b
        dt = matrix.dtype if out_dtype is None else self._dtypes[out_dtype]
        if isinstance(number, float) and matrix.dtype == self._int64 and not number.is_integer():
            matrix = self.xp.astype(matrix, self.xp.float64)  # 3 < 3.5 without mixing kinds
            a, b = (number, matrix) if left else (matrix, number)
        else:
            a, b = self._operands(a, b)
        return self.xp.astype(self._compare[op](a, b), dt)

    def _truth(self, cond: Any) -> Any:
        return cond if cond.dtype == self._bool else cond != 0

    def where(self, cond: Any, a: Operand, b: Operand) -> Any:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            a, b = self._const(a, cond.dtype), self._const(b, cond.dtype)
        else:
            a, b = self._arrays(a, b)
        return self.xp.where(self._truth(cond), a, b)

    def keep(self, a: Any, mask: Any) -> Any:
        return self.xp.where(mask != 0, a, self._zeros[a.dtype])

    def _sigmoid(self, a: Any) -> Any:
        # exp(-|x|) never overflows; 1 / (1 + exp(-x)) would at x = -1000.
        xp = self.xp
        e = xp.exp(-xp.abs(a))
        r = 1.0 / (1.0 + e)
        return xp.where(a >= 0, r, e * r)

    def unary(self, op: str, a: Any) -> Any:
        if op in self._quiet_ops:
            with self._quiet():
                return self._unary[op](a)
        return self._unary[op](a)

    def all_finite(self, a: Any) -> bool:
        return bool(self.xp.all(self.xp.isfinite(a)))

    # -- linear algebra and layout ------------------------------------------------------------
    def matmul(self, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False, bias: Any | None = None) -> Any:
        out = self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if bias is not None:
            out += bias
        return out

    def transpose(self, a: Any) -> Any:
        return self._lib.transposed(a)

    def reshape(self, a: Any, nrows: int, ncols: int) -> Any:
        return self.xp.reshape(a, (nrows, ncols))

    def cat(self, parts: Sequence[Any], axis: Literal[0, 1]) -> Any:
        return self.xp.concat(list(parts), axis=axis)

    # -- images: sliding windows (convolution and pooling) ------------------------------------
    # The numpy backend's scheme (one strided slice per kernel tap), which needs only slicing,
    # permute_dims, reshape and assignment into slices from the standard; every array is made
    # on this device. ``window`` is a ``Window`` (base.py).
    def _taps(self, w: Any) -> list[tuple[int, int, slice, slice]]:
        """Each kernel tap ``(i, j)``, with the rows and columns of the padded images it reads at every position."""
        return [
            (
                i,
                j,
                slice(i * w.dh, i * w.dh + w.sh * (w.out_h - 1) + 1, w.sh),
                slice(j * w.dw, j * w.dw + w.sw * (w.out_w - 1) + 1, w.sw),
            )
            for i in range(w.kh)
            for j in range(w.kw)
        ]

    def _padded(self, a: Any, w: Any, value: float) -> Any:
        """``a`` as ``(B, C, H + 2 ph, W + 2 pw)`` with ``value`` in the border."""
        xp = self.xp
        x = xp.reshape(a, (a.shape[0], w.channels, w.height, w.width))
        if w.ph == 0 and w.pw == 0:
            return x
        shape = (a.shape[0], w.channels, w.height + 2 * w.ph, w.width + 2 * w.pw)
        out = xp.full(shape, value, dtype=a.dtype, device=self._dev)
        out[:, :, w.ph : w.ph + w.height, w.pw : w.pw + w.width] = x
        return out

    def _unpadded(self, x: Any, w: Any) -> Any:
        """``(B, C, Hp, Wp)`` padded images back to ``(B, C*H*W)`` rows (the border dropped)."""
        if w.ph or w.pw:
            x = x[:, :, w.ph : w.ph + w.height, w.pw : w.pw + w.width]
        return self.xp.reshape(x, (x.shape[0], w.channels * w.height * w.width))

    def unfold(self, a: Any, window: Any, pad_value: float = 0.0) -> Any:
        xp, w = self.xp, window
        n = a.shape[0]
        x = self._padded(a, w, pad_value)
        out = xp.empty((n, w.out_h, w.out_w, w.channels, w.kh, w.kw), dtype=a.dtype, device=self._dev)
        for i, j, rows, cols in self._taps(w):
            out[:, :, :, :, i, j] = xp.permute_dims(x[:, :, rows, cols], (0, 2, 3, 1))
        return xp.reshape(out, (n * w.out_h * w.out_w, w.channels * w.kh * w.kw))

    def fold(self, a: Any, window: Any) -> Any:
        xp, w = self.xp, window
        n = a.shape[0] // (w.out_h * w.out_w)
        patches = xp.reshape(a, (n, w.out_h, w.out_w, w.channels, w.kh, w.kw))
        out = xp.zeros((n, w.height + 2 * w.ph, w.width + 2 * w.pw, w.channels), dtype=a.dtype, device=self._dev)
        for i, j, rows, cols in self._taps(w):  # one tap never visits a position twice: += is safe
            out[:, rows, cols, :] += patches[:, :, :, :, i, j]
        if w.ph or w.pw:
            out = out[:, w.ph : w.ph + w.height, w.pw : w.pw + w.width, :]
        return xp.reshape(xp.permute_dims(out, (0, 3, 1, 2)), (n, w.channels * w.height * w.width))

    def block_transpose(self, a: Any, p: int, q: int) -> Any:
        xp = self.xp
        n = a.shape[0] * a.shape[1] // (p * q)
        blocks = xp.permute_dims(xp.reshape(a, (n, p, q)), (0, 2, 1))
        return xp.reshape(blocks, (n, q * p))

    def max_pool(self, a: Any, window: Any) -> Any:
        xp, w = self.xp, window
        x = self._padded(a, w, -math.inf)
        out = None
        for _, _, rows, cols in self._taps(w):
            tap = x[:, :, rows, cols]
            out = xp.asarray(tap, copy=True) if out is None else xp.maximum(out, tap)
        return xp.reshape(out, (a.shape[0], w.channels * w.out_h * w.out_w))

    def max_pool_adjoint(self, a: Any, out: Any, g: Any, window: Any) -> Any:
        xp, w = self.xp, window
        shape = (a.shape[0], w.channels, w.out_h, w.out_w)
        x, top, share = self._padded(a, w, -math.inf), xp.reshape(out, shape), xp.reshape(g, shape)
        hits, count = [], xp.zeros(shape, dtype=a.dtype, device=self._dev)
        for _, _, rows, cols in self._taps(w):
            hit = x[:, :, rows, cols] == top
            hits.append(hit)
            count += xp.astype(hit, a.dtype)
        share = share / xp.where(count > 0, count, self._const(1.0, a.dtype))  # a NaN window has no maximum
        grad = xp.zeros(x.shape, dtype=a.dtype, device=self._dev)
        for hit, (_, _, rows, cols) in zip(hits, self._taps(w)):
            grad[:, :, rows, cols] += xp.where(hit, share, self._zeros[a.dtype])
        return self._unpadded(grad, w)

    # -- fused softmax cross-entropy ---------------------------------------------------------
    def softmax_xent(self, x: Any, targets: Any) -> tuple[Any, Any]:
        xp = self.xp
        if bool(xp.any((targets < 0) | (targets >= x.shape[1]))):
            raise TensorIndexError("a class index is out of range")
        z = x - xp.max(x, axis=1, keepdims=True)
        picked = xp.take_along_axis(z, targets, axis=1)
        with self._quiet():
            e = xp.exp(z)
            total = xp.sum(e, axis=1, keepdims=True)
            e /= total
            losses = xp.log(total)
        losses -= picked
        return losses, e

    def softmax_xent_grad(self, probs: Any, targets: Any, scale: Operand) -> Any:
        # probs * scale, then scale subtracted at each target: NumPy's order of rounding
        hit = self._arange(probs.shape[1])[None, :] == targets
        s = self._const(scale, probs.dtype) if isinstance(scale, (int, float)) else scale
        return probs * s - self.xp.where(hit, s, self._zeros[probs.dtype])

    # -- reductions ---------------------------------------------------------------------------
    def sum(self, a: Any, axis: Axis) -> Any:
        return self.xp.sum(a, axis=axis, keepdims=True)

    def max(self, a: Any, axis: Axis) -> Any:
        return self.xp.max(a, axis=axis, keepdims=True)

    def min(self, a: Any, axis: Axis) -> Any:
        return self.xp.min(a, axis=axis, keepdims=True)

    def _arg(self, index: Any, axis: Axis) -> Any:
        index = self.xp.astype(index, self.xp.int64, copy=False)
        return self.xp.reshape(index, (1, 1) if axis is None else (1, -1) if axis == 0 else (-1, 1))

    def argmax(self, a: Any, axis: Axis) -> Any:
        flat = self.xp.reshape(a, (-1,)) if axis is None else a
        return self._arg(self.xp.argmax(flat, axis=None if axis is None else axis), axis)

    def argmin(self, a: Any, axis: Axis) -> Any:
        flat = self.xp.reshape(a, (-1,)) if axis is None else a
        return self._arg(self.xp.argmin(flat, axis=None if axis is None else axis), axis)

    # -- indexing -----------------------------------------------------------------------------
    def take(self, a: Any, rows: Index, cols: Index) -> Any:
        xp = self.xp
        rows, cols = self._plain(rows, a.shape[0]), self._plain(cols, a.shape[1])
        out = a[rows, :] if isinstance(rows, slice) else xp.take(a, self._index(rows), axis=0)
        if not isinstance(cols, slice):
            out = xp.take(out, self._index(cols), axis=1)
        elif cols != slice(0, a.shape[1], 1):
            out = out[:, cols]
        # basic slicing gives a view: copy, so the result owns its storage
        return xp.asarray(out, copy=True) if isinstance(rows, slice) and isinstance(cols, slice) else out

    def _scatter(self, g: Any, ids: Any, size: int, axis: int, repeats: bool = True) -> Any:
        """``out`` of ``size`` along ``axis`` with ``out[i] = sum of g[p] where ids[p] == i``, p in order.

        Gathers only (the standard has no scatter-add): for the j-th repeat of every position at
        once, one ``take`` from ``g`` padded with a zero slice (where a position has fewer), so
        each output is ``((0 + g[p1]) + g[p2]) + ...`` exactly as NumPy's ``add.at`` sums it
        (``repeats=False``: the positions of a slice, assigned, so ``g[p1]`` alone, as NumPy).
        """
        np, xp = self._np, self.xp
        k = ids.shape[0]
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        targets = np.arange(size)
        start = np.searchsorted(ordered, targets, "left")
        count = np.searchsorted(ordered, targets, "right") - start
        shape = (1, g.shape[1]) if axis == 0 else (g.shape[0], 1)
        padded = xp.concat([g, xp.zeros(shape, dtype=g.dtype, device=self._dev)], axis=axis)
        out = None
        for j in range(max(int(count.max(initial=0)), 1)):
            source = np.full(size, k, dtype=np.int64)
            has = count > j
            source[has] = order[start[has] + j]
            part = xp.take(padded, self._from_host(source), axis=axis)
            if out is None:
                out = (
                    part + self._num(part, 0.0) if repeats else part
                )  # 0 + x: a lone -0.0 becomes +0.0, as add.at leaves it
            else:
                out += part
        return out

    def take_adjoint(self, g: Any, nrows: int, ncols: int, rows: Index, cols: Index) -> Any:
        xp = self.xp
        sliced = isinstance(rows, slice) and isinstance(cols, slice)  # NumPy assigns: no 0 + x
        rows, cols = self._plain(rows, nrows), self._plain(cols, ncols)
        whole_rows, whole_cols = slice(0, nrows, 1), slice(0, ncols, 1)
        if not isinstance(rows, slice) and not isinstance(cols, slice):  # one pass, in add.at's order
            r, c = self._host_index(rows, nrows), self._host_index(cols, ncols)
            flat = (r[:, None] * ncols + c[None, :]).reshape(-1)
            summed = self._scatter(xp.reshape(g, (-1, 1)), flat, nrows * ncols, 0)
            return xp.reshape(summed, (nrows, ncols))
        if not isinstance(cols, slice):
            g = self._scatter(g, self._host_index(cols, ncols), ncols, 1, not sliced)
            cols = whole_cols
        if not isinstance(rows, slice):
            g = self._scatter(g, self._host_index(rows, nrows), nrows, 0, not sliced)
            rows = whole_rows
        if rows == whole_rows and cols == whole_cols:
            return g
        out = xp.zeros((nrows, ncols), dtype=g.dtype, device=self._dev)
        out[rows, cols] = g  # slices never repeat a position
        return out

    def indices(self, a: Any) -> Any:
        return self.xp.reshape(a, (-1,))

    def bad_index(self, index: Any, bound: int) -> int | None:
        index = self._index(index)
        if not bool(self.xp.any((index < 0) | (index >= bound))):
            return None
        host = self._host_index(index, bound)
        return int(host[(host < 0) | (host >= bound)][0])

    def pick(self, a: Any, rows: Any, cols: Any) -> Any:
        xp = self.xp
        cols = self._index(cols)
        if rows is None:  # one pick per row: a[i, cols[i]]
            return xp.take_along_axis(a, xp.reshape(cols, (-1, 1)), axis=1)
        flat = self._index(rows) * a.shape[1] + cols
        return xp.reshape(xp.take(xp.reshape(a, (-1,)), flat, axis=0), (-1, 1))

    def pick_adjoint(self, g: Any, nrows: int, ncols: int, rows: Any, cols: Any) -> Any:
        xp = self.xp
        if rows is None:  # each row hit once: select g where the column is the row's pick
            hit = self._arange(ncols)[None, :] == xp.reshape(self._index(cols), (-1, 1))
            return xp.where(hit, g, self._zeros[g.dtype])
        flat = self._host_index(rows, nrows) * ncols + self._host_index(cols, ncols)
        return xp.reshape(self._scatter(g, flat, nrows * ncols, 0), (nrows, ncols))
