"""IDX files: round trips for every type code, and a clear DataError for every malformed file."""

from __future__ import annotations

import gzip
import math
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from special_files import KINDS, call_with_deadline, posix_only, special_file

from matgrad import ArgumentError
from matgrad._errors import DataError
from matgrad.data import IDX_TYPES, IdxArray, read_idx, write_idx
from matgrad.data.idx import MAX_DEFLATE_RATIO, read_idx_header

# dtype -> hypothesis strategy of values that type holds exactly
VALUES = {
    "uint8": st.integers(0, 255),
    "int8": st.integers(-128, 127),
    "int16": st.integers(-(2**15), 2**15 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "float32": st.floats(width=32, allow_nan=False),
    "float64": st.floats(allow_nan=False),
}
CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def nest(flat: list, shape: tuple[int, ...]) -> list:
    for d in reversed(shape[1:]):
        flat = [flat[i : i + d] for i in range(0, len(flat), d)]
    return flat


@st.composite
def idx_arrays(draw: st.DrawFn) -> tuple[str, tuple[int, ...], list]:
    dtype = draw(st.sampled_from(sorted(VALUES)))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    flat = draw(st.lists(VALUES[dtype], min_size=math.prod(shape), max_size=math.prod(shape)))
    return dtype, shape, nest(flat, shape)


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".part")]


def test_type_table_covers_every_code() -> None:
    assert {v: k for k, v in CODES.items()} == IDX_TYPES


@given(case=idx_arrays(), compress=st.booleans())
def test_round_trip_lists(tmp_path_factory: pytest.TempPathFactory, case: tuple, compress: bool) -> None:
    dtype, shape, values = case
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, values, dtype=dtype)
    arr = read_idx(path)
    assert (arr.shape, arr.dtype, arr.type_code) == (shape, dtype, CODES[dtype])
    assert arr.tolist() == values
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if compress else b"\x00\x00")


@given(case=idx_arrays())
def test_round_trip_numpy(tmp_path_factory: pytest.TempPathFactory, case: tuple) -> None:
    np = pytest.importorskip("numpy")
    dtype, _, values = case
    a = np.array(values, dtype=dtype)
    path = tmp_path_factory.mktemp("idx") / "a.idx.gz"
    write_idx(path, a)
    out = read_idx(path).numpy()
    assert out.dtype == a.dtype and out.shape == a.shape and out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    out[...] = 0  # writable


def test_big_endian_bytes_and_header(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", [[1, -2]], dtype="int16")
    raw = (tmp_path / "a").read_bytes()
    assert raw == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2]) + b"\x00\x01\xff\xfe"
    arr = read_idx(tmp_path / "a")
    assert arr.data == b"\x00\x01\xff\xfe" and arr.header() == raw[:12]
    assert (arr.ndim, arr.size, arr.itemsize) == (2, 2, 2)
    assert repr(arr) == "IdxArray(shape=(1, 2), dtype='int16')"


def test_shape_dtype_bytes_and_idxarray_inputs(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", ((2, 2), "ubyte", b"\x01\x02\x03\x04"))
    arr = read_idx(tmp_path / "a.gz")
    assert arr == IdxArray((2, 2), "uint8", b"\x01\x02\x03\x04")
    write_idx(tmp_path / "b", arr)
    assert read_idx(tmp_path / "b") == arr
    assert arr.tolist() == [[1, 2], [3, 4]]


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    write_idx(tmp_path / "gz-without-suffix", [1, 2, 3], compress=True)
    write_idx(tmp_path / "raw.gz", [1, 2, 3], compress=False)
    assert (tmp_path / "gz-without-suffix").read_bytes()[:2] == b"\x1f\x8b"
    assert read_idx(tmp_path / "gz-without-suffix").tolist() == [1, 2, 3]
    assert read_idx(tmp_path / "raw.gz").tolist() == [1, 2, 3]


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", [[1, 2], [3, 4]])
    write_idx(tmp_path / "b.gz", [[1, 2], [3, 4]])
    a = (tmp_path / "a.gz").read_bytes()
    assert a == (tmp_path / "b.gz").read_bytes()
    assert a[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert a[3] & 0x08 == 0  # no FNAME field (the temporary file's name would vary)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.gz"
    write_idx(path, [1, 2, 3])
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gzip.GzipFile, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, [4, 5, 6])
    assert path.read_bytes() == before
    assert temps(tmp_path) == []


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ([], {}, "empty list"),
        ([[1, 2], [3]], {}, "ragged"),
        ([256], {}, "do not fit dtype uint8"),
        ([1.5], {"dtype": "int32"}, "do not fit dtype int32"),
        ([1], {"dtype": "int64"}, "IDX dtype must be one of"),
        (5, {}, "expected nested lists"),
        (((2, 2), "uint8", b"\x00"), {}, "needs 4 bytes of data, got 1"),
        (((0,), "uint8", b""), {}, "every dimension must be"),
    ],
)
def test_write_rejects_bad_input(tmp_path: Path, values: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        write_idx(tmp_path / "a", values, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_numpy_dtype_without_idx_type(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(ArgumentError, match="no type for NumPy dtype int64"):
        write_idx(tmp_path / "a", np.arange(3))


# -- malformed files -------------------------------------------------------------------------

GOOD = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))  # 2x3 uint8

MALFORMED = {
    "empty": (b"", "the file is empty"),
    "short magic": (b"\x00\x00\x08", "truncated header: the file has 3 bytes, the IDX magic number alone needs 4"),
    "bad magic": (b"\x01\x02\x08\x01" + GOOD[4:], "not an IDX file: the magic number is 01 02 08 01"),
    "unknown type": (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
    "no dimensions": (b"\x00\x00\x08\x00\x00", "declares 0 dimensions"),
    "short dims": (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00", "declares 3 dimensions (12 bytes), the file has only 5"),
    "zero dim": (bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 0]), "dimension 1 of 2 is 0 (shape 2x0)"),
    "truncated data": (GOOD[:-2], "truncated: header declares 2x3 uint8 = 6 bytes of data, file has 4"),
    "extra bytes": (GOOD + b"\x00\x00", "2 extra bytes: header declares 2x3 uint8 = 6 bytes of data, file has 8"),
    "html page": (b"<!DOCTYPE html><html>404</html>", "looks like an HTML"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file(tmp_path: Path, case: str, compress: bool) -> None:
    content, message = MALFORMED[case]
    path = tmp_path / "train-images-idx3-ubyte"
    if compress:
        content = gzip.compress(content, mtime=0)
        message = message.replace("the file", "the decompressed data").replace("file has", "the decompressed data has")
        if case == "extra bytes":
            message = "extra bytes: header declares 2x3 uint8 = 6 bytes of data, but the decompressed data continues"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_good_file_reads(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(GOOD)
    (tmp_path / "b").write_bytes(gzip.compress(GOOD))
    assert read_idx(tmp_path / "a").tolist() == read_idx(tmp_path / "b").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_gz_name_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"PK\x03\x04 a zip file, not gzip")
    with pytest.raises(DataError, match=r"not an IDX file.*name ends in .gz but the file is not gzip-compressed"):
        read_idx(path)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda gz: gz[: len(gz) // 2], "truncated gzip stream"),
        (lambda gz: gz[:-8] + bytes(8), "corrupt gzip data"),  # CRC and size trailer zeroed
        (lambda gz: gz[:10] + bytes(len(gz) - 10), "corrupt gzip data"),  # deflate data zeroed
        (lambda gz: gz + b"trailing garbage", "corrupt gzip data"),
        (lambda gz: b"\x1f\x8b", "truncated gzip stream"),
    ],
    ids=["cut", "bad-crc", "bad-deflate", "trailing-garbage", "magic-only"],
)
def test_corrupt_gzip(tmp_path: Path, mangle: object, message: str) -> None:
    good = gzip.compress(GOOD, mtime=0)
    path = tmp_path / "x.gz"
    path.write_bytes(mangle(good))  # type: ignore[operator]
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@posix_only
@pytest.mark.parametrize("kind", KINDS)
def test_non_regular_files_are_refused_with_the_true_reason(tmp_path: Path, kind: str) -> None:
    path, reason = special_file(tmp_path, kind)
    for fn in (read_idx, read_idx_header):
        exc = call_with_deadline(lambda fn=fn: fn(path), path if kind == "fifo" else None)
        assert isinstance(exc, DataError), repr(exc)
        assert str(exc).startswith(f"{path}: {reason}")


HUGE = bytes([0, 0, 0x0E, 3]) + (2**32 - 1).to_bytes(4, "big") * 3  # ~6e29 bytes of float64 declared


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_hostile_header_does_not_allocate(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "hostile"
    path.write_bytes(gzip.compress(HUGE + bytes(1000)) if compress else HUGE + bytes(1000))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="truncated: header declares 4294967295x4294967295x4294967295 float64"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_reads_at_most_declared_plus_one(tmp_path: Path) -> None:
    # a gzip bomb behind a small header: reading stops one byte past the declared size
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:
        f.write(GOOD)
        for _ in range(64):
            f.write(bytes(2**20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="extra bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    assert os.path.getsize(path) < 2**20


def idx_gz(path: Path, shape: tuple[int, ...], zeros: int) -> None:
    """A gzip file: a uint8 IDX header declaring ``shape``, then ``zeros`` zero bytes."""
    header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        for _ in range(zeros // 2**20):
            f.write(bytes(2**20))
        f.write(bytes(zeros % 2**20))


def peak_while(fn: Any) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        try:
            fn()
            exc = None
        except Exception as e:
            exc = e
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_declaring_more_than_it_can_hold_is_refused_before_inflating(tmp_path: Path) -> None:
    # 8 MiB of zeros gzip to ~8 KB, which can hold at most ~8 MB: a 2 GiB header is a lie
    path = tmp_path / "bomb.gz"
    idx_gz(path, (2048, 1024, 1024), 8 * 2**20)
    size = path.stat().st_size
    exc, peak = peak_while(lambda: read_idx(path))
    assert isinstance(exc, DataError)
    assert f"truncated: header declares 2048x1024x1024 uint8 = {2**31} bytes of data" in str(exc)
    assert f"a {size}-byte gzip file holds at most {MAX_DEFLATE_RATIO * size}" in str(exc)
    assert peak < 2**20  # refused before inflating: not even the first MiB was decompressed


def test_a_valid_gzip_file_is_inflated_once_at_its_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "zeros.gz"
    idx_gz(path, (16, 1024, 1024), 16 * 2**20)
    arr = None

    def read() -> None:
        nonlocal arr
        arr = read_idx(path)

    exc, peak = peak_while(read)
    assert exc is None and arr is not None and arr.shape == (16, 1024, 1024)
    assert peak < 24 * 2**20  # 16 MiB of data and chunks in flight; a second copy would make it 32+


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_declared_size_over_the_memory_budget_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    path = tmp_path / "big"
    write_idx(path, ((4, 1024, 1024), "uint8", bytes(4 * 2**20)), compress=compress)
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "1M")
    exc, peak = peak_while(lambda: read_idx(path))
    assert isinstance(exc, DataError) and str(exc).startswith(f"{path}: ")
    assert "needs about 4.0 MiB of memory, more than the 1.0 MiB allowed by MATGRAD_MEMORY_LIMIT=1M" in str(exc)
    assert peak < 2**20
    with pytest.raises(DataError, match="over the max_bytes=1000 this read allows"):
        read_idx(path, max_bytes=1000)
    assert read_idx(path, max_bytes=4 * 2**20).shape == (4, 1024, 1024)  # an explicit cap replaces the budget
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "off")
    assert read_idx(path).shape == (4, 1024, 1024)


@pytest.mark.parametrize(("value", "error"), [("-1", ArgumentError), ("1.5", TypeError), ("x", TypeError)])
def test_max_bytes_is_checked(tmp_path: Path, value: str, error: type) -> None:
    write_idx(tmp_path / "a", [1, 2])
    with pytest.raises(error, match="max_bytes"):
        read_idx(tmp_path / "a", max_bytes=int(value) if value == "-1" else float(value) if value == "1.5" else value)


def test_memory_limit_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "a", [1, 2])
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "lots")
    with pytest.raises(ArgumentError, match="MATGRAD_MEMORY_LIMIT='lots' is not a size"):
        read_idx(tmp_path / "a")
