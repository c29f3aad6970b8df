"""Eager and compiled training give the same numbers: a loss trajectory compared step by step.

Run:  python benchmarks/compile_equality.py --data ../shared/data/mnist [--steps 100]
Tiny: python benchmarks/compile_equality.py --steps 5 --models 784-16-10   (the shipped sample)

For each model, the same MLP (seed 0, PyTorch's initialisation) is trained twice for ``--steps``
steps of batch 64 on the first rows of MNIST's training set, SGD lr 0.1, numpy backend, float32:
once eagerly and once through ``matgrad.compile``. It prints, per model, whether the losses are
equal with ``==`` at every step, whether the final weights are equal byte for byte, the compiled
step's counters (how many calls were captured and how many replayed), and the first and last
loss. Exit status 1 if any run differs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def run(sizes: list[int], x: Any, y: Any, steps: int, compiled: bool) -> tuple[list[float], list[bytes], Any]:
    import matgrad as mg
    import matgrad.functional as F
    from matgrad import nn, optim

    mg.manual_seed(0)
    model = nn.MLP(sizes, backend="numpy")
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(xb: mg.Tensor2D, yb: mg.Tensor2D) -> mg.Tensor2D:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step = mg.compile(train_step) if compiled else train_step
    losses = [step(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]).item() for i in range(steps)]
    weights = [p.numpy().tobytes() for p in model.parameters()]
    return losses, weights, getattr(step, "stats", None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="directory of the MNIST IDX files (default: the shipped sample)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--models", default="784-128-10,784-256-128-10")
    args = p.parse_args()
    import matgrad as mg

    data = mg.data.load_mnist(args.data, backend="numpy") if args.data else mg.data.load_mnist(sample=True)
    rows = 64 * args.steps
    if rows > data.x_train.nrows:
        p.error(f"--steps {args.steps} needs {rows} training rows; the data has {data.x_train.nrows}")
    x, y = data.x_train[:rows], data.y_train[:rows]
    same = True
    for spec in args.models.split(","):
        sizes = [int(s) for s in spec.split("-")]
        eager, eager_w, _ = run(sizes, x, y, args.steps, False)
        compiled, compiled_w, stats = run(sizes, x, y, args.steps, True)
        ok_loss, ok_w = eager == compiled, eager_w == compiled_w
        same &= ok_loss and ok_w
        print(
            f"{spec}: {args.steps} losses equal: {ok_loss}; final weights equal byte for byte: {ok_w}; "
            f"compiled {stats}; loss {eager[0]:.6f} -> {eager[-1]:.6f}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
