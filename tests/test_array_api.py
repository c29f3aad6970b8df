"""The Array API backends (torch on the CPU, array_api_strict on a simulated device) against numpy.

The op table runs here on both (forward and gradients against the numpy backend, gradcheck and
gradgradcheck in float64, the hand-computed values), with fewer hypothesis examples than on the
two original backends. array_api_strict runs on its simulated "device1": an array a kernel makes
on the default device instead would meet a device1 array and raise, as a GPU mistake would.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_table import CASES, DOMAINS, HAND, Case

import matgrad as mg
import matgrad.functional as F
from matgrad import backends
from matgrad.testing import assert_close, shapes

np = pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")

# (backend, device): the libraries the default suite can run everywhere
TARGETS = [
    pytest.param(("array_api_strict", "device1"), id="strict-device1"),
    pytest.param(("torch", "cpu"), id="torch-cpu"),
]
NAMES = ("array_api_strict", "torch")


def _available(name: str) -> bool:
    return name in mg.available_backends()


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[backends.Backend]:
    """An Array API backend object (its library installed, else skipped)."""
    name, device = request.param
    if not _available(name):
        pytest.skip(f"{name} is not installed")
    yield backends.get(name, device)


NP = backends.get("numpy")


# -- the op table ------------------------------------------------------------------------------


def _draw_rows(data: st.DataObject, case: Case) -> list[list[list[float]]]:
    m, n = data.draw(shapes(max_rows=4, max_cols=4), label="shape")
    out = []
    for i, (r, c) in enumerate(case.shapes(m, n)):
        domain = case.domains[min(i, len(case.domains) - 1)]
        values = data.draw(
            st.lists(DOMAINS[domain], min_size=r * c, max_size=r * c, unique=domain == "distinct"), label=f"input {i}"
        )
        out.append([values[k * c : (k + 1) * c] for k in range(r)])
    return out


def _tensors(rows: list[Any], be: backends.Backend, dtype: str) -> list[mg.Tensor2D]:
    return [mg.Tensor2D(x, dtype=dtype, backend=be, requires_grad=True) for x in rows]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@settings(max_examples=3)
@given(data=st.data())
def test_gradcheck(case: Case, target: backends.Backend, data: st.DataObject) -> None:
    assert mg.gradcheck(case.fn, _tensors(_draw_rows(data, case), target, "float64"))


@pytest.mark.parametrize("case", [c for c in CASES if c.smooth], ids=lambda c: c.name)
@settings(max_examples=2)
@given(data=st.data())
def test_gradgradcheck(case: Case, target: backends.Backend, data: st.DataObject) -> None:
    assert mg.gradgradcheck(case.fn, _tensors(_draw_rows(data, case), target, "float64"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@settings(max_examples=3)
@given(data=st.data())
def test_agrees_with_numpy(case: Case, target: backends.Backend, data: st.DataObject) -> None:
    """Outputs and gradients equal the numpy backend's, in float64 and float32, and stay on the device."""
    rows = _draw_rows(data, case)
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-6)):
        mg.manual_seed(3)  # dropout draws the same mask on every backend
        ours = _tensors(rows, target, dtype)
        out = case.fn(*ours)
        mg.manual_seed(3)
        ref_in = _tensors(rows, NP, dtype)
        ref = case.fn(*ref_in)
        if case.name != "to_other_backend":
            assert out.kernels is target and out.device == target.device
        assert out.dtype == ref.dtype == dtype
        assert_close(out, ref, rtol=tol, atol=tol)
        upstream = [[0.5 + 0.25 * ((i + 2 * j) % 5) for j in range(ref.ncols)] for i in range(ref.nrows)]
        out.backward(mg.Tensor2D(upstream, dtype=dtype, backend=out.kernels))
        ref.backward(mg.Tensor2D(upstream, dtype=dtype, backend=ref.kernels))
        for a, b in zip(ours, ref_in):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert a.grad.kernels is target and a.grad.dtype == dtype
                assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("name, inputs, expected", HAND, ids=[h[0] for h in HAND])
def test_hand_computed(name: str, inputs: list, expected: list, target: backends.Backend) -> None:
    case = next(c for c in CASES if c.name == name)
    out = case.fn(*[mg.Tensor2D(x, dtype="float64", backend=target) for x in inputs])
    assert_close(out, expected, rtol=1e-14, atol=1e-14)


# -- kernels: what the standard leaves out -----------------------------------------------------


def _pair(rows: list[list[float]], be: backends.Backend, dtype: str = "float64") -> tuple[Any, Any]:
    return be.from_rows(rows, dtype), NP.from_rows(rows, dtype)


def _same(be: backends.Backend, got: Any, want: Any, exact: bool = True, tol: float = 1e-12) -> None:
    assert be.dtype(got) == NP.dtype(want)
    g, w = be.to_numpy(got), want
    assert g.shape == w.shape
    if exact:  # bit for bit (-0.0 too), except that a NaN's sign and payload may differ
        nan = np.isnan(w)
        assert (np.isnan(g) == nan).all(), (g, w)
        assert np.where(nan, 0, g).tobytes() == np.where(nan, 0, w).tobytes(), (g, w)
    else:
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@settings(max_examples=25)
@given(st.integers(1, 5), st.integers(1, 5), st.data())
def test_scatter_adds_repeats_exactly_as_numpy(target: backends.Backend, m: int, n: int, data: st.DataObject) -> None:
    """take_adjoint and pick_adjoint without np.add.at: repeated positions summed in NumPy's order."""
    rows = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=6))
    cols = data.draw(st.one_of(st.just(slice(None)), st.lists(st.integers(0, n - 1), min_size=1, max_size=6)))
    if data.draw(st.booleans()):
        rows = slice(None, None, -1)  # a negative step: PyTorch has no such slice
    kr = len(rows) if isinstance(rows, list) else m
    kc = len(cols) if isinstance(cols, list) else n
    values = st.floats(-4, 4, width=32) | st.sampled_from([-0.0, 1e30])
    g = [[data.draw(values) for _ in range(kc)] for _ in range(kr)]
    ours, ref = _pair(g, target)
    _same(target, target.take_adjoint(ours, m, n, rows, cols), NP.take_adjoint(ref, m, n, rows, cols))
    a, a_ref = _pair([[float(i * n + j) for j in range(n)] for i in range(m)], target)
    _same(target, target.take(a, rows, cols), NP.take(a_ref, rows, cols))
    pr = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=6))
    pc = [data.draw(st.integers(0, n - 1)) for _ in pr]
    gp, gp_ref = _pair([[data.draw(values)] for _ in pr], target)
    _same(target, target.pick_adjoint(gp, m, n, pr, pc), NP.pick_adjoint(gp_ref, m, n, pr, pc))
    _same(target, target.pick(a, pr, pc), NP.pick(a_ref, pr, pc))


def test_kernels_at_the_edges(target: backends.Backend) -> None:
    """IEEE results without warnings, int64 meeting Python floats, slices past the end, in-place on views."""
    be = target
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = be.from_rows([[0.0, -1.0, 1000.0, -1000.0]], "float32")
        for op in ("log", "sqrt", "exp", "sigmoid", "log1p"):
            want = NP.unary(op, NP.from_rows([[0.0, -1.0, 1000.0, -1000.0]], "float32"))
            _same(be, be.unary(op, x), want, exact=False, tol=1e-6)  # libraries' float32 exp differ by an ulp
        _same(be, be.div(x, 0.0), NP.div(NP.from_rows([[0.0, -1.0, 1000.0, -1000.0]], "float32"), 0.0))
    i, i_ref = _pair([[1, -2, 3]], be, "int64")
    for kernel in ("add", "sub", "mul", "maximum", "minimum"):
        _same(be, getattr(be, kernel)(i, 2.0), getattr(NP, kernel)(i_ref, 2.0).astype(np.int64))
        _same(be, getattr(be, kernel)(2.0, i), getattr(NP, kernel)(2.0, i_ref).astype(np.int64))
    _same(be, be.compare("lt", i, 2.5, "float32"), NP.compare("lt", i_ref, 2.5, "float32"))
    _same(be, be.compare("ne", i, 0.0, "float64"), NP.compare("ne", i_ref, 0.0, "float64"))
    _same(be, be.where(i, 1.0, 0.0), NP.where(i_ref, 1.0, 0.0))
    _same(be, be.full(2, 2, 3.0, "int64"), NP.full(2, 2, 3.0, "int64"))
    be.assign(i, 7.0)
    assert be.tolist(i) == [[7, 7, 7]]
    be.axpy(i, be.from_rows([[1, 2, 3]], "int64"), 2.0)
    assert be.tolist(i) == [[9, 11, 13]]
    big, big_ref = _pair([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], be)
    _same(be, be.take(big, slice(1, 100), slice(None)), NP.take(big_ref, slice(1, 100), slice(None)))
    # an alias shares storage: an in-place change through it shows in the original, as on numpy
    t = mg.Tensor2D([[1.0, 2.0]], backend=be)
    alias = t[:, :]
    with mg.no_grad():
        alias.add_(1.0)
    assert t.tolist() == [[2.0, 3.0]] and t._version == alias._version == 1
    assert be.aliases(alias.native, t.native) and not be.aliases(t.T.native, t.native)
    assert be.storage(be.copy(t.native)) != be.storage(t.native)


def test_softmax_xent_checks_and_agrees(target: backends.Backend) -> None:
    x, x_ref = _pair([[0.0, 1.0, -2.0], [2.0, 3.0, 30.0]], target)
    t, t_ref = _pair([[2], [0]], target, "int64")
    (loss, probs), (loss_ref, probs_ref) = target.softmax_xent(x, t), NP.softmax_xent(x_ref, t_ref)
    _same(target, loss, loss_ref, exact=False)
    _same(target, probs, probs_ref, exact=False)
    for scale in (0.5, target.from_rows([[1.0], [2.0]], "float64")):
        ref_scale = 0.5 if isinstance(scale, float) else NP.from_rows([[1.0], [2.0]], "float64")
        _same(
            target, target.softmax_xent_grad(probs, t, scale), NP.softmax_xent_grad(probs_ref, t_ref, ref_scale), False
        )
    for bad in (3, -1):
        with pytest.raises(IndexError):
            target.softmax_xent(x, target.from_rows([[0], [bad]], "int64"))
    assert target.bad_index(target.indices(target.from_rows([[0, 5, -1]], "int64")), 3) == 5


def test_random_numbers_are_numpys(target: backends.Backend) -> None:
    """One seed, the numpy backend's draws on every backend and device: the same initial weights."""
    mg.manual_seed(5)
    ours = [mg.randn(3, 4, backend=target), mg.rand(2, 2, backend=target, dtype="float64")]
    mg.manual_seed(5)
    ref = [mg.randn(3, 4, backend="numpy"), mg.rand(2, 2, backend="numpy", dtype="float64")]
    for a, b in zip(ours, ref):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    mg.manual_seed(5)
    lin = mg.nn.Linear(5, 3, backend=target)
    mg.manual_seed(5)
    lin_ref = mg.nn.Linear(5, 3, backend="numpy")
    assert lin.weight.numpy().tobytes() == lin_ref.weight.numpy().tobytes()


# -- devices ----------------------------------------------------------------------------------


@pytest.mark.skipif(not _available("array_api_strict"), reason="array_api_strict is not installed")
def test_mixing_devices_is_a_clear_error() -> None:
    a = mg.Tensor2D([[1.0, 2.0]], backend="array_api_strict", device="device1")
    b = mg.Tensor2D([[1.0, 2.0]], backend="array_api_strict")
    assert (a.device, b.device) == ("device1", "CPU_DEVICE")
    with pytest.raises(
        mg.BackendError, match=r"different devices \(array_api_strict on device1 and .*CPU_DEVICE\).*device='device1'"
    ):
        a + b
    with pytest.raises(mg.BackendError, match="different devices"):
        F.cross_entropy(
            mg.Tensor2D([[0.0, 1.0]], backend=a.kernels), mg.Tensor2D([[1]], dtype="int64", backend=b.kernels)
        )
    moved = b.to(device="device1")
    assert moved.device == "device1" and (a + moved).tolist() == [[2.0, 4.0]]
    with pytest.raises(mg.BackendError, match="different backends"):
        a + mg.Tensor2D([[1.0, 2.0]], backend="numpy")
    with pytest.raises(mg.BackendError, match="no device 'gpu7'"):
        mg.zeros(1, 1, backend="array_api_strict:gpu7")


def test_registry_and_devices() -> None:
    for name in NAMES:
        if _available(name):
            assert name in mg.available_backends()
            assert backends.get(name) is backends.get(name, backends.get(name).device)
    if _available("torch"):
        t = backends.get("torch")
        assert t is backends.get("torch:cpu") is backends.get("torch", "cpu") and t.device == "cpu"
        assert repr(t) == "<matgrad backend 'torch' on 'cpu'>" and t.spec == "torch:cpu"
        assert pickle.loads(pickle.dumps(t)) is t
        assert "cpu" in backends.devices("torch")
        import torch

        if not torch.cuda.is_available():
            with pytest.raises(mg.BackendError, match=r"torch: device 'cuda' needs CUDA.*device='cpu'"):
                mg.set_backend("torch", device="cuda")
    with pytest.raises(mg.BackendError, match="the numpy backend runs on the CPU only"):
        mg.zeros(1, 1, backend="numpy", device="cuda")
    with pytest.raises(mg.BackendError, match="unknown backend 'jax'"):
        backends.get("jax")
    assert backends.devices("numpy") == ["cpu"]


def test_set_backend_with_a_device_and_the_environment() -> None:
    if not _available("array_api_strict"):
        pytest.skip("array_api_strict is not installed")
    previous = backends.get()
    try:
        mg.set_backend("array_api_strict", device="device2")
        assert mg.get_backend() == "array_api_strict" and mg.get_device() == "device2"
        assert mg.zeros(1, 1).device == "device2" and mg.nn.Linear(2, 2).weight.device == "device2"
    finally:
        mg.set_backend(previous)
    env = {k: v for k, v in os.environ.items() if k != "MATGRAD_BACKEND"}
    env["MATGRAD_BACKEND"] = "array_api_strict:device1"
    out = subprocess.run(
        [sys.executable, "-c", "import matgrad as mg; t = mg.ones(1, 2); print(t.backend, t.device)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.stdout == "array_api_strict device1\n", out.stderr


# -- conversions ------------------------------------------------------------------------------


def test_numpy_to_and_dlpack(target: backends.Backend) -> None:
    rows = [[1.5, -2.0, 3.0], [4.0, 5.0, -6.25]]
    t = mg.Tensor2D(rows, backend=target, dtype="float64", requires_grad=True)
    host = t.numpy()
    assert isinstance(host, np.ndarray) and host.tolist() == rows
    host[0, 0] = 99.0  # a copy: the tensor keeps its value
    assert t.tolist() == rows
    others = ("numpy", "python", *[n for n in NAMES if _available(n)])
    for other in others:
        moved = t.to(backend=other)
        assert moved.backend == other and moved.tolist() == rows
        back = moved.to(backend=target)
        assert back.kernels is target and back.tolist() == rows
        (back * back).sum().backward()  # differentiable across the move and back
    assert_close(t.grad, [[2 * v * len(others) for v in r] for r in rows])
    t32 = t.to("float32", device=target.device)
    assert t32.dtype == "float32" and t32.kernels is target
    # DLPack: NumPy reads the tensor in place, and matgrad reads NumPy or the library in place
    shared = np.from_dlpack(t.detach())
    assert shared.tolist() == rows
    arr = np.arange(6.0).reshape(2, 3)
    if target.device in ("cpu", "CPU_DEVICE"):
        view = mg.from_dlpack(arr, backend=target)
        assert view.kernels is target and view.tolist() == arr.tolist()
        arr[0, 0] = 7.0  # shared, as torch.from_dlpack
        assert view.tolist()[0][0] == 7.0
    else:  # a host array cannot be shared with a device
        with pytest.raises(mg.BackendError, match="cannot be shared; copy it with Tensor2D"):
            mg.from_dlpack(arr, backend=target)
    native = target.from_rows(rows, "float32")
    wrapped = mg.from_dlpack(native)
    assert wrapped.kernels is target and target.aliases(wrapped.native, native)
    assert mg.Tensor2D.from_native(native).kernels is target
    assert mg.Tensor2D(native, dtype="float64", backend="numpy").tolist() == rows  # a foreign array as data
    with pytest.raises(mg.BackendError, match="python backend"):
        mg.from_dlpack(arr, backend="python")


def test_module_to_device_and_pickle(target: backends.Backend) -> None:
    model = mg.nn.MLP([4, 3, 2])
    model.to(backend=target.name, device=target.device)
    assert all(p.kernels is target for p in model.parameters())
    copy = pickle.loads(pickle.dumps(model))
    assert all(p.kernels is target for p in copy.parameters())
    assert [p.tolist() for p in copy.parameters()] == [p.tolist() for p in model.parameters()]
    model.to(backend="numpy")
    assert all(p.backend == "numpy" for p in model.parameters())


def test_checkpoints_are_identical_bytes(target: backends.Backend, tmp_path: Path) -> None:
    mg.manual_seed(1)
    model = mg.nn.MLP([6, 5, 3], backend=target)
    mg.manual_seed(1)
    ref = mg.nn.MLP([6, 5, 3], backend="numpy")
    extra = {"steps": mg.Tensor2D([[3, 4]], dtype="int64", backend=target)}
    mg.save({**model.state_dict(), **extra}, tmp_path / "a.safetensors")
    mg.save({**ref.state_dict(), "steps": mg.Tensor2D([[3, 4]], dtype="int64")}, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = mg.load(tmp_path / "b.safetensors", backend=target)
    assert all(t.kernels is target for t in loaded.values())
    assert loaded["steps"].dtype == "int64" and loaded["steps"].tolist() == [[3, 4]]
    assert [loaded[k].tolist() for k in ref.state_dict()] == [p.tolist() for p in ref.state_dict().values()]


# -- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_equal_numpys(target: backends.Backend, optimizer: str) -> None:
    """An MLP trained a few steps (DataLoader, cross-entropy, dropout, an optimiser, compile) as on numpy."""

    def train(be: backends.Backend, compiled: bool) -> tuple[list[float], list[Any]]:
        mg.manual_seed(0)
        x = mg.randn(40, 6, backend=be)
        y = mg.Tensor2D([[i % 3] for i in range(40)], dtype="int64", backend=be)
        model = mg.nn.Sequential(
            mg.nn.Linear(6, 8, backend=be), mg.nn.ReLU(), mg.nn.Dropout(0.2), mg.nn.Linear(8, 3, backend=be)
        )
        opt = (
            mg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            if optimizer == "sgd"
            else mg.optim.Adam(model.parameters(), lr=0.01)
        )

        def step(xb: mg.Tensor2D, yb: mg.Tensor2D) -> mg.Tensor2D:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        run = mg.compile(step) if compiled else step
        losses = [run(xb, yb).item() for _ in range(2) for xb, yb in mg.data.DataLoader(x, y, 16, shuffle=True)]
        return losses, [p.numpy() for p in model.parameters()]

    ref_losses, ref_params = train(NP, False)
    for compiled in (False, True):
        losses, params = train(target, compiled)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        for p, q in zip(params, ref_params):
            np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [["--backend", "torch"], ["--backend", "array_api_strict", "--device", "device1"]],
    ids=["torch", "strict-device1"],
)
def test_cli_trains_on_the_array_api_backends(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from matgrad.cli import main

    if not _available(args[1]):
        pytest.skip(f"{args[1]} is not installed")
    previous = backends.get()
    try:
        code = main(["train", *args, "--limit", "200", "--epochs", "1", "--hidden", "16", "--quiet"])
        out = capsys.readouterr().out
        main(["train", "--backend", "numpy", "--limit", "200", "--epochs", "1", "--hidden", "16", "--quiet"])
        ref = capsys.readouterr().out
    finally:
        mg.set_backend(previous)
    assert code == 0
    device = args[3] if len(args) > 2 else "cpu"
    assert f"backend {args[1]} on {device}" in out
    # the same init, data order and maths: the same accuracy line as numpy's
    line = next(ln for ln in out.splitlines() if ln.startswith("epoch"))
    ref_line = next(ln for ln in ref.splitlines() if ln.startswith("epoch"))
    assert line.split("time")[0] == ref_line.split("time")[0]


def test_cli_device_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from matgrad.cli import main

    previous = backends.get()
    try:
        assert main(["train", "--backend", "numpy", "--device", "cuda", "--limit", "10", "--quiet"]) == 1
        assert "the numpy backend runs on the CPU only" in capsys.readouterr().err
        assert main(["info"]) == 0
        out = capsys.readouterr().out
    finally:
        mg.set_backend(previous)
    if _available("array_api_strict"):
        assert "array_api_strict (CPU_DEVICE, device1, device2)" in out
    if _available("torch"):
        assert "torch (cpu" in out


def test_gpu_check_runs_without_a_gpu() -> None:
    """The GPU script says what it skipped, and checks parity on the CPU with --cpu."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    out = subprocess.run(
        [sys.executable, str(script), "--cpu", "--limit", "256", "--cases", "add,matmul,cross_entropy,index_gather"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    if _available("torch"):
        import torch

        if not torch.cuda.is_available():
            assert "skipped torch:cuda" in out.stdout
        assert "torch:cpu" in out.stdout
    assert "parity" in out.stdout and "FAIL" not in out.stdout
