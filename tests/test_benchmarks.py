"""Smoke tests of the benchmark scripts: each runs in a tiny configuration and prints its tables.

Nothing here asserts on time (the machine is shared and noisy); the scripts are run in
subprocesses on the shipped MNIST sample, as a user would run them. The one numerical check is
that the hand-written NumPy reference computes the same gradients as matgrad.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
SAMPLE = REPO / "matgrad" / "data" / "mnist_sample"


def run(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def has_table(text: str) -> bool:
    lines = text.splitlines()
    return any(a.startswith("| ") and b.startswith("|:") for a, b in itertools.pairwise(lines))


def _reference():
    spec = importlib.util.spec_from_file_location("reference_numpy", BENCH / "reference_numpy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sizes", [[784, 128, 10], [784, 256, 128, 10]])
def test_reference_gradients_equal_matgrads(sizes):
    ref = _reference()
    x, y, _, _ = ref.load_arrays(str(SAMPLE), 256)
    idx = np.random.default_rng(1).permutation(len(x))[:64]
    rows = ref.check_gradients(sizes, x[idx], y[idx], seed=3)
    assert [r["name"] for r in rows][:3] == ["loss", "W1", "b1"]
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


def test_reference_step_equals_matgrad_sgd_step():
    """One SGD step of the reference leaves the same weights as matgrad's SGD on the same batch."""
    import matgrad as mg

    ref = _reference()
    x, y, _, _ = ref.load_arrays(str(SAMPLE), 128)
    sizes = [784, 32, 10]
    params = ref.init_params(sizes, 5)
    net = ref.NumpyMLP(params, lr=0.1, batch_size=64)
    net.step(x[:50], y[:50])  # a partial batch: buffers are sliced, not reallocated
    model = mg.nn.MLP(sizes, backend="numpy")
    linears = [m for m in model if isinstance(m, mg.nn.Linear)]
    with mg.no_grad():
        for lin, (w, b) in zip(linears, params):
            lin.weight.copy_(mg.Tensor2D(w))
            lin.bias.copy_(mg.Tensor2D(b.reshape(1, -1)))
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    loss = mg.functional.cross_entropy(model(mg.Tensor2D(x[:50])), mg.Tensor2D(y[:50].reshape(-1, 1), dtype="int64"))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for lin, w, b in zip(linears, net.W, net.b):
        np.testing.assert_allclose(lin.weight.numpy(), w, rtol=0, atol=1e-6)
        np.testing.assert_allclose(lin.bias.numpy().reshape(-1), b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sizes", [[784, 32, 10], [784, 32, 16, 10]])
def test_reference_fresh_arrays_compute_the_same_steps(sizes):
    """fresh=True (a new array for every result, as an autograd makes) changes no number."""
    ref = _reference()
    x, y, _, _ = ref.load_arrays(str(SAMPLE), 192)
    params = ref.init_params(sizes, 2)
    buffered, fresh = ref.NumpyMLP(params, 0.1), ref.NumpyMLP(params, 0.1, fresh=True)
    for lo in (0, 64, 128, 160):  # the last batch is partial
        xb, yb = x[lo : lo + 64], y[lo : lo + 64]
        assert buffered.step(xb, yb) == fresh.step(xb, yb)
    for (w1, b1), (w2, b2) in zip(buffered.params(), fresh.params()):
        np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-7)
        np.testing.assert_allclose(b1, b2, rtol=0, atol=1e-7)


def test_reference_script_check():
    out = run("reference_numpy.py", "--data", str(SAMPLE), "--limit", "640", "--check").stdout
    assert has_table(out) and "NO" not in out


@pytest.fixture(scope="module")
def compare_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "compare.json"
    proc = run(
        "train_compare.py",
        "--data",
        str(SAMPLE),
        "--limit",
        "640",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--growth-epochs",
        "2",
        "--models",
        "784-32-10,784-32-16-10",
        "--python-samples",
        "64",
        "--json",
        str(path),
    )
    assert has_table(proc.stdout), proc.stdout
    assert "paired ratio" in proc.stdout
    return path


def test_train_compare_smoke(compare_json):
    report = json.loads(compare_json.read_text())
    frameworks = {(r["model"], r["framework"]) for r in report["results"]}
    expected = {"matgrad-numpy", "numpy-reference"}
    if importlib.util.find_spec("torch") is not None:
        expected.add("torch")
    for model in ("784-32-10", "784-32-16-10"):
        assert {(model, f) for f in expected} <= frameworks
    assert ("784-32-10", "matgrad-python") in frameworks
    for r in report["results"]:
        assert r["epoch_time"]["median"] > 0
        assert r["peak_rss_mib"] > 0
        assert 0.0 <= r["test_accuracy"] <= 1.0
    # same initial weights and data order: every fast framework ends at (nearly) the same accuracy
    for model in ("784-32-10", "784-32-16-10"):
        accs = [r["test_accuracy"] for r in report["results"] if r["model"] == model and r["framework"] in expected]
        assert max(accs) - min(accs) <= 0.01, accs
    assert "matgrad-numpy / numpy-reference" in report["ratios"]["784-32-10"]


def test_plot_writes_svg(compare_json, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "images" / "epoch_times.svg"
    run("plot_epoch_times.py", str(compare_json), "--out", str(out))
    text = out.read_text()
    assert "<svg" in text and text.rstrip().endswith("</svg>")
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]


def test_plot_refuses_a_non_svg_name(compare_json, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "plot_epoch_times.py"), str(compare_json), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "must end in .svg" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_says_so(compare_json, tmp_path):
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['plot_epoch_times.py', {str(compare_json)!r}, '--out', {str(tmp_path / 'x.svg')!r}]; "
        f"runpy.run_path({str(BENCH / 'plot_epoch_times.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "matplotlib is not installed" in proc.stderr and "pip install matplotlib" in proc.stderr
    assert not (tmp_path / "x.svg").exists()


def test_micro_smoke(tmp_path):
    path = tmp_path / "micro.json"
    args = ["--repeats", "2", "--min-time", "0.001", "--chain", "1000", "--import-runs", "1", "--json", str(path)]
    out = run("micro.py", *args).stdout
    assert has_table(out)
    report = json.loads(path.read_text())
    ops = {(r["op"], r["mode"]) for r in report["ops"]}
    for op in ("add", "matmul", "relu", "linear", "cross_entropy", "sum"):
        assert {(op, "no_grad"), (op, "plain"), (op, "grad")} <= ops
    assert sum(r["op"] == "matmul" for r in report["ops"]) == 6  # (64,784)@(784,128) and (8,8)@(8,8)
    assert [r["backend"] for r in report["chain"]] == ["numpy", "python"]
    assert all("error" not in r for r in report["chain"]), report["chain"]
    assert len(report["import"]["rows"]) == 8
    assert report["optimizer"]


@pytest.mark.parametrize("backend,limit", [("numpy", "640"), ("python", "128")])
def test_profile_smoke(backend, limit):
    out = run("profile_train.py", "--data", str(SAMPLE), "--backend", backend, "--limit", limit, "--top", "5").stdout
    assert has_table(out)
    assert "Top 5 functions by own time" in out and "outside the backend" in out


def test_phases_smoke():
    args = ["--data", str(SAMPLE), "--limit", "256", "--rounds", "1", "--tiny-repeats", "1", "--threads", "1"]
    out = run("phases.py", *args).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 784")]
    phase_rows = [[c.strip() for c in r] for r in rows if len(r) == 7]
    frameworks = ("matgrad-numpy", "numpy-reference", "numpy-reference, fresh arrays", "matgrad - reference")
    assert [(r[0], r[1]) for r in phase_rows] == [
        (m, fw) for m in ("784-128-10", "784-256-128-10") for fw in frameworks
    ]
    for mine, theirs, diff in zip(phase_rows[0::4], phase_rows[1::4], phase_rows[3::4]):
        for a, b, d in zip(mine[2:], theirs[2:], diff[2:]):  # the difference row is the difference
            assert abs(float(a) - float(b) - float(d)) < 0.15
    tiny = [[c.strip() for c in r] for r in rows if len(r) == 5]
    assert [r[1] for r in tiny] == ["8-8-3", "8-8-8-3"]


def test_cnn_compare_smoke(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "cnn.json"
    args = ["--data", str(SAMPLE), "--limit", "192", "--test-limit", "200", "--epochs", "1", "--threads", "1"]
    out = run("cnn_compare.py", *args, "--profile", "--json", str(path)).stdout
    assert has_table(out) and "Where one matgrad epoch goes" in out and "unfold (im2col)" in out
    (epoch,) = json.loads(path.read_text())["epochs"]
    # the same initial weights and batches: the two frameworks' accuracies agree closely
    assert abs(epoch["matgrad"]["acc"] - epoch["torch"]["acc"]) <= 0.02


def test_jacobian_scaling_smoke():
    # --no-torch: importing torch in a fresh process takes seconds; test_autograd_functional.py compares with torch
    out = run("jacobian_scaling.py", "--batches", "1,2", "--hidden", "8", "--repeats", "1", "--no-torch").stdout
    assert has_table(out)
    rows = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in out.splitlines()
        if line.startswith("| ") and " x 10 = " in line
    ]
    assert [r[:2] for r in rows] == [["1 x 10 = 10", "10 x 6,272"], ["2 x 10 = 20", "20 x 6,272"]]
    assert all(len(r) == 5 for r in rows)


def test_data_path_is_an_option_not_hard_coded():
    for script in ("train_compare.py", "profile_train.py", "reference_numpy.py", "phases.py", "cnn_compare.py"):
        text = (BENCH / script).read_text()
        assert "shared/data" not in text.replace("../shared/data/mnist", ""), script
    assert os.path.isdir(SAMPLE)


def test_distributed_scaling_smoke(tmp_path):
    """Two processes over 127.0.0.1 against one, a tiny epoch: the tables and the JSON are there."""
    pytest.importorskip("torch")
    out = tmp_path / "scaling.json"
    args = ["--limit", "640", "--batches", "64", "--repeats", "1", "--collective-iters", "3", "--sweep-steps", "2"]
    text = run("distributed_scaling.py", *args, "--json", str(out)).stdout
    assert has_table(text) and "all-reduce per step" in text and "least-squares line" in text
    figures = json.loads(out.read_text())["figures"]
    assert figures["batch 64"]["test_acc"][0] == figures["batch 64"]["test_acc"][1]  # same steps, same model
    assert set(figures["bare_allreduce_s"]) == {"1 float", "101,770 floats"}


def test_compile_equality_smoke():
    out = run("compile_equality.py", "--steps", "4", "--models", "784-8-10").stdout
    assert "784-8-10: 4 losses equal: True; final weights equal byte for byte: True" in out
    assert "'replayed': 2" in out
