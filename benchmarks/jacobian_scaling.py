"""Time of ``jacobian`` for an MLP's logits with respect to its first layer's weight, by output size.

Run:  python benchmarks/jacobian_scaling.py [--batches 1,4,16,64] [--repeats 3] [--threads 1]
Tiny: python benchmarks/jacobian_scaling.py --batches 1,2 --hidden 16 --repeats 1

A fresh MLP 784-128-10 (PyTorch's default initialisation, seed 0) and the first ``B`` images of
the MNIST sample shipped with matgrad; ``f(W1) = linear(relu(linear(X, W1, b1)), W2, b2)`` maps
the first layer's weight (128 x 784) to the logits (B x 10). Its Jacobian is a
``(10 B) x 100,352`` matrix, computed by ``matgrad.autograd.functional.jacobian`` (reverse mode:
one backward pass per logit, on one recorded graph) on the numpy backend in float32.

Columns, best of ``--repeats`` runs each:

* ``matgrad``: ``b1``, ``W2``, ``b2`` are the model's parameters (they require grad, as they
  would in a script); ``matgrad, rest frozen``: the same tensors detached. matgrad's engine
  computes the gradient of every tensor on the graph that requires grad, so the difference is
  what gradients nobody asked for cost;
* ``torch loop`` and ``torch vmap``: ``torch.autograd.functional.jacobian`` on the same weights
  and images, with ``vectorize=False`` (one ``autograd.grad`` per logit, like matgrad) and
  ``vectorize=True`` (one batched call), when torch is installed; the script checks that torch's
  Jacobian, reshaped row-major, equals matgrad's.

A second table puts the products beside one forward pass, on the same MLP at the largest batch:
``f(W1)`` alone, ``vjp`` and ``jvp`` of the logits (a random ``v``), and ``vhp`` and ``hvp`` of
the cross-entropy loss, each with respect to ``W1``; the ratio column divides by the forward pass.

BLAS runs on one thread by default (``--threads``), as in the other benchmarks: on a shared
machine a multi-threaded BLAS call stalls whenever one of its threads is descheduled.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes B (output is B x 10)")
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell; the best is shown (default 3)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch columns")
    return p.parse_args()


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # free the previous Jacobian before the next run
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def torch_row(torch: Any, TF: Any, params: tuple[Any, ...], x: Any, jac: Any, repeats: int) -> list[str]:
    """torch's loop and vmap times on the same weights and images, and the largest difference from ``jac``."""
    import numpy as np

    tw1, tb1, tw2, tb2 = (torch.from_numpy(np.array(t.numpy())).requires_grad_() for t in params)
    tx = torch.from_numpy(np.array(x.numpy()))

    def tf(w: Any) -> Any:
        return torch.relu(tx @ w.T + tb1) @ tw2.T + tb2

    t_loop, tjac = best_of(repeats, lambda: TF.jacobian(tf, tw1))
    t_vmap, _ = best_of(repeats, lambda: TF.jacobian(tf, tw1, vectorize=True))
    diff = float(np.abs(tjac.reshape(jac.nrows, -1).numpy() - jac.numpy()).max())
    return [f"{t_loop * 1e3:.1f}", f"{t_vmap * 1e3:.1f}", f"{diff:.1e}"]


def products_table(mg: Any, F: Any, params: tuple[Any, ...], x: Any, repeats: int) -> None:
    """Forward pass, vjp, jvp, vhp and hvp with respect to W1, side by side, best of ``repeats`` each."""
    from matgrad.autograd.functional import hvp, jvp, vhp, vjp

    w1, b1, w2, b2 = params
    labels = mg.data.load_mnist(sample=True, backend="numpy").y_train[: x.nrows]

    def logits(w: Any) -> Any:
        return F.linear(F.linear(x, w, b1).relu(), w2, b2)

    def loss(w: Any) -> Any:
        return F.cross_entropy(logits(w), labels)

    v_out = mg.randn(x.nrows, 10, dtype="float32")
    v_in = mg.randn(*w1.shape, dtype="float32")
    w = w1.detach()
    cases = [
        ("forward pass f(W1)", lambda: logits(w)),
        ("vjp(f, W1, v): v^T J", lambda: vjp(logits, w1, v_out)),
        ("jvp(f, W1, u): J u", lambda: jvp(logits, w1, v_in)),
        ("vhp(loss, W1, u): u^T H", lambda: vhp(loss, w1, v_in)),
        ("hvp(loss, W1, u): H u", lambda: hvp(loss, w1, v_in)),
    ]
    times = []
    for _, fn in cases:
        fn()  # warm-up
        times.append(best_of(repeats, fn)[0])
    rows = [[name, f"{t * 1e3:.2f}", f"{t / times[0]:.1f}"] for (name, _), t in zip(cases, times)]
    print(f"products with respect to W1, batch {x.nrows}:")
    print(_bench.markdown_table(["computation", "ms", "x forward"], rows))
    print()


def main() -> None:
    args = parse_args()
    _bench.set_threads(args.threads)
    import matgrad as mg
    import matgrad.functional as F
    from matgrad.autograd.functional import jacobian

    try:
        if args.no_torch:
            raise ImportError
        import torch
        import torch.autograd.functional as TF

        torch.set_num_threads(args.threads)
        TF.jacobian(lambda w: w * w, torch.ones(2, 2), vectorize=True)  # vmap's first call sets itself up
    except ImportError:
        torch = None

    batches = [int(b) for b in args.batches.split(",")]
    mg.manual_seed(0)
    model = mg.nn.MLP([784, args.hidden, 10], backend="numpy", dtype="float32")
    w1, b1, w2, b2 = (p for _, p in model.named_parameters())
    images = mg.data.load_mnist(sample=True, backend="numpy", dtype="float32").x_train

    print(
        f"jacobian of an MLP 784-{args.hidden}-10's logits (B x 10) with respect to its first layer's weight "
        f"({args.hidden} x 784); numpy backend, float32, {args.threads} BLAS thread(s), best of {args.repeats}"
    )
    print(_bench.describe_machine(_bench.machine_info()))
    print()
    jacobian(lambda w: F.linear(images[:1], w, b1).relu(), w1)  # warm-up: first calls set up caches
    rows = []
    for batch in batches:
        x = images[:batch]
        frozen = [t.detach() for t in (b1, w2, b2)]

        def live(w: mg.Tensor2D, x: mg.Tensor2D = x) -> mg.Tensor2D:
            return F.linear(F.linear(x, w, b1).relu(), w2, b2)

        def cold(w: mg.Tensor2D, x: mg.Tensor2D = x, fb1=frozen[0], fw2=frozen[1], fb2=frozen[2]) -> mg.Tensor2D:
            return F.linear(F.linear(x, w, fb1).relu(), fw2, fb2)

        t_live, jac = best_of(args.repeats, lambda: jacobian(live, w1))
        t_cold, _ = best_of(args.repeats, lambda: jacobian(cold, w1))
        n_out = batch * 10
        assert jac.shape == (n_out, args.hidden * 784)
        row = [f"{batch} x 10 = {n_out}", f"{n_out} x {args.hidden * 784:,}", f"{t_live * 1e3:.1f}"]
        row += [f"{t_live / n_out * 1e3:.2f}", f"{t_cold * 1e3:.1f}"]
        if torch is not None:
            row += torch_row(torch, TF, (w1, b1, w2, b2), x, jac, args.repeats)
        rows.append(row)
        jac = None
    products_table(mg, F, (w1, b1, w2, b2), images[: batches[-1]], args.repeats)
    header = ["output (B x 10)", "Jacobian", "matgrad ms", "ms per row", "matgrad, rest frozen ms"]
    if torch is not None:
        header += ["torch loop ms", "torch vmap ms", "max abs difference"]
    print(_bench.markdown_table(header, rows, align="l" + "r" * (len(header) - 1)))


if __name__ == "__main__":
    main()
