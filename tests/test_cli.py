"""The `matgrad` command: train, eval, graph, info, and one-line errors with non-zero exits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import matgrad
from matgrad.cli import main

SMALL = ["--limit", "256", "--epochs", "2", "--batch-size", "32", "--hidden", "16", "--quiet"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    previous = matgrad.get_backend()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse exits on usage errors
        code = int(exc.code or 0)
    finally:
        matgrad.set_backend(previous)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("backend", ["numpy", "python"])
def test_train_prints_progress_accuracy_and_confusion_matrix(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["train", "--backend", backend, *SMALL], capsys)
    assert code == 0
    assert f"backend {backend}" in out and "256 training and 1000 test images" in out
    epochs = re.findall(r"epoch +(\d)/2 +loss ([\d.]+) +train acc +([\d.]+)% +test acc +([\d.]+)%", out)
    assert [e[0] for e in epochs] == ["1", "2"]
    assert float(epochs[1][1]) < float(epochs[0][1])  # the loss falls
    assert float(epochs[1][3]) > 30.0  # far above chance (10%) after two epochs on 256 images
    assert "confusion matrix" in out and "true\\pred" in out
    table = out.split("true\\pred", 1)[1].splitlines()[2:12]
    counts = [[int(v) for v in row.split()[1:11]] for row in table]
    assert sum(map(sum, counts)) == 1000  # every test image counted once


def test_train_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    first = run(["train", *SMALL], capsys)[1]
    second = run(["train", *SMALL], capsys)[1]
    strip = lambda text: re.sub(r"time [\d.]+s \([\d,]+ img/s\)|done in [\d.]+s", "", text)  # noqa: E731
    assert strip(first) == strip(second)


def test_save_then_eval_gives_the_same_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.safetensors"
    code, out, _ = run(["train", *SMALL, "--save", str(model)], capsys)
    assert code == 0 and model.exists()
    final = re.findall(r"test acc +([\d.]+)%", out)[-1]
    code, out, _ = run(["eval", "--model", str(model)], capsys)
    assert code == 0
    assert f"test accuracy {final}%" in out
    assert "MLP 784-16-10" in out


def test_eval_on_the_python_backend_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.safetensors"
    run(["train", *SMALL, "--save", str(model)], capsys)
    numpy_out = run(["eval", "--model", str(model)], capsys)[1]
    python_out = run(["eval", "--model", str(model), "--backend", "python"], capsys)[1]
    grab = lambda text: re.search(r"test accuracy ([\d.]+)%", text).group(1)  # type: ignore[union-attr]  # noqa: E731
    assert grab(numpy_out) == grab(python_out)


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (CI installs it)")


@needs_dot
def test_train_draws_the_loss_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "graph.svg"
    code, out, _ = run(["train", *SMALL, "--graph", str(svg)], capsys)
    assert code == 0 and "with gradients" in out
    text = svg.read_text()
    ET.fromstring(text)
    for needle in ("linear", "relu", "cross_entropy", "0.weight", "2.bias", "32 x 784", "grad"):
        assert needle in text, needle


@needs_dot
@pytest.mark.parametrize("extra", [[], ["--backward"]])
def test_graph_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    svg = tmp_path / "mlp.svg"
    code, out, _ = run(["graph", "--hidden", "128,64", "-o", str(svg), *extra], capsys)
    assert code == 0 and "784-128-64-10" in out
    text = svg.read_text()
    ET.fromstring(text)
    assert "4.weight" in text and "64 x 128" in text


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert f"matgrad {matgrad.__version__}" in out
    assert "backends available: numpy, python" in out
    assert "Graphviz dot:" in out and "data cache:" in out and "shipped sample:" in out


def test_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curves.png"
    code, _, err = run(["train", *SMALL, "--plot", str(png)], capsys)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 1 and "pip install" in one_line_error(err) and not png.exists()
    else:
        assert code == 0 and png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["train", "--epochs", "x"], 2, "--epochs: expected a positive integer"),
        (["train", "--epochs", "0"], 2, "expected a positive integer, got 0"),
        (["train", "--lr", "-1"], 2, "--lr"),
        (["train", "--hidden", "12,a"], 2, "layer sizes"),
        (["train", "--optimizer", "rmsprop"], 2, "invalid choice"),
        (["train", "--backend", "cuda"], 2, "invalid choice"),
        (["train", "--nope"], 2, "unrecognized arguments"),
        (["eval"], 2, "--model"),
        (["train", "--data", "/nonexistent/mnist"], 1, "MNIST not found"),
        (["train", "--save", "/nonexistent/dir/m.safetensors"], 1, "does not exist"),
        (["eval", "--model", "/nonexistent.safetensors"], 1, "no such file"),
    ],
)
def test_errors_are_one_line(args: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    got, _, err = run(args, capsys)
    assert got == code
    assert needle in one_line_error(err)


def test_runtime_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all")
    code, _, err = run(["eval", "--model", str(bad)], capsys)
    assert code == 1 and "bad.safetensors" in one_line_error(err)
    code, _, err = run(["train", "--data", str(tmp_path)], capsys)
    assert code == 1 and "MNIST not found" in one_line_error(err)
    code, _, err = run(["eval", "--model", "/nonexistent.safetensors"], capsys)
    assert code == 1 and "no such file" in one_line_error(err)
    not_mlp = tmp_path / "other.safetensors"
    matgrad.save({"w": matgrad.zeros(2, 2)}, not_mlp)
    code, _, err = run(["eval", "--model", str(not_mlp)], capsys)
    assert code == 1 and "not an MLP checkpoint" in one_line_error(err)


def test_console_script_and_broken_pipe() -> None:
    exe = shutil.which("matgrad")
    assert exe is not None, "the console script is installed with the package"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"matgrad {matgrad.__version__}"
    # the reader closes the pipe after one line: no traceback
    proc = subprocess.Popen(
        [sys.executable, "-m", "matgrad.cli", "train", *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err
