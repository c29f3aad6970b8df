"""Convolution and pooling: PyTorch parity, adjointness, ties, the nn layers, checkpoints, diagrams, the CLI.

The op table (tests/op_table.py) gradchecks every conv op on both backends; this file checks the
same ops against ``torch.nn.functional`` on random inputs and geometries, and everything built
on them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import matgrad as mg
import matgrad.functional as F
from matgrad import conv, nn
from matgrad.backends.base import Window
from matgrad.cli import build_cnn, main
from matgrad.testing import assert_close

# -- geometries -------------------------------------------------------------------------------


@st.composite
def windows(draw: st.DrawFn, max_channels: int = 3) -> Window:
    """A window geometry whose kernel fits its padded image."""
    c = draw(st.integers(1, max_channels))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    window = Window(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    assume(window.out_h >= 1 and window.out_w >= 1)
    return window


@st.composite
def pool_windows(draw: st.DrawFn, max_channels: int = 3) -> Window:
    """A window PyTorch can pool: padding at most half the kernel, and no window all padding."""
    c = draw(st.integers(1, max_channels))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    window = Window(c, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    assume(window.out_h >= 1 and window.out_w >= 1)
    for size, out, k, s, p, d in ((h, window.out_h, kh, sh, ph, dh), (w, window.out_w, kw, sw, pw, dw)):
        assume(all(any(0 <= o * s - p + i * d < size for i in range(k)) for o in range(out)))
    return window


def torch_args(w: Window) -> dict[str, tuple[int, int]]:
    return {"kernel_size": (w.kh, w.kw), "dilation": (w.dh, w.dw), "padding": (w.ph, w.pw), "stride": (w.sh, w.sw)}


def rows(t: torch.Tensor) -> np.ndarray:
    """A (B, ...) torch tensor as (B, rest) rows."""
    return t.detach().reshape(t.shape[0], -1).numpy()


def patch_rows(t: torch.Tensor) -> np.ndarray:
    """torch's (B, C*kh*kw, L) unfold as matgrad's (B*L, C*kh*kw) patch matrix."""
    return t.detach().transpose(1, 2).reshape(-1, t.shape[1]).numpy()


def tensor(a: np.ndarray, backend: str) -> mg.Tensor2D:
    return mg.Tensor2D(a, dtype="float64", backend=backend, requires_grad=True)


# -- parity with torch.nn.functional ---------------------------------------------------------


@settings(max_examples=25)
@given(w=windows(), batch=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_unfold_and_fold_match_torch(backend: str, w: Window, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, w.image_size))
    xt = torch.tensor(x.reshape(batch, w.channels, w.height, w.width), requires_grad=True)
    X = tensor(x, backend)
    P = F.unfold(X, (w.kh, w.kw), (w.dh, w.dw), (w.ph, w.pw), (w.sh, w.sw), image_size=(w.height, w.width))
    Pt = TF.unfold(xt, **torch_args(w))
    assert P.shape == (batch * w.positions, w.patch_size)
    assert_close(P, patch_rows(Pt), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(P.shape)
    P.backward(mg.Tensor2D(g, dtype="float64"))
    Pt.backward(torch.tensor(g).reshape(batch, w.positions, -1).transpose(1, 2))
    assert_close(X.grad, rows(xt.grad), rtol=1e-12, atol=1e-12)

    p = rng.standard_normal((batch * w.positions, w.patch_size))
    pt = torch.tensor(p.reshape(batch, w.positions, -1).transpose(0, 2, 1).copy(), requires_grad=True)
    Y = F.fold(tensor(p, backend), (w.height, w.width), (w.kh, w.kw), (w.dh, w.dw), (w.ph, w.pw), (w.sh, w.sw))
    Yt = TF.fold(pt, (w.height, w.width), **torch_args(w))
    assert_close(Y, rows(Yt), rtol=1e-12, atol=1e-12)


@settings(max_examples=20)
@given(w=windows(), batch=st.integers(1, 2), out=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(backend: str, w: Window, batch: int, out: int, bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, w.image_size))
    weight = rng.standard_normal((out, w.channels, w.kh, w.kw))
    b = rng.standard_normal(out)
    xt = torch.tensor(x.reshape(batch, w.channels, w.height, w.width), requires_grad=True)
    wt, bt = torch.tensor(weight, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = TF.conv2d(xt, wt, bt if bias else None, (w.sh, w.sw), (w.ph, w.pw), (w.dh, w.dw))
    X, W, B = tensor(x, backend), tensor(weight.reshape(out, -1), backend), tensor(b.reshape(1, out), backend)
    Y = F.conv2d(
        X,
        W,
        B if bias else None,
        (w.sh, w.sw),
        (w.ph, w.pw),
        (w.dh, w.dw),
        image_size=(w.height, w.width),
        kernel_size=(w.kh, w.kw),
    )
    assert_close(Y, rows(yt), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(Y.shape)
    Y.backward(mg.Tensor2D(g, dtype="float64"))
    yt.backward(torch.tensor(g).reshape(yt.shape))
    assert_close(X.grad, rows(xt.grad), rtol=1e-10, atol=1e-10)
    assert_close(W.grad, rows(wt.grad), rtol=1e-10, atol=1e-10)
    if bias:
        assert_close(B.grad, bt.grad.reshape(1, -1).numpy(), rtol=1e-10, atol=1e-10)


@settings(max_examples=20)
@given(w=pool_windows(), batch=st.integers(1, 2), seed=st.integers(0, 2**16), include_pad=st.booleans())
def test_pooling_matches_torch(backend: str, w: Window, batch: int, seed: int, include_pad: bool) -> None:
    # PyTorch's pooling needs padding at most half the kernel, and no window all padding (it crashes)
    rng = np.random.default_rng(seed)
    x = rng.permutation(batch * w.image_size).reshape(batch, w.image_size) / 7.0  # distinct: no ties
    size = (w.height, w.width)
    for name in ("max", "avg"):
        xt = torch.tensor(x.reshape(batch, w.channels, *size), requires_grad=True)
        X = tensor(x, backend)
        if name == "max":
            Y = F.max_pool2d(X, (w.kh, w.kw), (w.sh, w.sw), (w.ph, w.pw), (w.dh, w.dw), image_size=size)
            yt = TF.max_pool2d(xt, (w.kh, w.kw), (w.sh, w.sw), (w.ph, w.pw), (w.dh, w.dw))
        else:
            pad = (min(w.ph, w.kh // 2), min(w.pw, w.kw // 2))  # avg_pool2d has no dilation
            Y = F.avg_pool2d(X, (w.kh, w.kw), (w.sh, w.sw), pad, count_include_pad=include_pad, image_size=size)
            yt = TF.avg_pool2d(xt, (w.kh, w.kw), (w.sh, w.sw), pad, count_include_pad=include_pad)
        assert_close(Y, rows(yt), rtol=1e-12, atol=1e-12)
        g = rng.standard_normal(Y.shape)
        Y.backward(mg.Tensor2D(g, dtype="float64"))
        yt.backward(torch.tensor(g).reshape(yt.shape))
        assert_close(X.grad, rows(xt.grad), rtol=1e-12, atol=1e-12)


# -- fold is unfold's adjoint -------------------------------------------------------------------


@settings(max_examples=30)
@given(w=windows(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_fold_is_the_adjoint_of_unfold(backend: str, w: Window, batch: int, seed: int) -> None:
    """<fold(y), x> == <y, unfold(x)> for every x and y: fold is unfold's transpose."""
    rng = np.random.default_rng(seed)
    x = mg.Tensor2D(rng.standard_normal((batch, w.image_size)), dtype="float64")
    y = mg.Tensor2D(rng.standard_normal((batch * w.positions, w.patch_size)), dtype="float64")
    folded = conv.Fold(w)(y)
    unfolded = conv.Unfold(w)(x)
    left = (folded * x).sum().item()
    right = (y * unfolded).sum().item()
    assert math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12)


def test_patches_to_images_and_back_are_inverse(backend: str) -> None:
    a = mg.Tensor2D([[float(6 * i + j) for j in range(6)] for i in range(12)])  # B*L = 3*4 patches of 6 channels
    images = conv.patches_to_images(a, 4)
    assert images.shape == (3, 24)
    assert images.tolist()[1][:4] == [24.0, 30.0, 36.0, 42.0]  # image 1, channel 0: patches 4..7, column 0
    assert conv.images_to_patches(images, 6).tolist() == a.tolist()


# -- max pooling's ties -------------------------------------------------------------------------


def test_max_pool_ties_share_the_gradient_as_max_does(backend: str) -> None:
    x = mg.Tensor2D([[1.0, 3.0, 3.0, 2.0, 2.0, 0.0, 2.0, 2.0, 5.0]], requires_grad=True)  # one 3x3 image
    # 2x2 windows, stride 1: maxima 3 (one), 3 (a tie of two), 2 (a tie of four), 5 (one)
    y = F.max_pool2d(x, 2, stride=1, image_size=(3, 3))
    assert y.tolist() == [[3.0, 3.0, 2.0, 5.0]]
    y.backward(mg.Tensor2D([[4.0, 8.0, 1.0, 1.0]]))
    # the first 3 takes window 0's 4 and half of window 1's 8; the 2s share window 2's 1
    assert x.grad.tolist() == [[0.0, 8.0, 4.0, 0.25, 0.25, 0.0, 0.25, 0.25, 1.0]]
    # the same as the max reduction over unfold's patches, which is what the rule says
    x2 = mg.Tensor2D(x.tolist(), requires_grad=True)
    F.unfold(x2, 2, image_size=(3, 3)).max(axis=1).reshape(1, 4).backward(mg.Tensor2D([[4.0, 8.0, 1.0, 1.0]]))
    assert x2.grad.tolist() == x.grad.tolist()


def test_max_pool_gradient_differentiates_again(backend: str) -> None:
    """The rule written with ops (create_graph) agrees with the fused kernel and gradchecks again."""
    rng = np.random.default_rng(3)
    x = mg.Tensor2D(rng.permutation(2 * 2 * 5 * 4).reshape(2, 40) / 8.0, dtype="float64", requires_grad=True)
    g = mg.Tensor2D(rng.standard_normal((2, 2 * 3 * 2)), dtype="float64", requires_grad=True)
    y = F.max_pool2d(x, 3, stride=2, padding=1, image_size=(5, 4))
    (fast,) = mg.grad(y, [x], g)
    (recorded,) = mg.grad(F.max_pool2d(x, 3, stride=2, padding=1, image_size=(5, 4)), [x], g, create_graph=True)
    assert recorded.requires_grad
    assert_close(recorded, fast, rtol=0, atol=0)
    assert mg.gradgradcheck(lambda a: F.max_pool2d(a, 3, stride=2, padding=1, image_size=(5, 4)), [x])


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda x: F.unfold(x, 2), TypeError, "image_size=(height, width) is required"),
        (lambda x: F.unfold(x, 2, image_size=(5, 5)), mg.ShapeError, "not a whole number of 5x5 channels"),
        (lambda x: F.unfold(x, 9, image_size=(4, 4)), mg.ShapeError, "does not fit in a 4x4 image"),
        (lambda x: F.unfold(x, 0, image_size=(4, 4)), mg.ArgumentError, "kernel_size must be at least 1"),
        (lambda x: F.unfold(x, (2, 2, 2), image_size=(4, 4)), TypeError, "an int or a pair of ints"),
        (lambda x: F.max_pool2d(x, 2, padding=2, image_size=(4, 4)), mg.ArgumentError, "more than half the kernel"),
        (
            lambda x: F.max_pool2d(x, (2, 1), 2, (1, 0), dilation=2, image_size=(1, 16)),
            mg.ArgumentError,
            "window 0 along the height reads only padding",
        ),
        (lambda x: F.fold(x, (4, 4), 3), mg.ShapeError, "multiple of 9 columns"),
        (lambda x: F.conv2d(x, mg.randn(3, 5), image_size=(4, 4)), mg.ShapeError, "pass kernel_size=(kh, kw)"),
        (lambda x: conv.Unfold(Window(1, 3, 3, 2, 2))(x), mg.ShapeError, "1x3x3 images need rows of 9 values"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, fragment) -> None:
    x = mg.randn(2, 16)
    with pytest.raises(error, match=re.escape(fragment)):
        call(x)


# -- nn ---------------------------------------------------------------------------------------------


def lenet(**kwargs: object) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, image_size=(28, 28), **kwargs),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, **kwargs),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16, **kwargs),
        nn.ReLU(),
        nn.Linear(16, 10, **kwargs),
    )


def torch_lenet() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    )


def test_sequential_passes_image_shapes_down() -> None:
    model = lenet()
    assert model[0].image_shape == (1, 28, 28)
    assert model[2].image_shape == (6, 24, 24) and model[2].output_shape() == (6, 12, 12)
    assert model[3].image_shape == (6, 12, 12) and model[3].output_shape() == (8, 12, 12)
    assert model[5].output_shape() == (8, 6, 6)
    assert model(mg.rand(3, 784)).shape == (3, 10)
    assert list(model.state_dict()) == list(torch_lenet().state_dict())  # Flatten keeps the indices aligned


def test_conv2d_weight_layout_and_init_follow_torch() -> None:
    layer = nn.Conv2d(16, 32, 5)
    assert layer.weight.shape == (32, 16 * 25) and layer.bias.shape == (1, 32)
    bound = 1 / math.sqrt(16 * 25)  # PyTorch's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = layer.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert np.abs(layer.bias.numpy()).max() <= bound
    assert repr(layer) == repr(torch.nn.Conv2d(16, 32, 5))
    assert repr(nn.Conv2d(3, 4, 3, 2, 1, bias=False)) == repr(torch.nn.Conv2d(3, 4, 3, 2, 1, bias=False))
    for mine, theirs in ((nn.AvgPool2d(2), torch.nn.AvgPool2d(2)), (nn.Flatten(), torch.nn.Flatten())):
        assert repr(mine) == repr(theirs)


def test_a_misfit_is_an_error_naming_the_layer_and_both_sizes() -> None:
    with pytest.raises(mg.ShapeError, match=r"layer 7: Linear\(in_features=300\) takes the 8x6x6 images of layer 5 "):
        nn.Sequential(*list(lenet())[:7], nn.Linear(300, 16))
    with pytest.raises(mg.ShapeError, match=r"layer 3: Conv2d\(4, 8.*cannot take the 6x12x12 images of layer 2"):
        nn.Sequential(nn.Conv2d(1, 6, 5, image_size=(28, 28)), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3))
    with pytest.raises(mg.ShapeError, match="does not fit in a 2x2 image"):
        nn.Sequential(nn.Conv2d(1, 2, 3, image_size=(4, 4)), nn.Conv2d(2, 2, 3))
    model = lenet()
    with pytest.raises(
        mg.ShapeError, match=r"layer 0: expected rows of 1x28x28 = 784 values \(C x H x W\), got a 2x785"
    ):
        model(mg.rand(2, 785))
    with pytest.raises(mg.ShapeError, match=r"layer 3: expected rows of 6x12x12 = 864 values"):
        model[3](mg.rand(2, 784))
    with pytest.raises(mg.ShapeError, match="the size of its input images is unknown; pass image_size"):
        nn.Conv2d(1, 2, 3)(mg.rand(2, 16))
    with pytest.raises(mg.ArgumentError, match="only Flatten"):
        nn.Flatten(0)


def test_pools_learn_the_channel_count_from_the_row_width() -> None:
    pool = nn.MaxPool2d(2, image_size=(4, 4))
    assert pool(mg.rand(2, 3 * 16)).shape == (2, 3 * 4)
    assert nn.AvgPool2d(2, image_size=(4, 4))(mg.rand(2, 16)).shape == (2, 4)
    with pytest.raises(mg.ShapeError, match="not a whole number of 4x4 channels"):
        pool(mg.rand(2, 20))


def test_the_python_backend_trains_the_same_cnn() -> None:
    """One Adam step of the same small CNN on both backends gives the same parameters."""
    data = mg.data.load_mnist(sample=True)
    x, y = data.x_train[:8], data.y_train[:8]
    state = build_cnn((28, 28), [16], channels=(4, 6)).state_dict()
    results = []
    for backend in ("numpy", "python"):
        model = build_cnn((28, 28), [16], channels=(4, 6))
        model.load_state_dict(state)
        model.to(dtype="float64", backend=backend)
        opt = mg.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            loss = F.cross_entropy(model(x.to("float64", backend)), y.to(backend=backend))
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append([p.numpy() for p in model.parameters()])
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-9, atol=1e-12)


# -- checkpoints ----------------------------------------------------------------------------------


def test_checkpoints_round_trip_with_torch_both_ways(tmp_path: Path) -> None:
    model = lenet()
    x = mg.rand(4, 784)
    path = tmp_path / "cnn.safetensors"
    mg.save(model, path)
    state = load_file(path)
    assert tuple(state["0.weight"].shape) == (6, 1, 5, 5) and tuple(state["3.weight"].shape) == (8, 6, 3, 3)
    reference = torch_lenet()
    reference.load_state_dict(state)  # unchanged: PyTorch's own shapes
    expected = reference(torch.tensor(x.numpy()).reshape(4, 1, 28, 28)).detach().numpy()
    assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    # the same bytes as PyTorch writes for that model
    save_file(reference.state_dict(), tmp_path / "torch.safetensors")
    assert path.read_bytes() == (tmp_path / "torch.safetensors").read_bytes()

    other = torch_lenet()
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    loaded = lenet()
    loaded.load_state_dict(mg.load(tmp_path / "other.safetensors"))
    expected = other(torch.tensor(x.numpy()).reshape(4, 1, 28, 28)).detach().numpy()
    assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
    direct = lenet()
    direct.load_state_dict(other.state_dict())  # 4-D torch tensors straight into (out, in*kh*kw)
    assert_close(direct(x), expected, rtol=1e-5, atol=1e-6)


def test_a_4d_tensor_loads_flattened_after_its_first_dimension(tmp_path: Path) -> None:
    save_file({"w": torch.arange(24.0).reshape(2, 3, 2, 2)}, tmp_path / "w.safetensors")
    w = mg.load(tmp_path / "w.safetensors")["w"]
    assert w.shape == (2, 12) and w.tolist()[1][:3] == [12.0, 13.0, 14.0]


# -- diagrams ------------------------------------------------------------------------------------------


def test_diagram_draws_conv_clusters_with_image_shapes_on_the_edges() -> None:
    model = lenet()
    data = mg.data.load_mnist(sample=True)
    dot = mg.viz.draw_model_graph(model, data.x_train[:4], data.y_train[:4]).source
    assert "0: Conv2d(1x28x28 -&gt; 6x24x24)" in dot
    assert "3: Conv2d(6x12x12 -&gt; 8x12x12)" in dot
    assert "5: AvgPool2d(8x12x12 -&gt; 8x6x6)" in dot
    assert 'label="4 x (6x24x24)"' in dot  # the convolution's output, into its ReLU
    assert 'label="4 x (6x12x12)"' in dot  # the pooled images, into the second convolution
    assert 'label="4 x (8x6x6)"' in dot  # the last pooling's, flattened into the Linear
    assert "patches_to_images(L=576)" in dot and "unfold(3x3, padding 1)" in dot


# -- the command line --------------------------------------------------------------------------------


def test_cli_trains_saves_and_evaluates_a_cnn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "cnn.safetensors"
    args = [
        "train",
        "--model",
        "cnn",
        "--limit",
        "256",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--hidden",
        "32",
        "--quiet",
    ]
    assert main([*args, "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "model CNN 1x28x28 > conv 16x24x24 > pool 16x12x12 > conv 32x8x8 > pool 32x4x4 > 32 > 10" in out
    assert "Adam lr 0.002 (cosine decay)" in out
    accuracy = [float(a) for a in re.findall(r"test acc +([\d.]+)%", out)]
    assert len(accuracy) == 2 and accuracy[1] > 30.0  # far above chance (10%) after 32 steps on 256 images
    assert tuple(load_file(model)["0.weight"].shape) == (16, 1, 5, 5)
    assert main(["eval", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {accuracy[1]:.2f}%" in out


def _tiny_mnist(folder: Path, n_train: int, n_test: int) -> Path:
    """The first images of the shipped sample as raw IDX files (what --data reads)."""
    import struct

    data = mg.data.load_mnist(sample=True, backend="numpy")
    for name, x, y, n in (
        ("train", data.x_train, data.y_train, n_train),
        ("t10k", data.x_test, data.y_test, n_test),
    ):
        pixels = bytes(round(v * 255) for row in x[:n].tolist() for v in row)
        labels = bytes(int(row[0]) for row in y[:n].tolist())
        (folder / f"{name}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + pixels)
        (folder / f"{name}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels)
    return folder


def test_cli_trains_a_cnn_on_the_python_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``matgrad train --model cnn --backend python --limit N``: the pure-Python kernels end to end."""
    data = _tiny_mnist(tmp_path, 32, 16)
    args = ["train", "--model", "cnn", "--backend", "python", "--data", str(data), "--limit", "16"]
    assert main([*args, "--epochs", "1", "--batch-size", "8", "--hidden", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| backend python | MNIST from" in out and "16 training and 16 test images" in out
    assert "model CNN 1x28x28 > conv 16x24x24 > pool 16x12x12 > conv 32x8x8 > pool 32x4x4 > 8 > 10" in out
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", out)]
    assert len(losses) == 1 and 1.5 < losses[0] < 3.5  # about ln 10 after two steps of an untrained CNN
