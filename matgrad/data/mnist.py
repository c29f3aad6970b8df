"""MNIST: load the four IDX files as Tensor2D, download them safely, or use the shipped sample.

Downloads use only the standard library: each mirror is tried in turn, each file is checked
against the SHA-256 of its uncompressed bytes, and it reaches its final name by an atomic rename,
so an interrupted or corrupted download never leaves a partial file where a complete one belongs.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import numbers
import os
import socket
import sys
import zlib
from collections.abc import Iterable, Mapping, Set
from typing import Any, NamedTuple, Sequence, Union

from matgrad import backends as _backends
from matgrad._errors import ArgumentError, ArgumentTypeError, DataError, DTypeError
from matgrad._files import new_temp, remove_quietly, remove_stale_temps, why_not_regular
from matgrad._memory import check_memory, element_bytes
from matgrad.backends.base import FLOAT_DTYPES, Backend
from matgrad.data.idx import GZIP_MAGIC, IdxArray, read_idx, read_idx_header
from matgrad.tensor import Tensor2D, dtype_name

__all__ = ["FILES", "MIRRORS", "MNIST", "SAMPLE_DIR", "default_root", "download_mnist", "load_mnist"]

PathLike = Union[str, "os.PathLike[str]"]

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

FILES: dict[str, tuple[int, str]] = {
    TRAIN_IMAGES: (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    TRAIN_LABELS: (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    TEST_IMAGES: (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    TEST_LABELS: (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
"""Each file's uncompressed size in bytes and SHA-256 (of the IDX bytes, not of the .gz)."""

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's HTTPS mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # CVDF's, which TensorFlow uses
)
"""Public mirrors serving ``<name>.gz``, tried in order. yann.lecun.com is left out: HTTP only,
and it has answered 403 Forbidden to scripts since 2024."""

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_sample")
"""The 5,000 + 1,000 image sample shipped with matgrad (see its README.md)."""

STALE_AFTER = 600.0
"""Seconds after which any temporary file left by a download is deleted (one whose process has
died is deleted at once)."""

MIN_RATE = 16 * 1024
"""Bytes per second a download must keep up on average, after a grace of twice ``timeout`` for
connecting and the first bytes: a file of N bytes may take ``2 * timeout + N / MIN_RATE`` seconds
in all (about 11 minutes for the 9.9 MB training images at the default ``timeout``), then it is
abandoned and the next mirror tried. Lower it for a very slow link."""

_CHUNK = 1 << 16
_DIGITS = bytes(range(10))


class MNIST(NamedTuple):
    """MNIST as Tensor2D: images ``(n, 784)`` in [0, 1] (float), labels ``(n, 1)`` int64."""

    x_train: Tensor2D
    y_train: Tensor2D
    x_test: Tensor2D
    y_test: Tensor2D


def default_root() -> str:
    """Where ``root=None`` looks: ``$MATGRAD_DATA/mnist`` (or ``$MATGRAD_DATA`` itself when it
    holds the files), else ``$XDG_CACHE_HOME/matgrad/mnist``, else ``~/.cache/matgrad/mnist``."""
    env = os.environ.get("MATGRAD_DATA", "").strip()
    if env:
        env = os.path.expanduser(env)
        if any(os.path.isfile(p) for name in NAMES for p in _candidates(env, name)):
            return env
        return os.path.join(env, "mnist")
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not os.path.isabs(cache):  # the XDG spec says to ignore a relative path
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "matgrad", "mnist")


def _candidates(root: str, name: str) -> list[str]:
    return [os.path.join(root, name), os.path.join(root, name + ".gz")]


def _present(root: str, name: str) -> list[str]:
    """Which of ``name`` and ``name.gz`` are in ``root``; a directory, FIFO or device there is an
    error naming it (it is never opened, and never reported as missing)."""
    out = []
    for path in _candidates(root, name):
        why = why_not_regular(path)
        if why is None:
            out.append(path)
        elif os.path.lexists(path):
            raise DataError(f"{path}: {why}; MNIST files must be regular files (move it away)")
    return out


def _find(root: str, name: str) -> str | None:
    return next(iter(_present(root, name)), None)


def _check_root(directory: str) -> None:
    """A ``root`` that exists but is not a folder: say so, rather than "MNIST not found"."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        why = why_not_regular(directory)
        kind = "a file" if why is None else why.removeprefix("is ").split(", not")[0]
        raise DataError(f"{directory}: is {kind}, not a folder; pass the folder that holds the four MNIST files")


def _check_mirrors(fn: str, mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is None:
        return list(MIRRORS)
    if isinstance(mirrors, (str, bytes)):
        raise ArgumentError(f"{fn}: mirrors must be a list of URLs, not one string; write mirrors=[{mirrors!r}]")
    if isinstance(mirrors, (Set, Mapping)) or not isinstance(mirrors, Iterable):
        raise ArgumentTypeError(
            f"{fn}: mirrors must be a list of http(s):// URL strings (tried in order), got {type(mirrors).__name__}"
        )
    out = []
    for m in mirrors:
        if not isinstance(m, str):
            raise ArgumentTypeError(
                f"{fn}: each mirror must be an http(s):// URL string, got {type(m).__name__} {m!r:.60}"
            )
        if not m.startswith(("https://", "http://")):
            raise ArgumentError(f"{fn}: each mirror must be an http(s):// URL string, got {m!r}")
        out.append(m if m.endswith("/") else m + "/")
    if not out:
        raise ArgumentError(f"{fn}: mirrors is empty; give at least one URL (or None for the defaults)")
    return out


def _directory(fn: str, root: Any) -> str:
    """``root`` (a str or a path object) as a str, or ``default_root()`` for None."""
    if root is None:
        return default_root()
    if isinstance(root, str) or (isinstance(root, os.PathLike) and isinstance(os.fspath(root), str)):
        return os.fspath(root)
    raise ArgumentTypeError(f"{fn}: root must be a directory path (a str or pathlib.Path), got {type(root).__name__}")


# -- verification ------------------------------------------------------------------------------


def _problem(arr: IdxArray, name: str) -> str | None:
    """Why ``arr`` is not the expected file ``name`` (by size and SHA-256), or None if it is."""
    size, sha = FILES[name]
    header = arr.header()
    have = len(header) + len(arr.data)
    if have != size:
        return f"{have} bytes uncompressed, expected {size}"
    digest = hashlib.sha256(header)
    digest.update(arr.data)
    if digest.hexdigest() != sha:
        return f"checksum mismatch: SHA-256 {digest.hexdigest()}, expected {sha}"
    return None


class _MirrorFailure(Exception):
    """One mirror failed for one file; the next mirror is tried."""


class _WriteFailure(Exception):
    """Writing the downloaded bytes failed (a full disk, say): no mirror is tried after it."""


def _verify_download(path: str, name: str) -> bool:
    """Check a downloaded file's uncompressed size and SHA-256 in chunks; True when gzipped."""
    size, sha = FILES[name]
    digest = hashlib.sha256()
    count = 0
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
        f.seek(0)
        stream: Any = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            while count <= size:
                chunk = stream.read(min(_CHUNK, size + 1 - count))
                if not chunk:
                    break
                digest.update(chunk)
                count += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise _MirrorFailure(f"corrupt gzip data ({exc or type(exc).__name__})") from None
    if count != size:
        more = "more than " if count > size else ""
        raise _MirrorFailure(f"wrong size: {more}{count} bytes uncompressed, expected {size}")
    if digest.hexdigest() != sha:
        raise _MirrorFailure(f"checksum mismatch: SHA-256 {digest.hexdigest()}, expected {sha}")
    return gz


# -- downloading -------------------------------------------------------------------------------


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm byte counter on stderr (a no-op when disabled)."""
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        leave=True,
    )


def _fetch(url: str, out: Any, timeout: float, limit: int, progress: bool) -> None:
    """Stream ``url`` into ``out``; a short body, one over ``limit`` bytes or a slow one is a failure."""
    from matgrad.data._http import Transfer, open_bounded  # urllib costs ``import matgrad.data`` ~15 ms

    transfer = Transfer(grace=2 * timeout, min_rate=MIN_RATE)
    length, got = None, 0
    try:
        with open_bounded(url, timeout, transfer) as response:
            header = response.headers.get("Content-Length")
            length = int(header) if header is not None and header.strip().isdigit() else None
            if length is not None and length > limit:
                raise _MirrorFailure(f"Content-Length {length} exceeds the {limit} bytes this file can take")
            with _progress_bar(length, url.rsplit("/", 1)[-1], progress) as bar:
                while True:
                    # read1: one recv at most, so the watchdog sees every byte as it comes (read(n)
                    # waits for all n bytes); b"" (not an error) when the server closes early
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                    transfer.received = got
                    if got > limit:
                        raise _MirrorFailure(f"the body exceeds the {limit} bytes this file can take")
                    try:
                        out.write(chunk)
                    except OSError as exc:  # the disk, not the mirror: no other mirror can help
                        raise _WriteFailure(exc.strerror or str(exc)) from None
                    bar.update(len(chunk))
    except (_MirrorFailure, _WriteFailure):
        raise
    except Exception:
        if transfer.failure is not None:  # the watchdog cut the connection: that is the cause
            raise _MirrorFailure(transfer.failure) from None
        raise
    if transfer.failure is not None and (length is None or got != length):
        raise _MirrorFailure(transfer.failure)
    if length is not None and got != length:
        raise _MirrorFailure(f"connection closed after {got} of {length} bytes")


def _describe(exc: BaseException, timeout: float) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if not isinstance(exc, (TimeoutError, socket.timeout)):
            return f"cannot connect: {exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out (no data for {timeout:g} s)"
    if isinstance(exc, ConnectionError):
        return f"connection dropped: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _download(root: str, name: str, mirrors: list[str], timeout: float, progress: bool) -> str:
    """Fetch ``name`` into ``root`` from the first mirror that gives the right bytes; its path."""
    import http.client

    size = FILES[name][0]
    limit = size + size // 8 + (1 << 16)  # raw or gzip (incompressible data grows a little)
    failures: list[str] = []
    for i, mirror in enumerate(mirrors):
        url = f"{mirror}{name}.gz"
        try:
            os.makedirs(root, exist_ok=True)
            tmp, f = new_temp(root, name + ".gz")
        except OSError as exc:
            raise DataError(f"cannot write to {root}: {exc.strerror or exc}; pass root= a writable directory") from None
        try:
            try:
                with f:
                    _fetch(url, f, timeout, limit, progress)
                gz = _verify_download(tmp, name)
            except _WriteFailure as exc:
                raise DataError(
                    f"cannot write {name}.gz into {root}: {exc}; free some space or pass root= another directory"
                ) from None
            except _MirrorFailure as exc:
                failures.append(f"  {url}: {exc}")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"  {url}: {_describe(exc, timeout)}")
            else:
                final = os.path.join(root, name + ".gz" if gz else name)
                try:
                    os.replace(tmp, final)
                except OSError as exc:
                    raise DataError(f"cannot write {final}: {exc.strerror or exc}") from None
                return final
            if progress and i + 1 < len(mirrors):
                print(f"matgrad: {failures[-1].strip()}; trying the next mirror", file=sys.stderr)
        finally:
            remove_quietly(tmp)  # any failure, KeyboardInterrupt included: no partial file remains
    raise DataError(
        f"could not download {name}.gz from any mirror:\n"
        + "\n".join(failures)
        + f"\nno file was written to {root}. Check the network, pass mirrors=[...], copy the MNIST files "
        "there by hand, or use sample=True for the sample shipped with matgrad."
    )


def _ensure(root: str, name: str, mirrors: list[str], timeout: float, progress: bool) -> tuple[str, IdxArray]:
    """A verified copy of ``name`` in ``root``: the file present if valid, else a fresh download."""
    remove_stale_temps(root, name + ".gz", STALE_AFTER)
    invalid: list[str] = []
    for path in _present(root, name):
        try:
            arr = read_idx(path)
        except DataError as exc:
            reason = str(exc)
        else:
            problem = _problem(arr, name)
            if problem is None:
                return path, arr
            reason = f"{path}: {problem}"
        invalid.append(path)
        if progress:
            print(f"matgrad: {reason}; downloading a fresh copy", file=sys.stderr)
    final = _download(root, name, mirrors, timeout, progress)
    for path in invalid:
        if path != final:  # it would shadow the good file
            remove_quietly(path)
    return final, read_idx(final)


def download_mnist(
    root: PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> list[str]:
    """Make sure the four MNIST files are in ``root`` (default ``default_root()``); their paths.

    Files already present and matching their SHA-256 are kept; others are fetched over HTTPS
    from ``mirrors`` (default ``MIRRORS``), each tried in order, and replace invalid copies.
    ``timeout`` bounds each network wait, and the whole transfer of a file is bounded too: after
    a grace of ``2 * timeout`` it must average ``MIN_RATE`` bytes/s, else that mirror is given up
    (a server dripping bytes cannot hold it for longer). ``progress`` shows tqdm bars on stderr
    (default: when stderr is a terminal). Raises ``DataError`` listing every mirror's failure.
    """
    directory = _directory("download_mnist", root)
    _check_root(directory)
    mirror_list = _check_mirrors("download_mnist", mirrors)
    _check_timeout("download_mnist", timeout)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return [_ensure(directory, name, mirror_list, timeout, show)[0] for name in NAMES]


def _check_timeout(fn: str, timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ArgumentTypeError(
            f"{fn}: timeout must be a positive number of seconds, got {type(timeout).__name__} {timeout!r:.40}"
        )
    if not 0 < timeout < math.inf:
        raise ArgumentError(f"{fn}: timeout must be a positive number of seconds, got {timeout!r}")


# -- loading -----------------------------------------------------------------------------------


def _missing_message(directory: str, missing: list[str], default: bool) -> str:
    where = f"{directory} (the default location: see matgrad.data.default_root())" if default else directory
    return (
        f"MNIST not found in {where}: missing {', '.join(missing)} (with or without .gz).\n"
        "To fix it, do one of:\n"
        "  - load_mnist(download=True), or `matgrad train --download`, to fetch the files (about 11 MB);\n"
        "  - pass root=DIR (`--data DIR`) or set MATGRAD_DATA to a directory holding the four MNIST files;\n"
        "  - use load_mnist(sample=True) (the default of `matgrad train`) for the 6,000-image sample "
        "shipped with matgrad."
    )


def _images(arr: IdxArray, path: str, be: Backend, dtype: str) -> Tensor2D:
    if arr.dtype != "uint8" or arr.ndim != 3:
        raise DataError(
            f"{path}: MNIST images must be ubyte with 3 dimensions (count, rows, cols), "
            f"found {arr.dtype} of shape {'x'.join(map(str, arr.shape))}"
        )
    n, h, w = arr.shape
    return Tensor2D.from_native(be.from_uint8(arr.data, n, h * w, 255.0, dtype), be)


def _labels(arr: IdxArray, path: str, be: Backend) -> Tensor2D:
    if arr.dtype != "uint8" or arr.ndim != 1:
        raise DataError(
            f"{path}: MNIST labels must be ubyte with 1 dimension (count), "
            f"found {arr.dtype} of shape {'x'.join(map(str, arr.shape))}"
        )
    bad = arr.data.translate(None, _DIGITS)  # every byte that is not 0..9, at C speed
    if bad:
        i = arr.data.index(bad[:1])
        raise DataError(f"{path}: label {i} is {bad[0]}; MNIST labels are the digits 0 to 9")
    return Tensor2D.from_native(be.from_uint8(arr.data, arr.shape[0], 1, 1, "int64"), be)


def _check_fits(headers: dict[str, tuple[str, str, tuple[int, ...]]], be: Backend, dtype: str, raw: bool) -> None:
    """Refuse, before building any tensor, MNIST files whose tensors (plus, when ``raw``, the
    file data still to be read) would not fit in memory."""
    need = 0
    for _path, idx_dtype, shape in headers.values():
        elements = math.prod(shape)
        if raw:
            need += elements * (1 if idx_dtype == "uint8" else 8)
        # images become (n, rows*cols) floats, labels (n, 1) int64: one element per byte of data
        need += elements * element_bytes(be.name, dtype if len(shape) > 1 else "int64", shared=True)
    images = headers[TRAIN_IMAGES][2][0] + headers[TEST_IMAGES][2][0]
    check_memory(
        need,
        f"MNIST in {os.path.dirname(headers[TRAIN_IMAGES][0])} ({images:,} images as {dtype} on the {be.name} backend)",
        "if the files are genuine, free memory or use dtype=float32; if not, replace them (a corrupted header "
        "declares the wrong count)",
        DataError,
    )


def load_mnist(
    root: PathLike | None = None,
    *,
    download: bool = False,
    sample: bool = False,
    backend: str | Backend | None = None,
    dtype: Any = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> MNIST:
    """MNIST as ``MNIST(x_train, y_train, x_test, y_test)``.

    Images are ``(n, rows*cols)`` = ``(n, 784)`` in ``dtype`` (default: matgrad's default float
    dtype), pixel / 255; labels are ``(n, 1)`` int64. The files are read from ``root`` (default
    ``default_root()``) under their standard names, gzipped or not. ``download=True`` first
    fetches missing or invalid files (see ``download_mnist``); ``sample=True`` loads the
    5,000 + 1,000 image sample shipped with matgrad instead (no network, no files needed).
    Without ``download``, files are checked as IDX (sizes, labels 0..9, counts) but not against
    MNIST's checksums, so a dataset in MNIST's format (Fashion-MNIST) loads from ``root`` too.
    """
    be = _backends.get(backend)
    dt = dtype_name(dtype)
    if dt not in FLOAT_DTYPES:
        raise DTypeError(f"load_mnist: images are floating point; dtype must be float32 or float64, not {dt}")
    if sample:
        if root is not None or download:
            raise ArgumentError("load_mnist: sample=True loads the shipped sample; do not pass root or download")
        directory = SAMPLE_DIR
    else:
        directory = _directory("load_mnist", root)
        _check_root(directory)
    files: dict[str, tuple[str, IdxArray]] = {}
    if download and not sample:
        mirror_list = _check_mirrors("load_mnist", mirrors)
        _check_timeout("load_mnist", timeout)
        show = sys.stderr.isatty() if progress is None else bool(progress)
        for name in NAMES:
            files[name] = _ensure(directory, name, mirror_list, timeout, show)
        _check_fits({name: (path, arr.dtype, arr.shape) for name, (path, arr) in files.items()}, be, dt, False)
    else:
        found = {name: _find(directory, name) for name in NAMES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise DataError(_missing_message(directory, missing, root is None and not sample))
        paths = {name: path for name, path in found.items() if path is not None}
        # the headers alone first: refuse what cannot fit before reading any data
        _check_fits({name: (path, *read_idx_header(path)) for name, path in paths.items()}, be, dt, True)
        files = {name: (path, read_idx(path)) for name, path in paths.items()}

    tensors = []
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        (ipath, iarr), (lpath, larr) = files[images], files[labels]
        x = _images(iarr, ipath, be, dt)
        y = _labels(larr, lpath, be)
        if x.nrows != y.nrows:
            raise DataError(
                f"{ipath} holds {x.nrows} images but {lpath} holds {y.nrows} labels; the files do not belong together"
            )
        tensors += [x, y]
    train_shape, test_shape = files[TRAIN_IMAGES][1].shape[1:], files[TEST_IMAGES][1].shape[1:]
    if train_shape != test_shape:
        raise DataError(
            f"{files[TRAIN_IMAGES][0]} has {train_shape[0]}x{train_shape[1]} images but "
            f"{files[TEST_IMAGES][0]} has {test_shape[0]}x{test_shape[1]}; the files do not belong together"
        )
    return MNIST(*tensors)
