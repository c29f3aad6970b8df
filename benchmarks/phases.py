"""Where matgrad's time per step differs from the hand-written NumPy reference, phase by phase.

Run:  python benchmarks/phases.py [--data DIR] [--models 784-128-10,784-256-128-10] [--threads 2]

Two measurements, both in one process with matgrad and the reference alternating:

1. **Phases of a real epoch.** Both train the same MLP from the same weights on the same batches
   (one permutation per round) and a clock is read between the phases of every step: batch
   gather, forward with loss, backward (``zero_grad`` included), SGD update. The table gives the
   median over rounds of the mean microseconds per step in each phase, and matgrad minus the
   reference. The clock reads and the call of each phase add well under 1 us per step to both.
2. **Python overhead alone.** The same step on matrices so small (batch 64, 8 features, 3 classes,
   as many layers as the model) that the arithmetic costs next to nothing: the difference is
   what matgrad's Python costs per step (graph recording, the backward loop, modules, the
   optimiser), the part no faster kernel can remove. Best of ``--tiny-repeats`` loops.

The first table also times the reference with ``fresh=True``: the same maths with a new array
for every result and no gradient scaled in place, as an autograd library must work (the
reference otherwise overwrites buffers it allocated once). The gap between the two reference
rows is what reusing buffers is worth; matgrad is compared with the buffered one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench
import reference_numpy as ref

PHASES = ("gather", "forward + loss", "backward", "update")


def _matgrad_model(sizes: list[int], params: ref.Params, lr: float) -> tuple[Any, Any]:
    import numpy as np

    import matgrad as mg

    be = mg.backends.get("numpy")
    model = mg.nn.MLP(sizes, backend="numpy")
    with mg.no_grad():
        for lin, (w, b) in zip([m for m in model if isinstance(m, mg.nn.Linear)], params):
            lin.weight.copy_(mg.Tensor2D.from_native(np.ascontiguousarray(w), be))
            lin.bias.copy_(mg.Tensor2D.from_native(b.reshape(1, -1).copy(), be))
    return model, mg.optim.SGD(model.parameters(), lr=lr)


def _timed_epoch(
    perm: Any,
    batch_size: int,
    gather: Callable[[Any], tuple[Any, Any]],
    forward: Callable[[Any, Any], Any],
    backward: Callable[[Any], None],
    update: Callable[[], None],
) -> list[float]:
    """Seconds spent in each phase over one epoch; the same clock reads for both frameworks."""
    clock = time.perf_counter
    total = [0.0, 0.0, 0.0, 0.0]
    for lo in range(0, len(perm), batch_size):
        t0 = clock()
        xb, yb = gather(perm[lo : lo + batch_size])
        t1 = clock()
        loss = forward(xb, yb)
        t2 = clock()
        backward(loss)
        t3 = clock()
        update()
        t4 = clock()
        total[0] += t1 - t0
        total[1] += t2 - t1
        total[2] += t3 - t2
        total[3] += t4 - t3
    return total


def matgrad_epoch(
    sizes: list[int], params: ref.Params, x: Any, y: Any, perm: Any, args: argparse.Namespace
) -> list[float]:
    """Phase times of one epoch of matgrad (numpy backend)."""
    import matgrad as mg
    from matgrad import Tensor2D

    be = mg.backends.get("numpy")
    cross_entropy = mg.functional.cross_entropy
    model, opt = _matgrad_model(sizes, params, args.lr)
    y_col = y.reshape(-1, 1)

    def backward(loss: Any) -> None:
        opt.zero_grad()
        loss.backward()

    return _timed_epoch(
        perm,
        args.batch_size,
        lambda idx: (Tensor2D.from_native(x[idx], be), Tensor2D.from_native(y_col[idx], be)),
        lambda xb, yb: cross_entropy(model(xb), yb),
        backward,
        opt.step,
    )


def reference_epoch(
    sizes: list[int], params: ref.Params, x: Any, y: Any, perm: Any, args: argparse.Namespace, fresh: bool = False
) -> list[float]:
    """Phase times of one epoch of the hand-written NumPy reference (``fresh``: no buffers reused)."""
    model = ref.NumpyMLP(params, args.lr, args.batch_size, fresh=fresh)
    return _timed_epoch(
        perm, args.batch_size, lambda idx: (x[idx], y[idx]), model.forward, lambda loss: model.backward(), model.update
    )


def phase_table(sizes: list[int], x: Any, y: Any, args: argparse.Namespace) -> list[list[str]]:
    import numpy as np

    steps = -(-len(x) // args.batch_size)
    fresh = "numpy-reference, fresh arrays"
    runs: dict[str, list[list[float]]] = {"matgrad-numpy": [], "numpy-reference": [], fresh: []}
    for r in range(args.rounds):
        params = ref.init_params(sizes, args.seed + r)
        perm = np.random.default_rng(args.seed + r).permutation(len(x))
        runs["matgrad-numpy"].append(matgrad_epoch(sizes, params, x, y, perm, args))
        runs["numpy-reference"].append(reference_epoch(sizes, params, x, y, perm, args))
        runs[fresh].append(reference_epoch(sizes, params, x, y, perm, args, fresh=True))
    med = {k: [statistics.median(run[i] for run in v) * 1e6 / steps for i in range(4)] for k, v in runs.items()}
    name = "-".join(map(str, sizes))
    rows = []
    for fw, per in med.items():
        rows.append([name, fw, *(f"{v:.1f}" for v in per), f"{sum(per):.1f}"])
    diff = [a - b for a, b in zip(med["matgrad-numpy"], med["numpy-reference"])]
    rows.append([name, "matgrad - reference", *(f"{v:+.1f}" for v in diff), f"{sum(diff):+.1f}"])
    return rows


def _best_us(step: Callable[[], Any], loops: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            step()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best * 1e6


def overhead_row(sizes: list[int], args: argparse.Namespace) -> list[str]:
    """matgrad's and the reference's step at tiny shapes with the model's depth."""
    import numpy as np

    import matgrad as mg
    from matgrad import Tensor2D

    be = mg.backends.get("numpy")
    tiny = [8] * (len(sizes) - 1) + [3]
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch_size, tiny[0]), dtype=np.float32)
    y = rng.integers(0, tiny[-1], args.batch_size)
    params = ref.init_params(tiny, args.seed)
    model, opt = _matgrad_model(tiny, params, 1e-3)
    reference = ref.NumpyMLP(params, 1e-3, args.batch_size)
    y_col = y.reshape(-1, 1)
    cross_entropy = mg.functional.cross_entropy

    def matgrad_step() -> None:
        loss = cross_entropy(model(Tensor2D.from_native(x, be)), Tensor2D.from_native(y_col, be))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def reference_step() -> None:
        reference.step(x, y)

    mine, theirs = [], []
    for _ in range(args.tiny_repeats):  # alternate, so load hits both alike
        mine.append(_best_us(matgrad_step, 500, 1))
        theirs.append(_best_us(reference_step, 500, 1))
    a, b = min(mine), min(theirs)
    depth = "-".join(map(str, tiny))
    return ["-".join(map(str, sizes)), depth, f"{a:.1f}", f"{b:.1f}", f"{a - b:+.1f}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=_bench.SAMPLE_DIR, help="MNIST folder with the IDX files (default: the sample)")
    p.add_argument("--limit", type=int, help="train on the first N training images only")
    p.add_argument("--models", default="784-128-10,784-256-128-10", help="comma-separated layer sizes")
    p.add_argument("--rounds", type=int, default=5, help="epochs per framework, alternated (default 5)")
    p.add_argument("--tiny-repeats", type=int, default=15, help="timing loops of the tiny step (default 15)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.tiny_repeats < 1:
        p.error("--rounds and --tiny-repeats must be at least 1")
    try:
        args.sizes = [ref.parse_sizes(m) for m in args.models.split(",")]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    return args


def main() -> int:
    args = parse_args()
    _bench.set_threads(args.threads)
    if not os.path.isdir(args.data):
        print(f"phases: --data {args.data!r} is not a folder with the MNIST IDX files", file=sys.stderr)
        return 2
    machine = _bench.machine_info()
    x, y, _, _ = ref.load_arrays(args.data, args.limit)
    print(f"Measured {_bench.describe_machine(machine)}")
    print(f"{len(x)} training images, batch {args.batch_size}, {args.threads} BLAS thread(s), {args.rounds} rounds\n")
    rows = [row for sizes in args.sizes for row in phase_table(sizes, x, y, args)]
    header = ["model", "framework", *(f"{p} (us/step)" for p in PHASES), "total (us/step)"]
    print(_bench.markdown_table(header, rows, "ll" + "r" * 5))
    print("\nThe same step at tiny shapes (batch 64): what matgrad's Python costs per step.\n")
    tiny = [overhead_row(sizes, args) for sizes in args.sizes]
    print(
        _bench.markdown_table(
            ["model", "tiny stand-in", "matgrad (us)", "reference (us)", "overhead (us)"], tiny, "llrrr"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
