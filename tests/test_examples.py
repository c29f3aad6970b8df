"""Every script in examples/ runs as a user would run it, on both backends, with small settings.

Each test starts the script in a subprocess (``sys.executable``), checks the exit status and
reads a result from its output: XOR's four predictions, the spirals' accuracy, the MNIST
scripts' accuracy, the Hessian's relative error, Newton's lead over gradient descent. A meta-test
fails when a script in examples/ has no test here, or no section in docs/examples.md.
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from matgrad.data.mnist import SAMPLE_DIR

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS_PAGE = ROOT / "docs" / "examples.md"
TIMEOUT = 120  # seconds per run; each takes a few on an idle machine

F = TypeVar("F", bound=Callable[..., object])
COVERED: set[str] = set()


def covers(script: str) -> Callable[[F], F]:
    """Register the decorated test as a test of ``examples/<script>`` (read by the meta-test)."""

    def mark(fn: F) -> F:
        COVERED.add(script)
        return fn

    return mark


def run(
    script: str, *args: str, cwd: Path, expect: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/<script> args`` in ``cwd``; fail with its output unless it exits ``expect``."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MATGRAD_BACKEND", "MATGRAD_DATA")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == expect, (
        f"{script} {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def number(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in ``text`` (the last match)."""
    found = re.findall(pattern, text)
    assert found, f"no match for {pattern!r} in:\n{text}"
    return float(found[-1])


# -- xor --------------------------------------------------------------------------------------


@covers("xor.py")
def test_xor_learns_all_four_points(backend: str, tmp_path: Path) -> None:
    out = run("xor.py", "--backend", backend, "--steps", "300", cwd=tmp_path).stdout
    assert "4/4 correct" in out
    rows = re.findall(r"^\s+([01])\s+([01])\s+([01])\s+([0-9.]+)\s+([01])\s+ok$", out, re.M)
    assert sorted((a, b) for a, b, *_ in rows) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert all(int(a) ^ int(b) == int(t) == int(pred) for a, b, t, _, pred in rows)
    losses = [float(v) for v in re.findall(r"loss ([0-9.]+)", out)]
    assert losses[-1] < losses[0] / 10


# -- spirals ----------------------------------------------------------------------------------


@covers("spirals.py")
def test_spirals_accuracy(backend: str, tmp_path: Path) -> None:
    small = ["--points", "40", "--steps", "150", "--hidden", "16"] if backend == "python" else ["--steps", "300"]
    out = run("spirals.py", "--backend", backend, *small, cwd=tmp_path).stdout
    assert number(r"train accuracy ([0-9.]+)%", out) >= 85.0
    assert number(r"test accuracy ([0-9.]+)%", out) >= 75.0  # chance is 33%


@pytest.fixture
def no_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import matplotlib`` fails, installed or not."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib' (hidden by the test)\")\n")
    paths = [str(fake.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@covers("spirals.py")
def test_spirals_plot_without_matplotlib(tmp_path: Path, no_matplotlib: dict[str, str]) -> None:
    small = ["--backend", "python", "--points", "10", "--steps", "5", "--hidden", "4"]
    # Without --plot the script never imports matplotlib, so the broken one does not matter.
    run("spirals.py", *small, cwd=tmp_path, env=no_matplotlib)
    proc = run("spirals.py", *small, "--plot", "out.png", cwd=tmp_path, env=no_matplotlib, expect=1)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, no traceback
    assert "matplotlib" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.png").exists()


@covers("spirals.py")
def test_spirals_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("numpy")
    out = run("spirals.py", "--backend", "numpy", "--steps", "20", "--plot", "spirals.png", cwd=tmp_path).stdout
    assert "drew the decision boundary to spirals.png" in out
    assert (tmp_path / "spirals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- regression -------------------------------------------------------------------------------


@covers("regression.py")
def test_regression_fits_the_sine(backend: str, tmp_path: Path) -> None:
    small = ["--points", "60", "--steps", "200", "--hidden", "16"] if backend == "python" else ["--steps", "300"]
    out = run("regression.py", "--backend", backend, *small, cwd=tmp_path).stdout
    first = number(r"step\s+1\s+train MSE ([0-9.]+)", out)
    train = number(r"final train MSE ([0-9.]+)", out)
    test = number(r"test MSE ([0-9.]+) \(noise floor", out)
    assert train < 0.05 < first  # the noise floor is 0.01; sin(x) itself has mean square 0.5
    assert test < 0.05


# -- mnist_mlp ----------------------------------------------------------------------------------


@covers("mnist_mlp.py")
def test_mnist_mlp_on_the_sample(backend: str, tmp_path: Path) -> None:
    if backend == "python":
        small = ["--sample", "--epochs", "2", "--limit", "500", "--test-limit", "200", "--hidden", "32"]
        small += ["--lr", "3e-3", "--batch-size", "50"]
    else:  # --data DIR, as CI would pass it, pointing at the shipped sample
        small = ["--data", SAMPLE_DIR, "--epochs", "2", "--limit", "2000", "--hidden", "64"]
    out = run("mnist_mlp.py", "--backend", backend, *small, cwd=tmp_path).stdout
    assert len(re.findall(r"^epoch\s+\d+/2\s.*test acc", out, re.M)) == 2
    assert number(r"final test accuracy ([0-9.]+)%", out) >= 50.0  # chance is 10%
    assert "confusion matrix" in out and re.search(r"^\s+9(\s+\d+){10}\s+[0-9.]+%$", out, re.M)


@covers("mnist_mlp.py")
def test_mnist_mlp_missing_data(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("mnist_mlp.py", "--backend", "python", "--data", str(empty), cwd=tmp_path, expect=1)
    assert "MNIST not found" in proc.stderr and "Traceback" not in proc.stderr


# -- mnist_cnn ----------------------------------------------------------------------------------


@covers("mnist_cnn.py")
def test_mnist_cnn_on_the_sample(backend: str, tmp_path: Path) -> None:
    if backend == "python":  # the pure-Python backend: a tiny net on a few images, two epochs
        small = ["--sample", "--epochs", "2", "--limit", "96", "--test-limit", "50", "--channels", "4,8"]
        small += ["--hidden", "16", "--batch-size", "16", "--lr", "0.01"]
    else:
        small = ["--data", SAMPLE_DIR, "--epochs", "2", "--limit", "1000", "--test-limit", "500", "--save", "cnn.st"]
    out = run("mnist_cnn.py", "--backend", backend, *small, cwd=tmp_path).stdout
    losses = [float(v) for v in re.findall(r"^epoch\s+\d/2\s.*train loss ([0-9.]+)\s.*test acc", out, re.M)]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    assert "confusion matrix" in out
    if backend == "numpy":  # a CNN needs more steps than a tiny run gives the Python backend
        assert number(r"final test accuracy ([0-9.]+)%", out) >= 60.0  # chance is 10%
    if backend == "numpy":
        torch = pytest.importorskip("torch")
        from safetensors.torch import load_file

        state = load_file(tmp_path / "cnn.st")
        assert tuple(state["0.weight"].shape) == (16, 1, 5, 5) and tuple(state["7.weight"].shape) == (128, 512)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 5),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 5),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(512, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 10),
        )
        model.load_state_dict(state)


# -- overfit ----------------------------------------------------------------------------------


@covers("overfit.py")
def test_overfit_reaches_100_percent(backend: str, tmp_path: Path) -> None:
    small = ["--limit", "200", "--hidden", "32", "--lr", "0.01"] if backend == "python" else ["--limit", "200"]
    out = run("overfit.py", "--backend", backend, *small, cwd=tmp_path).stdout
    assert "train accuracy 100.00% on 200 images" in out
    accs = re.findall(r"^epoch\s+\d+\s+loss [0-9.]+\s+train acc\s+([0-9.]+)%$", out, re.M)
    assert accs[-1] == "100.00" and all(a != "100.00" for a in accs[:-1])  # stops at the first 100%
    assert 30.0 < number(r"test accuracy\s+([0-9.]+)%", out) < 100.0


@covers("overfit.py")
def test_overfit_gives_up_with_status_1(tmp_path: Path) -> None:
    small = ["--backend", "python", "--limit", "50", "--hidden", "4", "--epochs", "1"]
    proc = run("overfit.py", *small, cwd=tmp_path, expect=1)
    assert "did not reach 100%" in proc.stderr


# -- hessian ----------------------------------------------------------------------------------


@covers("hessian.py")
def test_hessian_matches_finite_differences(backend: str, tmp_path: Path) -> None:
    out = run("hessian.py", "--backend", backend, cwd=tmp_path).stdout
    assert number(r"\|\|fd - Hv\|\| / \|\|Hv\|\| = ([0-9.e+-]+)", out) < 1e-4
    assert number(r"relative error against finite differences = ([0-9.e+-]+)", out) < 1e-4
    assert number(r"max \|H - H.T\| = ([0-9.e+-]+)", out) < 1e-10
    assert len(re.findall(r"^(\s+-?\d+\.\d{3}){13}$", out, re.M)) == 13  # the 13x13 Hessian


# -- newton_logistic --------------------------------------------------------------------------


@covers("newton_logistic.py")
def test_newton_beats_gradient_descent(backend: str, tmp_path: Path) -> None:
    out = run("newton_logistic.py", "--backend", backend, "--steps", "6", cwd=tmp_path).stdout
    curves = [
        (int(s), float(gd), float(nt)) for s, gd, nt in re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
    ]
    assert [s for s, _, _ in curves] == list(range(7))
    assert curves[0][1] == curves[0][2]  # both start from w = 0
    assert all(nt < gd for _, gd, nt in curves[1:])  # Newton is ahead at every step
    gds = [gd for _, gd, _ in curves]
    assert all(b < a for a, b in itertools.pairwise(gds))  # the step 1/L never overshoots
    assert abs(curves[5][2] - curves[6][2]) < 1e-9  # Newton has converged in 5 steps
    assert curves[6][1] - curves[6][2] > 0.03  # while gradient descent is still far off
    assert number(r"final gradient norm: gradient descent [0-9.e+-]+, Newton ([0-9.e+-]+)", out) < 1e-10
    assert number(r"max abs difference ([0-9.e+-]+)", out) < 1e-12  # hessian = X^T diag(p(1-p)) X / N


# -- draw_graph -------------------------------------------------------------------------------


@covers("draw_graph.py")
def test_draw_graph_text_and_dot(backend: str, tmp_path: Path) -> None:
    out = run("draw_graph.py", "--backend", backend, "--output", "graph.dot", cwd=tmp_path).stdout
    assert re.search(r"^output = cross_entropy\s+1 x 1", out, re.M)
    assert re.search(r"0\.weight\s+8 x 4 .*grad norm", out)
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")


@covers("draw_graph.py")
def test_draw_graph_svg(tmp_path: Path) -> None:
    out = run("draw_graph.py", "--backward", cwd=tmp_path).stdout  # default output: mlp_graph.svg
    svg, dot = tmp_path / "mlp_graph.svg", tmp_path / "mlp_graph.dot"
    if svg.exists():
        assert "<svg" in svg.read_text()
    else:  # no Graphviz: the script falls back to the DOT text and says so
        assert "dot program was not found" in out and dot.read_text().startswith("digraph")


# -- every example has a test, a docstring saying how to run it, and a section in the docs -----


def _scripts() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


def test_every_example_has_a_test() -> None:
    scripts = {p.name for p in _scripts()}
    assert scripts, f"no scripts found in {EXAMPLES}"
    assert scripts - COVERED == set(), "examples without a test in tests/test_examples.py"
    assert COVERED - scripts == set(), "tests of examples that no longer exist"


@pytest.mark.parametrize("script", [p.name for p in _scripts()])
def test_example_docstring_says_how_to_run_it(script: str) -> None:
    doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text()))
    assert doc, f"examples/{script} has no module docstring"
    assert f"python examples/{script}" in doc, f"examples/{script}: the docstring should show the command"
    assert f"examples/{script}" in DOCS_PAGE.read_text(), f"docs/examples.md has no section for {script}"
