"""The CLI's MNIST CNN in matgrad and in PyTorch, side by side: accuracy and time per epoch.

Run:  python benchmarks/cnn_compare.py --data ../shared/data/mnist [--epochs 2] [--threads 2]
Tiny: python benchmarks/cnn_compare.py --limit 640 --epochs 1 --test-limit 500
Where the time goes: add --profile (cProfile of one more matgrad epoch, grouped by kernel).

Both train ``conv(1->16, 5) relu maxpool(2) conv(16->32, 5) relu maxpool(2) flatten
linear(512->128) relu linear(128->10)`` (``matgrad.cli.build_cnn``, and the same
``torch.nn.Sequential``) from the *same* initial weights (matgrad's, PyTorch's default init,
copied into torch) over the *same* batches (one NumPy permutation per epoch, shared), with Adam
(lr 0.002, float32, batch 64), in one process with the same thread count: the BLAS pools capped
with OMP/MKL/OPENBLAS_NUM_THREADS before NumPy or torch is imported, and
``torch.set_num_threads``. Epochs alternate (matgrad 1, torch 1, matgrad 2, ...), so both see
the same machine load. What is timed is the training loop of an epoch (gather, forward, loss,
backward, step); the test accuracy after it is each framework's own forward pass.

Prints a Markdown table per epoch (accuracies, wall and CPU seconds, matgrad / torch ratio) and,
with ``--profile``, where matgrad's epoch spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench

# How --profile groups matgrad's time: a kernel of the numpy backend, or the rest.
PHASES = {
    "matmul": "matmul (conv and linear products)",
    "unfold": "unfold (im2col)",
    "fold": "fold (col2im, conv input gradient)",
    "max_pool": "max pooling forward",
    "max_pool_adjoint": "max pooling backward",
    "block_transpose": "patch rows <-> image rows",
}


def load(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    import matgrad as mg

    data = mg.data.load_mnist(args.data, backend="numpy")
    x, y, xt, yt = (t.numpy() for t in data)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    if args.test_limit:
        xt, yt = xt[: args.test_limit], yt[: args.test_limit]
    return x, y.reshape(-1), xt, yt.reshape(-1)


def matgrad_trainer(args: argparse.Namespace) -> tuple[Any, Callable[..., None], Callable[..., float]]:
    import matgrad as mg
    from matgrad.cli import build_cnn
    from matgrad.tensor import _wrap

    mg.set_backend("numpy")
    be = mg.backends.get("numpy")
    mg.manual_seed(args.seed)
    model = build_cnn((28, 28), [128])
    opt = mg.optim.Adam(model.parameters(), lr=args.lr)
    F = mg.functional

    def step(xb: Any, yb: Any) -> None:
        loss = F.cross_entropy(model(_wrap(xb, be)), _wrap(yb.reshape(-1, 1), be))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def accuracy(x: Any, y: Any) -> float:
        preds = mg.metrics.predict(model, _wrap(x, be))
        return sum(int(p == t) for p, t in zip(preds, y.tolist())) / len(y)

    return model, step, accuracy


def torch_trainer(args: argparse.Namespace, source: Any) -> tuple[Callable[..., None], Callable[..., float]]:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5),
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
    # the same initial weights: matgrad's state dict loads as is (4-D conv weights, 1-D biases)
    state = {k: torch.from_numpy(np.array(v.numpy())) for k, v in source.state_dict().items()}
    model.load_state_dict({k: state[k].reshape(p.shape) for k, p in model.state_dict().items()})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.functional.cross_entropy

    def step(xb: Any, yb: Any) -> None:
        loss = loss_fn(model(torch.from_numpy(xb).view(-1, 1, 28, 28)), torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def accuracy(x: Any, y: Any) -> float:
        with torch.no_grad():
            logits = torch.cat(
                [model(torch.from_numpy(x[i : i + 1000]).view(-1, 1, 28, 28)) for i in range(0, len(x), 1000)]
            )
        return float((logits.argmax(1).numpy() == y).mean())

    return step, accuracy


def epoch(step: Callable[..., None], x: Any, y: Any, order: Any, batch: int) -> tuple[float, float]:
    """Wall and CPU seconds of one pass over ``x`` in ``order``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(order), batch):
        idx = order[lo : lo + batch]
        step(x[idx], y[idx])
    return time.perf_counter() - wall, time.process_time() - cpu


def profile(step: Callable[..., None], x: Any, y: Any, order: Any, batch: int) -> None:
    """One more matgrad epoch under cProfile, its time grouped by backend kernel."""
    profiler = cProfile.Profile()
    profiler.enable()
    epoch(step, x, y, order, batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    phases = dict.fromkeys(PHASES, 0.0)
    for (filename, _, name), (_, _, tottime, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(os.path.join("backends", "numpy.py")) and name in phases:
            phases[name] += tottime
    rows = [[PHASES[k], f"{v:.2f}", f"{v / total:.0%}"] for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
    rest = total - sum(phases.values())
    rows.append(
        ["everything else (element-wise kernels, Adam, the engine, Python)", f"{rest:.2f}", f"{rest / total:.0%}"]
    )
    print(f"\nWhere one matgrad epoch goes (cProfile, {total:.1f}s in all, profiler overhead included):\n")
    print(_bench.markdown_table(["phase", "seconds", "share"], rows))
    print("\nTop functions by own time:\n")
    stats.sort_stats("tottime").print_stats(12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=_bench.SAMPLE_DIR, help="MNIST folder (default: the shipped sample)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.002, help="Adam's learning rate (default 0.002)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--test-limit", type=int, help="test on the first N test images only")
    parser.add_argument("--profile", action="store_true", help="profile one more matgrad epoch")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args()
    _bench.set_threads(args.threads)  # before NumPy or torch is imported

    import numpy as np

    x, y, xt, yt = load(args)
    model, mg_step, mg_acc = matgrad_trainer(args)
    torch_step, torch_acc = torch_trainer(args, model)
    info = _bench.machine_info()
    print(
        f"CNN on {len(x)} MNIST images ({len(xt)} test), batch {args.batch_size}, Adam lr {args.lr:g}, "
        f"{args.threads} threads | {info['cpu']} | load {info['loadavg']} | commit {info['commit']}\n"
    )
    rng = np.random.default_rng(args.seed)
    rows, records = [], []
    for e in range(1, args.epochs + 1):
        order = rng.permutation(len(x))
        mg_wall, mg_cpu = epoch(mg_step, x, y, order, args.batch_size)
        t_wall, t_cpu = epoch(torch_step, x, y, order, args.batch_size)
        accs = mg_acc(xt, yt), torch_acc(xt, yt)
        records.append(
            {
                "epoch": e,
                "matgrad": {"acc": accs[0], "wall": mg_wall, "cpu": mg_cpu},
                "torch": {"acc": accs[1], "wall": t_wall, "cpu": t_cpu},
            }
        )
        rows.append(
            [
                e,
                f"{accs[0]:.2%}",
                f"{accs[1]:.2%}",
                f"{mg_wall:.1f}",
                f"{t_wall:.1f}",
                f"{mg_wall / t_wall:.2f}",
                f"{mg_cpu:.1f}",
                f"{t_cpu:.1f}",
                f"{mg_cpu / t_cpu:.2f}",
            ]
        )
        print(f"epoch {e}: matgrad {mg_wall:.1f}s {accs[0]:.2%} | torch {t_wall:.1f}s {accs[1]:.2%}", flush=True)
    header = [
        "epoch",
        "matgrad acc",
        "torch acc",
        "matgrad s",
        "torch s",
        "ratio",
        "matgrad cpu s",
        "torch cpu s",
        "cpu ratio",
    ]
    print()
    print(_bench.markdown_table(header, rows))
    if args.profile:
        profile(mg_step, x, y, rng.permutation(len(x)), args.batch_size)
    if args.json:
        _bench.write_json(args.json, {"machine": info, "args": vars(args), "epochs": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
