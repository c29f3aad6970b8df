"""Newton's method against gradient descent on a small logistic regression, with ``hessian``.

The loss of logistic regression, ``L(w) = mean(BCE(X w, y))`` for a column of weights ``w``
(one per feature, plus a bias), is convex and smooth. Gradient descent steps along ``-g``; Newton's
method solves ``H d = g`` with the Hessian ``H = matgrad.autograd.functional.hessian(L, w)``
(here ``5 x 5``) and steps along ``-d``, which rescales every direction by its curvature. The
features are on very different scales (``SCALES``), so one learning rate cannot suit them all:
gradient descent crawls along the flat directions while Newton converges quadratically, to
machine precision in a handful of steps. Both start from ``w = 0``. Gradient descent gets the
textbook step ``1 / L``, ``L`` the largest curvature of the loss, found by power iteration with
Hessian-vector products (``hvp``, no Hessian formed): for logistic regression the Hessian is
largest at ``w = 0``, so no step of this size overshoots. The script prints both curves' losses
step by step, then checks the Hessian against the closed form ``X^T diag(p (1 - p)) X / N``
(``p`` the predicted probabilities).

Run:

    python examples/newton_logistic.py
    python examples/newton_logistic.py --backend python --steps 8
"""

import argparse
import math
import random

import matgrad as mg
import matgrad.functional as F
from matgrad.autograd.functional import hessian, hvp, vjp

POINTS = 200  # training points
SCALES = (1.0, 4.0, 0.25, 2.0)  # standard deviation of each feature (a bias column is added)
TRUE_W = (1.0, -0.5, 2.0, 0.3, -0.2)  # weights the labels are drawn from (last: the bias)
STEPS = 12  # iterations of each method
LR = None  # gradient descent's step size; None: 1 / L, L the largest curvature (at w = 0)
POWER_STEPS = 50  # power-iteration steps (one hvp each) to find L
SEED = 0  # data


def make_data(points, rng):
    """Rows ``[features..., 1]`` and labels drawn from ``Bernoulli(sigmoid(x . TRUE_W))``."""
    xs, ys = [], []
    for _ in range(points):
        row = [rng.gauss(0.0, s) for s in SCALES] + [1.0]
        p = 1.0 / (1.0 + math.exp(-sum(a * b for a, b in zip(row, TRUE_W))))
        xs.append(row)
        ys.append([1.0 if rng.random() < p else 0.0])
    return xs, ys


def solve(a, b):
    """``x`` with ``a x = b`` (lists of floats) by Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def norm(t):
    """The Euclidean norm of a tensor's entries."""
    return math.sqrt(sum(v * v for row in t.tolist() for v in row))


def largest_curvature(loss_fn, w, steps):
    """The largest eigenvalue of the Hessian at ``w`` by power iteration: ``v <- H v / |H v|``."""
    v = mg.ones(w.nrows, 1, dtype="float64") / math.sqrt(w.nrows)
    for _ in range(steps):
        _, hv = hvp(loss_fn, w, v)  # H v without forming H
        curvature = (v * hv).sum().item()
        v = hv / norm(hv)
    return curvature


def positive(text):
    """argparse type: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=positive, default=POINTS, help=f"training points (default {POINTS})")
    p.add_argument("--steps", type=positive, default=STEPS, help=f"iterations of each method (default {STEPS})")
    p.add_argument("--lr", type=float, default=LR, help="gradient descent's step size (default: 1 / L)")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    xs, ys = make_data(args.points, random.Random(args.seed))
    x = mg.Tensor2D(xs, dtype="float64")
    y = mg.Tensor2D(ys, dtype="float64")
    n, d = x.shape

    def loss_fn(w):
        return F.binary_cross_entropy_with_logits(x @ w, y)

    print(
        f"backend {mg.get_backend()} | float64 | logistic regression, {n} points, {d - 1} features "
        f"(scales {', '.join(f'{s:g}' for s in SCALES)}) + bias | {args.steps} steps from w = 0"
    )
    w_gd = mg.zeros(d, 1, dtype="float64")
    w_nt = mg.zeros(d, 1, dtype="float64")
    big = largest_curvature(loss_fn, w_gd, POWER_STEPS)
    lr = 1.0 / big if args.lr is None else args.lr
    print(f"largest curvature at w = 0 ({POWER_STEPS} steps of power iteration with hvp): L = {big:.6f}")
    print(f"gradient descent: w -= {lr:.6f} g   Newton: w -= H^-1 g, H = hessian(loss, w) ({d}x{d})")
    print()
    print("step   gradient descent         Newton")
    for step in range(args.steps + 1):
        loss_gd, g_gd = vjp(loss_fn, w_gd)  # for a 1x1 loss, vjp is (loss, gradient)
        loss_nt, g_nt = vjp(loss_fn, w_nt)
        print(f"{step:4d}   {loss_gd.item():.12f}   {loss_nt.item():.12f}")
        if step == args.steps:
            break
        w_gd = w_gd - lr * g_gd
        h = hessian(loss_fn, w_nt)
        step_nt = solve(h.tolist(), [row[0] for row in g_nt.tolist()])
        w_nt = w_nt - mg.Tensor2D([[s] for s in step_nt], dtype="float64")

    print()
    print(f"final loss: gradient descent {loss_gd.item():.12f}, Newton {loss_nt.item():.12f}")
    print(f"final gradient norm: gradient descent {norm(g_gd):.3e}, Newton {norm(g_nt):.3e}")
    print("Newton's weights:", " ".join(f"{v:+.4f}" for (v,) in w_nt.tolist()), f"(drawn from {TRUE_W})")

    # The Hessian of this loss in closed form: X^T diag(p (1 - p)) X / N.
    h = hessian(loss_fn, w_nt)
    p = (x @ w_nt).sigmoid()
    closed = x.T @ (x * (p * (1.0 - p))) / n
    print(f"hessian vs X^T diag(p(1-p)) X / N: max abs difference {(h - closed).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
