"""The IDX format (MNIST's): a 4-byte magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32
dimensions, then the elements, row-major and big-endian.

``read_idx`` validates everything a damaged or hostile file can get wrong, refuses a declared
size that the file cannot hold or that would not fit in memory before inflating anything, and
allocates the data once, at its declared size; ``write_idx`` writes atomically, optionally gzipped
with reproducible bytes. Standard library only; ``IdxArray.numpy()`` imports NumPy lazily.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Iterator, Protocol, Sequence, Union

from matgrad._errors import ArgumentError, ArgumentTypeError, DataError
from matgrad._files import atomic_write, open_regular
from matgrad._memory import check_memory

__all__ = ["IDX_TYPES", "IdxArray", "read_idx", "write_idx"]

PathLike = Union[str, "os.PathLike[str]"]

GZIP_MAGIC = b"\x1f\x8b"
MAX_DEFLATE_RATIO = 1032
"""Deflate's best case: a 258-byte match coded in 2 bits. No gzip file inflates to more than
this many times its own size, so a header declaring more is refused before inflating."""
_CHUNK = 1 << 20
_I32 = "i" if array("i").itemsize == 4 else "l"


@dataclass(frozen=True)
class _Type:
    code: int
    name: str
    idx_name: str
    itemsize: int
    typecode: str  # array module


_TYPES = (
    _Type(0x08, "uint8", "ubyte", 1, "B"),
    _Type(0x09, "int8", "byte", 1, "b"),
    _Type(0x0B, "int16", "short", 2, "h"),
    _Type(0x0C, "int32", "int", 4, _I32),
    _Type(0x0D, "float32", "float", 4, "f"),
    _Type(0x0E, "float64", "double", 8, "d"),
)
_BY_CODE = {t.code: t for t in _TYPES}
_BY_NAME = {**{t.idx_name: t for t in _TYPES}, **{t.name: t for t in _TYPES}}

IDX_TYPES: dict[int, str] = {t.code: t.name for t in _TYPES}
"""IDX type code -> dtype name: ``{0x08: "uint8", 0x09: "int8", 0x0B: "int16", ...}``."""

_NUMPY_KINDS = {
    ("u", 1): "uint8",
    ("i", 1): "int8",
    ("i", 2): "int16",
    ("i", 4): "int32",
    ("f", 4): "float32",
    ("f", 8): "float64",
}

_KNOWN = ", ".join(f"0x{t.code:02X} {t.idx_name}" for t in _TYPES)


def _type_named(dtype: str) -> _Type:
    t = _BY_NAME.get(dtype) if isinstance(dtype, str) else None
    if t is None:
        names = ", ".join(t.name for t in _TYPES)
        raise ArgumentError(
            f"IDX dtype must be one of {names} (or ubyte, byte, short, int, float, double), got {dtype!r}"
        )
    return t


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class IdxArray:
    """An n-d array as an IDX file holds it: ``shape``, ``dtype`` name, and big-endian ``data``."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        t = _type_named(self.dtype)
        object.__setattr__(self, "dtype", t.name)
        shape = tuple(self.shape)
        if not 1 <= len(shape) <= 255:
            raise ArgumentError(f"IdxArray: an IDX array has 1 to 255 dimensions, got shape {shape}")
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, int) or not 0 < d < 2**32:
                raise ArgumentError(f"IdxArray: every dimension must be an int in 1..2**32-1, got shape {shape}")
        object.__setattr__(self, "shape", shape)
        data = bytes(self.data)
        expected = math.prod(shape) * t.itemsize
        if len(data) != expected:
            raise ArgumentError(
                f"IdxArray: shape {_dims(shape)} of {t.name} needs {expected} bytes of data, got {len(data)}"
            )
        object.__setattr__(self, "data", data)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _type_named(self.dtype).itemsize

    @property
    def type_code(self) -> int:
        """The IDX type code (0x08 for uint8, ...)."""
        return _type_named(self.dtype).code

    def header(self) -> bytes:
        """The IDX header: magic ``00 00 <type> <ndim>`` then each dimension as big-endian uint32."""
        out = bytes((0, 0, self.type_code, self.ndim))
        return out + b"".join(d.to_bytes(4, "big") for d in self.shape)

    def numpy(self) -> Any:
        """A writable, native-endian NumPy array of ``shape`` (a copy; needs NumPy)."""
        import numpy as np

        t = _type_named(self.dtype)
        big = np.dtype(t.name).newbyteorder(">")
        return np.frombuffer(self.data, dtype=big).reshape(self.shape).astype(t.name)

    def tolist(self) -> list[Any]:
        """Nested Python lists of ints (integer types) or floats."""
        t = _type_named(self.dtype)
        values = array(t.typecode)
        values.frombytes(self.data)
        if t.itemsize > 1 and sys.byteorder == "little":
            values.byteswap()
        nested: list[Any] = values.tolist()
        for d in reversed(self.shape[1:]):
            nested = [nested[i : i + d] for i in range(0, len(nested), d)]
        return nested


# -- reading ----------------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _read_upto(stream: _Readable, limit: int) -> bytes:
    """Up to ``limit`` bytes, read in chunks: a huge ``limit`` never becomes one huge allocation."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_exactly(stream: _Readable, n: int) -> bytes:
    """Up to ``n`` bytes, read in chunks into one buffer of ``n`` bytes allocated up front.

    ``stream.read(n)`` on a GzipFile inflates everything into a temporary and copies it, and
    joining chunks does the same: twice the data at the peak. A BytesIO first extended to its
    final size fills in place, and CPython's ``getvalue()`` hands over that very buffer.
    """
    buffer = io.BytesIO()
    if n:
        buffer.seek(n - 1)
        buffer.write(b"\0")  # one allocation of exactly n bytes
        buffer.seek(0)
    got = 0
    while got < n:
        chunk = stream.read(min(n - got, _CHUNK))
        if not chunk:
            buffer.truncate(got)
            break
        buffer.write(chunk)
        got += len(chunk)
    return buffer.getvalue()


def _not_idx_hint(name: str, first: bytes) -> str:
    if first[:2] == GZIP_MAGIC:
        return ""
    hints = []
    if name.endswith(".gz"):
        hints.append(
            f"the name ends in .gz but the file is not gzip-compressed (it starts with {first[:2].hex(' ')}, not 1f 8b)"
        )
    if first.lstrip()[:1] == b"<":
        hints.append("it looks like an HTML or XML page, e.g. an error page saved in place of the data")
    return "; " + "; ".join(hints) if hints else ""


def _parse_header(stream: _Readable, name: str, where: str) -> tuple[_Type, tuple[int, ...]]:
    """The type and shape an IDX stream's header declares; leaves ``stream`` at the data."""
    magic = _read_upto(stream, 4)
    if len(magic) == 0:
        raise DataError(
            f"{name}: {where} is empty; expected an IDX file starting with the magic number 00 00 <type> <ndim>"
        )
    if len(magic) < 4:
        raise DataError(f"{name}: truncated header: {where} has {len(magic)} bytes, the IDX magic number alone needs 4")
    if magic[:2] != b"\x00\x00":
        raise DataError(
            f"{name}: not an IDX file: the magic number is {magic.hex(' ')}, expected 00 00 <type> <ndim>"
            + _not_idx_hint(name, magic)
        )
    t = _BY_CODE.get(magic[2])
    if t is None:
        raise DataError(
            f"{name}: unknown IDX type code 0x{magic[2]:02X} in the magic number {magic.hex(' ')}; known: {_KNOWN}"
        )
    ndim = magic[3]
    if ndim == 0:
        raise DataError(
            f"{name}: the magic number {magic.hex(' ')} declares 0 dimensions; an IDX array needs at least 1"
        )
    dim_bytes = _read_upto(stream, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(
            f"{name}: truncated header: the magic number declares {ndim} dimensions ({4 * ndim} bytes), "
            f"{where} has only {len(dim_bytes)} bytes after it"
        )
    shape = tuple(int.from_bytes(dim_bytes[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    for i, d in enumerate(shape):
        if d == 0:
            raise DataError(f"{name}: dimension {i} of {ndim} is 0 (shape {_dims(shape)}); the file holds no data")
    return t, shape


def _check_file_size(name: str, t: _Type, shape: tuple[int, ...], file_size: int, gz: bool) -> tuple[int, str]:
    """The declared data size and its description, once the file is known able to hold it: a raw
    file must be exactly header + data long, and no gzip file inflates to more than
    ``MAX_DEFLATE_RATIO`` times its own size."""
    expected = math.prod(shape) * t.itemsize
    declared = f"header declares {_dims(shape)} {t.name} = {expected} bytes of data"
    header_size = 4 + 4 * len(shape)
    if not gz:
        have = file_size - header_size
        if have < expected:
            raise DataError(f"{name}: truncated: {declared}, file has {have}")
        if have > expected:
            raise DataError(f"{name}: {have - expected} extra bytes: {declared}, file has {have}")
    elif expected + header_size > MAX_DEFLATE_RATIO * file_size:
        raise DataError(
            f"{name}: truncated: {declared}, but a {file_size}-byte gzip file holds at most "
            f"{MAX_DEFLATE_RATIO * file_size} (deflate expands at most {MAX_DEFLATE_RATIO}:1)"
        )
    return expected, declared


def _parse(stream: _Readable, name: str, file_size: int, gz: bool, max_bytes: int | None) -> IdxArray:
    """Parse an IDX stream, the file (raw or gzipped) being ``file_size`` bytes long.

    Every size check comes before the one allocation of the data, which is exactly the declared
    size: a raw file must be header + data bytes long; a gzip file cannot hold more than 1032
    times its own size (deflate's limit); and the data must fit ``max_bytes``, else the memory
    budget. Then one byte more is read, to catch trailing data.
    """
    where = "the decompressed data" if gz else "the file"
    t, shape = _parse_header(stream, name, where)
    expected, declared = _check_file_size(name, t, shape, file_size, gz)
    if max_bytes is not None:
        if expected > max_bytes:
            raise DataError(
                f"{name}: {declared}, over the max_bytes={max_bytes} this read allows "
                "(a corrupted header, or pass a larger max_bytes)"
            )
    else:
        check_memory(
            expected,
            f"{name}: the {declared}, which",
            "if the file is genuine, free memory or read it on a machine with more (pass max_bytes= to set a cap)",
            DataError,
        )
    data = _read_exactly(stream, expected)
    if len(data) < expected:
        raise DataError(f"{name}: truncated: {declared}, {where} has {len(data)}")
    if stream.read(1):
        if gz:
            raise DataError(f"{name}: extra bytes: {declared}, but {where} continues past them")
        raise DataError(f"{name}: extra bytes: {declared}, but {where} grew past them while being read")
    return IdxArray(shape, t.name, data)


@contextlib.contextmanager
def _gzip_errors(name: str) -> Iterator[None]:
    """Turn the gzip module's errors into a DataError naming ``name``."""
    try:
        yield
    except EOFError:
        raise DataError(
            f"{name}: truncated gzip stream: the compressed file ends before its end-of-stream marker"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{name}: corrupt gzip data: {exc}") from None


def _check_path(op: str, path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise ArgumentTypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _check_max_bytes(max_bytes: Any) -> int | None:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise ArgumentTypeError(f"read_idx: max_bytes must be an int or None, got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ArgumentError(f"read_idx: max_bytes must be >= 0, got {max_bytes}")
    return max_bytes


def read_idx(path: PathLike, *, max_bytes: int | None = None) -> IdxArray:
    """Read an IDX file, raw or gzip-compressed (detected by its 1f 8b magic, not its name).

    Raises ``DataError`` naming the file and the problem: a missing file, a directory, FIFO or
    device (refused before it is opened), a bad magic number, an unknown type code, a truncated
    header, a zero dimension, truncated data, extra trailing bytes, a corrupt or truncated gzip
    stream, or a declared size over ``max_bytes`` (default: the memory this process can still
    get, see ``MATGRAD_MEMORY_LIMIT``). Every size is checked before the data is read, and the
    data is allocated once, at its declared size.
    """
    name = _check_path("read_idx", path)
    cap = _check_max_bytes(max_bytes)
    with open_regular(name, DataError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if f.read(2) == GZIP_MAGIC:
                f.seek(0)
                with _gzip_errors(name), gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    return _parse(gz, name, size, True, cap)
            f.seek(0)
            return _parse(f, name, size, False, cap)
        except OSError as exc:
            raise DataError(f"{name}: read error: {exc.strerror or exc}") from None


def read_idx_header(path: PathLike) -> tuple[str, tuple[int, ...]]:
    """``(dtype, shape)`` from an IDX file's header alone, checked as ``read_idx`` checks it
    (the header, and whether the file's size can hold the data it declares)."""
    name = _check_path("read_idx_header", path)
    with open_regular(name, DataError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            gz = f.read(2) == GZIP_MAGIC
            f.seek(0)
            if gz:
                with _gzip_errors(name), gzip.GzipFile(fileobj=f, mode="rb") as stream:
                    t, shape = _parse_header(stream, name, "the decompressed data")
            else:
                t, shape = _parse_header(f, name, "the file")
        except OSError as exc:
            raise DataError(f"{name}: read error: {exc.strerror or exc}") from None
    _check_file_size(name, t, shape, size, gz)
    return t.name, shape


# -- writing ----------------------------------------------------------------------------------


def _from_nested(values: Any, dtype: str | None) -> IdxArray:
    shape: list[int] = []
    x = values
    while isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ArgumentError(f"write_idx: an empty list at depth {len(shape)}; IDX arrays cannot be empty")
        shape.append(len(x))
        x = x[0]
    if not shape:
        raise ArgumentError(f"write_idx: expected nested lists of numbers, got {type(values).__name__}")
    level: list[Any] = [values]
    for depth, d in enumerate(shape):
        for item in level:
            if not isinstance(item, (list, tuple)) or len(item) != d:
                got = f"length {len(item)}" if isinstance(item, (list, tuple)) else type(item).__name__
                raise ArgumentError(f"write_idx: ragged nested lists: expected length {d} at depth {depth}, got {got}")
        level = list(chain.from_iterable(level))
    if dtype is None:
        dtype = "float64" if any(isinstance(v, float) for v in level) else "uint8"
    t = _type_named(dtype)
    try:
        packed = array(t.typecode, level)
    except (TypeError, OverflowError) as exc:
        raise ArgumentError(f"write_idx: values do not fit dtype {t.name}: {exc}") from None
    if t.itemsize > 1 and sys.byteorder == "little":
        packed.byteswap()
    return IdxArray(tuple(shape), t.name, packed.tobytes())


def _from_numpy(a: Any, dtype: str | None) -> IdxArray:
    if dtype is None:
        name = _NUMPY_KINDS.get((a.dtype.kind, a.dtype.itemsize))
        if name is None:
            raise ArgumentError(
                f"write_idx: IDX has no type for NumPy dtype {a.dtype}; convert first, e.g. .astype('int32')"
            )
        t = _BY_NAME[name]
    else:
        t = _type_named(dtype)
    if a.ndim == 0:
        raise ArgumentError("write_idx: a 0-d array; IDX arrays have at least 1 dimension")
    big = f">{t.name[0]}{t.itemsize}"  # ">u1", ">i4", ">f8", ...
    return IdxArray(tuple(int(d) for d in a.shape), t.name, a.astype(big).tobytes(order="C"))


def _as_idx(array_like: Any, dtype: str | None) -> IdxArray:
    if isinstance(array_like, IdxArray):
        return array_like
    if (
        isinstance(array_like, tuple)
        and len(array_like) == 3
        and isinstance(array_like[2], (bytes, bytearray, memoryview))
    ):
        shape, tname, data = array_like
        return IdxArray(tuple(shape), tname, bytes(data))
    if hasattr(array_like, "dtype") and hasattr(array_like, "shape") and hasattr(array_like, "tobytes"):
        return _from_numpy(array_like, dtype)
    return _from_nested(array_like, dtype)


def write_idx(path: PathLike, array_like: Any, *, dtype: str | None = None, compress: bool | None = None) -> None:
    """Write an IDX file atomically (temporary file + rename).

    ``array_like`` is an ``IdxArray``, a ``(shape, dtype, big_endian_bytes)`` tuple, a NumPy array
    or nested lists (``dtype`` defaults to uint8 for ints, float64 when any value is a float).
    ``compress=None`` gzips when ``path`` ends in ``.gz``; gzip output has mtime 0 and no file
    name, so equal arrays give equal bytes.
    """
    arr = _as_idx(array_like, dtype)
    name = _check_path("write_idx", path)
    gz = name.endswith(".gz") if compress is None else compress
    with atomic_write(name, "write_idx") as f:
        if gz:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as out:
                out.write(arr.header())
                out.write(arr.data)
        else:
            f.write(arr.header())
            f.write(arr.data)
