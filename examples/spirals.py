"""Classify points of three interleaved spiral arms: a small MLP draws a curved decision boundary.

The data is generated here, from a seeded generator (the same points on every backend): each
arm is a class, its points spiral out from the centre with a little noise. An MLP with two
ReLU hidden layers is trained on it with cross-entropy and full-batch Adam; progress lines
show the loss and training accuracy, and the run ends with the accuracy on fresh test points
drawn from the same spirals.

With matplotlib installed, ``--plot FILE`` draws the decision regions and the points.

Run:

    python examples/spirals.py
    python examples/spirals.py --plot spirals.png          # needs matplotlib
    python examples/spirals.py --backend python --points 60 --steps 150 --hidden 16
"""

import argparse
import math
import random
import sys

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim

CLASSES = 3  # spiral arms, one class each
POINTS = 100  # training points per arm (the test set has as many again)
TURNS = 1.0  # how far each arm winds around the centre, in full turns
NOISE = 0.2  # standard deviation of the angle noise, in radians
HIDDEN = 64  # units in each of the two hidden layers
STEPS = 1000  # full-batch Adam steps
LR = 0.01  # Adam's learning rate
PRINT_EVERY = 100  # steps between progress lines
SEED = 0  # data, initialisation
GRID = 200  # the plot's resolution: GRID x GRID predictions


def make_spirals(points, classes, rng):
    """``points`` per class on ``classes`` spiral arms: lists of [x1, x2] and of [label]."""
    xs, ys = [], []
    for c in range(classes):
        for i in range(points):
            r = (i + 1) / points  # radius from near 0 to 1
            t = 2 * math.pi * (TURNS * r + c / classes) + rng.gauss(0.0, NOISE)
            xs.append([r * math.sin(t), r * math.cos(t)])
            ys.append([c])
    return xs, ys


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=positive, default=CLASSES, help=f"spiral arms (default {CLASSES})")
    p.add_argument("--points", type=positive, default=POINTS, help=f"training points per arm (default {POINTS})")
    p.add_argument("--hidden", type=positive, default=HIDDEN, help=f"units per hidden layer (default {HIDDEN})")
    p.add_argument("--steps", type=positive, default=STEPS, help=f"optimiser steps (default {STEPS})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    p.add_argument("--plot", metavar="FILE", help="draw the decision boundary to FILE (.png, .svg, .pdf; matplotlib)")
    return p.parse_args()


def accuracy(model, x, y):
    return mg.metrics.accuracy(mg.metrics.predict(model, x), y)


def plot(path, model, xs, ys, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = [plt.get_cmap("tab10")(k % 10) for k in range(classes)]
    lo, hi = -1.1, 1.1
    ticks = [lo + (hi - lo) * i / (GRID - 1) for i in range(GRID)]
    grid = mg.Tensor2D([[a, b] for b in ticks for a in ticks])
    preds = mg.metrics.predict(model, grid, batch_size=4096)
    regions = [preds[row * GRID : (row + 1) * GRID] for row in range(GRID)]
    fig, ax = plt.subplots(figsize=(5, 5))
    levels = [k - 0.5 for k in range(classes + 1)]
    ax.contourf(ticks, ticks, regions, levels=levels, cmap=ListedColormap(colours), alpha=0.25)
    ax.scatter(
        [p[0] for p in xs], [p[1] for p in xs], c=[colours[t[0]] for t in ys], s=12, edgecolors="k", linewidths=0.3
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_title(f"matgrad MLP on {classes} spirals: decision regions")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    args = parse_args()
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("spirals.py: --plot needs matplotlib (pip install matplotlib); run without --plot to skip it")
    if args.backend:
        mg.set_backend(args.backend)
    mg.manual_seed(args.seed)

    rng = random.Random(args.seed)
    train_xs, train_ys = make_spirals(args.points, args.classes, rng)
    test_xs, test_ys = make_spirals(args.points, args.classes, rng)
    x, y = mg.Tensor2D(train_xs), mg.Tensor2D(train_ys, dtype="int64")
    x_test, y_test = mg.Tensor2D(test_xs), mg.Tensor2D(test_ys, dtype="int64")

    model = nn.MLP([2, args.hidden, args.hidden, args.classes], activation="relu")
    opt = optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"backend {mg.get_backend()} | {args.classes} spirals, {x.nrows} training and {x_test.nrows} test points | "
        f"MLP 2-{args.hidden}-{args.hidden}-{args.classes} | Adam lr {args.lr:g} | {args.steps} steps"
    )

    for step in range(1, args.steps + 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % PRINT_EVERY == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}  train acc {accuracy(model, x, y):6.1%}")

    print(f"\ntrain accuracy {accuracy(model, x, y):.1%}, test accuracy {accuracy(model, x_test, y_test):.1%}")
    if args.plot:
        plot(args.plot, model, train_xs, train_ys, args.classes)
        print(f"drew the decision boundary to {args.plot}")


if __name__ == "__main__":
    main()
