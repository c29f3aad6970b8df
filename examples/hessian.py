"""Second derivatives: a Hessian-vector product with ``create_graph=True``, checked numerically.

matgrad's backward rules are themselves Tensor2D expressions, so a gradient can be computed
*with its own graph* (``mg.grad(loss, params, create_graph=True)``) and differentiated again.
Differentiating ``g . v`` (the gradient dotted with a fixed direction ``v``) gives the
Hessian-vector product ``H v`` without ever forming ``H``.

1. ``H v`` for the cross-entropy loss of a small tanh MLP (ReLU would do too, but its second
   derivative is zero almost everywhere, a dull Hessian), compared with a central difference
   of the gradient: ``(g(p + eps v) - g(p - eps v)) / (2 eps)``. Both are printed, with the
   relative error.
2. The full Hessian of a tiny model (MLP 2-3-1, MSE loss, 13 parameters), one ``H e_k`` per
   parameter, compared with finite differences and checked for symmetry.

Everything runs in float64, so the finite differences are accurate to about 1e-8.

Run:

    python examples/hessian.py
    python examples/hessian.py --backend python
"""

import argparse
import math

import matgrad as mg
import matgrad.functional as F
from matgrad import nn

SIZES = (4, 8, 3)  # the MLP for the Hessian-vector product
BATCH = 16  # random inputs (with random class labels) the loss is averaged over
TINY_SIZES = (2, 3, 1)  # the MLP whose full Hessian is formed (13 parameters)
EPS = 1e-4  # the finite-difference step along v
SEED = 0  # inputs, labels, initialisation and v


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, default=EPS, help=f"finite-difference step (default {EPS:g})")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--no-full", action="store_true", help="skip the full Hessian of the tiny model")
    p.add_argument("--backend", choices=["numpy", "python"], help="matrix backend (default: numpy if installed)")
    return p.parse_args()


def gradient(model, loss_fn, create_graph=False):
    """The gradient of ``loss_fn(model)`` with respect to every parameter, one tensor each."""
    return mg.grad(loss_fn(model), list(model.parameters()), create_graph=create_graph)


def hvp(model, loss_fn, vs):
    """``H v`` by double backward: differentiate ``sum_k g_k . v_k`` once more."""
    grads = gradient(model, loss_fn, create_graph=True)
    g_dot_v = sum((g * v).sum() for g, v in zip(grads, vs))
    return mg.grad(g_dot_v, list(model.parameters()))


def shift(model, vs, step):
    with mg.no_grad():
        for p, v in zip(model.parameters(), vs):
            p.add_(v, alpha=step)


def finite_difference_hvp(model, loss_fn, vs, eps):
    """``(g(p + eps v) - g(p - eps v)) / (2 eps)``, restoring the parameters afterwards."""
    shift(model, vs, eps)
    plus = gradient(model, loss_fn)
    shift(model, vs, -2 * eps)
    minus = gradient(model, loss_fn)
    shift(model, vs, eps)
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus)]


def flat(tensors):
    return [v for t in tensors for row in t.tolist() for v in row]


def flat_rows(rows):
    return [v for row in rows for v in row]


def relative_error(a, b):
    """``||a - b|| / ||b||`` over all elements."""
    diff = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    return diff / max(math.sqrt(sum(y * y for y in b)), 1e-300)


def unit_directions(shapes):
    """For each parameter element in turn, the direction ``e_k``: zeros but a 1 at that element."""
    for k, (m, n) in enumerate(shapes):
        for i in range(m):
            for j in range(n):
                e = [[0.0] * n for _ in range(m)]
                e[i][j] = 1.0
                yield [mg.Tensor2D(e) if kk == k else mg.zeros(*shape) for kk, shape in enumerate(shapes)]


def main():
    args = parse_args()
    if args.backend:
        mg.set_backend(args.backend)
    mg.set_default_dtype("float64")
    mg.manual_seed(args.seed)

    # 1. a Hessian-vector product
    model = nn.MLP(list(SIZES), activation="tanh")
    x = mg.randn(BATCH, SIZES[0])
    classes = SIZES[-1]
    y = mg.Tensor2D([[min(int(v * classes), classes - 1)] for (v,) in mg.rand(BATCH, 1).tolist()], dtype="int64")

    def loss_fn(m):
        return F.cross_entropy(m(x), y)

    vs = [mg.randn(*p.shape) for p in model.parameters()]
    n_params = sum(p.nrows * p.ncols for p in model.parameters())
    print(
        f"backend {mg.get_backend()} | float64 | MLP {'-'.join(map(str, SIZES))} (tanh, {n_params} parameters), "
        f"cross-entropy on {BATCH} random points | v ~ N(0, I)"
    )
    print(f"loss {loss_fn(model).item():.6f}")
    exact = flat(hvp(model, loss_fn, vs))
    approx = flat(finite_difference_hvp(model, loss_fn, vs, args.eps))
    print(f"\nH v, first 8 of {n_params} entries:")
    print(f"  {'double backward':>18}  {'finite difference':>18}")
    for a, b in zip(exact[:8], approx[:8]):
        print(f"  {a:18.10f}  {b:18.10f}")
    err = relative_error(approx, exact)
    print(f"relative error ||fd - Hv|| / ||Hv|| = {err:.2e} (eps {args.eps:g})")

    if args.no_full:
        return

    # 2. the full Hessian of a tiny model, column by column
    tiny = nn.MLP(list(TINY_SIZES), activation="tanh")
    xt = mg.randn(8, TINY_SIZES[0])
    yt = mg.randn(8, TINY_SIZES[-1])

    def tiny_loss(m):
        return F.mse_loss(m(xt), yt)

    columns, fd_columns = [], []
    for es in unit_directions([p.shape for p in tiny.parameters()]):
        columns.append(flat(hvp(tiny, tiny_loss, es)))
        fd_columns.append(flat(finite_difference_hvp(tiny, tiny_loss, es, args.eps)))
    n = len(columns)
    hessian = [[columns[j][i] for j in range(n)] for i in range(n)]
    names = [f"{name}[{i},{j}]" for name, p in tiny.named_parameters() for i in range(p.nrows) for j in range(p.ncols)]
    print(f"\nfull Hessian of MLP {'-'.join(map(str, TINY_SIZES))} (tanh, MSE on 8 random points), {n}x{n}")
    print(f"rows and columns: {', '.join(names)}")
    for row in hessian:
        print(" ".join(f"{v:7.3f}" for v in row))
    asym = max(abs(hessian[i][j] - hessian[j][i]) for i in range(n) for j in range(n))
    full_err = relative_error(flat_rows(fd_columns), flat_rows(columns))  # column order: same for both
    print(f"symmetry: max |H - H.T| = {asym:.2e}")
    print(f"relative error against finite differences = {full_err:.2e}")


if __name__ == "__main__":
    main()
