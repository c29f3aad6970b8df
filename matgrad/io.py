"""Checkpoints in the safetensors format: ``save`` a module or a state dict, ``load`` it back.

A file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``
padded with spaces so the data starts 8-byte aligned, then each tensor's little-endian row-major
bytes, back to back. ``save`` writes what ``safetensors.numpy.save_file`` writes for the same
arrays, byte for byte: ``__metadata__`` first (its keys sorted, where the reference's order is
arbitrary), then the tensors sorted by dtype (I64, F64, F32) and name.

Standard library only (``json``, ``array``, ``struct``); NumPy, when tensors live on the numpy
backend, only skips the conversion through Python lists. Nothing is ever unpickled: a file holds
numbers and JSON, and ``load`` validates the whole header before it reads any tensor data.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from array import array
from collections import Counter
from io import BufferedReader
from itertools import chain
from typing import Any, Iterable, Mapping, NamedTuple, Union

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, CheckpointError, DTypeError
from matgrad._files import atomic_write, open_regular
from matgrad._memory import check_memory, element_bytes
from matgrad.backends.base import FLOAT_DTYPES, Backend
from matgrad.backends.python import Matrix, PythonBackend
from matgrad.tensor import Tensor2D, dtype_name

__all__ = ["TensorInfo", "load", "load_header", "load_metadata", "save"]

PathLike = Union[str, "os.PathLike[str]"]
Chunk = Union[bytes, bytearray, memoryview, "array[Any]"]

MAX_HEADER_BYTES = 10_000_000
"""The longest JSON header ``load`` reads, 10 MB (a 50,000-tensor model needs about 7 MB).

The reference allows 100 MB, but parsed JSON takes up to 25 times its size in Python objects:
a hostile 100 MB header costs 2.5 GB of memory. Raise this for a file that truly needs more.
"""

_BIG_ENDIAN = sys.byteorder == "big"
_FIELDS = ("dtype", "shape", "data_offsets")


class _Layout(NamedTuple):
    size: int  # bytes per element in the file
    code: str  # array / struct type code of the decoded values (BF16 is widened to F32 first)
    np: str  # the same as a NumPy dtype
    dtype: str  # the matgrad dtype it loads as (floats before load's ``dtype=``)


_LAYOUTS = {
    "F64": _Layout(8, "d", "<f8", "float64"),
    "F32": _Layout(4, "f", "<f4", "float32"),
    "F16": _Layout(2, "e", "<f2", "float32"),
    "BF16": _Layout(2, "f", "<f4", "float32"),
    "I64": _Layout(8, "q", "<i8", "int64"),
    "I32": _Layout(4, "i", "<i4", "int64"),
    "U32": _Layout(4, "I", "<u4", "int64"),
    "I16": _Layout(2, "h", "<i2", "int64"),
    "U16": _Layout(2, "H", "<u2", "int64"),
    "I8": _Layout(1, "b", "i1", "int64"),
    "U8": _Layout(1, "B", "u1", "int64"),
}
# In the format, but with no matgrad dtype that holds them exactly.
_UNSUPPORTED = ("BOOL", "U64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4")
_READS = ", ".join(_LAYOUTS)
_SAVED_AS = {"int64": "I64", "float64": "F64", "float32": "F32"}  # in the reference's sort order
_RANK = {dtype: rank for rank, dtype in enumerate(_SAVED_AS)}
# array is C-speed but native-sized; where a code's size differs from the file's, use struct.
_ARRAY_CODES = frozenset(c for c in "bBhHiIqfd" if array(c).itemsize == struct.calcsize("<" + c))


def _numpy() -> Any:
    """NumPy when installed (the fast path for numpy-backend tensors), else None."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


# -- save -----------------------------------------------------------------------------------------


def save(obj: Any, path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``obj`` (a Module, or a mapping name -> Tensor2D) to ``path`` as safetensors, atomically.

    A (1, n) tensor whose name ends in ``bias`` is stored 1-D with shape ``[n]``, as PyTorch
    stores biases, and a layer's ``checkpoint_shapes()`` gives others PyTorch's shape (a
    ``Conv2d`` weight ``(out, in*kh*kw)`` is stored ``(out, in, kh, kw)``, the same bytes), so an
    MLP's or a CNN's file loads unchanged into the same ``torch.nn.Sequential``.
    ``metadata`` (str -> str) goes in the header's ``__metadata__``, keys sorted. The bytes go to a
    temporary file beside ``path``, which replaces ``path`` only once complete and synced: an
    error or Ctrl-C mid-save leaves any previous file untouched and no temporary file behind, and
    the next save to ``path`` deletes what a killed save left. A symlink is followed (the file it
    points to is replaced); an existing file keeps its permission bits, a new one gets the umask
    default. A directory, a missing folder, a read-only file or a full disk raise ``OSError``
    naming ``path``.
    """
    filename = _filename("save", path)
    tensors = _named_tensors(obj)
    stored = _stored_shapes(obj)
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = _checked_metadata(metadata)
    order = sorted(tensors.items(), key=lambda item: (_RANK[item[1].dtype], item[0]))
    offset = 0
    for name, t in order:
        nrows, ncols = t.shape
        end = offset + nrows * ncols * _LAYOUTS[_SAVED_AS[t.dtype]].size
        shape = [ncols] if nrows == 1 and name.endswith("bias") else [nrows, ncols]
        if name in stored and math.prod(stored[name]) == nrows * ncols and stored[name][0] == nrows:
            shape = stored[name]  # the same row-major bytes, in PyTorch's shape: a conv weight (out, in, kh, kw)
        header[name] = {"dtype": _SAVED_AS[t.dtype], "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    chunks = chain((struct.pack("<Q", len(text)), text), (_encode(name, t) for name, t in order))
    _write_atomically(filename, chunks)


def _named_tensors(obj: Any) -> Mapping[str, Tensor2D]:
    """The validated name -> Tensor2D mapping of a Module (``state_dict()``) or a mapping."""
    state = obj.state_dict() if callable(getattr(obj, "state_dict", None)) else obj
    if not isinstance(state, Mapping):
        raise ArgumentTypeError(f"save: expected a Module or a mapping of name -> Tensor2D, got {type(obj).__name__}")
    for name, value in state.items():
        _check_text("save: tensor name", name)
        if name == "__metadata__":
            raise ArgumentError("save: '__metadata__' is reserved by the format; pass metadata=... instead")
        if not isinstance(value, Tensor2D):
            raise ArgumentTypeError(
                f"save: {name!r} is a {type(value).__name__}, not a Tensor2D; wrap it: Tensor2D(value)"
            )
    return state


def _stored_shapes(obj: Any) -> dict[str, list[int]]:
    """The shapes a Module's layers store some parameters in, by state-dict name (``checkpoint_shapes()``)."""
    named_modules = getattr(obj, "named_modules", None)
    if not callable(named_modules):
        return {}
    shapes: dict[str, list[int]] = {}
    for prefix, module in named_modules(remove_duplicate=False):
        declared = getattr(module, "checkpoint_shapes", None)
        if callable(declared):
            for key, shape in declared().items():
                shapes[f"{prefix}.{key}" if prefix else key] = [int(d) for d in shape]
    return shapes


def _checked_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise ArgumentTypeError(f"save: metadata must be a mapping of str -> str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        _check_text("save: metadata key", key, allow_empty=True)
        if not isinstance(value, str):
            raise ArgumentTypeError(
                f"save: metadata values must be str, but metadata[{key!r}] is {value!r} ({type(value).__name__}); "
                "write str(value) or json.dumps(value)"
            )
        _check_text(f"save: metadata[{key!r}]", value, allow_empty=True)
    return {key: metadata[key] for key in sorted(metadata)}


def _check_text(what: str, text: Any, allow_empty: bool = False) -> None:
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{what} must be a str, got {type(text).__name__} ({text!r})")
    if not text and not allow_empty:
        raise ArgumentError(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(f"{what} {text!r} is not valid Unicode (it holds a lone surrogate)") from None


def _encode(name: str, t: Tensor2D) -> Chunk:
    """The little-endian row-major bytes of ``t`` (a buffer the file writes without copying)."""
    layout = _LAYOUTS[_SAVED_AS[t.dtype]]
    backend, data = t.kernels, t.native
    np = _numpy() if backend.name != "python" else None
    if np is not None:  # numpy, and the Array API backends through their copy to NumPy (from any device)
        return memoryview(np.ascontiguousarray(backend.to_numpy(data), dtype=layout.np))
    values = data.data if isinstance(data, Matrix) else list(chain.from_iterable(backend.tolist(data)))
    try:
        buffer = array(layout.code, values)
    except OverflowError:
        # the python backend's int64 values are Python ints, which never wrap around
        raise ArgumentError(f"save: tensor {name!r} holds a value outside the int64 range") from None
    if _BIG_ENDIAN:
        buffer.byteswap()
    return buffer


def _write_atomically(filename: str, chunks: Iterable[Chunk]) -> None:
    """Write ``chunks`` to a new file beside ``filename``, fsync it, then rename it over ``filename``."""
    with atomic_write(filename, "save") as f:
        for chunk in chunks:
            f.write(chunk)


# -- load -----------------------------------------------------------------------------------------


class _Entry(NamedTuple):
    name: str
    dtype: str  # the file's dtype, e.g. "F32"
    shape: tuple[int, int]  # as matgrad holds it
    begin: int
    end: int


def load(path: PathLike, *, backend: str | Backend | None = None, dtype: Any = None) -> dict[str, Tensor2D]:
    """The tensors of the safetensors file at ``path``, in the order of their data in the file.

    2-D tensors load as they are, 1-D ones as (1, n) rows, 0-D ones as (1, 1), and higher ones
    as (d0, d1*d2*...) with the same row-major bytes (a conv weight (out, in, kh, kw) as
    (out, in*kh*kw), the shape of matgrad's ``Conv2d.weight``). F32, F64 and I64
    load as float32, float64 and int64; F16 and BF16 as float32; I32, U32, I16, U16, I8 and U8 as
    int64. ``dtype`` (float32 or float64) converts every floating tensor; ``backend`` picks where
    the tensors live (default: the current backend). The whole header is validated before any
    tensor data is read: a malformed, hostile or unsupported file raises ``CheckpointError``
    naming the file, the tensor and what is wrong.
    """
    filename = _filename("load", path)
    be = _backends.get(backend)
    float_dtype = None if dtype is None else dtype_name(dtype)
    if float_dtype is not None and float_dtype not in FLOAT_DTYPES:
        raise DTypeError(
            f"load: dtype= converts the floating tensors, so it must be 'float32' or 'float64', not "
            f"{float_dtype!r} (integer tensors always load as int64)"
        )
    with open_regular(filename, CheckpointError) as f:
        entries, _ = _read_header(f, filename)
        _check_memory(entries, be, float_dtype, filename)
        # the header checked that the tensors tile the data section, in this order, from here on
        return {
            e.name: _decode(_read(f, e.end - e.begin, filename, f"tensor {e.name!r}"), e, be, float_dtype)
            for e in entries
        }


def load_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of the safetensors file at ``path`` (``{}`` if none); reads only the header."""
    return load_header(path)[1]


class TensorInfo(NamedTuple):
    """What the header says of one tensor: its ``dtype`` in the file (``"F32"``, ...) and its
    ``shape`` as it loads (1-D tensors as (1, n) rows)."""

    dtype: str
    shape: tuple[int, int]


def load_header(path: PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """``({name: TensorInfo(dtype, shape)}, metadata)`` of the safetensors file at ``path``.

    Reads and validates only the header (at most ``MAX_HEADER_BYTES``), so it costs nothing
    however large the tensors are: check shapes against what you expect before ``load``.
    """
    filename = _filename("load_header", path)
    with open_regular(filename, CheckpointError) as f:
        entries, metadata = _read_header(f, filename)
    return {e.name: TensorInfo(e.dtype, e.shape) for e in entries}, metadata


def _check_memory(entries: list[_Entry], be: Backend, float_dtype: str | None, filename: str) -> None:
    """Refuse before reading the data when the loaded tensors would not fit in memory."""
    need = 0
    for e in entries:
        layout = _LAYOUTS[e.dtype]
        dtype = layout.dtype if layout.dtype == "int64" else float_dtype or layout.dtype
        need += e.shape[0] * e.shape[1] * element_bytes(be.name, dtype)
    largest = max((e.end - e.begin for e in entries), default=0)
    check_memory(
        need + 2 * largest,  # the tensors, plus one tensor's bytes and their decoding in flight
        f"{filename}: loading {len(entries)} tensors on the {be.name} backend",
        "free memory, or load it on a machine with more",
        CheckpointError,
    )


def _filename(op: str, path: Any) -> str:
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(name, str):
        raise ArgumentTypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    return name


def _read(f: BufferedReader, n: int, filename: str, what: str) -> bytearray:
    """Exactly ``n`` bytes (``n`` was bounded by the file's size before this allocation)."""
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        count = f.readinto(view[got:])
        if not count:
            raise CheckpointError(f"{filename}: {what}: the file ended {n - got} bytes early (truncated while read?)")
        got += count
    return buffer


def _read_header(f: BufferedReader, filename: str) -> tuple[list[_Entry], dict[str, str]]:
    """The validated tensor entries, sorted by offset, and the metadata; leaves ``f`` at the data."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CheckpointError(
            f"{filename}: the file is {size} bytes; a safetensors file starts with an 8-byte header length"
        )
    (n,) = struct.unpack("<Q", _read(f, 8, filename, "header length"))
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{filename}: declares a {n}-byte header, over the {MAX_HEADER_BYTES}-byte limit "
            "(not a safetensors file, or a corrupted one; matgrad.io.MAX_HEADER_BYTES sets the limit)"
        )
    if n > size - 8:
        raise CheckpointError(
            f"{filename}: declares a {n}-byte header but only {size - 8} bytes follow the length field "
            "(truncated, or not a safetensors file)"
        )
    data_size = size - 8 - n
    raw = _read(f, n, filename, "header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{filename}: the header is not UTF-8 (byte {exc.start} of {n})") from None
    if not re.match(r"[ \t\n\r]*\{", text):
        raise CheckpointError(f"{filename}: the header is not a JSON object (it starts {text[:20]!r})")
    try:
        header = json.loads(text, object_pairs_hook=_unique, parse_int=_small_int, parse_constant=_no_constant)
    except _HeaderError as exc:
        raise CheckpointError(f"{filename}: the header {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{filename}: the header is not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{filename}: the header nests too deeply to be a safetensors header") from None
    metadata = _header_metadata(header.pop("__metadata__", None), filename)
    entries = sorted(
        (_entry(filename, name, info, data_size) for name, info in header.items()), key=lambda e: (e.begin, e.end)
    )
    position, previous = 0, None
    for e in entries:
        if e.begin < position and previous is not None:
            raise CheckpointError(
                f"{filename}: tensor {e.name!r} (data_offsets [{e.begin}, {e.end}]) overlaps tensor "
                f"{previous.name!r} (data_offsets [{previous.begin}, {previous.end}])"
            )
        if e.begin > position:
            raise CheckpointError(
                f"{filename}: bytes {position} to {e.begin} of the data section belong to no tensor "
                f"(a gap before tensor {e.name!r})"
            )
        position, previous = e.end, e
    if position != data_size:
        raise CheckpointError(
            f"{filename}: the last {data_size - position} of the {data_size} data bytes belong to no tensor "
            "(trailing bytes after the last tensor)"
        )
    return entries, metadata


class _HeaderError(ValueError):
    """A header problem found while parsing, before the file name is known to add."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        key = next(k for k, count in Counter(k for k, _ in pairs).items() if count > 1)
        raise _HeaderError(f"names {key!r} twice")
    return out


def _small_int(digits: str) -> int:
    # 20 digits hold any u64; longer ones are hostile (and int() of 4,300+ digits raises anyway)
    if len(digits.lstrip("-")) > 20:
        raise _HeaderError(f"holds the number {digits[:24]}... ({len(digits)} digits), too large for an offset or size")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise _HeaderError(f"holds {name}, which is not JSON")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _header_metadata(meta: Any, filename: str) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{filename}: __metadata__ is a JSON {_json_type(meta)}, not an object of strings")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise CheckpointError(
                f"{filename}: __metadata__[{key!r}] is a JSON {_json_type(value)}, but metadata values are strings"
            )
    return meta


def _is_size(x: Any) -> bool:
    return type(x) is int and x >= 0


def _entry(filename: str, name: str, info: Any, data_size: int) -> _Entry:
    """One header entry, checked against the format and against what matgrad can hold."""
    where = f"{filename}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(
            f"{where}: the entry is a JSON {_json_type(info)}, not an object with {', '.join(_FIELDS)}"
        )
    missing = [k for k in _FIELDS if k not in info]
    if missing:
        raise CheckpointError(f"{where}: the entry has no {' or '.join(missing)}")
    if len(info) != len(_FIELDS):
        extra = [k for k in info if k not in _FIELDS]
        raise CheckpointError(
            f"{where}: unexpected field {', '.join(map(repr, extra))} (an entry holds only {', '.join(_FIELDS)})"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _LAYOUTS:
        if dtype in _UNSUPPORTED:
            raise CheckpointError(f"{where} has dtype {dtype}, which matgrad cannot load (it reads {_READS})")
        raise CheckpointError(f"{where}: unknown dtype {_short(dtype)} (matgrad reads {_READS})")
    if not isinstance(shape, list) or not all(map(_is_size, shape)):
        raise CheckpointError(f"{where}: shape {_short(shape)} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
        raise CheckpointError(
            f"{where}: data_offsets {_short(offsets)} is not a pair [begin, end] of non-negative integers"
        )
    begin, end = offsets
    if begin > end:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    if end > data_size:
        raise CheckpointError(
            f"{where}: data_offsets [{begin}, {end}] run past the end of the {data_size}-byte data section "
            "(truncated file?)"
        )
    span = end - begin
    nbytes, partial = (0 if 0 in shape else _LAYOUTS[dtype].size), False
    for i, dim in enumerate(shape):
        nbytes *= dim
        if nbytes > span:  # stop early: a hostile shape can multiply to an enormous number
            partial = i < len(shape) - 1
            break
    if nbytes != span:
        raise CheckpointError(
            f"{where} declares shape {_short(shape)} ({'at least ' * partial}{nbytes} bytes as {dtype}) "
            f"but its data_offsets span {span} bytes"
        )
    if 0 in shape:
        raise CheckpointError(f"{where} has shape {shape}, no elements; a matgrad matrix needs a row and a column")
    rows, cols = (1, 1) if not shape else (1, shape[0]) if len(shape) == 1 else (shape[0], math.prod(shape[1:]))
    return _Entry(name, dtype, (rows, cols), begin, end)


def _widen_bf16(raw: bytearray) -> bytearray:
    """bfloat16 is the top half of a float32: put each 2-byte value in the high half of 4 bytes."""
    out = bytearray(2 * len(raw))
    out[2::4] = raw[0::2]
    out[3::4] = raw[1::2]
    return out


def _unpack(raw: bytearray, code: str) -> list[Any]:
    """The little-endian values of type ``code`` in ``raw``, as Python numbers."""
    if code in _ARRAY_CODES:
        buffer = array(code)
        buffer.frombytes(raw)
        if _BIG_ENDIAN:
            buffer.byteswap()
        return buffer.tolist()
    values = list(struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw))
    if code == "e" and any(map(math.isnan, values)):
        # struct drops a half NaN's sign and payload; keep them, as NumPy's conversion does
        halves = _unpack(raw, "H")
        for i in (i for i, v in enumerate(values) if v != v):
            h = halves[i]
            values[i] = struct.unpack("<f", struct.pack("<I", (h & 0x8000) << 16 | 0x7F800000 | (h & 0x3FF) << 13))[0]
    return values


def _decode(raw: bytearray, e: _Entry, be: Backend, float_dtype: str | None) -> Tensor2D:
    """A Tensor2D on ``be`` from one tensor's validated bytes."""
    layout = _LAYOUTS[e.dtype]
    dtype = layout.dtype if layout.dtype == "int64" else float_dtype or layout.dtype
    if e.dtype == "BF16":
        raw = _widen_bf16(raw)
    rows, cols = e.shape
    np = _numpy() if be.name != "python" else None
    if np is not None:
        with np.errstate(over="ignore"):  # F64 -> float32 rounds huge values to inf, as a cast does
            # frombuffer over the writable bytearray, and astype copies only if the dtype differs
            host = np.frombuffer(raw, dtype=layout.np).reshape(rows, cols).astype(dtype, copy=False)
        if be.name == "numpy":
            return Tensor2D.from_native(host, be)
        return Tensor2D.from_native(be.from_array(host, dtype), be)  # NumPy rounds, the device receives
    values = _unpack(raw, layout.code)
    if dtype == "float32" and layout.code == "d":
        values = array("f", values).tolist()  # round to float32, as the python backend does
    if isinstance(be, PythonBackend):
        return Tensor2D.from_native(Matrix._wrap(rows, cols, values, dtype), be)
    return Tensor2D.from_native(be.from_rows([values[i : i + cols] for i in range(0, rows * cols, cols)], dtype), be)
