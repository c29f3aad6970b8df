"""Fit a noisy sine wave with an MLP: regression with the mean squared error and Adam.

Training points are ``y = sin(x) + noise`` at random ``x`` in [-pi, pi], drawn from a seeded
generator (the same points on every backend); test points are fresh draws from the same
distribution. Progress lines show the training and test MSE falling towards the noise floor
(``NOISE**2``, the MSE of the true function itself); at the end a few predictions are set
beside the true ``sin(x)``.

Run:

    python examples/regression.py
    python examples/regression.py --backend python --points 100 --steps 300 --hidden 16
"""

import argparse
import math
import random

import matgrad as mg
import matgrad.functional as F
from matgrad import nn, optim

POINTS = 200  # training points (the test set has as many)
NOISE = 0.1  # standard deviation of the Gaussian noise added to sin(x)
HIDDEN = 32  # units in each of the two tanh hidden layers
STEPS = 500  # full-batch Adam steps
LR = 0.01  # Adam's learning rate
PRINT_EVERY = 50  # steps between progress lines
SEED = 0  # data, initialisation


def make_data(points, rng):
    """``points`` pairs (x, sin(x) + noise), x uniform in [-pi, pi]: lists of [x] and of [y]."""
    xs = [[rng.uniform(-math.pi, math.pi)] for _ in range(points)]
    ys = [[math.sin(x) + rng.gauss(0.0, NOISE)] for (x,) in xs]
    return xs, ys


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=positive, default=POINTS, help=f"training points (default {POINTS})")
    p.add_argument("--hidden", type=positive, default=HIDDEN, help=f"units per hidden layer (default {HIDDEN})")
    p.add_argument("--steps", type=positive, default=STEPS, help=f"optimiser steps (default {STEPS})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    mg.manual_seed(args.seed)

    rng = random.Random(args.seed)
    x, y = (mg.Tensor2D(v) for v in make_data(args.points, rng))
    x_test, y_test = (mg.Tensor2D(v) for v in make_data(args.points, rng))

    model = nn.MLP([1, args.hidden, args.hidden, 1], activation="tanh")
    opt = optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"backend {mg.get_backend()} | y = sin(x) + N(0, {NOISE}^2), {x.nrows} training and {x_test.nrows} test "
        f"points | MLP 1-{args.hidden}-{args.hidden}-1 (tanh) | Adam lr {args.lr:g} | {args.steps} steps"
    )
    print(f"noise floor (MSE of the true function): {NOISE**2:.4f}")

    def test_mse():
        with mg.no_grad():
            return F.mse_loss(model(x_test), y_test).item()

    for step in range(1, args.steps + 1):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % PRINT_EVERY == 0 or step == args.steps:
            print(f"step {step:4d}  train MSE {loss.item():.4f}  test MSE {test_mse():.4f}")

    with mg.no_grad():
        train_mse = F.mse_loss(model(x), y).item()
        probe = [-3.0, -1.5, 0.0, 1.5, 3.0]
        preds = model(mg.Tensor2D([[v] for v in probe])).tolist()
    print("\n     x    sin(x)   model")
    for v, (p,) in zip(probe, preds):
        print(f"  {v:4.1f}   {math.sin(v):6.3f}  {p:6.3f}")
    print(f"\nfinal train MSE {train_mse:.4f}, test MSE {test_mse():.4f} (noise floor {NOISE**2:.4f})")


if __name__ == "__main__":
    main()
