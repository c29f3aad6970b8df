"""The `matgrad` command: train, eval, graph, info, and one-line errors with non-zero exits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tracemalloc
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


@pytest.mark.parametrize("backend", ["numpy", "python"])
def test_compile_prints_the_same_training(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--compile`` replays each step's kernels: the same losses and accuracies to the last printed digit."""
    args = ["train", "--backend", backend, *SMALL]
    if backend == "python":
        args += ["--limit", "96", "--epochs", "3"]
    eager = run(args, capsys)[1]
    compiled = run([*args, "--compile"], capsys)[1]
    strip = lambda text: re.sub(r"time [\d.]+s \([\d,]+ img/s\)|done in [\d.]+s", "", text)  # noqa: E731
    assert "epoch" in eager and strip(compiled) == strip(eager)


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


# -- outputs are checked before any work ---------------------------------------------------------


def refused_before_training(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(args, capsys)
    assert code == 1, (out, err)
    assert not re.search(r"^epoch\s+\d", out, re.M)  # refused before the first epoch
    line = one_line_error(err)
    assert ".part" not in line  # the user's paths, never a temporary file's
    return line


def test_two_outputs_on_one_path_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.svg"
    line = refused_before_training(["train", *SMALL, "--save", str(out), "--graph", str(out)], capsys)
    assert f"--graph {out} and --save {out} are the same file" in line
    assert not out.exists()


@pytest.mark.parametrize("how", ["symlink", "hardlink", "dotdot", "folder-symlink", "relative"])
def test_outputs_that_are_one_file_under_two_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "a.svg"
    if how == "symlink":
        (tmp_path / "link.svg").symlink_to(first)
        second = str(tmp_path / "link.svg")
    elif how == "hardlink":
        first.write_bytes(b"old drawing")
        os.link(first, tmp_path / "b.svg")
        second = str(tmp_path / "b.svg")
    elif how == "dotdot":
        (tmp_path / "sub").mkdir()
        second = str(tmp_path / "sub" / ".." / "a.svg")
    elif how == "folder-symlink":
        (tmp_path / "alias").symlink_to(tmp_path)
        second = str(tmp_path / "alias" / "a.svg")
    else:
        second = "a.svg"
    line = refused_before_training(["train", *SMALL, "--graph", str(first), "--plot", second], capsys)
    assert f"--plot {second} and --graph {first} are the same file" in line
    assert not first.exists() or first.read_bytes() == b"old drawing"


def test_an_output_over_an_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matgrad.data.mnist import NAMES, SAMPLE_DIR

    for name in NAMES:
        (tmp_path / (name + ".gz")).write_bytes(Path(SAMPLE_DIR, name + ".gz").read_bytes())
    target = tmp_path / (NAMES[0] + ".gz")
    before = target.read_bytes()
    line = refused_before_training(["train", *SMALL, "--data", str(tmp_path), "--save", str(target)], capsys)
    assert f"--save {target} is the MNIST file {target}; writing it would destroy an input" in line
    assert target.read_bytes() == before
    sample = Path(SAMPLE_DIR, NAMES[3] + ".gz")  # the shipped sample is an input too
    line = refused_before_training(["train", *SMALL, "--save", str(sample)], capsys)
    assert f"--save {sample} is the MNIST file {sample}" in line


def test_graphs_dot_fallback_is_an_output_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil as shutil_module

    monkeypatch.setattr(shutil_module, "which", lambda name: None)  # no Graphviz: --graph writes g.dot
    line = refused_before_training(
        ["train", *SMALL, "--graph", str(tmp_path / "g.svg"), "--save", str(tmp_path / "g.dot")], capsys
    )
    assert "are the same file" in line and "written when Graphviz's dot is missing" in line


@pytest.mark.parametrize("option", ["--save", "--graph", "--plot"])
def test_a_directory_as_an_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str) -> None:
    folder = tmp_path / "out.png"  # a name every option accepts, but a folder
    folder.mkdir()
    line = refused_before_training(["train", *SMALL, option, str(folder)], capsys)
    assert f"{option}: {folder} is a directory" in line


def test_graph_command_checks_its_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.svg").mkdir()
    code, _, err = run(["graph", "-o", str(tmp_path / "d.svg")], capsys)
    assert code == 1 and "is a directory" in one_line_error(err)
    (tmp_path / "file").write_bytes(b"")
    code, _, err = run(["graph", "-o", str(tmp_path / "file" / "g.svg")], capsys)
    assert code == 1 and "is not a folder" in one_line_error(err)


def test_an_unwritable_folder_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.safetensors"
    if os.name == "posix" and os.geteuid() != 0:  # root writes anywhere: simulated below instead
        tmp_path.chmod(0o500)
        try:
            line = refused_before_training(["train", *SMALL, "--save", str(target)], capsys)
        finally:
            tmp_path.chmod(0o700)
        assert f"--save: cannot write {target}: permission denied on the folder {tmp_path}" in line
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    line = refused_before_training(["train", *SMALL, "--save", str(target)], capsys)
    assert f"--save: cannot write {target}: permission denied on the folder {tmp_path}" in line
    monkeypatch.undo()

    # a read-only mount or an ACL passes os.access: the probe file finds it
    import matgrad._files as files

    real_open = os.open

    def no_new_files(path: str, flags: int, *args: int) -> int:
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", no_new_files)
    line = refused_before_training(["train", *SMALL, "--plot", str(tmp_path / "c.png")], capsys)
    assert f"--plot: cannot write {tmp_path / 'c.png'}: cannot create a file in {tmp_path}: Read-only" in line
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # the probes left nothing


@pytest.mark.skipif(os.name != "posix", reason="FIFOs")
def test_a_fifo_as_an_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    line = refused_before_training(["train", *SMALL, "--save", str(fifo)], capsys)
    assert f"--save: {fifo} is a FIFO (named pipe)" in line


# -- eval checks a checkpoint's metadata against its tensors before allocating -------------------


def test_eval_refuses_sizes_metadata_its_tensors_do_not_bear_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.safetensors"
    matgrad.save(matgrad.nn.MLP([784, 16, 10]), model, metadata={"sizes": "784,2000000,10"})
    tracemalloc.start()
    try:
        code, _, err = run(["eval", "--model", str(model)], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 1
    line = one_line_error(err)
    assert "'sizes' metadata '784,2000000,10' needs 0.weight of 2000000x784, but the file holds 16x784" in line
    assert peak < 20 * 2**20  # the 6 GB model was never built


def test_eval_refuses_inconsistent_layer_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.safetensors"
    matgrad.save({"0.weight": matgrad.zeros(16, 784), "2.weight": matgrad.zeros(10, 32)}, model)
    code, _, err = run(["eval", "--model", str(model)], capsys)
    assert code == 1 and "2.weight is 10x32, but the layer before it has 16 outputs" in one_line_error(err)


@pytest.mark.skipif(os.name != "posix", reason="FIFOs")
def test_eval_names_what_the_model_path_really_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    code, _, err = run(["eval", "--model", str(fifo)], capsys)
    assert code == 1 and f"--model {fifo}: is a FIFO (named pipe)" in one_line_error(err)
    code, _, err = run(["eval", "--model", str(tmp_path)], capsys)
    assert code == 1 and f"--model {tmp_path}: is a directory" in one_line_error(err)


# -- memory: estimated before building, allocation failures in one line --------------------------


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["train", "--hidden", "2000000", "--quiet"], "training MLP 784-2000000-10 with sgd at batch 64"),
        (["graph", "--hidden", "2000000"], "drawing MLP 784-2000000-10"),
    ],
)
def test_a_model_too_large_for_memory_is_refused_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], what: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATGRAD_MEMORY_LIMIT", "1G")
    code, out, err = run(args, capsys)
    assert code == 1 and "epoch" not in out
    line = one_line_error(err)
    assert f"{what} needs about" in line and "more than the 1.0 GiB allowed by MATGRAD_MEMORY_LIMIT=1G" in line
    assert "use smaller --hidden sizes" in line
    assert list(tmp_path.iterdir()) == []


def test_eval_memory_is_estimated_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.safetensors"
    matgrad.save(matgrad.nn.MLP([784, 16, 10]), model, metadata={"sizes": "784,16,10"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATGRAD_MEMORY_LIMIT", "10K")
        code, _, err = run(["eval", "--model", str(model)], capsys)
    assert code == 1 and "evaluating MLP 784-16-10 needs about" in one_line_error(err)


@pytest.mark.parametrize("command", [["train", *SMALL], ["graph"]])
def test_an_allocation_failure_is_one_line_saying_what_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    np = pytest.importorskip("numpy")

    def out_of_memory(*args: object, **kwargs: object) -> None:
        try:  # NumPy's own error, a MemoryError subclass, as np.zeros raises it
            from numpy._core._exceptions import _ArrayMemoryError
        except ImportError:
            from numpy.core._exceptions import _ArrayMemoryError  # NumPy 1.x
        raise _ArrayMemoryError((2000000, 784), np.dtype("float32"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(matgrad.nn, "MLP", out_of_memory)
    code, _, err = run(command, capsys)
    assert code == 1
    line = one_line_error(err)
    assert line.startswith(f"matgrad {command[0]}: error: out of memory; use smaller --hidden sizes")
    assert "Unable to allocate" not in line  # NumPy's own words are not what to change
