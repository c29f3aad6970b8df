"""Draw the pictures of the tutorial's chapter 7, "A convolution is a matrix product".

Run from anywhere (needs matplotlib, and Graphviz's dot for the diagram):

    python scripts/make_conv_images.py

Writes docs/images/conv_patches.png (a digit of the shipped MNIST sample, one 5x5 window on it,
and its whole patch matrix, unfold's output, with that window's row marked) and
docs/images/cnn_forward.svg (the forward graph of the chapter's CNN on a batch of 8).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, viz
from matgrad.data import load_mnist

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
DIGIT = 0  # the first training image of the sample: a 0
WINDOW = (12, 4)  # (oh, ow): the window marked on the digit and in the patch matrix
KERNEL = 5


def patch_picture(path: Path) -> None:
    data = load_mnist(sample=True, backend="numpy")
    x = data.x_train[DIGIT : DIGIT + 1]
    patches = F.unfold(x, KERNEL, image_size=(28, 28)).numpy()  # (576, 25)
    out_w = 28 - KERNEL + 1
    row = WINDOW[0] * out_w + WINDOW[1]

    fig = plt.figure(figsize=(10, 4.2))
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 0.35, 2.2], wspace=0.45)
    ax = fig.add_subplot(grid[0])
    ax.imshow(x.numpy().reshape(28, 28), cmap="gray_r")
    ax.add_patch(Rectangle((WINDOW[1] - 0.5, WINDOW[0] - 0.5), KERNEL, KERNEL, fill=False, lw=2, color="#dc2626"))
    ax.set_title("one 1x28x28 image (a row of 784)", fontsize=9)
    ax.set_xticks([0, 27])
    ax.set_yticks([0, 27])

    ax = fig.add_subplot(grid[1])
    ax.imshow(patches[row].reshape(KERNEL, KERNEL), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"patch {row}\n(oh, ow) = {WINDOW}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = fig.add_subplot(grid[2])
    ax.imshow(patches.T, cmap="gray_r", aspect="auto", interpolation="nearest")
    ax.axvline(row, color="#dc2626", lw=1.5)
    ax.set_title("its patch matrix, transposed: 25 rows (c, i, j) x 576 patches (oh, ow)", fontsize=9)
    ax.set_xlabel("patch l = oh * 24 + ow")
    ax.set_ylabel("(i, j) in the 5x5 window")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def diagram(path: Path) -> None:
    data = load_mnist(sample=True)
    mg.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, image_size=(28, 28)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    dot = viz.draw_model_graph(model, data.x_train[:8], data.y_train[:8], grad=False, rankdir="TB")
    viz.render_graph(dot, path)


def main() -> None:
    for name, draw in (("conv_patches.png", patch_picture), ("cnn_forward.svg", diagram)):
        path = OUT / name
        draw(path)
        print(f"wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
