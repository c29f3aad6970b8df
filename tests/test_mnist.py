"""MNIST: the shipped sample, loading from a directory, and downloads from a local HTTP server
that misbehaves on purpose (the tests never touch the internet).

Tests on the full MNIST read it from ``MATGRAD_MNIST_DIR`` and are skipped when it is unset.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from special_files import KINDS, call_with_deadline, posix_only, special_file

import matgrad as mg
from matgrad import ArgumentError, DTypeError
from matgrad._errors import DataError
from matgrad.data import IdxArray, download_mnist, load_mnist, read_idx, write_idx
from matgrad.data import mnist as mnist_module
from matgrad.data.mnist import NAMES, SAMPLE_DIR, default_root

MNIST_DIR = os.environ.get("MATGRAD_MNIST_DIR")
needs_full_mnist = pytest.mark.skipif(
    not MNIST_DIR,
    reason="set MATGRAD_MNIST_DIR to the directory of the full MNIST files (e.g. ../shared/data/mnist)",
)
TIMEOUT = 0.5  # the client's network timeout in these tests, in seconds


def counts(y: mg.Tensor2D) -> Counter[int]:
    return Counter(r[0] for r in y.tolist())


def sha256_uncompressed(path: str | Path) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha256(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).hexdigest()


def temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".part")) if root.exists() else []


# -- the shipped sample -------------------------------------------------------------------------


def test_sample_shapes_dtypes_range_balance(backend: str) -> None:
    data = load_mnist(sample=True)
    assert [t.shape for t in data] == [(5000, 784), (5000, 1), (1000, 784), (1000, 1)]
    assert [t.dtype for t in data] == ["float32", "int64", "float32", "int64"]
    assert all(t.backend == backend for t in data)
    for x in (data.x_train, data.x_test):
        assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert counts(data.y_train) == {d: 500 for d in range(10)}
    assert counts(data.y_test) == {d: 100 for d in range(10)}
    assert [r[0] for r in data.y_train[list(range(20))].tolist()] == list(range(10)) * 2  # interleaved


def test_sample_pixels_are_bytes_over_255(backend: str) -> None:
    data = load_mnist(sample=True, dtype="float64")
    raw = read_idx(os.path.join(SAMPLE_DIR, "t10k-images-idx3-ubyte.gz")).data
    rows = data.x_test[[0, 1, 999]].tolist()
    for k, i in enumerate([0, 1, 999]):
        assert rows[k] == [b / 255 for b in raw[i * 784 : (i + 1) * 784]]
    assert data.x_test.dtype == "float64"


def test_sample_identical_across_backends() -> None:
    np = pytest.importorskip("numpy")
    a = load_mnist(sample=True, backend="numpy")
    b = load_mnist(sample=True, backend="python")
    for ta, tb in zip(a, b):
        assert ta.dtype == tb.dtype
        assert np.array_equal(ta.numpy(), tb.numpy())


def test_sample_readme_checksums_and_size() -> None:
    readme = Path(SAMPLE_DIR, "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in readme and "Yann LeCun" in readme and "Corinna Cortes" in readme
    assert "Christopher J.C." in readme and "scripts/make_mnist_sample.py" in readme
    listed = dict(re.findall(r"\| (\S+\.gz) \| .* \| ([0-9a-f]{64}) \|", readme))
    assert sorted(listed) == sorted(n + ".gz" for n in NAMES)
    for name, digest in listed.items():
        assert sha256_uncompressed(Path(SAMPLE_DIR, name)) == digest
    total = sum(p.stat().st_size for p in Path(SAMPLE_DIR).iterdir())
    assert total < 2 * 2**20


NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # as if NumPy were not installed
import matgrad
from matgrad.data import DataLoader, load_mnist
assert matgrad.get_backend() == "python"
data = load_mnist(sample=True)
xb, yb = next(iter(DataLoader(data.x_train, data.y_train, 32, shuffle=True)))
assert (xb.shape, yb.shape, xb.backend) == ((32, 784), (32, 1), "python")
print("ok")
"""


def test_sample_and_loader_work_without_numpy() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MATGRAD_BACKEND"}
    out = subprocess.run([sys.executable, "-c", NO_NUMPY], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_is_light() -> None:
    code = "import sys, matgrad.data; print(sorted({'numpy', 'tqdm', 'urllib.request'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- loading from a directory ---------------------------------------------------------------------


def fake_mnist(n_train: int = 30, n_test: int = 10, seed: int = 42) -> dict[str, IdxArray]:
    """Small valid MNIST-format arrays: random pixels, labels i % 10."""
    rng = random.Random(seed)

    def images(n: int) -> IdxArray:
        return IdxArray((n, 28, 28), "uint8", bytes(rng.getrandbits(8) for _ in range(n * 784)))

    def labels(n: int) -> IdxArray:
        return IdxArray((n,), "uint8", bytes(i % 10 for i in range(n)))

    return dict(zip(NAMES, [images(n_train), labels(n_train), images(n_test), labels(n_test)]))


def write_fake(root: Path, arrays: dict[str, IdxArray], gz: bool | dict[str, bool] = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        compress = gz if isinstance(gz, bool) else gz[name]
        write_idx(root / (name + ".gz" if compress else name), arr)


def test_load_from_root_with_and_without_gz(tmp_path: Path, backend: str) -> None:
    arrays = fake_mnist()
    write_fake(tmp_path, arrays, gz=dict(zip(NAMES, [True, False, False, True])))
    data = load_mnist(tmp_path)
    assert [t.shape for t in data] == [(30, 784), (30, 1), (10, 784), (10, 1)]
    assert data.x_train[[3]].tolist()[0] == pytest.approx([b / 255 for b in arrays[NAMES[0]].data[3 * 784 : 4 * 784]])
    assert [r[0] for r in data.y_test.tolist()] == list(range(10))


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MATGRAD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root() == str(tmp_path / "cache" / "matgrad" / "mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == str(tmp_path / "home" / ".cache" / "matgrad" / "mnist")
    monkeypatch.setenv("MATGRAD_DATA", str(tmp_path / "data"))
    assert default_root() == str(tmp_path / "data" / "mnist")
    write_fake(tmp_path / "data", fake_mnist())  # the files directly in MATGRAD_DATA
    assert default_root() == str(tmp_path / "data")


def test_root_none_uses_matgrad_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_fake(tmp_path / "mnist", fake_mnist())
    monkeypatch.setenv("MATGRAD_DATA", str(tmp_path))
    assert load_mnist().x_train.shape == (30, 784)


def test_missing_files_say_where_and_how_to_fix(tmp_path: Path) -> None:
    arrays = fake_mnist()
    write_fake(tmp_path, {NAMES[0]: arrays[NAMES[0]], NAMES[2]: arrays[NAMES[2]]})
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "missing train-labels-idx1-ubyte, t10k-labels-idx1-ubyte (with or without .gz)" in message
    for fix in ("download=True", "--download", "MATGRAD_DATA", "sample=True"):
        assert fix in message


@posix_only
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "missing"])
def test_a_special_file_in_place_of_an_mnist_file_is_named(tmp_path: Path, kind: str) -> None:
    write_fake(tmp_path, fake_mnist(), gz=False)
    target = tmp_path / NAMES[0]  # the first file either reads
    target.unlink()
    made, reason = special_file(tmp_path, kind)
    made.rename(target)
    for fn in (lambda: load_mnist(tmp_path), lambda: download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"])):
        exc = call_with_deadline(fn, target if kind == "fifo" else None)
        assert isinstance(exc, DataError), repr(exc)
        assert str(exc).startswith(f"{target}: {reason}") and "not found" not in str(exc)


@posix_only
@pytest.mark.parametrize(("kind", "reason"), [("file", "a file"), ("fifo", "a FIFO (named pipe)")])
def test_a_root_that_is_not_a_folder_is_named(tmp_path: Path, kind: str, reason: str) -> None:
    root = tmp_path / "mnist"
    if kind == "file":
        root.write_bytes(b"")
    else:
        os.mkfifo(root)
    with pytest.raises(DataError, match=f"^{re.escape(str(root))}: is {re.escape(reason)}, not a folder"):
        load_mnist(root)


def test_header_claiming_more_images_than_the_file_holds_is_refused_before_reading(tmp_path: Path) -> None:
    write_fake(tmp_path, fake_mnist())
    path = tmp_path / (NAMES[0] + ".gz")  # 1,000,000 images declared, 4 MiB of zeros inside (~4 KB)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 1_000_000, 28, 28))
        f.write(bytes(4 * 2**20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}: truncated: header declares 1000000x28x28"):
            load_mnist(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # nothing inflated, nothing allocated for the 784 MB declared


def test_mnist_that_would_not_fit_in_memory_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake(tmp_path, fake_mnist())
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "20K")
    with pytest.raises(DataError, match=r"MNIST in .* \(40 images as float64 on the numpy backend\) needs about"):
        load_mnist(tmp_path, backend="numpy", dtype="float64")
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "1M")
    assert load_mnist(tmp_path, backend="numpy", dtype="float64").x_train.shape == (30, 784)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({NAMES[1]: IdxArray((29,), "uint8", bytes(29))}, r"holds 30 images but .*train-labels.* holds 29 labels"),
        ({NAMES[3]: IdxArray((10,), "uint8", bytes([0, 1, 2, 10, 4, 5, 6, 7, 8, 9]))}, r"label 3 is 10; MNIST labels"),
        ({NAMES[1]: IdxArray((30,), "int8", bytes(30))}, "labels must be ubyte with 1 dimension"),
        ({NAMES[0]: IdxArray((30, 784), "uint8", bytes(30 * 784))}, r"images must be ubyte with 3 dimensions.*30x784"),
        ({NAMES[2]: IdxArray((10, 14, 14), "uint8", bytes(10 * 196))}, "has 28x28 images but .* has 14x14"),
    ],
    ids=["count-mismatch", "label-out-of-range", "label-dtype", "image-ndim", "image-size"],
)
def test_inconsistent_files(tmp_path: Path, change: dict[str, IdxArray], match: str) -> None:
    write_fake(tmp_path, {**fake_mnist(), **change})
    with pytest.raises(DataError, match=match):
        load_mnist(tmp_path)


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    write_fake(tmp_path, fake_mnist())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: truncated gzip stream"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample": True, "root": "x"}, ArgumentError, "sample=True loads the shipped sample"),
        ({"sample": True, "download": True}, ArgumentError, "sample=True loads the shipped sample"),
        ({"sample": True, "dtype": "int64"}, DTypeError, "dtype must be float32 or float64, not int64"),
        ({"root": "x", "download": True, "mirrors": "https://a/"}, ArgumentError, "not one string"),
        ({"root": "x", "download": True, "mirrors": []}, ArgumentError, "mirrors is empty"),
        ({"root": "x", "download": True, "mirrors": ["ftp://a/"]}, ArgumentError, "http"),
        ({"root": "x", "download": True, "timeout": 0}, ArgumentError, "timeout must be a positive number"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_mnist(**kwargs)


# -- downloads from a local server --------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    payloads: dict[str, bytes]  # "<name>.gz" -> gzip bytes; "<name>" -> raw bytes
    wrong: dict[str, bytes]
    log: list[str]
    release: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the misbehaving modes end connections abruptly on purpose


class Handler(BaseHTTPRequestHandler):
    """``GET /<mode>/<file>``: ``mode`` says how to (mis)behave."""

    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append(self.path)
        _, mode, file = self.path.split("/", 2)
        body = srv.payloads.get(file)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode == "raw":
            body = srv.payloads[file.removesuffix(".gz")]
        elif mode == "wrong":
            body = srv.wrong[file]
        elif mode == "garbage":
            body = b"<html><body>Service temporarily unavailable</body></html>"
        if mode in ("good", "raw", "wrong", "garbage"):
            self._head(len(body))
            self.wfile.write(body)
        elif mode == "nolength":
            self._head(None)
            self.wfile.write(body)
        elif mode == "short":  # promises the whole body, sends half, closes cleanly
            self._head(len(body))
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif mode == "reset":  # sends half, then drops the connection with a TCP reset
            self._head(len(body))
            self.wfile.write(body[: len(body) // 2])
            time.sleep(0.05)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif mode == "slow":  # headers and a little data, then nothing for longer than the timeout
            self._head(len(body))
            self.wfile.write(body[:1000])
            srv.release.wait(10)
        elif mode == "stall":  # not even a status line
            srv.release.wait(10)
        elif mode == "drip":  # the whole body, one byte at a time, each well within the read timeout
            self._head(len(body))
            for i in range(len(body)):
                if srv.release.wait(0.05):
                    break
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        elif mode == "drip-headers":  # even the status line comes one byte at a time
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" * 1000:
                if srv.release.wait(0.05):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        else:
            raise AssertionError(f"unknown mode {mode}")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict[str, IdxArray]:
    """Fake MNIST files, whose sizes and checksums replace the real ones in matgrad.data.mnist."""
    arrays = fake_mnist()
    files = {}
    for name, arr in arrays.items():
        raw = arr.header() + arr.data
        files[name] = (len(raw), hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(mnist_module, "FILES", files)
    return arrays


@pytest.fixture
def server(fake: dict[str, IdxArray], monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = Server(("127.0.0.1", 0), Handler)
    srv.payloads, srv.wrong, srv.log, srv.release = {}, {}, [], threading.Event()
    other = fake_mnist(seed=7)
    for name, arr in fake.items():
        raw = arr.header() + arr.data
        srv.payloads[name] = raw
        srv.payloads[name + ".gz"] = gzip.compress(raw, mtime=0)
        srv.wrong[name + ".gz"] = gzip.compress(other[name].header() + other[name].data, mtime=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def url(srv: Server, mode: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{mode}/"


def fetch(root: Path, mirrors: list[str], **kwargs: Any) -> mnist_module.MNIST:
    kwargs.setdefault("progress", False)
    return load_mnist(root, download=True, mirrors=mirrors, timeout=TIMEOUT, **kwargs)


def assert_matches(data: mnist_module.MNIST, arrays: dict[str, IdxArray]) -> None:
    assert [t.shape for t in data] == [(30, 784), (30, 1), (10, 784), (10, 1)]
    assert data.x_test[[9]].tolist()[0] == pytest.approx([b / 255 for b in arrays[NAMES[2]].data[9 * 784 :]])
    assert [r[0] for r in data.y_train.tolist()] == [i % 10 for i in range(30)]


def test_download_success(tmp_path: Path, server: Server, fake: dict[str, IdxArray], backend: str) -> None:
    root = tmp_path / "new" / "dir"
    data = fetch(root, [url(server, "good")])
    assert_matches(data, fake)
    assert sorted(p.name for p in root.iterdir()) == sorted(n + ".gz" for n in NAMES)
    for name in NAMES:
        assert sha256_uncompressed(root / (name + ".gz")) == mnist_module.FILES[name][1]
    assert server.log == [f"/good/{n}.gz" for n in NAMES]


def test_files_present_and_valid_are_not_downloaded_again(tmp_path: Path, server: Server) -> None:
    paths = download_mnist(tmp_path, mirrors=[url(server, "good")], timeout=TIMEOUT, progress=False)
    assert paths == [str(tmp_path / (n + ".gz")) for n in NAMES]
    server.log.clear()
    fetch(tmp_path, [url(server, "good")])
    assert server.log == []


@pytest.mark.parametrize("mode", ["raw", "nolength"])
def test_download_variants_accepted(tmp_path: Path, server: Server, fake: dict[str, IdxArray], mode: str) -> None:
    assert_matches(fetch(tmp_path, [url(server, mode)]), fake)
    suffix = "" if mode == "raw" else ".gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + suffix for n in NAMES)


FAILURES = {
    "missing": "HTTP 404",
    "wrong": "checksum mismatch: SHA-256",
    "garbage": r"wrong size: \d+ bytes uncompressed, expected 23536",
    "short": "connection closed after 11",
    "reset": r"connection (dropped|closed)",
    "slow": f"timed out \\(no data for {TIMEOUT:g} s\\)",
    "stall": f"timed out \\(no data for {TIMEOUT:g} s\\)",
    # a byte every 0.05 s never trips the 0.5 s read timeout: the bound on the whole transfer does
    "drip": rf"too slow: \d+ bytes in [\d.]+ s, past the transfer's deadline \(a download must average "
    rf"16,384 bytes/s after its first {2 * TIMEOUT:g} s",
    "drip-headers": r"too slow: 0 bytes in [\d.]+ s",
}


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_single_mirror_failure_leaves_nothing(tmp_path: Path, server: Server, mode: str) -> None:
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [url(server, mode)])
    message = str(info.value)
    assert message.startswith("could not download train-images-idx3-ubyte.gz from any mirror:")
    assert re.search(rf"{re.escape(url(server, mode))}train-images-idx3-ubyte.gz: {FAILURES[mode]}", message)
    assert list(tmp_path.iterdir()) == []  # no partial file at the final path, no temporary file


@pytest.mark.parametrize("mode", ["missing", "wrong", "short", "reset"])
def test_fallback_to_second_mirror(tmp_path: Path, server: Server, fake: dict[str, IdxArray], mode: str) -> None:
    assert_matches(fetch(tmp_path, [url(server, mode), url(server, "good")]), fake)
    assert server.log[:2] == [f"/{mode}/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + ".gz" for n in NAMES)


def test_fallback_after_timeout(
    tmp_path: Path, server: Server, fake: dict[str, IdxArray], capsys: pytest.CaptureFixture[str]
) -> None:
    mirrors = [url(server, "slow"), url(server, "good")]
    paths = download_mnist(tmp_path, mirrors=mirrors, timeout=TIMEOUT, progress=True)
    assert [Path(p).name for p in paths] == [n + ".gz" for n in NAMES]
    assert temps(tmp_path) == []
    err = capsys.readouterr().err
    assert "timed out" in err and "trying the next mirror" in err and "train-images-idx3-ubyte.gz" in err


def test_all_mirrors_fail(tmp_path: Path, server: Server) -> None:
    modes = ["missing", "wrong", "garbage", "short", "reset", "slow"]
    with pytest.raises(DataError) as info:
        fetch(tmp_path, [url(server, m) for m in modes])
    lines = str(info.value).splitlines()
    for mode, line in zip(modes, lines[1:]):
        assert re.fullmatch(rf"  {re.escape(url(server, mode))}train-images-idx3-ubyte.gz: {FAILURES[mode]}.*", line)
    assert f"no file was written to {tmp_path}" in lines[len(modes) + 1]
    assert "sample=True" in lines[-1]
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_then_retry(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    real_bar = mnist_module._progress_bar

    class Interrupting:
        def __init__(self, *args: Any) -> None:
            pass

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def update(self, n: int) -> None:
            raise KeyboardInterrupt  # Ctrl-C after the first chunk reached the temporary file

    monkeypatch.setattr(mnist_module, "_progress_bar", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path, [url(server, "good")])
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(mnist_module, "_progress_bar", real_bar)
    fetch(tmp_path, [url(server, "good")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + ".gz" for n in NAMES)


def test_retry_after_a_killed_process(tmp_path: Path, server: Server, fake: dict[str, IdxArray]) -> None:
    # what SIGKILL mid-download leaves: a partial temporary file, old enough to be stale
    stale = tmp_path / ".train-images-idx3-ubyte.gz.0badc0de.part"
    stale.write_bytes(b"\x1f\x8b partial")
    old = time.time() - 2 * mnist_module.STALE_AFTER
    os.utime(stale, (old, old))
    recent = tmp_path / ".train-labels-idx1-ubyte.gz.5ca1ab1e.part"  # maybe another process's, live
    recent.write_bytes(b"")
    assert_matches(fetch(tmp_path, [url(server, "good")]), fake)
    assert temps(tmp_path) == [recent.name]


def test_invalid_files_are_replaced(tmp_path: Path, server: Server, fake: dict[str, IdxArray]) -> None:
    fetch(tmp_path, [url(server, "good")])
    labels_gz = tmp_path / "train-labels-idx1-ubyte.gz"
    labels_gz.write_bytes(labels_gz.read_bytes()[:-5])  # truncated in place
    images = tmp_path / "t10k-images-idx3-ubyte"  # an uncompressed copy with other pixels
    write_idx(images, fake_mnist(seed=1)[NAMES[2]])
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=re.escape("train-labels-idx1-ubyte.gz: truncated gzip stream")):
        load_mnist(tmp_path)
    server.log.clear()
    assert_matches(fetch(tmp_path, [url(server, "good")]), fake)
    assert server.log == ["/good/train-labels-idx1-ubyte.gz", "/good/t10k-images-idx3-ubyte.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + ".gz" for n in NAMES)


def test_checksum_mismatch_never_accepted(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(tmp_path, [url(server, "wrong"), url(server, "wrong")])
    assert list(tmp_path.iterdir()) == []


def test_unwritable_root(tmp_path: Path, server: Server) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot write to .*file/mnist: .*pass root= a writable directory"):
        fetch(tmp_path / "file" / "mnist", [url(server, "good")])
    assert server.log == []


def test_a_full_disk_is_not_a_mirror_failure(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    real_new_temp = mnist_module.new_temp

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

    def new_temp(directory: str, name: str) -> tuple[str, Any]:
        path, f = real_new_temp(directory, name)
        return path, Full(f)

    monkeypatch.setattr(mnist_module, "new_temp", new_temp)
    with pytest.raises(
        DataError, match=rf"^cannot write train-images-idx3-ubyte.gz into {re.escape(str(tmp_path))}: No"
    ):
        fetch(tmp_path, [url(server, "good"), url(server, "good")])
    assert server.log == ["/good/train-images-idx3-ubyte.gz"]  # the second mirror would fail alike
    assert list(tmp_path.iterdir()) == []


def test_default_mirrors_are_https() -> None:
    assert mnist_module.MIRRORS and all(m.startswith("https://") and m.endswith("/") for m in mnist_module.MIRRORS)


# -- the full MNIST (MATGRAD_MNIST_DIR) --------------------------------------------------------------


@needs_full_mnist
def test_full_mnist_loads_and_verifies_without_network(tmp_path: Path) -> None:
    if "numpy" not in mg.available_backends():
        pytest.skip("NumPy is not installed (the python backend holds full MNIST slowly)")
    assert MNIST_DIR is not None
    dead = "http://127.0.0.1:9/"  # the discard port: any request would fail
    data = load_mnist(MNIST_DIR, download=True, mirrors=[dead], backend="numpy", progress=False)
    assert [t.shape for t in data] == [(60000, 784), (60000, 1), (10000, 784), (10000, 1)]
    assert sorted(counts(data.y_test).items())[:3] == [(0, 980), (1, 1135), (2, 1032)]


@needs_full_mnist
def test_sample_rebuilds_identically(tmp_path: Path) -> None:
    import importlib.util

    assert MNIST_DIR is not None
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_mnist_sample.py"
    spec = importlib.util.spec_from_file_location("make_mnist_sample", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--source", MNIST_DIR, "--out", str(tmp_path)])
    for name in [*(n + ".gz" for n in NAMES), "README.md"]:
        assert (tmp_path / name).read_bytes() == Path(SAMPLE_DIR, name).read_bytes(), name
