"""The hand-written NumPy MLP that matgrad is measured against: manual backward, float32, in place.

Run:  python benchmarks/reference_numpy.py [--data DIR] [--sizes 784-128-10] [--limit N] [--check]

What a careful person writes without an autodiff library: Linear layers ``y = x @ W.T + b`` with
W (out, in) as PyTorch lays it out, ReLU between them, softmax-cross-entropy fused into one
gradient ``(softmax(z) - onehot(y)) / m``, and plain SGD. Every buffer (activations, gradients)
is allocated once and written with ``out=`` or in place; float32 end to end (NumPy 2 keeps a
float32 array float32 when it meets a Python float). The loss is computed, as every framework
in the comparison computes it, but never converted to a Python number inside the loop.

Without ``--check`` the script trains one epoch (batch 64, lr 0.1) and prints the time and the
test accuracy. ``--check`` compares this file's gradients with matgrad's (numpy backend) on the
same weights and the same batch, and exits 1 if they differ by more than float32 rounding.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

Params = list[tuple[Any, Any]]  # [(W (out, in), b (out,)), ...] float32 arrays


def init_params(sizes: list[int], seed: int) -> Params:
    """PyTorch's default Linear init: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(n_in)
        w = rng.uniform(-bound, bound, size=(n_out, n_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=(n_out,)).astype(np.float32)
        params.append((w, b))
    return params


class NumpyMLP:
    """Linear-ReLU-...-Linear with cross-entropy and SGD; ``step(xb, yb)`` is one training step."""

    def __init__(self, params: Params, lr: float = 0.1, batch_size: int = 64, fresh: bool = False) -> None:
        import numpy as np

        self.np = np
        # fresh=True: the same maths, but every result a new array and no gradient scaled in place,
        # as an autograd library must work (phases.py measures what the buffers are worth).
        self.fresh = fresh
        self.W = [np.ascontiguousarray(w, dtype=np.float32).copy() for w, _ in params]
        self.b = [np.ascontiguousarray(b, dtype=np.float32).reshape(-1).copy() for _, b in params]
        self.gW = [np.empty_like(w) for w in self.W]
        self.gb = [np.empty_like(b) for b in self.b]
        self.lr = lr
        self.batch_size = batch_size
        outs = [w.shape[0] for w in self.W]
        # z[l]: pre-activation of layer l, overwritten by its ReLU (the last holds logits, then
        # the gradient of the loss); d[l]: gradient flowing into layer l's input, for l >= 1.
        self.z = [np.empty((batch_size, n), dtype=np.float32) for n in outs]
        self.d = [np.empty((batch_size, w.shape[1]), dtype=np.float32) for w in self.W]
        self.rows = np.arange(batch_size)
        self._saved: Any = None  # forward's activations, for backward

    def load(self, params: Params) -> None:
        """Overwrite the weights in place (e.g. after a warm-up)."""
        for w, b, (w0, b0) in zip(self.W, self.b, params):
            w[...] = w0
            b[...] = b0.reshape(-1)

    def params(self) -> Params:
        return [(w.copy(), b.copy()) for w, b in zip(self.W, self.b)]

    def forward_backward(self, xb: Any, yb: Any) -> Any:
        """Fill ``gW`` and ``gb`` with the mean cross-entropy's gradients; return the loss (a NumPy scalar)."""
        loss = self.forward(xb, yb)
        self.backward()
        return loss

    def forward(self, xb: Any, yb: Any) -> Any:
        """Forward pass and loss; keeps the activations (and the logits, in place) for ``backward``."""
        np = self.np
        fresh = self.fresh
        m = xb.shape[0]
        last = len(self.W) - 1
        acts = [xb]
        a = xb
        for layer, (w, b) in enumerate(zip(self.W, self.b)):
            z = np.matmul(a, w.T, out=None if fresh else self.z[layer][:m])
            z += b
            if layer < last:
                z = np.maximum(z, 0.0, out=None if fresh else z)
                acts.append(z)
            a = z
        # fused softmax-cross-entropy: shift by the row max, exp in place, normalise
        rows = self.rows[:m]
        if fresh:
            a = a - a.max(axis=1, keepdims=True)
        else:
            a -= a.max(axis=1, keepdims=True)
        picked = a[rows, yb]
        np.exp(a, out=a)
        total = a.sum(axis=1, keepdims=True)
        loss = np.log(total).mean() - picked.mean()
        self._saved = (acts, a, total, rows, yb)
        return loss

    def backward(self) -> None:
        """Gradients of the last ``forward``'s loss into ``gW`` and ``gb``."""
        np = self.np
        fresh = self.fresh
        acts, a, total, rows, yb = self._saved
        self._saved = None
        m = a.shape[0]
        a /= total
        if fresh:
            g = a * (1.0 / m)
            g[rows, yb] -= 1.0 / m
        else:
            a[rows, yb] -= 1.0
            a *= 1.0 / m
            g = a
        for layer in range(len(self.W) - 1, -1, -1):
            self.gW[layer] = np.matmul(g.T, acts[layer], out=None if fresh else self.gW[layer])
            self.gb[layer] = np.sum(g, axis=0, out=None if fresh else self.gb[layer])
            if layer > 0:
                d = np.matmul(g, self.W[layer], out=None if fresh else self.d[layer][:m])
                g = np.multiply(d, acts[layer] > 0.0, out=None if fresh else d)  # ReLU: acts[layer] is its output

    def update(self) -> None:
        """SGD in place: ``W -= lr * gW`` without a temporary (with one, and ``gW`` kept, if fresh)."""
        lr = self.lr
        if self.fresh:
            for w, b, gw, gb in zip(self.W, self.b, self.gW, self.gb):
                w -= lr * gw
                b -= lr * gb
            return
        for w, b, gw, gb in zip(self.W, self.b, self.gW, self.gb):
            gw *= lr
            w -= gw
            gb *= lr
            b -= gb

    def step(self, xb: Any, yb: Any) -> Any:
        loss = self.forward_backward(xb, yb)
        self.update()
        return loss


def train_epoch(model: NumpyMLP, x: Any, y: Any, perm: Any, batch_size: int) -> None:
    """One epoch over ``perm``: gather the batch with NumPy fancy indexing, then step."""
    for lo in range(0, len(perm), batch_size):
        idx = perm[lo : lo + batch_size]
        model.step(x[idx], y[idx])


def accuracy(params: Params, x: Any, y: Any) -> float:
    """Test accuracy of the MLP with ``params`` (any framework's weights, as NumPy arrays)."""
    import numpy as np

    a = x
    for i, (w, b) in enumerate(params):
        a = a @ np.asarray(w, dtype=np.float32).T + np.asarray(b, dtype=np.float32).reshape(1, -1)
        if i < len(params) - 1:
            a = np.maximum(a, 0.0)
    return float((a.argmax(axis=1) == np.asarray(y).reshape(-1)).mean())


def matgrad_gradients(params: Params, xb: Any, yb: Any) -> tuple[float, Params]:
    """Loss and gradients of the same MLP through matgrad's autograd (numpy backend)."""
    import numpy as np

    import matgrad as mg

    be = mg.backends.get("numpy")
    sizes = [params[0][0].shape[1]] + [w.shape[0] for w, _ in params]
    model = mg.nn.MLP(sizes, backend="numpy")
    linears = [m for m in model if isinstance(m, mg.nn.Linear)]
    with mg.no_grad():
        for lin, (w, b) in zip(linears, params):
            lin.weight.copy_(mg.Tensor2D.from_native(np.ascontiguousarray(w, dtype=np.float32), be))
            lin.bias.copy_(mg.Tensor2D.from_native(np.asarray(b, dtype=np.float32).reshape(1, -1), be))
    x = mg.Tensor2D.from_native(np.ascontiguousarray(xb, dtype=np.float32), be)
    y = mg.Tensor2D.from_native(np.asarray(yb, dtype=np.int64).reshape(-1, 1), be)
    loss = mg.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [(lin.weight.grad.numpy().copy(), lin.bias.grad.numpy().reshape(-1).copy()) for lin in linears]
    return float(loss.item()), grads


def check_gradients(sizes: list[int], xb: Any, yb: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Compare this file's gradients with matgrad's on the same weights and batch.

    Returns one row per tensor (loss, W1, b1, ...) with the largest absolute difference and the
    largest magnitude; a match means difference <= 1e-5 * (1 + magnitude), float32 rounding.
    """
    import numpy as np

    params = init_params(sizes, seed)
    ref = NumpyMLP(params, batch_size=max(64, xb.shape[0]))
    ref_loss = float(ref.forward_backward(xb, yb))
    mg_loss, mg_grads = matgrad_gradients(params, xb, yb)
    rows = [{"name": "loss", "max_abs_diff": abs(ref_loss - mg_loss), "max_abs": abs(mg_loss)}]
    for i, (gw, gb) in enumerate(mg_grads):
        for name, mine, theirs in ((f"W{i + 1}", ref.gW[i], gw), (f"b{i + 1}", ref.gb[i], gb)):
            rows.append(
                {
                    "name": name,
                    "max_abs_diff": float(np.max(np.abs(mine - theirs))),
                    "max_abs": float(np.max(np.abs(theirs))),
                }
            )
    for r in rows:
        r["ok"] = r["max_abs_diff"] <= 1e-5 * (1.0 + r["max_abs"])
    return rows


def load_arrays(root: str, limit: int | None = None) -> tuple[Any, Any, Any, Any]:
    """MNIST through matgrad's IDX reader, as NumPy arrays: x float32 (n, 784) / 255, y int64 (n,)."""
    import matgrad as mg

    x_train, y_train, x_test, y_test = mg.data.load_mnist(root, backend="numpy")
    xs = [t.numpy() for t in (x_train, y_train, x_test, y_test)]
    if limit is not None:
        xs[0], xs[1] = xs[0][:limit], xs[1][:limit]
    return xs[0], xs[1].reshape(-1), xs[2], xs[3].reshape(-1)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes look like 784-128-10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes look like 784-128-10, got {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=_bench.SAMPLE_DIR, help="MNIST folder (default: the sample)")
    parser.add_argument("--sizes", type=parse_sizes, action="append", help="layer sizes, e.g. 784-128-10 (repeatable)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    parser.add_argument("--check", action="store_true", help="compare the gradients with matgrad's and exit")
    args = parser.parse_args()
    _bench.set_threads(args.threads)
    import numpy as np

    all_sizes = args.sizes or [[784, 128, 10], [784, 256, 128, 10]]
    x, y, x_test, y_test = load_arrays(args.data, args.limit)
    failed = False
    for sizes in all_sizes:
        name = "-".join(map(str, sizes))
        if args.check:
            rng = np.random.default_rng(args.seed)
            idx = rng.permutation(len(x))[: args.batch_size]
            rows = check_gradients(sizes, x[idx], y[idx], args.seed)
            print(f"\nGradients of {name}, reference vs matgrad (numpy backend), batch {len(idx)}:\n")
            table = [
                [r["name"], f"{r['max_abs']:.3e}", f"{r['max_abs_diff']:.3e}", "yes" if r["ok"] else "NO"] for r in rows
            ]
            print(_bench.markdown_table(["tensor", "max abs gradient", "max abs difference", "match"], table))
            failed |= not all(r["ok"] for r in rows)
            continue
        params = init_params(sizes, args.seed)
        model = NumpyMLP(params, args.lr, args.batch_size)
        perm = np.random.default_rng(args.seed).permutation(len(x))
        t0 = time.perf_counter()
        train_epoch(model, x, y, perm, args.batch_size)
        seconds = time.perf_counter() - t0
        acc = accuracy(model.params(), x_test, y_test)
        print(f"{name}: one epoch of {len(x)} images in {seconds:.3f} s; test accuracy {acc:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
